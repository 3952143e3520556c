# The NixOS module: sops-nix's options, installed by the Rust sops-install-secrets.
#
# Every option keeps the name, type, default and meaning it has in sops-nix, so
# a configuration written for sops-nix evaluates unchanged. What happens:
#
#   evaluation  the options become a manifest (manifest.nix) written to the
#               store; building it runs `sops-install-secrets -check-mode=...`,
#               so a key missing from a sops file fails `nixos-rebuild build`;
#   activation  the `setupSecrets` activation script (or, with
#               useSystemdActivation, the oneshot sops-nix.service) installs the
#               manifest: a new generation under /run/secrets.d, /run/secrets
#               pointing at it, and restart/reload requests for changed secrets.
#
# Secrets marked neededForUsers go through a second manifest installed before
# users are created (secrets-for-users.nix); templates are in templates.nix.
# Options declared alike in the home-manager module come from options.nix.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.sops;
  sopsLib = import ./lib.nix { inherit lib; };
  sopsOptions = import ./options.nix { inherit lib; };
  users = config.users.users;

  regularSecrets = lib.filterAttrs (_: secret: !secret.neededForUsers) cfg.secrets;
  installsAnything = regularSecrets != { } || cfg.templates != { };

  manifest = sopsLib.manifestFile {
    inherit pkgs;
    name = "manifest.json";
    checkPackage = cfg.validationPackage;
    inherit (cfg) validateSopsFiles;
    manifest = import ./manifest.nix (
      sopsLib.nixosManifestSettings cfg
      // {
        secrets = regularSecrets;
        templates = cfg.templates;
        placeholders = cfg.placeholder;
      }
    );
  };

  installCommand = "${lib.getExe' cfg.package "sops-install-secrets"} ${manifest}";

  generateAgeKey = sopsLib.generateAgeKey pkgs cfg.age.keyFile;

  # The ed25519 (for age) or rsa (for GPG) host keys of services.openssh, except
  # keys that sops itself installs under /run/secrets (they cannot decrypt
  # themselves).
  openSshHostKeys =
    type:
    if config.services.openssh.enable then
      map (key: key.path) (
        lib.filter (
          key: key.type == type && !(lib.hasPrefix "/run/secrets" key.path)
        ) config.services.openssh.hostKeys
      )
    else
      [ ];

  secretType = lib.types.submodule (
    { config, name, ... }:
    {
      imports = [
        (sopsOptions.secret {
          inherit cfg;
          nameDescription = ''
            File name of the secret below /run/secrets (or
            /run/secrets-for-users); may contain `/` to make subdirectories.
          '';
        })
        (sopsOptions.ownership {
          kind = "secrets";
          what = "file";
          str = lib.types.str;
          inherit users;
        })
        (sopsOptions.units "this secret changes")
      ];

      options = {
        path = lib.mkOption {
          type = lib.types.str;
          default =
            if config.neededForUsers then
              "/run/secrets-for-users/${config.name}"
            else
              "/run/secrets/${config.name}";
          defaultText = lib.literalMD "`/run/secrets-for-users/<name>` if neededForUsers is set, `/run/secrets/<name>` otherwise";
          description = ''
            Where the secret can be read. If it differs from the default, a
            symlink to the secret is made there.
          '';
        };
        sopsFileHash = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = lib.optionalString cfg.validateSopsFiles (builtins.hashFile "sha256" config.sopsFile);
          defaultText = lib.literalMD "the sha256 of `sopsFile` when validateSopsFiles is set, `\"\"` otherwise";
          description = ''
            SHA-256 of the sops file, for example to put into
            {option}`systemd.services.<name>.restartTriggers`.
          '';
        };
        credential = lib.mkOption {
          type = lib.types.bool;
          default = false;
          description = ''
            Also offer this secret as a systemd credential: a root-owned link
            /run/credstore/<name> into /run/secrets, so that a service can
            use `LoadCredential=<name>` (and read `$CREDENTIALS_DIRECTORY/<name>`)
            without being in the secret's group, `DynamicUser=` services
            included. The name must not contain `/`.
          '';
        };

        neededForUsers = lib.mkOption {
          type = lib.types.bool;
          default = false;
          description = ''
            Install this secret before users and groups are created, under
            /run/secrets-for-users, so that it can hold a password for
            {option}`users.users.<name>.hashedPasswordFile`. Such a secret is
            always owned by root.
          '';
        };
      };
    }
  );
