# sops-secrets.target: reached only after a successful installation, so a
# service that needs its secrets can order after it instead of after the
# installer's unit; a failed installation is visible in `systemctl --failed`
# and keeps such services from starting with missing secrets.
#
# Proves: with a working key the target is active, after sops-nix.service, and
# its consumer read the secret; with the key missing (node `broken`)
# sops-nix.service and the target fail, `systemctl --failed` lists the unit,
# and the consumer never started.
{ pkgs, testLib }:

let
  consumer =
    { pkgs, ... }:
    {
      systemd.services.consumer = {
        wantedBy = [ "multi-user.target" ];
        requires = [ "sops-secrets.target" ];
        after = [ "sops-secrets.target" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = "${pkgs.coreutils}/bin/cp /run/secrets/ssh_keys/private_key /run/consumer-copy";
        };
      };
    };
in
pkgs.testers.runNixOSTest {
  name = "sops-secrets-target";

  nodes.machine = {
    imports = [
      testLib.nixosModule
      (testLib.ageKeyBeforeUnits [ "sops-nix" ])
      consumer
    ];
    sops.useSystemdActivation = true;
    sops.secrets."ssh_keys/private_key".sopsFile = testLib.fixtures + "/example-keypair.enc.yaml";
  };

  nodes.broken = {
    imports = [
      testLib.nixosModule
      consumer
    ];
    sops.useSystemdActivation = true;
    # No key is ever put here: the installation fails.
    sops.age.keyFile = "/run/no-such-age-key.txt";
    sops.secrets."ssh_keys/private_key".sopsFile = testLib.fixtures + "/example-keypair.enc.yaml";
  };

  testScript = ''
    ${testLib.pythonHelpers}

    start_all()

    with subtest("a successful installation reaches the target, then the consumer runs"):
        machine.wait_for_unit("consumer.service")
        machine.succeed("systemctl is-active sops-secrets.target")
        expect(machine.succeed("cat /run/consumer-copy"), ${testLib.py testLib.plain.privateKey}, "what the consumer read")
        installed = int(machine.succeed("systemctl show -P ExecMainExitTimestampMonotonic sops-nix.service"))
        reached = int(machine.succeed("systemctl show -P ActiveEnterTimestampMonotonic sops-secrets.target"))
        assert installed <= reached, f"target reached at {reached}, before the installation ended at {installed}"

    with subtest("a failed installation fails the target and keeps the consumer from starting"):
        broken.wait_for_unit("multi-user.target")
        broken.wait_until_succeeds("systemctl is-failed sops-nix.service")
        failed = broken.succeed("systemctl --failed --no-legend --plain")
        assert "sops-nix.service" in failed, failed
        broken.fail("systemctl is-active sops-secrets.target")
        broken.fail("systemctl is-active consumer.service")
        broken.fail("test -e /run/consumer-copy")
        broken.succeed("journalctl -u sops-nix.service --no-pager | grep -q /run/no-such-age-key.txt")
  '';
}
