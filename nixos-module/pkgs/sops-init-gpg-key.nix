# sops-init-gpg-key: a new GnuPG home with an unprotected key for a host (what
# sops-nix's package of that name does). The script is sops-init-gpg-key.sh.
{
  lib,
  writeShellApplication,
  gnupg,
  coreutils,
}:

writeShellApplication {
  name = "sops-init-gpg-key";
  runtimeInputs = [
    gnupg
    coreutils
  ];
  text = builtins.readFile ./sops-init-gpg-key.sh;
  meta = {
    description = "Creates a GnuPG home with a new passphrase-less key for a host that decrypts sops files";
    mainProgram = "sops-init-gpg-key";
    platforms = lib.platforms.unix;
  };
}
