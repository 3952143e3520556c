# Every package of the flake, per system, under the names sops-nix's flake
# gives them (tests/fixtures/nix/sops-nix-flake-outputs.txt lists those
# names and tests/nix.rs compares):
#
#   sops-install-secrets   the installer (../package.nix)
#   sops-init-gpg-key      a GnuPG home with a new key for a host; also `default`,
#                          as in sops-nix, so `nix run <flake> -- --hostname h` runs it
#   sops-pgp-hook          development-shell hook: import keys, set SOPS_PGP_FP
#   sops-import-keys-hook  development-shell hook: import keys
#   ssh-to-pgp             nixpkgs' ssh-to-pgp, re-exported as sops-nix does
#                          (the installer's `ssh-to-pgp` subcommand takes -i only,
#                          no stdin, -name or -email, so it does not stand in)
#
# and sops-nix's CI helpers, with this project's meaning:
#
#   sops-pgp-hook-test     builds only if both hooks pass hooks-test.sh
#   unit-tests             `nix run .#unit-tests` in a checkout: cargo test
#   lint                   builds only if cargo fmt --check and clippy pass
#   cross-build            (Linux) the installer built for another Linux
#                          architecture, to keep cross-compilation working
#
# ssh-to-age is not here, as in sops-nix: it comes from nixpkgs.
{ pkgs }:

let
  inherit (pkgs) lib;
  sops-install-secrets = pkgs.callPackage ../package.nix { };
  sops-init-gpg-key = pkgs.callPackage ./sops-init-gpg-key.nix { };
in
{
  inherit sops-install-secrets sops-init-gpg-key;
  default = sops-init-gpg-key;
  sops-pgp-hook = pkgs.callPackage ./sops-pgp-hook.nix { };
  sops-import-keys-hook = pkgs.callPackage ./sops-import-keys-hook.nix { };
  inherit (pkgs) ssh-to-pgp;

  sops-pgp-hook-test = pkgs.callPackage ./hooks-test.nix { };
  unit-tests = pkgs.callPackage ./unit-tests.nix { };
  lint = pkgs.callPackage ./lint.nix { inherit sops-install-secrets; };
}
// lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux {
  cross-build = import ./cross-build.nix { inherit pkgs; };
}
