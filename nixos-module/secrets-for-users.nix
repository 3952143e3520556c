# Secrets with neededForUsers: installed before users and groups exist.
#
# They typically hold password hashes for users.users.<name>.hashedPasswordFile,
# which whatever creates the users (the `users` activation script,
# systemd-sysusers or userborn) reads. So they get their own manifest, with
# its own mount (/run/secrets-for-users.d) and link (/run/secrets-for-users),
# installed with -ignore-passwd: no user can be looked up yet, every file is
# root's. Templates are never rendered here.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.sops;
  sopsLib = import ./lib.nix { inherit lib; };

  secretsForUsers = lib.filterAttrs (_: secret: secret.neededForUsers) cfg.secrets;

  manifestForUsers = sopsLib.manifestFile {
    inherit pkgs;
    name = "manifest-for-users.json";
    checkPackage = cfg.validationPackage;
    inherit (cfg) validateSopsFiles;
    manifest = import ./manifest.nix (
      sopsLib.nixosManifestSettings cfg
      // {
        secrets = secretsForUsers;
        secretsMountPoint = "/run/secrets-for-users.d";
        symlinkPath = "/run/secrets-for-users";
      }
    );
  };

  installCommand = "${lib.getExe' cfg.package "sops-install-secrets"} -ignore-passwd ${manifestForUsers}";

  sysusers = options.systemd ? sysusers && config.systemd.sysusers.enable;
  userborn = options.services ? userborn && config.services.userborn.enable;
  # Follows who creates the users, not sops.useSystemdActivation: with the
  # `users` activation script these secrets must come from an activation
  # script too, since nothing else runs before it.
  viaSystemd = sysusers || userborn;

  isRoot = name: id: (name == null || name == "root") && (id == null || id == 0);
in
{
  config = lib.mkIf (secretsForUsers != { }) {
    assertions = [
      {
        assertion = sysusers -> config.users.mutableUsers;
        message = ''
          sops.secrets.<name>.neededForUsers together with systemd.sysusers.enable needs users.mutableUsers = true
          (systemd-sysusers only reads password files for users it creates, see sops-nix issue 475);
          set users.mutableUsers = true, or use services.userborn.enable instead of systemd-sysusers.'';
      }
    ]
    ++ lib.mapAttrsToList (attr: secret: {
      assertion = isRoot secret.owner secret.uid && isRoot secret.group secret.gid;
      message = ''
        sops.secrets.${lib.strings.escapeNixIdentifier attr} has neededForUsers = true but is not owned by root:root
        (owner = ${builtins.toJSON secret.owner}, uid = ${builtins.toJSON secret.uid}, group = ${builtins.toJSON secret.group}, gid = ${builtins.toJSON secret.gid}).
        It is installed before any user exists, so it can only belong to root: remove owner/uid/group/gid,
        or drop neededForUsers if the secret is not read while users are created.'';
    }) secretsForUsers;

    system.build.sops-nix-users-manifest = manifestForUsers;

    systemd.services.sops-install-secrets-for-users = lib.mkIf viaSystemd (
      sopsLib.installerService pkgs cfg installCommand
      // {
        description = "Install sops secrets needed to create users";
        wantedBy = [
          "systemd-sysusers.service"
          "userborn.service"
        ];
        before = [
          "systemd-sysusers.service"
          "userborn.service"
        ];
      }
    );

    system.activationScripts = lib.mkIf (!viaSystemd) {
      setupSecretsForUsers = sopsLib.installerActivationScript {
        inherit config;
        deps = [ "specialfs" ];
        message = "setting up secrets for users...";
        command = installCommand;
      };

      users.deps = [ "setupSecretsForUsers" ];
    };
  };
}
