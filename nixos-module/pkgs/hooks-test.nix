# sops-pgp-hook-test: runs hooks-test.sh on both hooks; the build fails if a
# hook does not import the keys or set what it should.
{ runCommand, gnupg }:

runCommand "sops-pgp-hook-test"
  {
    nativeBuildInputs = [ gnupg ];
  }
  ''
    export HOME=$TMPDIR
    mkdir hooks
    cp ${./hooks-test.sh} hooks/hooks-test.sh
    cp ${./sops-pgp-hook.sh} hooks/sops-pgp-hook.sh
    cp ${./sops-import-keys-hook.sh} hooks/sops-import-keys-hook.sh
    bash hooks/hooks-test.sh ${gnupg}/bin/gpg | tee $out
  ''
