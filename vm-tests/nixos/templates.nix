# sops.templates and sops.placeholder: files rendered from secrets.
#
# Proves: placeholders are replaced by the secrets' values (also for a secret
# whose `name` differs from its attribute, and in a template read from a
# `file`); owner, group, uid, gid and mode apply; a custom `path` is a symlink;
# a neededForUsers secret next to templates neither breaks them nor gets a
# `rendered` directory; a changed template restarts and reloads its units.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-templates";

  nodes.machine =
    { config, lib, ... }:
    {
      imports = [
        testLib.nixosModule
        (testLib.ageKeyBeforeActivation [
          "setupSecrets"
          "setupSecretsForUsers"
        ])
      ];
      system.switch.enable = true;

      users.groups.somegroup = { };
      users.users.someuser = {
        isSystemUser = true;
        group = "somegroup";
      };

      sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
      sops.secrets = {
        db_password = { };
        token = {
          name = "api/token";
          key = "nested/test/file";
        };
        # A secret for users next to templates must not disturb them.
        test_key.neededForUsers = true;
      };

      sops.templates = {
        "app/config.toml" = {
          content = ''
            [database]
            password = "${config.sops.placeholder.db_password}"
            token = "${config.sops.placeholder.token}"
          '';
          owner = "someuser";
          mode = "0440";
          restartUnits = [ "template-restart.service" ];
          reloadUnits = [ "template-reload.service" ];
        };
        linked = {
          content = "password=${config.sops.placeholder.db_password}\n";
          path = "/etc/externally/linked";
        };
        numeric = {
          content = "${config.sops.placeholder.db_password}";
          uid = 420;
          gid = 420;
        };
        from_file.file = pkgs.writeText "from-file.tmpl" "token: ${config.sops.placeholder.token}\n";
      };

      # Units the template asks for. Neither is started at boot: a restart
      # request starts the first, the reload request hits the second.
      systemd.services.template-restart = {
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${pkgs.runtimeShell} -c 'echo restarted >> /run/template-restart.log'";
        };
      };
      systemd.services.template-reload = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = "${pkgs.coreutils}/bin/true";
          ExecReload = "${pkgs.runtimeShell} -c 'echo reloaded >> /run/template-reload.log'";
        };
      };
    };

  testScript = ''
    ${testLib.pythonHelpers}

    def ids(path: str) -> str:
        return machine.succeed(f"stat -L -c '%u %g %U %G %a' {path}").strip()

    machine.wait_for_unit("multi-user.target")
    rendered = "/run/secrets/rendered"

    with subtest("placeholders are replaced"):
        expect(
            machine.succeed(f"cat {rendered}/app/config.toml"),
            "[database]\npassword = \"${testLib.plain.dbPassword}\"\ntoken = \"${testLib.plain.nestedFile}\"\n",
            "app/config.toml",
        )
        expect(machine.succeed(f"cat {rendered}/numeric"), ${testLib.py testLib.plain.dbPassword}, "numeric")
        expect(machine.succeed(f"cat {rendered}/from_file"), "token: ${testLib.plain.nestedFile}\n", "template file")
        machine.fail(f"grep -r PLACEHOLDER {rendered}")

    with subtest("owners and modes"):
        expect(ids(f"{rendered}/app/config.toml"), f"{machine.succeed('id -u someuser').strip()} {machine.succeed('getent group somegroup | cut -d: -f3').strip()} someuser somegroup 440", "app/config.toml")
        expect(ids(f"{rendered}/linked"), "0 0 root root 400", "linked")
        expect(ids(f"{rendered}/numeric"), "420 420 UNKNOWN UNKNOWN 400", "numeric")

    with subtest("a custom path is a symlink to the rendered file"):
        expect(machine.succeed("realpath /etc/externally/linked").strip(), "/run/secrets.d/1/rendered/linked", "link")
        expect(machine.succeed("cat /etc/externally/linked"), "password=${testLib.plain.dbPassword}\n", "through the link")

    with subtest("the secret for users is apart and intact"):
        expect(machine.succeed("cat /run/secrets-for-users/test_key"), ${testLib.py testLib.plain.testKey}, "test_key")
        machine.fail("test -e /run/secrets-for-users/rendered")

    with subtest("a changed template restarts and reloads its units"):
        machine.fail("test -e /run/template-restart.log")
        machine.succeed(f"echo tampered > {rendered}/app/config.toml")
        out = machine.succeed("/run/current-system/bin/switch-to-configuration test 2>&1")
        assert "modifying rendered secret: app/config.toml" in out, out
        machine.wait_until_succeeds("grep -q restarted /run/template-restart.log")
        machine.wait_until_succeeds("grep -q reloaded /run/template-reload.log")
        expect(machine.succeed(f"head -1 {rendered}/app/config.toml"), "[database]\n", "rendered again")
  '';
}
