# The nix-darwin module: sops-nix's darwin options (darwinModules.sops),
# installed by sops-install-secrets.
#
# The options are sops-nix's for nix-darwin, with its defaults: files owned by
# root:staff, the host's /etc/ssh keys as the default keys, secrets under
# /run/secrets (a link to a generation in /run/secrets.d). Options declared
# alike in the NixOS and home-manager modules come from options.nix.
#
# The installer runs twice, as in sops-nix: at the end of every activation
# (`darwin-rebuild switch`) and from the launchd daemon sops-install-secrets at
# boot, since /run does not survive a reboot on macOS. Secrets marked
# neededForUsers go through a second manifest (/run/secrets-for-users) and
# the daemon sops-install-secrets-for-users; nix-darwin does not manage
# passwords, so nothing reads them at user creation.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.sops;
  sopsLib = import ./lib.nix { inherit lib; };
  sopsOptions = import ./options.nix { inherit lib; };

  regularSecrets = lib.filterAttrs (_: secret: !secret.neededForUsers) cfg.secrets;
  secretsForUsers = lib.filterAttrs (_: secret: secret.neededForUsers) cfg.secrets;

  # The host keys macOS's sshd has; a key that sops itself installs under
  # /run/secrets could not decrypt itself, so none is ever a default.
  hostKey = type: [ "/etc/ssh/ssh_host_${type}_key" ];

  manifestSettings = {
    inherit (cfg) keepGenerations log validateSopsFiles;
    gnupgHome = cfg.gnupg.home;
    gnupgSshKeyPaths = cfg.gnupg.sshKeyPaths;
    ageKeyFile = cfg.age.keyFile;
    ageSshKeyPaths = cfg.age.sshKeyPaths;
  };

  manifestFile =
    name: manifest:
    sopsLib.manifestFile {
      inherit pkgs name manifest;
      checkPackage = cfg.validationPackage;
      inherit (cfg) validateSopsFiles;
    };

  manifest = manifestFile "manifest.json" (
    import ./manifest.nix (
      manifestSettings
      // {
        secrets = regularSecrets;
        templates = cfg.templates;
        placeholders = cfg.placeholder;
        secretsMountPoint = "/run/secrets.d";
        symlinkPath = "/run/secrets";
      }
    )
  );

  manifestForUsers = manifestFile "manifest-for-users.json" (
    import ./manifest.nix (
      manifestSettings
      // {
        secrets = secretsForUsers;
        secretsMountPoint = "/run/secrets-for-users.d";
        symlinkPath = "/run/secrets-for-users";
      }
    )
  );

  installer = lib.getExe' cfg.package "sops-install-secrets";

  withEnvironment = sopsLib.withEnvironment {
    inherit (cfg) environment;
    plugins = cfg.age.plugins;
  };

  generateKey = lib.optionalString cfg.age.generateKey (sopsLib.generateAgeKey pkgs cfg.age.keyFile);

  installScript = ''
    ${generateKey}
    echo "setting up secrets..."
    ${withEnvironment "${installer} ${manifest}"}
  '';

  installForUsersScript = ''
    ${generateKey}
    echo "setting up secrets for users..."
    ${withEnvironment "${installer} -ignore-passwd ${manifestForUsers}"}
  '';

  installsAnything = regularSecrets != { } || cfg.templates != { };

  # A launchd daemon that runs `script` once at boot (RunAtLoad), logging to
  # /var/log/<name>.log.
  bootDaemon = name: script: {
    inherit script;
    serviceConfig = {
      RunAtLoad = true;
      KeepAlive = false;
      StandardOutPath = lib.mkDefault "/var/log/${name}.log";
      StandardErrorPath = lib.mkDefault "/var/log/${name}.log";
    };
  };

  ownerOptions =
    { what, ownerDefault, groupDefault, groupDefaultText }:
    {
      owner = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = ownerDefault;
        description = "User owning the ${what}, looked up by name at installation. Leave `uid` at 0 when you set this.";
      };
      uid = lib.mkOption {
        type = lib.types.nullOr lib.types.int;
        default = 0;
        description = "Numeric owner of the ${what}, used when `owner` is null.";
      };
      group = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = groupDefault;
        defaultText = groupDefaultText;
        description = "Group owning the ${what}, looked up by name at installation. Leave `gid` at 0 when you set this.";
      };
      gid = lib.mkOption {
        type = lib.types.nullOr lib.types.int;
        default = 0;
        description = "Numeric group of the ${what}, used when `group` is null.";
      };
    };

  secretType = lib.types.submodule (
    { config, ... }:
    {
      imports = [
        (sopsOptions.secret {
          inherit cfg;
          nameDescription = ''
            File name of the secret below /run/secrets (or
            /run/secrets-for-users); may contain `/` to make subdirectories.
          '';
        })
      ];

      options =
        ownerOptions {
          what = "file";
          ownerDefault = "root";
          groupDefault = "staff";
          groupDefaultText = "staff";
        }
        // {
          path = lib.mkOption {
            type = lib.types.str;
            default =
              if config.neededForUsers then
                "/run/secrets-for-users/${config.name}"
              else
                "/run/secrets/${config.name}";
            defaultText = lib.literalMD "`/run/secrets-for-users/<name>` if neededForUsers is set, `/run/secrets/<name>` otherwise";
            description = ''
              Where the secret can be read. If it differs from the default, a
              symlink to the secret is made there.
            '';
          };
          sopsFileHash = lib.mkOption {
            type = lib.types.str;
            readOnly = true;
            default = lib.optionalString cfg.validateSopsFiles (builtins.hashFile "sha256" config.sopsFile);
            defaultText = lib.literalMD "the sha256 of `sopsFile` when validateSopsFiles is set, `\"\"` otherwise";
            description = "SHA-256 of the sops file.";
          };
          neededForUsers = lib.mkOption {
            type = lib.types.bool;
            default = false;
            description = ''
              Install this secret into /run/secrets-for-users, owned by root,
              before the other secrets. nix-darwin does not manage user
              passwords, so on macOS this only changes where the file goes.
            '';
          };
        };
    }
  );

  templateType = lib.types.submodule (
    { config, ... }:
    {
      imports = [
        (sopsOptions.template {
          inherit pkgs;
          nameDescription = "File name of the rendered template below /run/secrets/rendered.";
          renderedDir = "/run/secrets/rendered";
        })
      ];
      options = ownerOptions {
        what = "rendered file";
        ownerDefault = null;
        groupDefault = if config.owner != null then "staff" else null;
        groupDefaultText = lib.literalMD "`staff` when `owner` is set, null otherwise";
      };
    }
  );
