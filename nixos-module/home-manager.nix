# The home-manager module: sops-nix's home-manager options, for one user.
#
# Secrets are installed in user mode: generations under
# $XDG_RUNTIME_DIR/secrets.d (`%r` in paths stands for $XDG_RUNTIME_DIR; on
# macOS for `getconf DARWIN_USER_TEMP_DIR`, on a RAM disk the installer mounts), a
# symlink to the live one (by default ~/.config/sops-nix/secrets), no mount and
# no chown. On Linux the systemd user unit sops-nix.service installs them at
# login, and every home-manager activation restarts it so that changed secrets
# land at once. On macOS the launchd agent org.nix-community.home.sops-nix
# does the same: it runs at login, and every activation kicks it again.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.sops;
  sopsLib = import ./lib.nix { inherit lib; };
  sopsOptions = import ./options.nix { inherit lib; };

  secretType = lib.types.submodule (
    { config, ... }:
    {
      imports = [
        (sopsOptions.secret {
          inherit cfg;
          nameDescription = ''
            File name of the secret in the secrets directory
            ({option}`sops.defaultSymlinkPath`).
          '';
        })
      ];

      options = {
        path = lib.mkOption {
          type = lib.types.str;
          default = "${cfg.defaultSymlinkPath}/${config.name}";
          defaultText = lib.literalExpression ''"''${config.sops.defaultSymlinkPath}/''${name}"'';
          description = ''
            Where the secret can be read. If it differs from the default, a
            symlink to the secret is made there. `%r` stands for
            $XDG_RUNTIME_DIR (on macOS for `getconf DARWIN_USER_TEMP_DIR`), `%%` for `%`.
          '';
        };
      };
    }
  );

  templateType = lib.types.submodule {
    imports = [
      (sopsOptions.template {
        inherit pkgs;
        nameDescription = "File name of the rendered template below the `rendered` directory.";
        renderedDir = "${cfg.defaultSymlinkPath}/rendered";
        pathDefaultText = lib.literalExpression ''"''${config.sops.defaultSymlinkPath}/rendered/''${name}"'';
      })
    ];
  };

  manifest = sopsLib.manifestFile {
    inherit pkgs;
    name = "manifest.json";
    checkPackage = cfg.package;
    inherit (cfg) validateSopsFiles;
    userMode = true;
    manifest = import ./manifest.nix {
      inherit (cfg)
        secrets
        templates
        keepGenerations
        log
        validateSopsFiles
        ;
      placeholders = cfg.placeholder;
      secretsMountPoint = cfg.defaultSecretsMountPoint;
      symlinkPath = cfg.defaultSymlinkPath;
      gnupgHome = cfg.gnupg.home;
      gnupgSshKeyPaths = cfg.gnupg.sshKeyPaths;
      ageKeyFile = cfg.age.keyFile;
      ageSshKeyPaths = cfg.age.sshKeyPaths;
      userMode = true;
    };
  };

  install = pkgs.writeShellScript "sops-nix-user" (
    lib.optionalString cfg.age.generateKey (sopsLib.generateAgeKey pkgs cfg.age.keyFile)
    + ''
      exec ${lib.getExe' cfg.package "sops-install-secrets"} -ignore-passwd ${manifest}
    ''
  );

  # One `Environment=` assignment, quoted so that spaces, quotes and `%` in
  # the value reach the installer as written.
  unitEnvironment =
    name: value:
    "\"${name}=${
      lib.replaceStrings [ "\\" "\"" "%" ] [ "\\\\" "\\\"" "%%" ] (toString value)
    }\"";

  inherit (pkgs.stdenv.hostPlatform) isLinux isDarwin;

  systemctl = config.systemd.user.systemctlPath;

  # Restart the unit so that the new manifest is installed now rather than at
  # the next login. Installing again when nothing changed only makes a new
  # generation with the same files (and puts back one deleted by hand).
  restartUnit = ''
    systemdStatus=$(${systemctl} --user is-system-running 2>&1 || true)
    if [[ $systemdStatus == running || $systemdStatus == degraded ]]; then
      run ${systemctl} --user restart sops-nix.service
    else
      echo "sops-nix: the user's systemd is not running; secrets are installed when it starts."
    fi
    unset systemdStatus
  '';

  # macOS: home-manager's launchd module names the agent
  # org.nix-community.home.<name> and loads it in setupLaunchAgents, which
  # runs it once (RunAtLoad) when its plist changed; kicking it installs the
  # new manifest on every activation, changed plist or not.
  agentLabel = "org.nix-community.home.sops-nix";
  kickAgent = ''
    if ! run /bin/launchctl kickstart -k "gui/$(id -u)/${agentLabel}"; then
      echo "sops-nix: the launchd agent ${agentLabel} is not loaded; secrets are installed at the next login."
    fi
  '';

  # launchd starts agents with a bare PATH; the system's directories come
  # after any age plugins (which sops.environment.PATH holds).
  agentEnvironment =
    lib.mapAttrs (_: toString) cfg.environment
    // {
      PATH = lib.concatStringsSep ":" (
        lib.optional (cfg.environment ? PATH) (toString cfg.environment.PATH)
        ++ [ "/usr/bin:/bin:/usr/sbin:/sbin" ]
      );
    };

  logDir = "${config.home.homeDirectory}/Library/Logs/SopsNix";
