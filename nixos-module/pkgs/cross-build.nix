# cross-build (Linux only): the installer cross-compiled for the other common
# Linux architecture (aarch64 from x86_64, x86_64 from anything else), so a
# change that breaks cross-compilation (NixOS configurations built on another
# machine use it) fails a build. Its tests do not run: the build machine
# cannot execute them.
{ pkgs }:

let
  cross =
    if pkgs.stdenv.hostPlatform.isx86_64 then pkgs.pkgsCross.aarch64-multiplatform else pkgs.pkgsCross.gnu64;
in
cross.callPackage ../package.nix { }
