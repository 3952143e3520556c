# Shared pieces of the NixOS VM tests: the module under test, the fixtures
# (made by fixtures/generate.sh) and ways to put a test key on the machine
# before secrets are installed.
{ lib }:

rec {
  nixosModule = ../../nixos-module;
  homeManagerModule = ../../nixos-module/home-manager.nix;
  fixtures = ./fixtures;

  # What the fixtures decrypt to (fixtures/generate.sh writes the same text).
  plain = {
    privateKey = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      dGVzdCBkYXRhIGZvciB0aGUgVk0gdGVzdHMsIG5vdCBhIGtleQ==
      -----END OPENSSH PRIVATE KEY-----
    '';
    rotatedPrivateKey = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      cm90YXRlZCB0ZXN0IGRhdGEsIHN0aWxsIG5vdCBhIGtleQ==
      -----END OPENSSH PRIVATE KEY-----
    '';
    publicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3QgZGF0YSBub3QgYSBrZXkgYXQgYWxsIQ== secret-test";
    nixosSecret = "nixos secret value";
    homeManagerSecret = "home-manager secret value";
    testKey = "test_value";
    dbPassword = "correct horse battery staple";
    nestedFile = "another value";
    jsonSecret = "json value";
    jsonNestedToken = "json nested token";
    alicePassword = "alice test password";
    # openssl passwd -6 -salt sopsnixvmtest 'alice test password'
    alicePasswordHash = "$6$sopsnixvmtest$Re6eGIVZcqnzqtjiQGzHmI4a47UcNP8eKEjVHrwjg4.lU4TyIa9/W78Z7FAZwm1GT279eP/FtU/dKS4Y9kudo.";
    # blob.enc.bin holds "binary\0secret\n\001\002\003".
    blobBase64 = "YmluYXJ5AHNlY3JldAoBAgM=";
  };

  # The test age key at /run/age-keys.txt, put there by an activation script
  # that runs before the named sops activation scripts. Test data only: a real
  # key never goes through the Nix store.
  ageKeyBeforeActivation =
    scripts:
    { lib, ... }:
    {
      sops.age.keyFile = "/run/age-keys.txt";
      system.activationScripts =
        {
          sopsTestAgeKey = lib.stringAfter [ "specialfs" ] ''
            install -D -m 0400 ${fixtures + "/age-key.txt"} /run/age-keys.txt
          '';
        }
        // lib.genAttrs scripts (_: {
          deps = [ "sopsTestAgeKey" ];
        });
    };

  # The same for installation by systemd units: each unit copies the key first.
  ageKeyBeforeUnits =
    units:
    { lib, ... }:
    {
      sops.age.keyFile = "/run/age-keys.txt";
      systemd.services = lib.genAttrs units (_: {
        preStart = ''
          install -D -m 0400 ${fixtures + "/age-key.txt"} /run/age-keys.txt
        '';
      });
    };

  # The committed host key at /etc/ssh/ssh_host_ed25519_key, where a real host
  # keeps it, before setupSecrets runs.
  hostKeyBeforeActivation =
    { lib, ... }:
    {
      system.activationScripts.sopsTestHostKey = lib.stringAfter [ "specialfs" ] ''
        install -D -m 0600 ${fixtures + "/ssh_host_ed25519_key"} /etc/ssh/ssh_host_ed25519_key
        install -D -m 0644 ${fixtures + "/ssh_host_ed25519_key.pub"} /etc/ssh/ssh_host_ed25519_key.pub
      '';
      system.activationScripts.setupSecrets.deps = [ "sopsTestHostKey" ];
    };

  # Python for the test scripts: `expect(actual, expected, what)`.
  pythonHelpers = ''
    def expect(actual: object, expected: object, what: str) -> None:
        if actual != expected:
            raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")
  '';

  # A Python string literal holding `s`.
  py = s: builtins.toJSON s;
}
