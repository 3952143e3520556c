# Dry activation (switch-to-configuration dry-activate): setupSecrets supports
# it and reports what would change without changing anything.
#
# Proves: "would modify / would add / would remove" lines for secrets and
# templates; the live secrets, the mount and the units stay as they were (no
# new generation is even written); a real switch afterwards does the work.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-dry-activation";

  nodes.machine =
    { config, pkgs, ... }:
    {
      imports = [
        testLib.nixosModule
        (testLib.ageKeyBeforeActivation [ "setupSecrets" ])
      ];
      system.switch.enable = true;

      sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
      sops.secrets.test_key.restartUnits = [ "consumer.service" ];
      sops.templates.greeting.content = "hello ${config.sops.placeholder.test_key}\n";

      systemd.services.consumer = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
      };
    };

  testScript = ''
    ${testLib.pythonHelpers}

    def invocation() -> str:
        return machine.succeed("systemctl show -P InvocationID consumer.service").strip()

    machine.wait_for_unit("consumer.service")

    with subtest("dry-activate reports and changes nothing"):
        machine.succeed("echo changed > /run/secrets/test_key")
        machine.succeed("rm /run/secrets/rendered/greeting")
        machine.succeed("echo stale > /run/secrets/stale")
        before = invocation()
        out = machine.succeed("/run/current-system/bin/switch-to-configuration dry-activate 2>&1")
        for line in ["would modify secret: test_key", "would remove secret: stale", "would add rendered secret: greeting"]:
            assert line in out, f"{line!r} missing from:\n{out}"
        assert "consumer.service" in out, out
        expect(machine.succeed("cat /run/secrets/test_key"), "changed\n", "live secret")
        machine.fail("test -e /run/secrets/rendered/greeting")
        machine.succeed("test -e /run/secrets/stale")
        expect(machine.succeed("readlink /run/secrets").strip(), "/run/secrets.d/1", "live generation")
        expect(machine.succeed("ls /run/secrets.d").split(), ["1"], "generations")
        machine.sleep(2)
        expect(invocation(), before, "consumer invocation")

    with subtest("a real switch then does it"):
        out = machine.succeed("/run/current-system/bin/switch-to-configuration test 2>&1")
        for line in ["modifying secret: test_key", "removing secret: stale", "adding rendered secret: greeting"]:
            assert line in out, f"{line!r} missing from:\n{out}"
        expect(machine.succeed("cat /run/secrets/test_key"), ${testLib.py testLib.plain.testKey}, "test_key")
        expect(machine.succeed("cat /run/secrets/rendered/greeting"), "hello ${testLib.plain.testKey}\n", "greeting")
        machine.fail("test -e /run/secrets/stale")
        machine.wait_until_succeeds(f"test \"$(systemctl show -P InvocationID consumer.service)\" != {before}")
  '';
}
