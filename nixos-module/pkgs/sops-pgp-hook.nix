# sops-pgp-hook: imports a project's OpenPGP keys when a development shell
# starts and sets SOPS_PGP_FP to their fingerprints (sops-pgp-hook.sh).
#   mkShell { nativeBuildInputs = [ sops-pgp-hook ]; sopsPGPKeyDirs = [ "./keys" ]; }
{
  makeSetupHook,
  gnupg,
  sops,
}:

makeSetupHook {
  name = "sops-pgp-hook";
  substitutions.gpg = "${gnupg}/bin/gpg";
  propagatedBuildInputs = [
    sops
    gnupg
  ];
} ./sops-pgp-hook.sh
