# Pieces the NixOS module (default.nix, templates.nix, secrets-for-users.nix)
# and the home-manager module (home-manager.nix) share: name checks and other
# assertions, key-path warnings, option types, the placeholder spelling, the
# manifest derivation and the units and activation scripts that install it.
# Shared option declarations are in options.nix.
{ lib }:

let
  grammar = import ./grammar.nix;
in
rec {
  # Why `name` cannot be a secret or template name, or null if it can. A name
  # is a path below the generation directory; the installer refuses these
  # names too (src/manifest.rs), checking them here makes the mistake fail
  # evaluation instead of activation.
  inherit (grammar) nameProblem;

  # The assertions on one secret's or template's mode, units, owner and group
  # (grammar.nix); `option` names the entry in the messages.
  inherit (grammar) entryAssertions;

  # One assertion per entry of sops.secrets or sops.templates whose name is
  # unsafe. `below` is where the file would have gone.
  nameAssertions =
    kind: below: entries:
    lib.mapAttrsToList (
      attr: entry:
      let
        problem = nameProblem entry.name;
      in
      {
        assertion = problem == null;
        message = ''
          sops.${kind}.${lib.strings.escapeNixIdentifier attr}: the name ${builtins.toJSON entry.name} ${toString problem}.
          Names are relative paths below ${below} such as "db/password"; rename the entry or set its `name` option.
          To place the file elsewhere, keep a plain name and set `path` instead (a symlink is made there).'';
      }
    ) entries;

  # The assertions on one secret or template (NixOS) that owner and uid, or
  # group and gid, are not both set. `option` names it in the messages.
  ownerIdAssertions = option: entry: [
    {
      assertion = !(entry.owner != null && entry.uid != null && entry.uid != 0);
      message = "${option} sets both owner = \"${toString entry.owner}\" and uid = ${toString entry.uid}: keep one (owner is looked up by name, uid is used as it is).";
    }
    {
      assertion = !(entry.group != null && entry.gid != null && entry.gid != 0);
      message = "${option} sets both group = \"${toString entry.group}\" and gid = ${toString entry.gid}: keep one (group is looked up by name, gid is used as it is).";
    }
  ];

  # The assertion that a secret's name leaves `rendered` to the templates,
  # which are written to `renderedDir`. `option` names the secret.
  renderedNameAssertion = renderedDir: option: secret: {
    assertion = secret.name != "rendered" && !(lib.hasPrefix "rendered/" secret.name);
    message = "${option}: the name \"${secret.name}\" is taken by templates, which are written to ${renderedDir}; choose another name.";
  };

  # sops-nix's age.keyFile type: a path that is not in the Nix store, since
  # everything in the store is world-readable.
  pathNotInStore = lib.mkOptionType {
    name = "pathNotInStore";
    description = "path not in the Nix store";
    descriptionClass = "noun";
    check = x: (lib.isString x || lib.isPath x) && !lib.path.hasStorePathPrefix (/. + x);
    merge = lib.mergeEqualOption;
  };

  # sops.placeholder values: anything a template can interpolate.
  placeholderType = lib.mkOptionType {
    name = "coercibleToString";
    description = "value that can be coerced to string";
    check = lib.strings.isConvertibleWithToString;
    merge = lib.mergeEqualOption;
  };

  # The placeholder for a secret, spelled as sops-nix spells it so that
  # rendered templates and any hand-written placeholder keep working.
  placeholderFor = name: "<SOPS:${builtins.hashString "sha256" name}:PLACEHOLDER>";

  # Warnings for private keys that are, or will be copied into, the Nix store
  # (a Nix path value such as ./key is copied when the manifest is written).
  storeKeyWarnings =
    option: example: paths:
    map (
      p:
      "${option} contains ${toString p}, which ${
        if lib.isPath p && !lib.path.hasStorePathPrefix p then "will be copied into" else "is in"
      } the world-readable Nix store. Give the key's location on the machine as a string (\"${example}\") instead."
    ) (lib.filter (p: lib.isPath p || lib.hasPrefix "${builtins.storeDir}/" (toString p)) paths);

  # storeKeyWarnings for every private key option of config.sops.
  keyWarnings =
    cfg:
    storeKeyWarnings "sops.age.sshKeyPaths" "/etc/ssh/ssh_host_ed25519_key" cfg.age.sshKeyPaths
    ++ storeKeyWarnings "sops.gnupg.sshKeyPaths" "/etc/ssh/ssh_host_rsa_key" cfg.gnupg.sshKeyPaths
    ++ storeKeyWarnings "sops.age.keyFile" "/var/lib/sops-nix/key.txt" (
      lib.optional (cfg.age.keyFile != null) cfg.age.keyFile
    );

  # The manifest.nix arguments that come straight from a NixOS config.sops;
  # the caller adds secrets, templates, placeholders and, for the
  # neededForUsers manifest, its own mount point and symlink.
  nixosManifestSettings = cfg: {
    inherit (cfg) keepGenerations useTmpfs log validateSopsFiles onFailure;
    hostPubKeys = cfg.hostPubKeys;
    gnupgHome = cfg.gnupg.home;
    gnupgSshKeyPaths = cfg.gnupg.sshKeyPaths;
    ageKeyFile = cfg.age.keyFile;
    ageSshKeyPaths = cfg.age.sshKeyPaths;
  };

  # Every file or directory the installer reads keys from (NixOS options).
  keyPaths =
    cfg:
    lib.optional (cfg.gnupg.home != null) cfg.gnupg.home
    ++ cfg.gnupg.sshKeyPaths
    ++ lib.optional (cfg.age.keyFile != null) cfg.age.keyFile
    ++ cfg.age.sshKeyPaths;

  # Shell code that creates the age key file unless it exists (age.generateKey).
  generateAgeKey = pkgs: keyFile: ''
    if [[ ! -f ${lib.escapeShellArg keyFile} ]]; then
      echo generating a machine-specific age key in ${lib.escapeShellArg keyFile}
      ${pkgs.coreutils}/bin/mkdir -p -m 0700 "$(${pkgs.coreutils}/bin/dirname ${lib.escapeShellArg keyFile})"
      # age-keygen creates the file with mode 0600.
      ${pkgs.age}/bin/age-keygen -o ${lib.escapeShellArg keyFile}
    fi
  '';

  # Hardening for the units that run the installer, limited to settings that
  # cost it nothing. Each is a default a configuration can override.
  #
  # The installer mounts a ramfs on /run/secrets.d and makes symlinks wherever
  # a secret's `path` says (/etc, /home, /var/lib, ...); both must be seen by
  # the whole system. So nothing here gives the unit a mount namespace of its
  # own: PrivateTmp, ProtectHome, ProtectSystem, PrivateDevices,
  # ProtectKernel*, ProtectControlGroups, ReadOnlyPaths and the like would
  # hide the mount from every other process (and ProtectHome/ProtectSystem
  # would also refuse those symlinks). Also left out:
  # - PrivateNetwork: KMS and some age plugins need the network;
  # - PrivateUsers: files are chowned to real users;
  # - RestrictSUIDSGID: a secret's mode may carry those bits;
  # - UMask: directories made for a custom `path` must stay traversable.
  unitHardening = lib.mapAttrs (_: lib.mkDefault) {
    NoNewPrivileges = true;
    # Mounting, chown/chmod of files given away, reading keys of any owner,
    # keeping setgid bits on a secret's mode; CAP_SETPCAP so that the
    # installer may drop what it no longer needs.
    CapabilityBoundingSet = [
      "CAP_SYS_ADMIN"
      "CAP_CHOWN"
      "CAP_FOWNER"
      "CAP_FSETID"
      "CAP_DAC_OVERRIDE"
      "CAP_DAC_READ_SEARCH"
      "CAP_SETPCAP"
    ];
    # AF_UNIX for journald, NSS and systemctl; the IP families for KMS.
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_NETLINK"
      "AF_INET"
      "AF_INET6"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
  };

  # What sops-nix.service and sops-install-secrets-for-users.service share: a
  # oneshot running `command` (the installer on a manifest), after creating
  # the age key if asked to. The caller adds the unit's name and ordering.
  installerService = pkgs: cfg: command: {
    environment = cfg.environment // {
      # Ask systemd for restarts directly: there is no activation script
      # to hand a restart list to.
      SOPS_RESTART_UNITS_VIA_SYSTEMCTL = "1";
    };
    path = cfg.age.plugins;
    unitConfig = {
      DefaultDependencies = false;
      RequiresMountsFor = keyPaths cfg;
    };
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      ExecStartPre = lib.mkIf cfg.age.generateKey [
        "${pkgs.writeShellScript "sops-nix-generate-age-key" (generateAgeKey pkgs cfg.age.keyFile)}"
      ];
      ExecStart = command;
    }
    // unitHardening;
  };

  # The activation scripts setupSecrets and setupSecretsForUsers: run
  # `command` with sops.environment after `deps` (and after generate-age-key
  # when there is one), saying `message` at boot.
  installerActivationScript =
    {
      config,
      deps,
      message,
      command,
    }:
    let
      cfg = config.sops;
    in
    lib.stringAfter (deps ++ lib.optional cfg.age.generateKey "generate-age-key") ''
      [ -e /run/current-system ] || echo ${message}
      ${withEnvironment {
        inherit (cfg) environment;
        plugins = cfg.age.plugins;
      } command}
    ''
    # The installer honours NIXOS_ACTION=dry-activate: it reports what
    # would change and writes nothing but the dry-activation lists.
    // lib.optionalAttrs (config.system ? dryActivationScript) { supportsDryActivation = true; };

  # The manifest as a store file. Building it runs the installer's check mode:
  # `sopsfile` reads every sops file (keys are stored in the clear, so no
  # private key is needed) and fails the build when a secret's key is missing,
  # so `nixos-rebuild build` catches it rather than the next boot.
  manifestFile =
    {
      pkgs,
      name,
      manifest,
      checkPackage,
      validateSopsFiles,
      userMode ? false,
    }:
    pkgs.writeTextFile {
      inherit name;
      text = builtins.toJSON manifest;
      checkPhase = ''
        ${lib.optionalString userMode ''
          # `%r` in user-mode paths needs a runtime directory to expand to.
          export XDG_RUNTIME_DIR=/run/user/sops-nix-check
        ''}
        ${lib.getExe' checkPackage "sops-install-secrets"} -check-mode=${
          if validateSopsFiles then "sopsfile" else "manifest"
        } "$out"
      '';
    };

  # A shell snippet running `command` in a subshell with sops.environment
  # exported. As in sops-nix, each value is put between single quotes and not
  # escaped further, so a value may close the quotes itself (for a command
  # substitution); a literal value holding `'` needs lib.escapeShellArg.
  withEnvironment =
    { environment, plugins }:
    command:
    let
      exports = [
        "export HOME=/var/empty"
      ]
      ++ lib.optional (plugins != [ ]) ''export PATH="${lib.makeBinPath plugins}:$PATH"''
      ++ lib.mapAttrsToList (name: value: "export ${name}='${toString value}'") environment;
    in
    ''
      (
        ${lib.concatStringsSep "\n  " exports}
        ${command}
      )
    '';
}
