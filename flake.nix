{
  description = "sops-install-secrets: sops-nix's secret installer in Rust, with drop-in NixOS, nix-darwin and home-manager modules";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";

  # The outputs carry sops-nix's names with sops-nix's meaning, so that
  # switching is a change of the input's URL (README, "Using it instead of
  # sops-nix"). tests/nix.rs compares the names with
  # tests/fixtures/nix/sops-nix-flake-outputs.txt, read from sops-nix's flake.
  # The skeleton is plain builtins so that the test can evaluate it with a
  # stand-in nixpkgs.
  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      eachSystem =
        f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f nixpkgs.legacyPackages.${system};
          }) systems
        );
      packagesOf = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system};
    in
    {
      nixosModules = {
        sops = ./nixos-module;
        default = self.nixosModules.sops;
      };
      homeManagerModules = {
        sops = ./nixos-module/home-manager.nix;
        default = self.homeManagerModules.sops;
      };
      homeManagerModule = self.homeManagerModules.sops;
      homeModules = self.homeManagerModules;
      darwinModules = {
        sops = ./nixos-module/darwin.nix;
        default = self.darwinModules.sops;
      };

      # The user-facing packages, built with the overlaid package set;
      # ssh-to-pgp stays nixpkgs' own (sops-nix keeps it for compatibility).
      overlays.default =
        final: prev:
        let
          ours = import ./nixos-module/pkgs { pkgs = final; };
        in
        {
          inherit (ours)
            sops-install-secrets
            sops-init-gpg-key
            sops-pgp-hook
            sops-import-keys-hook
            ;
          inherit (prev) ssh-to-pgp;
        };

      packages = eachSystem (pkgs: import ./nixos-module/pkgs { inherit pkgs; });

      # Linux: the installer (with its unit and conformance tests) and the
      # NixOS VM tests of vm-tests/nixos, one check per behaviour. Everywhere:
      # the helper packages, each run once in the sandbox.
      checks = eachSystem (
        pkgs:
        {
          inherit (packagesOf pkgs) sops-pgp-hook-test;
          sops-init-gpg-key = pkgs.callPackage ./nixos-module/pkgs/init-gpg-key-test.nix {
            inherit (packagesOf pkgs) sops-init-gpg-key;
          };
        }
        // (
          if pkgs.stdenv.hostPlatform.isLinux then
            { package = (packagesOf pkgs).sops-install-secrets; } // import ./vm-tests/nixos { inherit pkgs; }
          else
            { }
        )
      );

      devShells = eachSystem (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ (packagesOf pkgs).sops-install-secrets ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.sops
            pkgs.age
            pkgs.ssh-to-age
            pkgs.nixfmt
          ];
        };
      });
    };
}
