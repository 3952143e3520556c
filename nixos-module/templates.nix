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
  sopsOptions = import ./options.nix { inherit lib; };
  users = config.users.users;

  templateType = lib.types.submodule {
    imports = [
      (sopsOptions.template {
        inherit pkgs;
        nameDescription = "File name of the rendered template below /run/secrets/rendered.";
        renderedDir = "/run/secrets/rendered";
      })
      (sopsOptions.ownership {
        kind = "templates";
        what = "rendered file";
        str = lib.types.singleLineStr;
        inherit users;
      })
      (sopsOptions.units "the rendered file changes")
    ];
  };
in
{
  imports = [ (sopsOptions.templates templateType) ];

  config = lib.mkIf (cfg.templates != { }) {
    assertions =
      sopsLib.nameAssertions "templates" "/run/secrets/rendered" cfg.templates
      ++ lib.concatLists (
        lib.mapAttrsToList (
          attr: template:
          let
            option = "sops.templates.${lib.strings.escapeNixIdentifier attr}";
          in
          sopsLib.ownerIdAssertions option template ++ sopsLib.entryAssertions option template
        ) cfg.templates
      );
  };
}
