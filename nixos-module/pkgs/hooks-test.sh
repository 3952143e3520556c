# The test of sops-pgp-hook.sh and sops-import-keys-hook.sh, run by the
# package sops-pgp-hook-test (in the Nix sandbox) and by tests/nix.rs (with the
# system's gpg). Usage: bash hooks-test.sh [GPG]; GPG defaults to `gpg` on PATH.
# It makes two throwaway keys, points each hook at them the way a shell.nix
# does, starts a shell with the hook and checks what the shell got.

# The scripts given to in_shell run in the shell under test: their `$` are
# meant for it, not for this one.
# shellcheck disable=SC2016
set -euo pipefail

gpg=${1:-$(command -v gpg)}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
cleanup() {
  for home in "$work"/*/; do
    GNUPGHOME=$home gpgconf --kill gpg-agent 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Two keys: one made in a home of its own, exported armored to a file named
# in sopsPGPKeys; one with an encryption subkey, exported binary into a
# directory named in sopsPGPKeyDirs, next to a file the hooks must ignore.
mkdir -m 0700 "$work/maker"
export GNUPGHOME=$work/maker
"$gpg" --batch --quiet --pinentry-mode loopback --passphrase "" --quick-gen-key 'first <first@example.org>' ed25519 sign never
"$gpg" --batch --quiet --pinentry-mode loopback --passphrase "" --quick-gen-key 'second <second@example.org>' ed25519 sign never
primary() { "$gpg" --batch --with-colons --list-keys "$1" | awk -F: '$1 == "fpr" { print $10; exit }'; }
first=$(primary first@example.org)
second=$(primary second@example.org)
"$gpg" --batch --quiet --pinentry-mode loopback --passphrase "" --quick-add-key "$second" cv25519 encr never
mkdir -p "$work/keys/dir/nested"
"$gpg" --batch --armor --export "$first" >"$work/keys/first.asc"
"$gpg" --batch --export "$second" >"$work/keys/dir/nested/second.gpg"
echo "not a key" >"$work/keys/dir/README.txt"
unset GNUPGHOME

# Runs `script` in a new shell that has sourced the hook (with @gpg@ filled
# in) after `setup`, then the shellHook the hook built.
in_shell() {
  local hook=$1 setup=$2 script=$3
  sed "s|@gpg@|$gpg|g" "$here/$hook" >"$work/$hook"
  bash -euo pipefail -c "$setup
    source '$work/$hook'
    eval \"\$shellHook\"
    $script"
}

keys_in() { "$gpg" --homedir "$1" --batch --with-colons --list-keys 2>/dev/null | awk -F: '$1 == "fpr" { print $10 }'; }

# sops-pgp-hook: keys imported, SOPS_PGP_FP holds both primary fingerprints
# (files first, then directories), a shellHook set before still runs, a
# missing file is reported and skipped.
mkdir -m 0700 "$work/pgp-home"
out=$(in_shell sops-pgp-hook.sh "
    export GNUPGHOME='$work/pgp-home'
    sopsPGPKeys='$work/keys/first.asc $work/keys/absent.asc'
    sopsPGPKeyDirs='$work/keys/dir'
    shellHook='echo earlier-hook-ran'" 'echo "SOPS_PGP_FP=$SOPS_PGP_FP"' 2>"$work/pgp-stderr")
[ "$(grep '^SOPS_PGP_FP=' <<<"$out")" = "SOPS_PGP_FP=$first,$second" ] ||
  fail "sops-pgp-hook: SOPS_PGP_FP: $out (expected $first,$second)"
grep -qx earlier-hook-ran <<<"$out" || fail "sops-pgp-hook: the earlier shellHook did not run: $out"
grep -q "absent.asc (in sopsPGPKeys) does not exist" "$work/pgp-stderr" ||
  fail "sops-pgp-hook: no warning for the missing key: $(cat "$work/pgp-stderr")"
keys_in "$work/pgp-home" | grep -qx "$first" || fail "sops-pgp-hook: first key not imported"
keys_in "$work/pgp-home" | grep -qx "$second" || fail "sops-pgp-hook: second key not imported"
echo "ok: sops-pgp-hook imports both keys and sets SOPS_PGP_FP=$first,$second"

# An earlier SOPS_PGP_FP is kept and extended.
out=$(in_shell sops-pgp-hook.sh "
    export GNUPGHOME='$work/pgp-home'
    export SOPS_PGP_FP=0123456789ABCDEF0123456789ABCDEF01234567
    sopsPGPKeys='$work/keys/first.asc'" 'echo "$SOPS_PGP_FP"')
[ "$out" = "0123456789ABCDEF0123456789ABCDEF01234567,$first" ] || fail "sops-pgp-hook: SOPS_PGP_FP not extended: $out"
echo "ok: sops-pgp-hook extends an existing SOPS_PGP_FP"

# sops-import-keys-hook with sopsCreateGPGHome: a private 0700 home named by
# sopsGPGHome becomes GNUPGHOME and holds both keys; SOPS_PGP_FP stays unset.
out=$(in_shell sops-import-keys-hook.sh "
    cd '$work'
    sopsCreateGPGHome=1
    sopsGPGHome='$work/private-home'
    sopsPGPKeys='$work/keys/first.asc'
    sopsPGPKeyDirs='$work/keys/dir'" 'echo "GNUPGHOME=$GNUPGHOME"; echo "SOPS_PGP_FP=${SOPS_PGP_FP-unset}"')
grep -qx "GNUPGHOME=$work/private-home" <<<"$out" || fail "sops-import-keys-hook: GNUPGHOME: $out"
grep -qx "SOPS_PGP_FP=unset" <<<"$out" || fail "sops-import-keys-hook: set SOPS_PGP_FP: $out"
[ "$(stat -c %a "$work/private-home")" = 700 ] || fail "sops-import-keys-hook: the home is not 0700"
keys_in "$work/private-home" | grep -qx "$first" || fail "sops-import-keys-hook: first key not imported"
keys_in "$work/private-home" | grep -qx "$second" || fail "sops-import-keys-hook: second key not imported"
echo "ok: sops-import-keys-hook imports both keys into a private GNUPGHOME"

# Without sopsGPGHome the private home is .git/gnupg below the current directory.
mkdir -p "$work/project/.git"
out=$(in_shell sops-import-keys-hook.sh "
    cd '$work/project'
    sopsCreateGPGHome=1
    sopsPGPKeys='$work/keys/first.asc'" 'echo "$GNUPGHOME"')
[ "$out" = "$work/project/.git/gnupg" ] || fail "sops-import-keys-hook: default home: $out"
keys_in "$work/project/.git/gnupg" | grep -qx "$first" || fail "sops-import-keys-hook: key not in .git/gnupg"
echo "ok: sops-import-keys-hook defaults the private home to .git/gnupg"
