# sops-init-gpg-key: creates a GnuPG home holding one new OpenPGP key for a
# host, without a passphrase, for hosts that decrypt with sops.gnupg.home. The
# public key goes to stdout (save it, add its fingerprint to .sops.yaml); the
# fingerprint and hints go to stderr.
#
# The package (sops-init-gpg-key.nix) puts gpg and coreutils on PATH; the
# test in tests/nix.rs runs this file with the system's.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: sops-init-gpg-key [--hostname NAME] [--gpghome DIR] [--keytype RSA|Curve25519]

  --hostname NAME   the key's user id is "NAME <root@NAME>" (default: this host's name)
  --gpghome DIR     the GnuPG home to create; it must not exist (default: /root/.gnupg)
  --keytype TYPE    RSA (default, 3072 bits) or Curve25519 (Ed25519 signing, X25519 encryption)
USAGE
}

gpghome=/root/.gnupg
host=$(uname -n)
keytype=RSA

while [ $# -gt 0 ]; do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --hostname=* | --gpghome=* | --keytype=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
      ;;
    --hostname | --gpghome | --keytype)
      if [ $# -lt 2 ]; then
        echo "sops-init-gpg-key: $1 needs a value" >&2
        usage >&2
        exit 2
      fi
      case $1 in
        --hostname) host=$2 ;;
        --gpghome) gpghome=$2 ;;
        --keytype) keytype=$2 ;;
      esac
      shift 2
      ;;
    *)
      echo "sops-init-gpg-key: unknown argument '$1'" >&2
      usage >&2
      exit 2
      ;;
  esac
done

case $keytype in
  RSA)
    key_params='Key-Type: RSA
Key-Length: 3072
Key-Usage: sign,encrypt'
    ;;
  Curve25519)
    key_params='Key-Type: EDDSA
Key-Curve: Ed25519
Key-Usage: sign
Subkey-Type: ECDH
Subkey-Curve: Curve25519
Subkey-Usage: encrypt'
    ;;
  *)
    echo "sops-init-gpg-key: unknown key type '$keytype'; use RSA or Curve25519" >&2
    exit 2
    ;;
esac

if [ -z "$host" ]; then
  echo "sops-init-gpg-key: the host name is empty; pass --hostname" >&2
  exit 2
fi

# An existing home may hold keys that secrets depend on: never touch it.
if [ -e "$gpghome" ] || [ -L "$gpghome" ]; then
  echo "sops-init-gpg-key: $gpghome already exists; remove it or choose another --gpghome" >&2
  exit 1
fi

# The key is made in a private directory beside the target and renamed into
# place, so an interrupted run leaves no half-made home at $gpghome.
parent=$(dirname -- "$gpghome")
mkdir -p -- "$parent"
work=$(mktemp -d "$parent/.sops-init-gpg-key.XXXXXX")
cleanup() {
  GNUPGHOME=$work gpgconf --kill gpg-agent 2>/dev/null || true
  rm -rf -- "$work"
}
trap cleanup EXIT
chmod 0700 "$work"
export GNUPGHOME=$work

gpg --batch --quiet --gen-key <<PARAMS
%no-protection
$key_params
Name-Real: $host
Name-Email: root@$host
Expire-Date: 0
%commit
PARAMS

fingerprint=
while IFS=: read -r -a field; do
  if [ "${field[0]}" = fpr ]; then
    fingerprint=${field[9]}
    break
  fi
done < <(gpg --batch --quiet --with-colons --fingerprint --list-secret-keys)
if [ -z "$fingerprint" ]; then
  echo "sops-init-gpg-key: gpg made no key" >&2
  exit 1
fi

gpg --batch --armor --export "$fingerprint"

# The agent started for the temporary home must not outlive its name.
gpgconf --kill gpg-agent 2>/dev/null || true
mv -- "$work" "$gpghome"
trap - EXIT

cat >&2 <<DONE
created $gpghome with the key of "$host <root@$host>"
fingerprint: $fingerprint
The public key is on stdout (sops-init-gpg-key ... > $host.asc). Add the
fingerprint to the pgp keys of this host in .sops.yaml, run
\`sops updatekeys\` on its sops files, and set sops.gnupg.home = "$gpghome";
DONE
