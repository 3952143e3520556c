# The manifest: the JSON document sops-install-secrets reads (src/manifest.rs).
#
# This file is a plain function over builtins: no nixpkgs, no lib. That keeps
# the contract between the Nix side and the installer in one small place that
# can be evaluated on its own (`nix-instantiate --eval --strict --json`) and fed
# straight to `sops-install-secrets -check-mode=manifest`, which is what
# tests/nix.rs does on machines without nixpkgs.
#
# The NixOS module (default.nix, secrets-for-users.nix) and the home-manager
# module pass the evaluated option values and write the result with
# builtins.toJSON. toJSON copies every Nix path value (a `sopsFile = ./x.yaml`,
# a template `file`) into the store, so the manifest derivation depends on it.
#
# Fields a caller leaves out take the defaults of the NixOS options, so the
# builder can also be called by hand; the modules always pass every field.
{
  # sops.secrets: attribute name -> the secret's options. The attribute name is
  # the default for `name` and `key` and the key of `placeholders`.
  secrets ? { },
  # sops.templates: attribute name -> the template's options.
  templates ? { },
  # sops.placeholder: secret attribute name -> the string templates contain.
  placeholders ? { },
  secretsMountPoint ? "/run/secrets.d",
  symlinkPath ? "/run/secrets",
  keepGenerations ? 1,
  gnupgHome ? null,
  # sops.gnupg.sshKeyPaths (RSA host keys imported as GPG keys).
  gnupgSshKeyPaths ? [ ],
  ageKeyFile ? null,
  ageSshKeyPaths ? [ ],
  useTmpfs ? false,
  # home-manager: `%r` in paths is $XDG_RUNTIME_DIR (macOS: DARWIN_USER_TEMP_DIR,
  # on a RAM disk the installer mounts), no mount on Linux, no chown.
  userMode ? false,
  # sops.log: which of "keyImport" and "secretChanges" the installer reports.
  log ? [
    "keyImport"
    "secretChanges"
  ],
  # sops.validateSopsFiles: every sopsFile must exist and be (or become) a
  # store path, so the build-time check can read it.
  validateSopsFiles ? false,
  # sops.onFailure: "abort" (install nothing) or "keep-previous".
  onFailure ? "abort",
  # sops.hostPubKeys: the host's public keys; the build-time check then
  # refuses sops files the host could not open.
  hostPubKeys ? [ ],
}:

let
  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    filter
    isPath
    isString
    listToAttrs
    map
    pathExists
    storeDir
    stringLength
    substring
    toString
    ;

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  orDefault = attrs: field: default: if attrs ? ${field} then attrs.${field} else default;

  secretNames = attrNames secrets;
  templateNames = attrNames templates;

  # One secret as the installer reads it: exactly the fields of sops-nix's
  # manifest (extra option values such as neededForUsers stay out).
  secretEntry =
    attr:
    let
      s = secrets.${attr};
      name = orDefault s "name" attr;
    in
    {
      inherit name;
      key = orDefault s "key" attr;
      path = orDefault s "path" "${symlinkPath}/${name}";
      owner = orDefault s "owner" null;
      uid = orDefault s "uid" 0;
      group = orDefault s "group" null;
      gid = orDefault s "gid" 0;
      sopsFile = s.sopsFile;
      format = orDefault s "format" "yaml";
      mode = orDefault s "mode" "0400";
      restartUnits = orDefault s "restartUnits" [ ];
      reloadUnits = orDefault s "reloadUnits" [ ];
      credential = orDefault s "credential" false;
    };

  # A template's text comes from `file` when one is given and from `content`
  # otherwise. The installer prefers a non-empty `content`, so `content` is
  # emptied whenever `file` is meant to win.
  templateEntry =
    attr:
    let
      t = templates.${attr};
      name = orDefault t "name" attr;
      file = orDefault t "file" null;
    in
    {
      inherit name file;
      content = if file != null then "" else orDefault t "content" "";
      path = orDefault t "path" "${symlinkPath}/rendered/${name}";
      mode = orDefault t "mode" "0400";
      owner = orDefault t "owner" null;
      uid = orDefault t "uid" 0;
      group = orDefault t "group" null;
      gid = orDefault t "gid" 0;
      restartUnits = orDefault t "restartUnits" [ ];
      reloadUnits = orDefault t "reloadUnits" [ ];
    };

  # The installer looks placeholders up by the secret's `name`, while
  # sops.placeholder is keyed by attribute name; translate here so that a secret
  # whose `name` differs from its attribute still renders.
  placeholderBySecretName = listToAttrs (
    map (attr: {
      name = orDefault secrets.${attr} "name" attr;
      value = toString placeholders.${attr};
    }) (filter (attr: placeholders ? ${attr}) secretNames)
  );

  # sopsFile problems, all of them at once, worded as what to change.
  sopsFileProblems = builtins.concatMap (
    attr:
    let
      file = secrets.${attr}.sopsFile;
      shown = toString file;
      option = "sops.secrets.\"${attr}\".sopsFile";
    in
    if !(isPath file || isString file) then
      [ "${option} is not a path" ]
    else if !(isPath file || hasPrefix "${storeDir}/" file) then
      [
        "${option} = \"${shown}\" is not in the Nix store, so it cannot be checked at build time: write it as a path (./secrets.yaml, without quotes) or set sops.validateSopsFiles = false"
      ]
    else if !(pathExists file) then
      [ "${option} = ${shown} does not exist" ]
    else
      [ ]
  ) secretNames;

  manifest = {
    secrets = map secretEntry secretNames;
    templates = map templateEntry templateNames;
    inherit
      placeholderBySecretName
      secretsMountPoint
      symlinkPath
      keepGenerations
      gnupgHome
      ageKeyFile
      ageSshKeyPaths
      useTmpfs
      userMode
      ;
    inherit onFailure hostPubKeys;
    sshKeyPaths = gnupgSshKeyPaths;
    logging = {
      keyImport = elem "keyImport" log;
      secretChanges = elem "secretChanges" log;
    };
  };
in
if validateSopsFiles && sopsFileProblems != [ ] then
  throw "sops: cannot build the secrets manifest:\n${
    concatStringsSep "\n" (map (p: "- ${p}") sopsFileProblems)
  }"
else
  manifest
