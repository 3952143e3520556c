# sops.keepGenerations: how many generations of /run/secrets.d survive.
#
# Proves: 0 keeps every generation; 10 keeps the live one and the nine before
# it; the default 1 keeps only the live one; directories that are not
# generations are never touched; each activation makes a new generation.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-keep-generations";

  nodes.machine =
    { lib, ... }:
    {
      imports = [
        testLib.nixosModule
        (testLib.ageKeyBeforeActivation [ "setupSecrets" ])
      ];
      system.switch.enable = true;

      sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
      sops.secrets.test_key = { };
      sops.keepGenerations = lib.mkDefault 0;

      specialisation.keepTen.configuration.sops.keepGenerations = 10;
      specialisation.keepDefault.configuration.sops.keepGenerations = lib.mkForce 1;
    };

  testScript = ''
    ${testLib.pythonHelpers}

    machine.wait_for_unit("multi-user.target")
    keep_ten = machine.succeed("readlink -f /run/current-system/specialisation/keepTen").strip()
    keep_default = machine.succeed("readlink -f /run/current-system/specialisation/keepDefault").strip()

    with subtest("0 keeps every generation"):
        machine.succeed("/run/current-system/activate")
        machine.succeed("/run/current-system/activate")
        expect(machine.succeed("readlink /run/secrets").strip(), "/run/secrets.d/3", "live generation")
        machine.succeed("test -d /run/secrets.d/1 && test -d /run/secrets.d/2")

    with subtest("from generation 99 on, still nothing is removed"):
        machine.succeed("mkdir /run/secrets.d/{4..99} /run/secrets.d/not-a-generation")
        machine.succeed("ln -sfn /run/secrets.d/99 /run/secrets")
        machine.succeed("/run/current-system/activate")
        expect(machine.succeed("readlink /run/secrets").strip(), "/run/secrets.d/100", "live generation")
        machine.succeed("test -d /run/secrets.d/1 && test -d /run/secrets.d/90")
        expect(machine.succeed("cat /run/secrets/test_key"), ${testLib.py testLib.plain.testKey}, "test_key")

    with subtest("10 keeps generations 92 to 101"):
        machine.succeed(f"{keep_ten}/bin/switch-to-configuration test")
        expect(machine.succeed("readlink /run/secrets").strip(), "/run/secrets.d/101", "live generation")
        machine.fail("test -d /run/secrets.d/91")
        machine.succeed("test -d /run/secrets.d/92")
        machine.succeed("test -d /run/secrets.d/not-a-generation")
        expect(machine.succeed("ls /run/secrets.d | grep -c '^[0-9]*$'").strip(), "10", "generations kept")

    with subtest("1 keeps only the live generation"):
        machine.succeed(f"{keep_default}/bin/switch-to-configuration test")
        expect(machine.succeed("ls /run/secrets.d | sort").split(), ["102", "not-a-generation"], "what is left")
        expect(machine.succeed("cat /run/secrets/test_key"), ${testLib.py testLib.plain.testKey}, "test_key")
  '';
}
