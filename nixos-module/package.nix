# The sops-install-secrets package, built from this repository.
#
# The source is the whole repository minus what cannot affect the binary: the
# crate reads its bundled demo inputs from tests/fixtures at compile time
# (src/demo.rs), so tests/ must be there. The Nix files are left out, so that
# editing a module or a VM test does not rebuild the package.
{ lib, rustPlatform }:

let
  root = ../.;
  cargoToml = lib.importTOML ../Cargo.toml;
  relative = path: lib.removePrefix (toString root + "/") (toString path);
  leftOut = [
    "target"
    "result"
    "nixos-module"
    "vm-tests"
    "flake.nix"
    "flake.lock"
    "bench"
  ];
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;

  src = lib.cleanSourceWith {
    name = "sops-install-secrets-source";
    src = lib.cleanSource root;
    filter =
      path: _type:
      let
        rel = relative path;
      in
      !(lib.any (left: rel == left || lib.hasPrefix "${left}/" rel) leftOut || lib.hasPrefix "result-" rel);
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The cloud key services (GCP KMS, AWS KMS, Vault, Azure Key Vault) are
  # cargo features; the default build has them all, and so does this package.
  buildFeatures = [ "kms" ];

  # The installer's integration tests (tests/install.rs) need root and mount
  # namespaces, and tests/nix.rs needs Nix; neither exists in the build
  # sandbox. The unit, CLI and sops conformance tests run here.
  cargoTestFlags = [
    "--lib"
    "--bins"
    "--test"
    "cli"
    "--test"
    "conformance"
  ];

  meta = {
    description = "Installs sops-encrypted secrets at NixOS activation; a drop-in for sops-nix's installer";
    mainProgram = "sops-install-secrets";
    # Darwin is listed so that the nix-darwin and home-manager modules and
    # `nix flake check --all-systems` evaluate there; whether it builds on
    # macOS depends on the installer's macOS support (README, "macOS").
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
