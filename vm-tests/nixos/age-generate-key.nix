# sops.age.generateKey: the generate-age-key activation script creates the age
# key file when it is missing, before secrets are installed.
#
# Proves: the key file appears with mode 0600 in a 0700 directory, is kept on
# the next activation, and its presence (it opens nothing here) does not stop
# the host SSH key from decrypting.
{ pkgs, testLib }:

pkgs.testers.runNixOSTest {
  name = "sops-age-generate-key";

  nodes.machine = {
    imports = [
      testLib.nixosModule
      testLib.hostKeyBeforeActivation
    ];
    sops.age = {
      keyFile = "/var/lib/sops-nix/key.txt";
      generateKey = true;
      sshKeyPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];
    };
    sops.gnupg.sshKeyPaths = [ ];
    sops.secrets.test_key.sopsFile = testLib.fixtures + "/secrets.enc.yaml";
  };

  testScript = ''
    ${testLib.pythonHelpers}

    machine.wait_for_unit("multi-user.target")

    with subtest("the key file was generated"):
        expect(machine.succeed("stat -c '%a %U' /var/lib/sops-nix/key.txt").strip(), "600 root", "key file")
        expect(machine.succeed("stat -c '%a' /var/lib/sops-nix").strip(), "700", "key directory")
        machine.succeed("grep -q '^AGE-SECRET-KEY-1' /var/lib/sops-nix/key.txt")

    with subtest("secrets are installed"):
        expect(machine.succeed("cat /run/secrets/test_key"), ${testLib.py testLib.plain.testKey}, "test_key")

    with subtest("the key is kept on the next activation"):
        before = machine.succeed("sha256sum /var/lib/sops-nix/key.txt")
        machine.succeed("/run/current-system/activate")
        expect(machine.succeed("sha256sum /var/lib/sops-nix/key.txt"), before, "key after activation")
        expect(machine.succeed("readlink /run/secrets").strip(), "/run/secrets.d/2", "a new generation")
  '';
}
