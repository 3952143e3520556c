# The first configuration of issue 5, unchanged: a service user reads a nested
# key of a partly-encrypted file, and the service is restarted when the
# secret changes.
#
# Proves: owner secret-test, group secret-test (from users.users.secret-test),
# mode 0400; the secrets live on a ramfs behind /run/secrets; secret-test.service
# succeeds at boot; a switch that changes the secret restarts it, a switch that
# changes nothing does not.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-secret-owned-by-service-user";

  nodes.machine =
    { config, lib, ... }:
    {
      imports = [
        testLib.nixosModule
        (testLib.ageKeyBeforeActivation [ "setupSecrets" ])
      ];
      system.switch.enable = true;

      # --- the configuration from the issue ---
      users.users.secret-test = {
        isSystemUser = true;
        group = "secret-test";
      };
      users.groups.secret-test = { };
      sops.secrets."ssh_keys/private_key" = {
        restartUnits = [ "secret-test.service" ];
        owner = config.users.users.secret-test.name;
        sopsFile = testLib.fixtures + "/example-keypair.enc.yaml";
      };
      systemd.services.secret-test = {
        wantedBy = [ "multi-user.target" ];
        after = [ "sops-nix.service" ];
        serviceConfig = {
          Type = "oneshot";
          User = "secret-test";
        };
        script = "stat /run/secrets/ssh_keys/private_key";
      };
      # --- end ---

      # Test only: count successful runs of secret-test.service (as root, "+").
      systemd.services.secret-test.serviceConfig.ExecStartPost = "+${pkgs.runtimeShell} -c 'echo run >> /run/secret-test.runs'";

      # The configuration to switch to: the same secret with another value.
      specialisation.rotated.configuration = {
        sops.secrets."ssh_keys/private_key".sopsFile =
          lib.mkForce (testLib.fixtures + "/example-keypair-rotated.enc.yaml");
      };
    };

  testScript = ''
    ${testLib.pythonHelpers}

    def runs() -> str:
        return machine.succeed("cat /run/secret-test.runs | wc -l").strip()

    secret = "/run/secrets/ssh_keys/private_key"
    machine.wait_for_unit("multi-user.target")
    base = machine.succeed("readlink -f /run/current-system").strip()
    rotated = machine.succeed("readlink -f /run/current-system/specialisation/rotated").strip()

    with subtest("the secret belongs to secret-test:secret-test with mode 0400"):
        expect(machine.succeed(f"stat -L -c '%U %G %a' {secret}").strip(), "secret-test secret-test 400", "owner, group, mode")
        expect(machine.succeed(f"cat {secret}"), ${testLib.py testLib.plain.privateKey}, "content")
        machine.succeed(f"runuser -u secret-test -- cat {secret}")
        machine.fail(f"runuser -u nobody -- cat {secret}")

    with subtest("the secrets are on a ramfs, reached through /run/secrets"):
        expect(machine.succeed("findmnt -n -o FSTYPE /run/secrets.d").strip(), "ramfs", "file system")
        expect(machine.succeed("readlink /run/secrets").strip(), "/run/secrets.d/1", "live generation")
        expect(machine.succeed("stat -c '%a %U %G' /run/secrets.d/1").strip(), "751 root keys", "generation directory")

    with subtest("secret-test.service succeeded at boot"):
        expect(machine.succeed("systemctl show -P Result secret-test.service").strip(), "success", "result")
        expect(runs(), "1", "runs after boot")

    with subtest("a switch that changes the secret restarts secret-test.service"):
        machine.succeed(f"{rotated}/bin/switch-to-configuration test")
        expect(machine.succeed(f"cat {secret}"), ${testLib.py testLib.plain.rotatedPrivateKey}, "rotated content")
        expect(machine.succeed(f"stat -L -c '%U %G %a' {secret}").strip(), "secret-test secret-test 400", "owner after switch")
        machine.wait_until_succeeds("test $(wc -l < /run/secret-test.runs) = 2")
        expect(machine.succeed("systemctl show -P Result secret-test.service").strip(), "success", "result after switch")

    with subtest("a switch that leaves the secret alone restarts nothing"):
        machine.succeed(f"{rotated}/bin/switch-to-configuration test")
        machine.sleep(2)
        expect(runs(), "2", "runs after an idle switch")

    with subtest("switching back restarts it again"):
        machine.succeed(f"{base}/bin/switch-to-configuration test")
        expect(machine.succeed(f"cat {secret}"), ${testLib.py testLib.plain.privateKey}, "content after switching back")
        machine.wait_until_succeeds("test $(wc -l < /run/secret-test.runs) = 3")
  '';
}