in
{
  imports = [
    (sopsOptions.common { keyFileExample = "/var/lib/sops-nix/key.txt"; })
    ./templates.nix
    ./secrets-for-users.nix
    (lib.mkRenamedOptionModule [ "sops" "gnupgHome" ] [ "sops" "gnupg" "home" ])
    (lib.mkRenamedOptionModule [ "sops" "sshKeyPaths" ] [ "sops" "gnupg" "sshKeyPaths" ])
  ];

  options.sops = {
    secrets = lib.mkOption {
      type = lib.types.attrsOf secretType;
      default = { };
      description = "Secrets to decrypt and install, by name.";
    };

    onFailure = lib.mkOption {
      type = lib.types.enum [
        "abort"
        "keep-previous"
      ];
      default = "abort";
      description = ''
        What to do when some secrets cannot be installed (no key opens their
        file, a key path is missing, an owner is unknown). `abort` installs
        nothing and keeps the live secrets, as sops-nix does. `keep-previous`
        installs the others; each failed secret keeps its previous value,
        owner and mode (or stays absent if it never had one). Either way the
        installation is reported as failed.
      '';
    };

    hostPubKeyFiles = lib.mkOption {
      type = lib.types.listOf lib.types.path;
      default = [ ];
      example = lib.literalExpression "[ ./hosts/web1/ssh_host_ed25519_key.pub ]";
      description = ''
        Files with this host's public keys (OpenSSH `.pub` files or `age1...`
        recipients), read at evaluation time into {option}`sops.hostPubKeys`.
      '';
    };

    hostPubKeys = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = map (f: lib.trim (builtins.readFile f)) cfg.hostPubKeyFiles;
      defaultText = lib.literalExpression "map (f: lib.trim (builtins.readFile f)) config.sops.hostPubKeyFiles";
      description = ''
        This host's public keys. When set, building the configuration fails
        for a sops file that none of them can open (the most common cause of
        a boot without secrets), naming the file and the missing recipient;
        add the host to `.sops.yaml` and run `sops updatekeys`. Needs
        {option}`sops.validateSopsFiles`.
      '';
    };

    keepGenerations = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 1;
      description = ''
        How many old generations of secrets to keep in /run/secrets.d; 0 keeps
        all of them.
      '';
    };

    environment = lib.mkOption {
      type = lib.types.attrsOf (lib.types.either lib.types.str lib.types.path);
      default = { };
      description = ''
        Environment variables for sops-install-secrets. In the activation
        scripts each value is placed between single quotes and not escaped
        further, so a value can end the quotes for a command substitution;
        quote values that contain `'` with lib.escapeShellArg. The variables are
        set in a subshell, once for each manifest.
      '';
    };

    validationPackage = lib.mkOption {
      type = lib.types.package;
      default =
        if pkgs.stdenv.buildPlatform == pkgs.stdenv.hostPlatform then
          cfg.package
        else
          pkgs.pkgsBuildHost.callPackage ./package.nix { };
      defaultText = lib.literalMD "{option}`sops.package`, or a build of it for the build machine when cross-compiling";
      description = ''
        The sops-install-secrets package that checks the manifest while the
        configuration is built; it runs on the build machine.
      '';
    };

    useTmpfs = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Keep secrets on a tmpfs mounted with `noswap` instead of on ramfs.

        Before Linux 6.4 a tmpfs has no `noswap` and its pages can be written
        to swap unencrypted; there, use this only with encrypted swap
        (`swapDevices.*.randomEncryption.enable`).
      '';
    };

    useSystemdActivation = lib.mkOption {
      type = lib.types.bool;
      default =
        (options.systemd ? sysusers && config.systemd.sysusers.enable)
        || (options.services ? userborn && config.services.userborn.enable);
      defaultText = lib.literalMD "true when systemd-sysusers or userborn creates the users";
      description = ''
        Install secrets from the oneshot unit sops-nix.service (also reachable
        as sops-install-secrets.service) instead of from an activation script.
        It is needed when systemd-sysusers or userborn create the users, since
        they run after activation scripts; it also lets other units order
        themselves around the installation, or the installation wait for the
        file systems its keys are on.
      '';
    };

    kms.enable = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Set when a sops file is opened with a cloud key service (gcp_kms, kms,
        hc_vault or azure_kv stanzas) rather than, or before, a local key. The
        installer then asks that service over the network at activation, so
        sops-nix.service wants and is ordered after network-online.target
        (with useSystemdActivation). Credentials come from the environment as
        in the vendors' SDKs (the instance's service account, instance role or
        managed identity need no configuration; others go in
        sops.environment, e.g. GOOGLE_APPLICATION_CREDENTIALS, VAULT_ADDR).
        Activation scripts (useSystemdActivation = false) run before the
        network is up at boot, so there a network key source only works on
        switches; use the systemd unit.
      '';
    };

    age = {
      sshKeyPaths = lib.mkOption {
        type = lib.types.listOf lib.types.path;
        default = openSshHostKeys "ed25519";
        defaultText = lib.literalMD "the ed25519 keys of {option}`services.openssh.hostKeys` when openssh is enabled";
        description = ''
          Ed25519 SSH private keys to decrypt with, as age keys (the identity
          ssh-to-age derives). The derived keys stay in memory.
        '';
      };
    };

    gnupg = {
      home = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/root/.gnupg";
        description = ''
          A GnuPG home directory holding the key to decrypt with. Cannot be
          combined with {option}`sops.gnupg.sshKeyPaths` or
          {option}`sops.age.keyFile`.
        '';
      };

      sshKeyPaths = lib.mkOption {
        type = lib.types.listOf lib.types.path;
        default = openSshHostKeys "rsa";
        defaultText = lib.literalMD "the rsa keys of {option}`services.openssh.hostKeys` when openssh is enabled";
        description = ''
          RSA SSH private keys to use as GPG keys. Set it to `[ ]` when you set
          {option}`sops.gnupg.home`.
        '';
      };
    };
  };

  config = lib.mkMerge [
    {
      system.build.sops-nix-manifest = manifest;
    }

    (lib.mkIf (cfg.secrets != { }) {
      assertions = [
        {
          assertion =
            cfg.gnupg.home != null
            || cfg.gnupg.sshKeyPaths != [ ]
            || cfg.age.keyFile != null
            || cfg.age.sshKeyPaths != [ ];
          message = ''
            sops.secrets is not empty but no key to decrypt it is configured. Set one of:
              sops.age.sshKeyPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];  (or services.openssh.enable = true, whose ed25519 host keys are the default)
              sops.age.keyFile = "/var/lib/sops-nix/key.txt";
              sops.gnupg.home = "/root/.gnupg";  or  sops.gnupg.sshKeyPaths = [ ... ];'';
        }
        {
          assertion = !(cfg.gnupg.home != null && cfg.gnupg.sshKeyPaths != [ ]);
          message = ''
            sops.gnupg.home and sops.gnupg.sshKeyPaths cannot both be set. With a GnuPG home, add
              sops.gnupg.sshKeyPaths = [ ];
            (it defaults to the rsa host keys of services.openssh).'';
        }
        {
          assertion = !(cfg.gnupg.home != null && cfg.age.keyFile != null);
          message = "sops.gnupg.home and sops.age.keyFile cannot both be set: keep one of them.";
        }
        {
          assertion = cfg.age.generateKey -> cfg.age.keyFile != null;
          message = ''sops.age.generateKey is set but sops.age.keyFile is not: set sops.age.keyFile to where the key should be created, e.g. "/var/lib/sops-nix/key.txt".'';
        }
      ]
      ++ sopsLib.nameAssertions "secrets" "/run/secrets (or /run/secrets-for-users)" cfg.secrets
      ++ lib.concatLists (
        lib.mapAttrsToList (
          attr: secret:
          let
            option = "sops.secrets.${lib.strings.escapeNixIdentifier attr}";
          in
          sopsLib.ownerIdAssertions option secret
          ++ sopsLib.entryAssertions option secret
          ++ [ (sopsLib.renderedNameAssertion "/run/secrets/rendered" option secret) ]
        ) cfg.secrets
      );

      warnings =
        sopsLib.keyWarnings cfg
        ++ lib.optional (cfg.kms.enable && !cfg.useSystemdActivation) (
          "sops.kms.enable is set but secrets are installed by an activation script, which runs before the "
          + "network is up at boot: cloud key services can only be reached on switches. "
          + "Set sops.useSystemdActivation = true."
        )
        ++ lib.optional (cfg.kms.enable && lib.any (s: s.neededForUsers) (lib.attrValues cfg.secrets)) (
          "sops.kms.enable is set and some secrets have neededForUsers: those are installed before users "
          + "exist, and before the network is up at boot, so they cannot come from a cloud key service. "
          + "Encrypt their sops file to a local key (age, SSH or GPG) too."
        );

      # sshKeyPaths keys are used in process; only a GnuPG home needs gpg.
      sops.environment.SOPS_GPG_EXEC = lib.mkIf (cfg.gnupg.home != null) (
        lib.mkDefault "${cfg.gnupg.package}/bin/gpg"
      );
    })

    (lib.mkIf (cfg.age.generateKey && (cfg.secrets != { } || cfg.templates != { })) {
      system.activationScripts.generate-age-key = lib.stringAfter [ ] generateAgeKey;
    })

    (lib.mkIf (installsAnything && !cfg.useSystemdActivation) {
      system.activationScripts.setupSecrets = sopsLib.installerActivationScript {
        inherit config;
        deps = [
          "specialfs"
          "users"
          "groups"
        ];
        message = "setting up secrets...";
        command = installCommand;
      };
    })

    (lib.mkIf (installsAnything && cfg.useSystemdActivation) {
      # Declared under sops-nix's name for the unit, so that a configuration's
      # systemd.services.sops-install-secrets.* settings (after, unitConfig,
      # ...) land on it instead of making a second unit; the unit file keeps
      # this module's name, sops-nix.service, with sops-nix's as an alias.
      systemd.services.sops-install-secrets = sopsLib.installerService pkgs cfg installCommand // {
        name = lib.mkForce "sops-nix.service";
        description = "Install sops secrets";
        aliases = [ "sops-install-secrets.service" ];
        wantedBy = [ "sysinit.target" ];
        after = [
          "local-fs.target"
          "systemd-sysusers.service"
          "userborn.service"
        ]
        # A cloud key service is asked over the network.
        ++ lib.optional cfg.kms.enable "network-online.target";
        wants = lib.optional cfg.kms.enable "network-online.target";
        # On a switch that changes the manifest, switch-to-configuration
        # stops this unit, then restarts sysinit-reactivation.target, which
        # starts it again with the new manifest before any other unit is
        # reloaded or restarted (those may need the new secrets).
        requiredBy = [ "sysinit-reactivation.target" ];
        # Before sysinit.target, so that ordinary services (ordered after
        # sysinit.target by their default dependencies) start with their
        # secrets in place; WantedBy alone does not order (sops-nix #986).
        # A cloud key service needs the network, which comes after
        # sysinit.target: then services order after sops-secrets.target.
        before = [ "sysinit-reactivation.target" ] ++ lib.optional (!cfg.kms.enable) "sysinit.target";
      };

      # systemd.services.sops-nix would be a second unit file named
      # sops-nix.service, silently dropped for this one.
      assertions = [
        {
          assertion = !(config.systemd.services ? sops-nix);
          message = "systemd.services.sops-nix is set, but the unit that installs secrets (sops-nix.service) is configured as systemd.services.sops-install-secrets, sops-nix's name for it: move those settings there.";
        }
      ];

      # Services that need their secrets can order after this target: it is
      # reached only when the installation succeeded (a failed sops-nix.service
      # fails it, and `systemctl --failed` shows both).
      systemd.targets.sops-secrets = {
        description = "sops secrets installed";
        requires = [ "sops-nix.service" ];
        after = [ "sops-nix.service" ];
        wantedBy = [ "multi-user.target" ];
      };
    })

    (lib.mkIf (installsAnything && !cfg.useSystemdActivation) {
      # In activation-script mode a failed installation fails the activation
      # (and is marked in the journal with SOPS_EVENT=sops-install-secrets-failed);
      # the target only says that a generation of secrets is live.
      systemd.targets.sops-secrets = {
        description = "sops secrets installed";
        wantedBy = [ "multi-user.target" ];
        unitConfig.ConditionPathExists = "/run/secrets";
      };
    })
  ];
}
