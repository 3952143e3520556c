# sops-import-keys-hook: a setup hook for development shells (nix-shell, nix
# develop). On entering the shell it imports the OpenPGP keys named by
# `sopsPGPKeys` (files) and found below `sopsPGPKeyDirs` (every *.asc and
# *.gpg, following symlinks) into the GnuPG home, so that `sops` can decrypt
# (secret keys) or encrypt to them. With `sopsCreateGPGHome` set, that home
# is a private one, `sopsGPGHome` or .git/gnupg in the current directory,
# exported as GNUPGHOME. Unlike sops-pgp-hook it leaves SOPS_PGP_FP alone.
# `@gpg@` is replaced by the gpg of the package.

sopsImportKeysHook() {
  local key dir
  if [ -n "${sopsCreateGPGHome-}" ]; then
    export GNUPGHOME=${sopsGPGHome:-$PWD/.git/gnupg}
    mkdir -p "$GNUPGHOME"
    chmod 0700 "$GNUPGHOME"
  fi
  for key in ${sopsPGPKeys-}; do
    if [ -f "$key" ]; then
      @gpg@ --batch --quiet --import "$key"
    else
      echo "sops-import-keys-hook: $key (in sopsPGPKeys) does not exist; skipped" >&2
    fi
  done
  for dir in ${sopsPGPKeyDirs-}; do
    while IFS= read -r -d '' key; do
      @gpg@ --batch --quiet --import "$key"
    done < <(find -L "$dir" -type f \( -name '*.asc' -o -name '*.gpg' \) -print0 | sort -z)
  done
}

shellHook="sopsImportKeysHook${shellHook:+;$shellHook}"
