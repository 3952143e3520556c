# The NixOS VM tests, one file per behaviour, by check name:
#   nix build .#checks.x86_64-linux.<name>   or   nix flake check
{ pkgs }:

let
  testLib = import ./lib.nix { inherit (pkgs) lib; };
  call = file: import file { inherit pkgs testLib; };
in
{
  sops-secret-owned-by-service-user = call ./secret-owned-by-service-user.nix;
  sops-age-from-host-ssh-key = call ./age-from-host-ssh-key.nix;
  sops-age-key-file = call ./age-key-file.nix;
  sops-age-generate-key = call ./age-generate-key.nix;
  sops-templates = call ./templates.nix;
  sops-needed-for-users = call ./needed-for-users.nix;
  sops-systemd-activation-userborn = call ./systemd-activation-userborn.nix;
  sops-systemd-activation-switch = call ./systemd-activation-switch.nix;
  sops-keep-generations = call ./keep-generations.nix;
  sops-use-tmpfs = call ./use-tmpfs.nix;
  sops-dry-activation = call ./dry-activation.nix;
  sops-home-manager-user-secret = call ./home-manager-user-secret.nix;
  sops-missing-key-fails-build = call ./missing-key-fails-build.nix;
  sops-secrets-target = call ./sops-secrets-target.nix;
}
