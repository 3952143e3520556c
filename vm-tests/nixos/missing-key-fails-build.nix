# A key missing from a sops file fails the build of the configuration (the
# manifest derivation runs `sops-install-secrets -check-mode=sopsfile`), not
# the next boot. Built without a VM.
#
# Proves: the build fails and its log names the secret, the file and the key
# path; a sops file outside the store is refused at evaluation while
# validateSopsFiles is on; with validateSopsFiles = false the same manifest
# builds (checked with -check-mode=manifest, which reads no sops file).
{ pkgs, testLib }:

let
  manifestOf =
    module:
    (pkgs.nixos {
      imports = [
        testLib.nixosModule
        module
      ];
      sops.age.keyFile = "/var/lib/sops-nix/key.txt";
      boot.loader.grub.enable = false;
      fileSystems."/".device = "/dev/null";
      system.stateVersion = "25.11";
    }).config.system.build.sops-nix-manifest;

  missingKey = manifestOf {
    sops.defaultSopsFile = testLib.fixtures + "/secrets.enc.yaml";
    sops.secrets.present.key = "nixos_secret";
    sops.secrets.absent.key = "does/not/exist";
  };

  outsideStore = {
    sops.secrets.elsewhere.sopsFile = "/var/lib/sops/secrets.yaml";
  };
  refusedAtEvaluation = builtins.tryEval (manifestOf outsideStore).drvPath;
  notValidated = manifestOf {
    imports = [ outsideStore ];
    sops.validateSopsFiles = false;
  };

  failure = pkgs.testers.testBuildFailure missingKey;
in
assert !refusedAtEvaluation.success;
pkgs.runCommand "sops-missing-key-fails-build" { } ''
  log=${failure}/testBuildFailure.log
  cat "$log"
  [ "$(cat ${failure}/testBuildFailure.exit)" != 0 ]
  grep -F 'secret "absent"' "$log"
  grep -F 'secrets.enc.yaml has no key path "does/not/exist"' "$log"
  if grep -F 'secret "present"' "$log"; then
    echo "the secret whose key exists was reported too" >&2
    exit 1
  fi
  grep -F '"sopsFile":"/var/lib/sops/secrets.yaml"' ${notValidated}
  touch $out
''
