{
  description = "sops-install-secrets: sops-nix's secret installer in Rust, with drop-in NixOS and home-manager modules";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      eachSystem = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # sops-nix's output names, so that switching is a change of URL:
      #   inputs.sops-nix.url = "<this repository>";
      #   imports = [ inputs.sops-nix.nixosModules.sops ];
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

      overlays.default = final: _prev: {
        sops-install-secrets = final.callPackage ./nixos-module/package.nix { };
      };

      packages = eachSystem (pkgs: rec {
        sops-install-secrets = pkgs.callPackage ./nixos-module/package.nix { };
        default = sops-install-secrets;
      });

      # The package (with its unit and conformance tests) and the NixOS VM
      # tests of vm-tests/nixos, one check per behaviour.
      checks = eachSystem (
        pkgs:
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        }
        // import ./vm-tests/nixos { inherit pkgs; }
      );

      devShells = eachSystem (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
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