in
{
  imports = [
    (sopsOptions.common { keyFileExample = "/home/someuser/.age-key.txt"; })
    (sopsOptions.templates templateType)
  ];

  options.sops = {
    secrets = lib.mkOption {
      type = lib.types.attrsOf secretType;
      default = { };
      description = "Secrets to decrypt and install, by name.";
    };

    defaultSymlinkPath = lib.mkOption {
      type = lib.types.str;
      default = "${config.xdg.configHome}/sops-nix/secrets";
      defaultText = lib.literalExpression ''"''${config.xdg.configHome}/sops-nix/secrets"'';
      description = ''
        The symlink to the live generation of secrets: the directory where
        secrets are found. `%r` stands for $XDG_RUNTIME_DIR (on macOS for
        `getconf DARWIN_USER_TEMP_DIR`).
      '';
    };

    defaultSecretsMountPoint = lib.mkOption {
      type = lib.types.str;
      default = "%r/secrets.d";
      description = ''
        The directory holding the generations of decrypted secrets. `%r` stands
        for $XDG_RUNTIME_DIR, which is a tmpfs private to the user (on macOS for
        `getconf DARWIN_USER_TEMP_DIR`, which is on disk: the installer mounts a
        RAM disk here).
      '';
    };

    keepGenerations = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 1;
      description = "How many old generations of secrets to keep; 0 keeps all of them.";
    };

    environment = lib.mkOption {
      type = lib.types.attrsOf (lib.types.either lib.types.str lib.types.path);
      default = { };
      description = ''
        Environment variables for sops-install-secrets, set in the
        sops-nix.service user unit.
      '';
    };

    age = {
      sshKeyPaths = lib.mkOption {
        type = lib.types.listOf lib.types.path;
        default = [ ];
        description = "Ed25519 SSH private keys to decrypt with, as age keys.";
      };
    };

    gnupg = {
      home = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/home/someuser/.gnupg";
        description = "A GnuPG home directory holding the key to decrypt with.";
      };

      qubes-split-gpg = {
        enable = lib.mkEnableOption "Qubes OS split GPG (keys held by another qube) for sops";

        domain = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          default = null;
          example = "vault-gpg";
          description = "The qube that holds the GPG keys.";
        };
      };

      sshKeyPaths = lib.mkOption {
        type = lib.types.listOf lib.types.path;
        default = [ ];
        description = "RSA SSH private keys to use as GPG keys.";
      };
    };
  };

  config = lib.mkMerge [
    (lib.mkIf (cfg.secrets != { } || cfg.templates != { }) {
      assertions = [
        {
          assertion = isLinux || isDarwin;
          message = "This sops home-manager module runs on Linux (a systemd user unit) and macOS (a launchd agent) only.";
        }
        {
          assertion =
            cfg.secrets == { }
            || cfg.gnupg.home != null
            || cfg.gnupg.sshKeyPaths != [ ]
            || cfg.gnupg.qubes-split-gpg.enable
            || cfg.age.keyFile != null
            || cfg.age.sshKeyPaths != [ ];
          message = ''
            sops.secrets is not empty but no key to decrypt it is configured. Set one of:
              sops.age.keyFile = "${config.home.homeDirectory}/.config/sops/age/keys.txt";
              sops.age.sshKeyPaths = [ "${config.home.homeDirectory}/.ssh/id_ed25519" ];
              sops.gnupg.home, sops.gnupg.sshKeyPaths or sops.gnupg.qubes-split-gpg.enable'';
        }
        {
          assertion =
            lib.count lib.id [
              (cfg.gnupg.home != null)
              (cfg.gnupg.sshKeyPaths != [ ])
              cfg.gnupg.qubes-split-gpg.enable
            ] <= 1;
          message = "Set at most one of sops.gnupg.home, sops.gnupg.sshKeyPaths and sops.gnupg.qubes-split-gpg.enable.";
        }
        {
          assertion = !(cfg.gnupg.home != null && cfg.age.keyFile != null);
          message = "sops.gnupg.home and sops.age.keyFile cannot both be set: keep one of them.";
        }
        {
          assertion =
            cfg.gnupg.qubes-split-gpg.enable
            -> (cfg.gnupg.qubes-split-gpg.domain != null && cfg.gnupg.qubes-split-gpg.domain != "");
          message = ''sops.gnupg.qubes-split-gpg.enable needs sops.gnupg.qubes-split-gpg.domain, the qube holding the keys (e.g. "vault-gpg").'';
        }
        {
          assertion = cfg.age.generateKey -> cfg.age.keyFile != null;
          message = ''sops.age.generateKey is set but sops.age.keyFile is not: set sops.age.keyFile to where the key should be created.'';
        }
      ]
      ++ sopsLib.nameAssertions "secrets" cfg.defaultSymlinkPath cfg.secrets
      ++ sopsLib.nameAssertions "templates" "${cfg.defaultSymlinkPath}/rendered" cfg.templates
      ++ lib.mapAttrsToList (
        attr:
        sopsLib.renderedNameAssertion "${cfg.defaultSymlinkPath}/rendered" "sops.secrets.${lib.strings.escapeNixIdentifier attr}"
      ) cfg.secrets
      # Modes (user mode has no owners or units).
      ++ lib.concatLists (
        lib.mapAttrsToList (
          attr: sopsLib.entryAssertions "sops.secrets.${lib.strings.escapeNixIdentifier attr}"
        ) cfg.secrets
      )
      ++ lib.concatLists (
        lib.mapAttrsToList (
          attr: sopsLib.entryAssertions "sops.templates.${lib.strings.escapeNixIdentifier attr}"
        ) cfg.templates
      );

      warnings = sopsLib.keyWarnings cfg;

      home.sessionVariables = lib.mkIf cfg.gnupg.qubes-split-gpg.enable {
        SOPS_GPG_EXEC = "qubes-gpg-client-wrapper";
      };

      sops.environment = {
        SOPS_GPG_EXEC = lib.mkMerge [
          (lib.mkIf (cfg.gnupg.home != null || cfg.gnupg.sshKeyPaths != [ ]) (
            lib.mkDefault "${cfg.gnupg.package}/bin/gpg"
          ))
          (lib.mkIf cfg.gnupg.qubes-split-gpg.enable (lib.mkDefault "qubes-gpg-client-wrapper"))
        ];
        QUBES_GPG_DOMAIN = lib.mkIf cfg.gnupg.qubes-split-gpg.enable (
          lib.mkDefault cfg.gnupg.qubes-split-gpg.domain
        );
        PATH = lib.mkIf (cfg.age.plugins != [ ]) (lib.mkDefault (lib.makeBinPath cfg.age.plugins));
      };

      systemd.user.services.sops-nix = lib.mkIf isLinux {
        Unit.Description = "Install sops secrets for ${config.home.username}";
        Service = {
          Type = "oneshot";
          Environment = lib.mapAttrsToList unitEnvironment cfg.environment;
          ExecStart = "${install}";
        };
        # Secrets that need a GPG agent wait for the graphical session's
        # environment; everything else is installed at login.
        Install.WantedBy =
          if cfg.gnupg.home != null then [ "graphical-session-pre.target" ] else [ "default.target" ];
      };

      # The same files the systemd unit would write, from a login agent; its
      # output goes to ~/Library/Logs/SopsNix as in sops-nix.
      launchd.agents.sops-nix = lib.mkIf isDarwin {
        enable = true;
        config = {
          Label = agentLabel;
          Program = "${install}";
          EnvironmentVariables = agentEnvironment;
          RunAtLoad = true;
          KeepAlive = false;
          StandardOutPath = "${logDir}/stdout";
          StandardErrorPath = "${logDir}/stderr";
        };
      };

      home.activation.sops-nix =
        let
          # After reloadSystemd (Linux) or setupLaunchAgents (macOS), so that
          # the new unit or agent, and its manifest, is what runs.
          after = if isDarwin then "setupLaunchAgents" else "reloadSystemd";
          script = if isDarwin then kickAgent else restartUnit;
        in
        if lib ? hm then lib.hm.dag.entryAfter [ after ] script else script;
    })
  ];
}