in
{
  imports = [
    (sopsOptions.common { keyFileExample = "/var/lib/sops-nix/key.txt"; })
    (sopsOptions.templates templateType)
  ];

  options.sops = {
    secrets = lib.mkOption {
      type = lib.types.attrsOf secretType;
      default = { };
      description = "Secrets to decrypt and install, by name.";
    };

    keepGenerations = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 1;
      description = "How many old generations of secrets to keep in /run/secrets.d; 0 keeps all of them.";
    };

    environment = lib.mkOption {
      type = lib.types.attrsOf (lib.types.either lib.types.str lib.types.path);
      default = { };
      description = ''
        Environment variables for sops-install-secrets. Each value is placed
        between single quotes and not escaped further, so a value can end the
        quotes for a command substitution; quote values that contain `'` with
        lib.escapeShellArg.
      '';
    };

    validationPackage = lib.mkOption {
      type = lib.types.package;
      default =
        if pkgs.stdenv.buildPlatform == pkgs.stdenv.hostPlatform then
          cfg.package
        else
          pkgs.pkgsBuildHost.callPackage ./package.nix { };
      defaultText = lib.literalMD "{option}`sops.package`, or a build of it for the build machine when cross-compiling";
      description = ''
        The sops-install-secrets package that checks the manifest while the
        configuration is built; it runs on the build machine.
      '';
    };

    age.sshKeyPaths = lib.mkOption {
      type = lib.types.listOf lib.types.path;
      default = hostKey "ed25519";
      defaultText = lib.literalExpression ''[ "/etc/ssh/ssh_host_ed25519_key" ]'';
      description = "Ed25519 SSH private keys to decrypt with, as age keys.";
    };

    gnupg = {
      home = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/var/root/.gnupg";
        description = ''
          A GnuPG home directory holding the key to decrypt with. Set
          {option}`sops.gnupg.sshKeyPaths` to `[ ]` with it.
        '';
      };

      sshKeyPaths = lib.mkOption {
        type = lib.types.listOf lib.types.path;
        default = hostKey "rsa";
        defaultText = lib.literalExpression ''[ "/etc/ssh/ssh_host_rsa_key" ]'';
        description = "RSA SSH private keys to use as GPG keys.";
      };
    };
  };

  config = lib.mkMerge [
    (lib.mkIf (cfg.secrets != { } || cfg.templates != { }) {
      assertions = [
        {
          assertion =
            cfg.gnupg.home != null
            || cfg.gnupg.sshKeyPaths != [ ]
            || cfg.age.keyFile != null
            || cfg.age.sshKeyPaths != [ ];
          message = ''
            sops.secrets is not empty but no key to decrypt it is configured. Set one of:
              sops.age.sshKeyPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];
              sops.age.keyFile = "/var/lib/sops-nix/key.txt";
              sops.gnupg.home = "/var/root/.gnupg";  or  sops.gnupg.sshKeyPaths = [ ... ];'';
        }
        {
          assertion = !(cfg.gnupg.home != null && cfg.gnupg.sshKeyPaths != [ ]);
          message = ''
            sops.gnupg.home and sops.gnupg.sshKeyPaths cannot both be set. With a GnuPG home, add
              sops.gnupg.sshKeyPaths = [ ];
            (it defaults to /etc/ssh/ssh_host_rsa_key on nix-darwin).'';
        }
        {
          assertion = cfg.age.generateKey -> cfg.age.keyFile != null;
          message = ''sops.age.generateKey is set but sops.age.keyFile is not: set sops.age.keyFile to where the key should be created, e.g. "/var/lib/sops-nix/key.txt".'';
        }
      ]
      ++ sopsLib.nameAssertions "secrets" "/run/secrets (or /run/secrets-for-users)" cfg.secrets
      ++ sopsLib.nameAssertions "templates" "/run/secrets/rendered" cfg.templates
      ++ lib.concatLists (
        lib.mapAttrsToList (
          attr: secret:
          let
            option = "sops.secrets.${lib.strings.escapeNixIdentifier attr}";
          in
          sopsLib.ownerIdAssertions option secret
          ++ [ (sopsLib.renderedNameAssertion "/run/secrets/rendered" option secret) ]
        ) cfg.secrets
      )
      ++ lib.concatLists (
        lib.mapAttrsToList (
          attr: sopsLib.ownerIdAssertions "sops.templates.${lib.strings.escapeNixIdentifier attr}"
        ) cfg.templates
      )
      ++ lib.mapAttrsToList (attr: secret: {
        assertion = (secret.owner == null || secret.owner == "root") && (secret.uid == null || secret.uid == 0);
        message = "sops.secrets.${lib.strings.escapeNixIdentifier attr} has neededForUsers set, so it is owned by root: remove its owner and uid.";
      }) secretsForUsers;

      warnings = sopsLib.keyWarnings cfg;

      sops.environment.SOPS_GPG_EXEC = lib.mkIf (cfg.gnupg.home != null) (
        lib.mkDefault "${cfg.gnupg.package}/bin/gpg"
      );
    })

    {
      system.build.sops-nix-manifest = manifest;
      system.build.sops-nix-users-manifest = manifestForUsers;
    }

    (lib.mkIf installsAnything {
      system.activationScripts.postActivation.text = lib.mkAfter installScript;
      launchd.daemons.sops-install-secrets = bootDaemon "sops-install-secrets" installScript;
    })

    (lib.mkIf (secretsForUsers != { }) {
      # Before the regular secrets, as on NixOS.
      system.activationScripts.postActivation.text = lib.mkOrder 1400 installForUsersScript;
      launchd.daemons.sops-install-secrets-for-users = bootDaemon "sops-install-secrets-for-users" installForUsersScript;
    })
  ];
}
