# useSystemdActivation, turned on by userborn: secrets are installed by
# sops-nix.service and sops-install-secrets-for-users.service instead of by
# activation scripts (users do not exist yet when activation scripts run).
#
# Proves: the default follows services.userborn.enable; no activation script
# installs secrets; the password secret is installed before userborn creates
# the user, whose login password it becomes; sops-nix.service is an active
# (exited) oneshot with SOPS_RESTART_UNITS_VIA_SYSTEMCTL=1, RequiresMountsFor
# its key file, its hardening and the sops-install-secrets.service alias;
# secrets and templates can belong to the user userborn made.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-systemd-activation-userborn";

  nodes.machine =
    { config, pkgs, ... }:
    {
      imports = [
        testLib.nixosModule
        (testLib.ageKeyBeforeUnits [
          "sops-install-secrets-for-users"
          "sops-nix"
        ])
      ];

      services.userborn.enable = true;
      users.mutableUsers = false;
      system.etc.overlay.enable = true;
      boot.initrd.systemd.enable = true;
      boot.kernelPackages = pkgs.linuxPackages_latest;

      assertions = [
        {
          assertion = config.sops.useSystemdActivation;
          message = "sops.useSystemdActivation should default to true with userborn";
        }
      ];

      sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
      sops.secrets.alice_password_hash.neededForUsers = true;
      sops.secrets.test_key.owner = "alice";
      sops.templates.greeting = {
        content = "hello ${config.sops.placeholder.test_key}\n";
        owner = "alice";
      };

      users.users.alice = {
        isNormalUser = true;
        hashedPasswordFile = config.sops.secrets.alice_password_hash.path;
      };

      # A service of alice's that needs her secret at boot.
      systemd.services.reads-secret = {
        wantedBy = [ "multi-user.target" ];
        after = [ "sops-nix.service" ];
        requires = [ "sops-nix.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          User = "alice";
          ExecStart = "${pkgs.coreutils}/bin/cat /run/secrets/test_key /run/secrets/rendered/greeting";
        };
      };
    };

  testScript = ''
    ${testLib.pythonHelpers}

    def prop(unit: str, name: str) -> str:
        return machine.succeed(f"systemctl show -P {name} {unit}").strip()

    machine.wait_for_unit("multi-user.target")

    with subtest("units, not activation scripts, installed the secrets"):
        machine.fail("grep -q sops-install-secrets $(readlink -f /run/current-system/activate)")
        for unit in ["sops-install-secrets-for-users.service", "sops-nix.service"]:
            expect(prop(unit, "ActiveState") + "/" + prop(unit, "SubState"), "active/exited", unit)
            expect(prop(unit, "Result"), "success", unit)
        assert "userborn.service" in prop("sops-install-secrets-for-users.service", "Before").split()
        expect(prop("reads-secret.service", "Result"), "success", "a service reading the secret at boot")

    with subtest("sops-nix.service as configured"):
        unit = "sops-nix.service"
        assert "SOPS_RESTART_UNITS_VIA_SYSTEMCTL=1" in prop(unit, "Environment").split(), prop(unit, "Environment")
        expect(prop(unit, "RemainAfterExit"), "yes", "RemainAfterExit")
        expect(prop(unit, "NoNewPrivileges"), "yes", "NoNewPrivileges")
        expect(prop(unit, "RestrictNamespaces"), "yes", "RestrictNamespaces")
        assert "/run/age-keys.txt" in prop(unit, "RequiresMountsFor").split(), prop(unit, "RequiresMountsFor")
        assert "sysinit.target" in prop(unit, "WantedBy").split(), prop(unit, "WantedBy")
        assert "sysinit.target" in prop(unit, "Before").split(), prop(unit, "Before")
        assert "sysinit-reactivation.target" in prop(unit, "RequiredBy").split(), prop(unit, "RequiredBy")
        assert "sops-install-secrets.service" in prop(unit, "Names").split(), prop(unit, "Names")

    with subtest("the password for users works"):
        expect(machine.succeed("stat -L -c '%U %G %a' /run/secrets-for-users/alice_password_hash").strip(), "root root 400", "owner")
        expect(machine.succeed("getent shadow alice | cut -d: -f2").strip(), ${testLib.py testLib.plain.alicePasswordHash}, "shadow entry")
        machine.wait_until_tty_matches("1", "login: ")
        machine.send_chars("alice\n")
        machine.wait_until_tty_matches("1", "Password: ")
        machine.send_chars(${testLib.py testLib.plain.alicePassword} + "\n")
        machine.wait_until_succeeds("pgrep -u alice -t tty1")

    with subtest("secrets and templates belong to the user userborn created"):
        expect(machine.succeed("stat -L -c '%U %a' /run/secrets/test_key").strip(), "alice 400", "secret")
        expect(machine.succeed("stat -L -c '%U %a' /run/secrets/rendered/greeting").strip(), "alice 400", "template")
        expect(machine.succeed("runuser -u alice -- cat /run/secrets/rendered/greeting"), "hello ${testLib.plain.testKey}\n", "template text")
  '';
}
