# sops-pgp-hook: a setup hook for development shells (nix-shell, nix develop).
# On entering the shell it imports the OpenPGP keys named by `sopsPGPKeys`
# (files) and found below `sopsPGPKeyDirs` (every *.asc and *.gpg, following
# symlinks) into the GnuPG home, and adds the primary fingerprint of each to
# SOPS_PGP_FP, so that `sops` in the shell encrypts new files to those keys.
# `@gpg@` is replaced by the gpg of the package.

_sopsPGPHookKeyFiles() {
  local key dir
  for key in ${sopsPGPKeys-}; do
    if [ -f "$key" ]; then
      printf '%s\0' "$key"
    else
      echo "sops-pgp-hook: $key (in sopsPGPKeys) does not exist; skipped" >&2
    fi
  done
  for dir in ${sopsPGPKeyDirs-}; do
    find -L "$dir" -type f \( -name '*.asc' -o -name '*.gpg' \) -print0 | sort -z
  done
}

sopsPGPHook() {
  local key fpr line
  while IFS= read -r -d '' key; do
    @gpg@ --batch --quiet --import "$key"
    # The first fpr record is the primary key's; subkeys follow it.
    fpr=
    while IFS= read -r line; do
      case $line in
        fpr:*)
          fpr=$(echo "$line" | cut -d: -f10)
          break
          ;;
      esac
    done < <(@gpg@ --batch --with-colons --show-keys "$key" 2>/dev/null)
    if [ -n "$fpr" ]; then
      SOPS_PGP_FP=${SOPS_PGP_FP:+$SOPS_PGP_FP,}$fpr
    fi
  done < <(_sopsPGPHookKeyFiles)
  export SOPS_PGP_FP
}

shellHook="sopsPGPHook${shellHook:+;$shellHook}"
