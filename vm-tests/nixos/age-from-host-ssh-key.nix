# The host's SSH key as the age identity (the second configuration of issue 5),
# and the same key found through services.openssh.hostKeys by default.
#
# Proves: an Ed25519 host key decrypts a file encrypted to its ssh-to-age
# recipient; config.sops.secrets.<name>.path is /run/secrets/<name> at
# evaluation time; the key's derived recipient is logged; no age key file is
# written anywhere (sops-nix writes one into the secrets mount).
{ pkgs, testLib }:

let
  hostRecipient = pkgs.lib.removeSuffix "\n" (builtins.readFile (testLib.fixtures + "/ssh_host_ed25519_key.age"));
in
pkgs.testers.runNixOSTest {
  name = "sops-age-from-host-ssh-key";

  nodes = {
    explicit =
      { config, pkgs, ... }:
      {
        imports = [
          testLib.nixosModule
          testLib.hostKeyBeforeActivation
        ];

        # --- the configuration from the issue ---
        sops.age.sshKeyPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];
        sops.gnupg.sshKeyPaths = [ ];
        sops.secrets.nixos_secret.sopsFile = testLib.fixtures + "/secrets.enc.yaml";
        # --- end ---

        # The secret's path used elsewhere in the configuration.
        assertions = [
          {
            assertion = config.sops.secrets.nixos_secret.path == "/run/secrets/nixos_secret";
            message = "config.sops.secrets.nixos_secret.path is ${config.sops.secrets.nixos_secret.path}";
          }
        ];
        systemd.services.uses-secret = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
          };
          script = "${pkgs.coreutils}/bin/cp ${config.sops.secrets.nixos_secret.path} /run/uses-secret.copy";
        };
      };

    # No sshKeyPaths: the ed25519 keys of services.openssh.hostKeys are the default.
    openssh =
      { ... }:
      {
        imports = [
          testLib.nixosModule
          testLib.hostKeyBeforeActivation
        ];
        services.openssh.enable = true;
        services.openssh.hostKeys = [
          {
            type = "ed25519";
            path = "/etc/ssh/ssh_host_ed25519_key";
          }
        ];
        sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
        sops.secrets.nixos_secret = { };
        sops.secrets."nested/test/file" = { };
      };
  };

  testScript = ''
    ${testLib.pythonHelpers}

    start_all()
    explicit.wait_for_unit("multi-user.target")
    openssh.wait_for_unit("sshd.service")

    with subtest("the host key decrypts the secret"):
        expect(explicit.succeed("cat /run/secrets/nixos_secret"), ${testLib.py testLib.plain.nixosSecret}, "nixos_secret")
        expect(explicit.succeed("stat -L -c '%U %G %a' /run/secrets/nixos_secret").strip(), "root root 400", "owner, group, mode")
        expect(explicit.succeed("cat /run/uses-secret.copy"), ${testLib.py testLib.plain.nixosSecret}, "copy made by a service")

    with subtest("openssh's ed25519 host key is used by default"):
        expect(openssh.succeed("cat /run/secrets/nixos_secret"), ${testLib.py testLib.plain.nixosSecret}, "nixos_secret")
        expect(openssh.succeed("cat /run/secrets/nested/test/file"), ${testLib.py testLib.plain.nestedFile}, "nested secret")
        # sshd serves the very key that decrypted the secrets.
        served = openssh.succeed("ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null | cut -d' ' -f2-3").strip()
        expect(served, openssh.succeed("cut -d' ' -f1-2 /etc/ssh/ssh_host_ed25519_key.pub").strip(), "served host key")

    with subtest("the derived age recipient is logged and no age key file is written"):
        out = explicit.succeed("/run/current-system/activate 2>&1")
        assert ${testLib.py hostRecipient} in out, f"recipient missing from activation output: {out}"
        explicit.fail("find /run/secrets.d /run -xdev -name 'age-keys.txt' | grep .")
        explicit.succeed("test -z \"$(find /run/secrets.d -type f ! -name nixos_secret)\"")
  '';
}
