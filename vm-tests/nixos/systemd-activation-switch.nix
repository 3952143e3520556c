# useSystemdActivation on a host whose users come from the `users` activation
# script: sops-nix.service installs the secrets at boot, and a switch that
# changes the manifest re-runs it when sysinit-reactivation.target is
# restarted (before other units are reloaded or restarted); the installer
# then asks systemd itself to restart the units of changed secrets.
#
# Proves: no activation script installs secrets; a switch to a new value
# installs it and restarts the running consumer through systemctl (nothing is
# left in the activation restart list); a switch that changes nothing re-runs
# nothing and restarts nothing.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-systemd-activation-switch";

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [
        testLib.nixosModule
        (testLib.ageKeyBeforeUnits [ "sops-nix" ])
      ];
      system.switch.enable = true;

      sops.useSystemdActivation = true;
      sops.secrets."ssh_keys/private_key" = {
        sopsFile = testLib.fixtures + "/example-keypair.enc.yaml";
        restartUnits = [ "consumer.service" ];
      };

      systemd.services.consumer = {
        wantedBy = [ "multi-user.target" ];
        after = [ "sops-nix.service" ];
        serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
      };

      specialisation.rotated.configuration = {
        sops.secrets."ssh_keys/private_key".sopsFile =
          lib.mkForce (testLib.fixtures + "/example-keypair-rotated.enc.yaml");
      };
    };

  testScript = ''
    ${testLib.pythonHelpers}

    def invocation() -> str:
        return machine.succeed("systemctl show -P InvocationID consumer.service").strip()

    def restarted_since(before: str) -> None:
        machine.wait_until_succeeds(f"test \"$(systemctl show -P InvocationID consumer.service)\" != {before}")
        machine.wait_for_unit("consumer.service")

    secret = "/run/secrets/ssh_keys/private_key"
    machine.wait_for_unit("multi-user.target")
    machine.wait_for_unit("consumer.service")
    rotated = machine.succeed("readlink -f /run/current-system/specialisation/rotated").strip()

    with subtest("installed by the unit at boot"):
        machine.fail("grep -q sops-install-secrets $(readlink -f /run/current-system/activate)")
        expect(machine.succeed(f"cat {secret}"), ${testLib.py testLib.plain.privateKey}, "content")
        expect(machine.succeed("systemctl show -P SubState sops-nix.service").strip(), "exited", "sops-nix.service")

    with subtest("a switch that changes nothing re-runs nothing"):
        before = invocation()
        started = machine.succeed("systemctl show -P ExecMainStartTimestampMonotonic sops-nix.service")
        machine.succeed("/run/current-system/bin/switch-to-configuration test")
        machine.sleep(2)
        expect(machine.succeed("systemctl show -P ExecMainStartTimestampMonotonic sops-nix.service"), started, "sops-nix.service start time")
        expect(invocation(), before, "consumer invocation")

    with subtest("a new value is installed and the consumer restarted"):
        before = invocation()
        machine.succeed(f"{rotated}/bin/switch-to-configuration test")
        expect(machine.succeed(f"cat {secret}"), ${testLib.py testLib.plain.rotatedPrivateKey}, "rotated content")
        restarted_since(before)
        expect(machine.succeed("readlink /run/secrets").strip(), "/run/secrets.d/2", "live generation")
        machine.fail("grep -q consumer /run/nixos/activation-restart-list")
  '';
}
