# sops-import-keys-hook: imports a project's OpenPGP keys, optionally into a
# private GnuPG home, when a development shell starts (sops-import-keys-hook.sh).
#   mkShell { nativeBuildInputs = [ sops-import-keys-hook ]; sopsPGPKeyDirs = [ "./keys" ]; }
{
  makeSetupHook,
  gnupg,
  sops,
}:

makeSetupHook {
  name = "sops-import-keys-hook";
  substitutions.gpg = "${gnupg}/bin/gpg";
  propagatedBuildInputs = [
    sops
    gnupg
  ];
} ./sops-import-keys-hook.sh
