# An age key file (sops.age.keyFile) and what secrets can be: every format,
# nested keys, whole files, owners by name or number, modes, custom paths.
#
# Proves: each secret's content, owner, group and mode; numeric ids are
# applied even when no such user exists; a secret whose `path` is elsewhere is
# reached through a symlink (replacing a file that was there).
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-age-key-file";

  nodes.machine =
    { config, ... }:
    {
      imports = [
        testLib.nixosModule
        (testLib.ageKeyBeforeActivation [ "setupSecrets" ])
      ];

      users.users.someuser = {
        isNormalUser = true;
        uid = 1000;
        group = "somegroup";
      };
      users.groups.somegroup.gid = 1000;

      # Something already at the custom path: it must become the symlink.
      system.activationScripts.existingFile = {
        deps = [ "specialfs" ];
        text = "echo old > /run/existing-file";
      };
      system.activationScripts.setupSecrets.deps = [ "existingFile" ];

      sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
      sops.secrets = {
        test_key = { };
        "nested/test/file".owner = "someuser";
        by_name = {
          key = "test_key";
          owner = "someuser";
          group = "somegroup";
          mode = "0440";
        };
        by_number = {
          key = "test_key";
          uid = config.users.users.someuser.uid;
          gid = config.users.groups.somegroup.gid;
        };
        owner_only = {
          key = "test_key";
          uid = 1000;
        };
        unknown_ids = {
          key = "test_key";
          uid = 1001;
          gid = 1001;
        };
        custom_path = {
          key = "db_password";
          path = "/run/existing-file";
        };
        json_secret = {
          sopsFile = testLib.fixtures + "/secrets.enc.json";
          format = "json";
        };
        json_nested = {
          sopsFile = testLib.fixtures + "/secrets.enc.json";
          format = "json";
          key = "service/token";
        };
        blob = {
          sopsFile = testLib.fixtures + "/blob.enc.bin";
          format = "binary";
        };
        whole_file = {
          sopsFile = testLib.fixtures + "/example-keypair.enc.yaml";
          key = "";
        };
      };
    };

  testScript = ''
    ${testLib.pythonHelpers}

    def ids(name: str) -> str:
        return machine.succeed(f"stat -L -c '%u %g %U %G %a' /run/secrets/{name}").strip()

    machine.wait_for_unit("multi-user.target")

    with subtest("values"):
        expect(machine.succeed("cat /run/secrets/test_key"), ${testLib.py testLib.plain.testKey}, "test_key")
        expect(machine.succeed("cat /run/secrets/nested/test/file"), ${testLib.py testLib.plain.nestedFile}, "nested key")
        expect(machine.succeed("cat /run/secrets/json_secret"), ${testLib.py testLib.plain.jsonSecret}, "json")
        expect(machine.succeed("cat /run/secrets/json_nested"), ${testLib.py testLib.plain.jsonNestedToken}, "nested json")
        expect(machine.succeed("base64 -w0 /run/secrets/blob"), ${testLib.py testLib.plain.blobBase64}, "binary, byte for byte")
        whole = machine.succeed("cat /run/secrets/whole_file")
        assert "public_key: ${testLib.plain.publicKey}" in whole, whole
        assert "private_key: |" in whole and "sops:" not in whole, whole

    with subtest("owners, groups and modes"):
        expect(ids("test_key"), "0 0 root root 400", "default")
        expect(ids("nested/test/file"), "1000 1000 someuser somegroup 400", "owner's group by default")
        expect(ids("by_name"), "1000 1000 someuser somegroup 440", "by name, mode 0440")
        expect(ids("by_number"), "1000 1000 someuser somegroup 400", "by number")
        expect(ids("owner_only"), "1000 0 someuser root 400", "uid only")
        expect(ids("unknown_ids"), "1001 1001 UNKNOWN UNKNOWN 400", "ids nobody has")
        machine.succeed("runuser -u someuser -- cat /run/secrets/by_name")
        machine.fail("runuser -u someuser -- cat /run/secrets/test_key")

    with subtest("a custom path is a symlink into the live generation"):
        expect(machine.succeed("readlink -f /run/existing-file").strip(), "/run/secrets.d/1/custom_path", "link target")
        expect(machine.succeed("cat /run/existing-file"), ${testLib.py testLib.plain.dbPassword}, "content through the link")
  '';
}
