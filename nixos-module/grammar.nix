# What a secret's or template's fields may hold: the installer's grammar
# (src/manifest.rs) written again for evaluation time, so that a bad value
# fails `nixos-rebuild` with the option's name instead of failing the
# build-time check or the activation. Builtins only: tests/nix.rs evaluates
# these functions with nix-instantiate, without nixpkgs.
#
# Each `...Problem` function returns null for a good value, else the reason,
# worded to follow the value in a message. Nix strings cannot hold NUL; the
# other control characters are the installer's: U+0001 to U+001F, U+007F and
# U+0080 to U+009F.
let
  inherit (builtins)
    concatLists
    concatStringsSep
    elem
    filter
    fromJSON
    isInt
    isString
    match
    replaceStrings
    split
    stringLength
    substring
    toJSON
    ;

  # The control characters, made from JSON escapes: a regex class such as
  # [[:cntrl:]] would depend on the evaluator's locale. U+0000 cannot be in a
  # Nix string.
  controlChars = builtins.tail (
    concatLists (
      map (hi: map (lo: fromJSON "\"\\u00${hi}${lo}\"") hexDigits) [
        "0"
        "1"
        "8"
        "9"
      ]
    )
  ) ++ [ (fromJSON "\"\\u007f\"") ];
  hexDigits = [
    "0"
    "1"
    "2"
    "3"
    "4"
    "5"
    "6"
    "7"
    "8"
    "9"
    "a"
    "b"
    "c"
    "d"
    "e"
    "f"
  ];
  hasControl = s: replaceStrings controlChars (map (_: "") controlChars) s != s;
  components = s: filter isString (split "/" s);

  # systemd's unit types (unit_type_from_string).
  unitTypes = [
    "service"
    "socket"
    "target"
    "device"
    "mount"
    "automount"
    "swap"
    "timer"
    "path"
    "slice"
    "scope"
  ];
in
rec {
  # A name is a relative path below the generation directory.
  nameProblem =
    name:
    let
      parts = components name;
    in
    if name == "" then
      "is empty"
    else if hasControl name then
      "contains a control character (a newline would forge lines in logs and restart lists)"
    else if substring 0 1 name == "/" then
      "is an absolute path"
    else if elem ".." parts then
      "contains a `..` component, which would leave the secrets directory"
    else if elem "." parts then
      "contains a `.` component"
    else if elem "" parts then
      "contains an empty component (`//` or a trailing `/`)"
    else if filter (p: stringLength p > 255) parts != [ ] then
      "has a component longer than 255 bytes, the longest file name Linux allows (NAME_MAX)"
    else
      null;

  # What chmod(1) takes as a number: one to four octal digits.
  modeProblem =
    mode:
    if isString mode && match "[0-7]{1,4}" mode != null then
      null
    else
      "is not an octal mode of 1 to 4 digits (like \"0400\")";

  # systemd's unit_name_is_valid for a unit that can be restarted: a plain
  # name or a template's instance, at most 255 bytes.
  unitProblem =
    unit:
    let
      # The stem and the type: the type is what follows the last dot.
      typed = match "(.*)\\.([^.]*)" unit;
      stem = if typed == null then "" else builtins.head typed;
      type = if typed == null then "" else builtins.elemAt typed 1;
      instance = match "([^@]*)@(.*)" stem;
    in
    if unit == "" then
      "is empty"
    # Backslashes (systemd's \x2d escapes) are removed first: a bracket
    # expression treats a backslash differently in each regex dialect.
    else if match "[a-zA-Z0-9:_.@-]*" (builtins.replaceStrings [ "\\" ] [ "" ] unit) == null then
      "contains a character other than ASCII letters, digits and `:-_.\\@`"
    else if stringLength unit > 255 then
      "is longer than 255 bytes, the longest unit name systemd allows"
    else if stem == "" then
      "has no unit type; write the whole name, like \"nginx.service\""
    else if !(elem type unitTypes) then
      "ends in \".${type}\", which is not a unit type (${concatStringsSep ", " unitTypes})"
    else if instance != null && builtins.head instance == "" then
      "starts with `@`"
    else if instance != null && builtins.elemAt instance 1 == "" then
      "is a template, which cannot be restarted; name an instance, like \"${builtins.head instance}@example.${type}\""
    else
      null;

  # A user or group name as NSS looks it up.
  ownerNameProblem =
    name:
    if name == "" then
      "is empty"
    else if hasControl name then
      "contains a control character"
    else if match ".*/.*" name != null then
      "contains `/` (it looks like a path)"
    else if match ".*:.*" name != null then
      "contains `:`, which separates the fields of /etc/passwd and /etc/group"
    else
      null;

  # fchown(2) reads 4294967295 (-1) as "leave unchanged".
  idProblem =
    id:
    if !(isInt id) || id < 0 || id > 4294967294 then
      "is not an id from 0 to 4294967294 (4294967295 would leave the file root's)"
    else
      null;

  # The assertions on one secret or template entry: its mode, units, owner
  # and group names and ids, for the fields it has (home-manager entries have
  # no owners). `option` names the entry in messages, e.g. sops.secrets."db".
  entryAssertions =
    option: entry:
    let
      check = field: value: problem: {
        assertion = problem == null;
        message = "${option}.${field} = ${toJSON value} ${toString problem}.";
      };
      has = field: entry ? ${field} && entry.${field} != null;
      units =
        field:
        if has field then map (u: check field u (unitProblem u)) entry.${field} else [ ];
      owner =
        field: problem:
        if has field then [ (check field entry.${field} (problem entry.${field})) ] else [ ];
    in
    (if has "mode" then [ (check "mode" entry.mode (modeProblem entry.mode)) ] else [ ])
    ++ units "restartUnits"
    ++ units "reloadUnits"
    ++ owner "owner" ownerNameProblem
    ++ owner "group" ownerNameProblem
    ++ owner "uid" idProblem
    ++ owner "gid" idProblem;

  # The messages of the failing assertions of `entryAssertions` (for tests).
  entryProblems =
    option: entry: map (a: a.message) (filter (a: !a.assertion) (entryAssertions option entry));
}
