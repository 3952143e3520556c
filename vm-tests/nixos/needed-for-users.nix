# neededForUsers: a password hash installed before users are created, used as
# users.users.<name>.hashedPasswordFile, with the `users` activation script.
#
# Proves: the hash lands in /run/secrets-for-users (root:root 0400, its own
# ramfs), the user gets it as password, and logging in with that password
# works; regular secrets can be owned by that user; both survive a switch.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-needed-for-users";

  nodes.machine =
    { config, ... }:
    {
      imports = [
        testLib.nixosModule
        (testLib.ageKeyBeforeActivation [
          "setupSecrets"
          "setupSecretsForUsers"
        ])
      ];
      system.switch.enable = true;

      sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
      sops.secrets.alice_password_hash.neededForUsers = true;
      sops.secrets.test_key.owner = "alice";

      users.users.alice = {
        isNormalUser = true;
        hashedPasswordFile = config.sops.secrets.alice_password_hash.path;
      };
    };

  testScript = ''
    ${testLib.pythonHelpers}

    machine.wait_for_unit("multi-user.target")

    with subtest("the hash is installed for users, apart from other secrets"):
        expect(machine.succeed("cat /run/secrets-for-users/alice_password_hash"), ${testLib.py testLib.plain.alicePasswordHash}, "hash")
        expect(machine.succeed("stat -L -c '%U %G %a' /run/secrets-for-users/alice_password_hash").strip(), "root root 400", "owner, group, mode")
        expect(machine.succeed("readlink /run/secrets-for-users").strip(), "/run/secrets-for-users.d/1", "link")
        expect(machine.succeed("findmnt -n -o FSTYPE /run/secrets-for-users.d").strip(), "ramfs", "file system")
        machine.fail("test -e /run/secrets/alice_password_hash")

    with subtest("alice has the password and owns her secret"):
        expect(machine.succeed("getent shadow alice | cut -d: -f2").strip(), ${testLib.py testLib.plain.alicePasswordHash}, "shadow entry")
        expect(machine.succeed("stat -L -c '%U %a' /run/secrets/test_key").strip(), "alice 400", "regular secret")

    with subtest("alice logs in with the password"):
        machine.wait_for_unit("getty@tty1.service")
        machine.wait_until_tty_matches("1", "login: ")
        machine.send_chars("alice\n")
        machine.wait_until_tty_matches("1", "Password: ")
        machine.send_chars(${testLib.py testLib.plain.alicePassword} + "\n")
        machine.wait_until_succeeds("pgrep -u alice -t tty1")
        machine.send_chars("touch /tmp/alice-was-here\n")
        machine.wait_for_file("/tmp/alice-was-here")
        expect(machine.succeed("stat -c %U /tmp/alice-was-here").strip(), "alice", "file made in the session")

    with subtest("a switch keeps both"):
        machine.succeed("/run/current-system/bin/switch-to-configuration test")
        expect(machine.succeed("cat /run/secrets-for-users/alice_password_hash"), ${testLib.py testLib.plain.alicePasswordHash}, "hash after switch")
        expect(machine.succeed("getent shadow alice | cut -d: -f2").strip(), ${testLib.py testLib.plain.alicePasswordHash}, "shadow after switch")
        expect(machine.succeed("cat /run/secrets/test_key"), ${testLib.py testLib.plain.testKey}, "regular secret after switch")
  '';
}
