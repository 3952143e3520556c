# unit-tests: `nix run .#unit-tests` from a checkout runs the project's tests
# (`cargo test --locked`, extra arguments passed on) with the tools they use.
# Tests that need root skip unless run as root, as in CI; on macOS the
# Linux-only tests do not build yet.
{
  lib,
  stdenv,
  writeShellApplication,
  cargo,
  rustc,
  gnupg,
  nix,
}:

writeShellApplication {
  name = "unit-tests";
  runtimeInputs = [
    cargo
    rustc
    stdenv.cc
    gnupg
    nix
  ];
  text = ''
    if [ ! -f Cargo.toml ] || ! grep -q '^name = "sops-install-secrets"' Cargo.toml; then
      echo "unit-tests: run this in a checkout of sops-install-secrets" >&2
      exit 2
    fi
    exec cargo test --locked "$@"
  '';
  meta.platforms = lib.platforms.unix;
}
