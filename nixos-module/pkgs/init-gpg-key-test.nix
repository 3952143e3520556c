# The packaged sops-init-gpg-key run once in the sandbox, as a check: it must
# make a home with a key for the given host and print that key's fingerprint.
# (tests/nix.rs runs the script itself against the system's gpg in more ways.)
{
  runCommand,
  gnupg,
  sops-init-gpg-key,
}:

runCommand "sops-init-gpg-key-test"
  {
    nativeBuildInputs = [
      gnupg
      sops-init-gpg-key
    ];
  }
  ''
    export HOME=$TMPDIR
    sops-init-gpg-key --hostname server01 --gpghome "$TMPDIR/home" --keytype Curve25519 \
      >"$TMPDIR/server01.asc" 2>"$TMPDIR/stderr"
    grep -q -- '-----BEGIN PGP PUBLIC KEY BLOCK-----' "$TMPDIR/server01.asc"
    gpg --homedir "$TMPDIR/home" --batch --with-colons --list-secret-keys >"$TMPDIR/keys"
    grep -q 'server01 <root@server01>' "$TMPDIR/keys"
    fpr=$(awk -F: '$1 == "fpr" { print $10; exit }' "$TMPDIR/keys")
    grep -qx "fingerprint: $fpr" "$TMPDIR/stderr"
    gpgconf --homedir "$TMPDIR/home" --kill gpg-agent || true
    echo "ok: $fpr" >$out
  ''
