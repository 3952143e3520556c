# The home-manager module (the home-manager configuration of issue 5): a
# user's secret installed by the user unit sops-nix.service.
#
# Proves: at boot (user manager started by lingering) the secret and a
# template land under /run/user/1000 with the user as owner and no mount of
# their own; `systemctl --user restart sops-nix.service` installs again (a
# deleted secret comes back, as a new generation); a home-manager activation
# restarts the unit too.
#
# home-manager is not an input of this repository's flake (it would land in
# every user's lock file); the test pins it itself, at the revision sops-nix
# tests against the same nixpkgs.
{ pkgs, testLib }:

let
  homeManager = builtins.fetchTree {
    type = "github";
    owner = "nix-community";
    repo = "home-manager";
    rev = "b0569dc6ec1e6e7fefd8f6897184e4c191cd768e";
    narHash = "sha256-QUGu6CJYFQ5AWVV0n3/FsJyV+1/gj7HSDx68/SX9pwM=";
  };
in
pkgs.testers.runNixOSTest {
  name = "sops-home-manager-user-secret";

  nodes.machine = {
    imports = [ "${homeManager}/nixos" ];

    users.users.alice = {
      isNormalUser = true;
      uid = 1000;
      linger = true;
    };

    home-manager.useGlobalPkgs = true;
    home-manager.users.alice =
      { config, ... }:
      {
        imports = [ testLib.homeManagerModule ];
        home.stateVersion = "25.11";
        home.enableNixpkgsReleaseCheck = false;

        # --- the configuration from the issue ---
        sops.defaultSymlinkPath = "/run/user/1000/secrets";
        sops.defaultSecretsMountPoint = "/run/user/1000/secrets.d";
        sops.secrets.home_manager_secret.sopsFile = testLib.fixtures + "/secrets.enc.yaml";
        # --- end ---

        sops.age.keyFile = "${config.home.homeDirectory}/.config/sops/age/keys.txt";
        # Test data only: a real age key is never put into the Nix store.
        home.file.".config/sops/age/keys.txt".source = testLib.fixtures + "/age-key.txt";
        sops.templates."app.conf".content = "secret=${config.sops.placeholder.home_manager_secret}\n";
      };
  };

  testScript = ''
    ${testLib.pythonHelpers}

    def user_systemctl(args: str) -> str:
        return machine.succeed(
            "runuser -u alice -- env XDG_RUNTIME_DIR=/run/user/1000 "
            + f"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus systemctl --user {args}"
        )

    secret = "/run/user/1000/secrets/home_manager_secret"
    machine.wait_for_unit("multi-user.target")
    machine.wait_for_unit("home-manager-alice.service")
    machine.wait_for_unit("user@1000.service")
    machine.wait_until_succeeds(f"test -e {secret}")

    with subtest("installed at login by the user unit"):
        expect(machine.succeed(f"runuser -u alice -- cat {secret}"), ${testLib.py testLib.plain.homeManagerSecret}, "secret")
        expect(machine.succeed(f"stat -L -c '%U %a' {secret}").strip(), "alice 400", "owner and mode")
        expect(machine.succeed("runuser -u alice -- cat /run/user/1000/secrets/rendered/app.conf"), "secret=${testLib.plain.homeManagerSecret}\n", "template")
        expect(machine.succeed("readlink /run/user/1000/secrets").strip(), "/run/user/1000/secrets.d/1", "live generation")
        machine.fail("findmnt /run/user/1000/secrets.d")
        expect(user_systemctl("show -P Result sops-nix.service").strip(), "success", "user unit result")

    with subtest("systemctl --user restart sops-nix.service installs again"):
        machine.succeed(f"rm {secret}")
        user_systemctl("restart sops-nix.service")
        expect(machine.succeed(f"cat {secret}"), ${testLib.py testLib.plain.homeManagerSecret}, "secret back")
        expect(machine.succeed("readlink /run/user/1000/secrets").strip(), "/run/user/1000/secrets.d/2", "live generation")

    with subtest("a home-manager activation restarts the unit"):
        machine.succeed(f"rm {secret}")
        machine.succeed("systemctl restart home-manager-alice.service")
        machine.wait_until_succeeds(f"test -e {secret}")
        expect(machine.succeed("readlink /run/user/1000/secrets").strip(), "/run/user/1000/secrets.d/3", "live generation")
  '';
}
