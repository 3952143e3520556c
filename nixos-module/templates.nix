# sops.templates and sops.placeholder (NixOS): files rendered from secrets.
#
# A template's text contains placeholder strings
# (config.sops.placeholder.<secret>); the installer replaces each with the
# secret's value and writes the result to /run/secrets/rendered/<name>, so a
# configuration file that embeds a password never enters the Nix store with it.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.sops;
  sopsLib = import ./lib.nix { inherit lib; };
  users = config.users.users;

  templateType = lib.types.submodule (
    { config, name, ... }:
    {
      options = {
        name = lib.mkOption {
          type = lib.types.singleLineStr;
          default = name;
          description = "File name of the rendered template below /run/secrets/rendered.";
        };
        path = lib.mkOption {
          type = lib.types.singleLineStr;
          default = "/run/secrets/rendered/${config.name}";
          description = ''
            Where the rendered file can be read. If it differs from the
            default, a symlink to the file is made there.
          '';
        };
        content = lib.mkOption {
          type = lib.types.lines;
          default = "";
          description = "The template's text, with placeholders where secrets go.";
        };
        mode = lib.mkOption {
          type = lib.types.singleLineStr;
          default = "0400";
          description = "File mode of the rendered file, in octal.";
        };
        owner = lib.mkOption {
          type = lib.types.nullOr lib.types.singleLineStr;
          default = null;
          description = "User owning the rendered file, looked up by name at activation. Leave `uid` at 0 when you set this.";
        };
        uid = lib.mkOption {
          type = lib.types.nullOr lib.types.int;
          default = 0;
          description = ''
            Numeric owner of the rendered file, used when `owner` is null,
            whether or not a user with that id exists.
          '';
        };
        group = lib.mkOption {
          type = lib.types.nullOr lib.types.singleLineStr;
          default =
            if config.owner == null then
              null
            else if users ? ${config.owner} then
              users.${config.owner}.group
            else
              throw "sops.templates.${lib.strings.escapeNixIdentifier name}.owner = \"${config.owner}\" is not declared in users.users, so its group is unknown: set sops.templates.${lib.strings.escapeNixIdentifier name}.group (or gid) explicitly.";
          defaultText = lib.literalMD "the group of the owner ({option}`users.users.<owner>.group`), or null";
          description = "Group owning the rendered file, looked up by name at activation. Leave `gid` at 0 when you set this.";
        };
        gid = lib.mkOption {
          type = lib.types.nullOr lib.types.int;
          default = 0;
          description = ''
            Numeric group of the rendered file, used when `group` is null,
            whether or not a group with that id exists.
          '';
        };
        file = lib.mkOption {
          type = lib.types.path;
          default = pkgs.writeText (lib.strings.sanitizeDerivationName "sops-template-${config.name}") config.content;
          defaultText = lib.literalMD "a store file holding `content`";
          example = lib.literalExpression "./configuration-template.conf";
          description = ''
            The file the template is read from. Setting it makes `content`
            unused.
          '';
        };
        restartUnits = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ ];
          example = [ "sshd.service" ];
          description = ''
            Units to restart when the rendered file changes, like
            {option}`systemd.services.<name>.restartTriggers`.
          '';
        };
        reloadUnits = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ ];
          example = [ "sshd.service" ];
          description = ''
            Units to reload when the rendered file changes, like
            {option}`systemd.services.<name>.reloadTriggers`.
          '';
        };
      };
    }
  );
in
{
  options.sops = {
    templates = lib.mkOption {
      type = lib.types.attrsOf templateType;
      default = { };
      description = "Files rendered from secrets, by name.";
    };

    placeholder = lib.mkOption {
      type = lib.types.attrsOf sopsLib.placeholderType;
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

    assertions =
      sopsLib.nameAssertions "templates" "/run/secrets/rendered" cfg.templates
      ++ lib.concatLists (
        lib.mapAttrsToList (
          attr: template:
          let
            option = "sops.templates.${lib.strings.escapeNixIdentifier attr}";
          in
          [
            {
              assertion = !(template.owner != null && template.uid != null && template.uid != 0);
              message = "${option} sets both owner = \"${toString template.owner}\" and uid = ${toString template.uid}: keep one (owner is looked up by name, uid is used as it is).";
            }
            {
              assertion = !(template.group != null && template.gid != null && template.gid != 0);
              message = "${option} sets both group = \"${toString template.group}\" and gid = ${toString template.gid}: keep one (group is looked up by name, gid is used as it is).";
            }
          ]
        ) cfg.templates
      );
  };
}
