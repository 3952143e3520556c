# Option declarations the NixOS module (default.nix, templates.nix) and the
# home-manager module (home-manager.nix) have in common, each written once.
# What really differs (where secrets go, default keys, owners, which units
# install them) stays in the modules; a piece takes a parameter only where the
# two differ in a word (a path in a description, an example).
#
# Each piece is a module: the top-level ones are imported into the NixOS or
# home-manager configuration, the others into a secret's or template's
# submodule (`imports = [ ... ]` next to the module's own options).
{ lib }:

let
  sopsLib = import ./lib.nix { inherit lib; };
  inherit (lib) mkOption types;
in
{
  # sops.* options declared alike in both modules. `keyFileExample` is a
  # typical sops.age.keyFile (a system path or one in the user's home).
  common =
    { keyFileExample }:
    { pkgs, ... }:
    {
      options.sops = {
        defaultSopsFile = mkOption {
          type = types.path;
          description = "The sops file of every secret that does not name its own.";
        };

        defaultSopsFormat = mkOption {
          type = types.str;
          default = "yaml";
          description = "The format of every secret that does not name its own.";
        };

        defaultSopsKey = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = ''
            The key of every secret that does not name its own; null means each
            secret's attribute name. `""` means the whole file. Ignored for the
            binary format.
          '';
        };

        validateSopsFiles = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Check the sops files when the configuration is built: each must be in
            the Nix store, and every secret's key must exist in it. Turn off for
            sops files that live only on the target machine.
          '';
        };

        log = mkOption {
          type = types.listOf (
            types.enum [
              "keyImport"
              "secretChanges"
            ]
          );
          default = [
            "keyImport"
            "secretChanges"
          ];
          description = ''
            What the installer reports: `keyImport` the age recipient of each SSH
            key it uses, `secretChanges` each secret it adds, changes or removes.
          '';
        };

        package = mkOption {
          type = types.package;
          default = pkgs.callPackage ./package.nix { };
          defaultText = lib.literalMD "sops-install-secrets built from this repository";
          description = "The sops-install-secrets package that installs the secrets.";
        };

        age = {
          keyFile = mkOption {
            type = types.nullOr sopsLib.pathNotInStore;
            default = null;
            example = keyFileExample;
            description = "An age key file (outside the Nix store) to decrypt with.";
          };

          plugins = mkOption {
            type = types.listOf types.package;
            default = [ ];
            description = "age plugins to put on the installer's PATH.";
          };

          generateKey = mkOption {
            type = types.bool;
            default = false;
            description = ''
              Create {option}`sops.age.keyFile` with a new age key if it does not
              exist. When off, the key file must already be there.
            '';
          };
        };

        gnupg.package = mkOption {
          type = types.package;
          default = pkgs.gnupg;
          defaultText = lib.literalExpression "pkgs.gnupg";
          description = "The gpg that GPG decryption uses (`SOPS_GPG_EXEC`).";
        };
      };
    };

  # sops.templates, whose entries are `templateType`, and sops.placeholder,
  # set for every secret as soon as there is a template.
  templates =
    templateType:
    { config, ... }:
    let
      cfg = config.sops;
    in
    {
      options.sops = {
        templates = mkOption {
          type = types.attrsOf templateType;
          default = { };
          description = "Files rendered from secrets, by name.";
        };

        placeholder = mkOption {
          type = types.attrsOf sopsLib.placeholderType;
          default = { };
          visible = false;
          description = ''
            The string standing for each secret in template text; defined for
            every secret as soon as there is a template.
          '';
        };
      };

      config = lib.mkIf (cfg.templates != { }) {
        sops.placeholder = lib.mapAttrs (name: _: lib.mkDefault (sopsLib.placeholderFor name)) cfg.secrets;
      };
    };

  # For a secret's submodule: the options every secret has. `cfg` is the
  # configuration's config.sops; `nameDescription` says where the file goes.
  secret =
    { cfg, nameDescription }:
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
          description = nameDescription;
        };
        key = mkOption {
          type = types.str;
          default = if cfg.defaultSopsKey != null then cfg.defaultSopsKey else name;
          defaultText = lib.literalMD "{option}`sops.defaultSopsKey`, or the attribute name";
          description = ''
            Where the value is in the sops file: keys separated by `/`, so
            `ssh_keys/private_key` is `private_key` inside `ssh_keys`. `""`
            installs the whole decrypted file. Ignored for the binary format.
          '';
        };
        format = mkOption {
          type = types.enum [
            "yaml"
            "json"
            "binary"
            "dotenv"
            "ini"
          ];
          default = cfg.defaultSopsFormat;
          defaultText = lib.literalExpression "config.sops.defaultSopsFormat";
          description = ''
            Format of the sops file. A binary file is installed whole, as
            decrypted.
          '';
        };
        mode = mkOption {
          type = types.str;
          default = "0400";
          description = "File mode of the secret, in octal.";
        };
        sopsFile = mkOption {
          type = types.path;
          default = cfg.defaultSopsFile;
          defaultText = lib.literalExpression "config.sops.defaultSopsFile";
          description = "The sops file holding the secret.";
        };
      };
    };

  # For a template's submodule: the options every template has. Rendered
  # files go to `renderedDir` (the path as written in descriptions is
  # `nameDescription`'s business); `pathDefaultText`, when not null,
  # documents the default path.
  template =
    {
      pkgs,
      nameDescription,
      renderedDir,
      pathDefaultText ? null,
    }:
    { config, name, ... }:
    {
      options = {
        name = mkOption {
          type = types.singleLineStr;
          default = name;
          description = nameDescription;
        };
        path = mkOption {
          type = types.singleLineStr;
          default = "${renderedDir}/${config.name}";
          description = ''
            Where the rendered file can be read. If it differs from the
            default, a symlink to the file is made there.
          '';
        }
        // lib.optionalAttrs (pathDefaultText != null) { defaultText = pathDefaultText; };
        content = mkOption {
          type = types.lines;
          default = "";
          description = "The template's text, with placeholders where secrets go.";
        };
        mode = mkOption {
          type = types.singleLineStr;
          default = "0400";
          description = "File mode of the rendered file, in octal.";
        };
        file = mkOption {
          type = types.path;
          default = pkgs.writeText (lib.strings.sanitizeDerivationName "sops-template-${config.name}") config.content;
          defaultText = lib.literalMD "a store file holding `content`";
          example = lib.literalExpression "./configuration-template.conf";
          description = ''
            The file the template is read from. Setting it makes `content`
            unused.
          '';
        };
      };
    };

  # For a secret's or template's submodule (NixOS): who owns the file, by
  # name or by number. `kind` is "secrets" or "templates", `what` the file
  # in descriptions, `str` the type of a user or group name; `users` is
  # config.users.users, where the owner's group comes from.
  ownership =
    {
      kind,
      what,
      str,
      users,
    }:
    { config, name, ... }:
    let
      option = "sops.${kind}.${lib.strings.escapeNixIdentifier name}";
    in
    {
      options = {
        owner = mkOption {
          type = types.nullOr str;
          default = null;
          description = ''
            User owning the ${what}, looked up by name at activation. Leave
            `uid` at 0 when you set this.
          '';
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = 0;
          description = ''
            Numeric owner of the ${what}, used when `owner` is null, whether or
            not a user with that id exists.
          '';
        };
        group = mkOption {
          type = types.nullOr str;
          default =
            if config.owner == null then
              null
            else if users ? ${config.owner} then
              users.${config.owner}.group
            else
              throw "${option}.owner = \"${config.owner}\" is not declared in users.users, so its group is unknown: set ${option}.group (or gid) explicitly.";
          defaultText = lib.literalMD "the group of the owner ({option}`users.users.<owner>.group`), or null";
          description = ''
            Group owning the ${what}, looked up by name at activation. Leave
            `gid` at 0 when you set this.
          '';
        };
        gid = mkOption {
          type = types.nullOr types.int;
          default = 0;
          description = ''
            Numeric group of the ${what}, used when `group` is null, whether or
            not a group with that id exists.
          '';
        };
      };
    };

  # For a secret's or template's submodule (NixOS): the units to restart or
  # reload when the file changes. `changes` completes "when ...".
  units =
    changes:
    let
      unitsOption =
        action: trigger:
        mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "sshd.service" ];
          description = ''
            Units to ${action} when ${changes}, like
            {option}`systemd.services.<name>.${trigger}`.
          '';
        };
    in
    {
      options = {
        restartUnits = unitsOption "restart" "restartTriggers";
        reloadUnits = unitsOption "reload" "reloadTriggers";
      };
    };
}
