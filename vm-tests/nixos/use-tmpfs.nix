# sops.useTmpfs: secrets on a tmpfs mounted with noswap instead of ramfs.
#
# Proves: both the regular and the neededForUsers mount are tmpfs with noswap
# and mode 0751; secrets are installed there as usual.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-use-tmpfs";

  nodes.machine = {
    imports = [
      testLib.nixosModule
      (testLib.ageKeyBeforeActivation [
        "setupSecrets"
        "setupSecretsForUsers"
      ])
    ];
    sops.useTmpfs = true;
    sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
    sops.secrets.test_key = { };
    sops.secrets.alice_password_hash.neededForUsers = true;
  };

  testScript = ''
    ${testLib.pythonHelpers}

    machine.wait_for_unit("multi-user.target")

    for mount in ["/run/secrets.d", "/run/secrets-for-users.d"]:
        with subtest(f"{mount} is a tmpfs without swap"):
            expect(machine.succeed(f"findmnt -n -o FSTYPE {mount}").strip(), "tmpfs", "file system")
            options = machine.succeed(f"findmnt -n -o OPTIONS {mount}").strip().split(",")
            assert "noswap" in options, options
            assert "mode=751" in options, options

    with subtest("secrets are installed there"):
        expect(machine.succeed("cat /run/secrets/test_key"), ${testLib.py testLib.plain.testKey}, "test_key")
        expect(machine.succeed("cat /run/secrets-for-users/alice_password_hash"), ${testLib.py testLib.plain.alicePasswordHash}, "hash")
  '';
}
