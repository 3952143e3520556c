//! The activation-time mode: `sops-install-secrets [-check-mode=...] [-ignore-passwd] manifest.json`,
//! exactly as sops-nix's installer is invoked, and its logging.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use sops_install_secrets::install::{self, CheckMode, EarlyFiles, KeysGroup, Options};
use sops_install_secrets::keys::sops_env::SopsAgeEnv;
use sops_install_secrets::log::{Logger, Priority};
use sops_install_secrets::manifest::Manifest;
use sops_install_secrets::safe_path::{self, Trust};

use super::{Args, USAGE, UsageError, VERSION};

/// The activation-time mode, with sops-nix's flags (Go style `-flag`, GNU `--flag` too).
pub fn install_manifest(argv: Vec<String>) -> Result<ExitCode, UsageError> {
    let mut check_mode = CheckMode::Off;
    let mut ignore_passwd = false;
    let mut manifest_path = None;
    let mut args = Args {
        rest: argv.into_iter(),
    };
    while let Some((flag, value)) = args.next_flag() {
        match flag.as_str() {
            "" => {
                if manifest_path
                    .replace(value.expect("positional has a value"))
                    .is_some()
                {
                    return Err(UsageError("only one manifest can be installed per run".into()));
                }
            }
            "check-mode" => {
                check_mode = match args.value(&flag, value)?.as_str() {
                    "off" => CheckMode::Off,
                    "manifest" => CheckMode::Manifest,
                    "sopsfile" => CheckMode::SopsFile,
                    other => {
                        return Err(UsageError(format!(
                            "invalid -check-mode {other:?}: use off, manifest or sopsfile"
                        )));
                    }
                }
            }
            "ignore-passwd" => ignore_passwd = value.is_none_or(|v| v != "false"),
            "h" | "help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            "version" => {
                println!("{VERSION}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(UsageError(format!("unknown flag -{other}"))),
        }
    }
    let manifest_path = PathBuf::from(manifest_path.ok_or_else(|| UsageError("no manifest given".into()))?);
    let dry_run = std::env::var("NIXOS_ACTION").is_ok_and(|v| v == "dry-activate");
    // Check modes run at build time, where there is no user session: like
    // sops-nix, `%r` then expands to nothing.
    #[cfg(not(target_os = "macos"))]
    let session_dir = std::env::var("XDG_RUNTIME_DIR").ok();
    // On macOS `%r` is the user's temporary directory (DARWIN_USER_TEMP_DIR),
    // as sops-nix has it there, so both installers agree on the paths;
    // launchd sets no $XDG_RUNTIME_DIR, which is only a fallback.
    #[cfg(target_os = "macos")]
    let session_dir = sops_install_secrets::manifest::darwin_user_temp_dir()
        .ok()
        .or_else(|| std::env::var("XDG_RUNTIME_DIR").ok());
    // Without either, a user-mode manifest is refused.
    let runtime_dir = session_dir.or_else(|| (check_mode != CheckMode::Off).then(String::new));
    // Like every path the manifest names: no other user's symlink, a regular file only.
    let trust = match check_mode {
        CheckMode::Off => Trust::invoker(),
        _ => Trust::build_check(),
    };
    let bytes = match safe_path::read(&manifest_path, trust) {
        Ok(b) => std::sync::Arc::new(b),
        Err(e) => {
            eprintln!("sops-install-secrets: cannot read the manifest: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // An install (not a check, a dry run or -ignore-passwd) needs the secrets
    // directories' group: it is looked up on a helper while the manifest is
    // checked. Not before the manifest is read: the lookup may load NSS
    // modules, and mapping them stalls the reading's page faults (about 3%
    // of a 1,000-secret run on the benchmark host).
    let keys_group = if check_mode == CheckMode::Off && !ignore_passwd && !dry_run {
        KeysGroup::ahead()
    } else {
        KeysGroup::when_asked()
    };
    // An install decrypts what it can on a helper while the manifest is checked.
    let sops_env = SopsAgeEnv::from_process();
    let early_files = if check_mode == CheckMode::Off {
        EarlyFiles::ahead(std::sync::Arc::clone(&bytes), runtime_dir.clone(), &sops_env)
    } else {
        EarlyFiles::none()
    };
    let (manifest, earlier) = match Manifest::parse(&bytes, runtime_dir.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sops-install-secrets: {}: {e}", manifest_path.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    if check_mode != CheckMode::Off {
        return Ok(match install::check(&manifest, check_mode, earlier) {
            Ok(()) => ExitCode::SUCCESS,
            Err(install::Failed(problems)) => {
                eprintln!("sops-install-secrets: {} is not valid:", manifest_path.display());
                for p in problems {
                    eprintln!("  {}", p.message);
                }
                ExitCode::FAILURE
            }
        });
    }
    let opts = Options {
        check_mode,
        ignore_passwd,
        dry_run,
        restart_via_systemctl: std::env::var("SOPS_RESTART_UNITS_VIA_SYSTEMCTL").is_ok_and(|v| v == "1"),
        nixos_run_dir: PathBuf::from("/run/nixos"),
        sops_env,
        gpg_exec: std::env::var_os("SOPS_GPG_EXEC"),
        lock_wait: install::lock::wait_from_env(),
        keys_group,
        early_files,
    };
    let logger = Logger::from_env();
    let outcome = install::install(&manifest, &opts, earlier);
    // The process ends here: the manifest (names, paths, units, template
    // texts; no secret) is left to the kernel rather than freed entry by entry.
    std::mem::forget(manifest);
    // Warnings, change lines and "installed generation N" are told on every
    // outcome: a failed run may still have installed, or seen why it failed.
    let report = &outcome.report;
    for line in &report.log {
        let fields: Vec<(&str, &str)> = line.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        logger.log(line.priority, &line.message, &fields);
    }
    {
        let mut stdout = std::io::stdout().lock();
        for line in &report.changes {
            let _ = writeln!(stdout, "{line}");
        }
        let _ = stdout.flush();
    }
    match outcome.result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(install::Failed(problems)) => {
            let manifest_shown = manifest_path.display().to_string();
            logger.mark_failure(&manifest_shown);
            logger.log(
                Priority::Error,
                &format!("installing {manifest_shown} failed:"),
                &[
                    ("manifest", &manifest_shown),
                    ("event", sops_install_secrets::log::FAILED_EVENT),
                ],
            );
            for p in problems {
                let indented: Vec<String> = p
                    .message
                    .lines()
                    .enumerate()
                    .map(|(i, l)| format!("{}{l}", if i == 0 { "  " } else { "    " }))
                    .collect();
                let mut fields: Vec<(&str, &str)> = vec![("manifest", &manifest_shown)];
                fields.extend(p.fields.iter().map(|(k, v)| (*k, v.as_str())));
                logger.log(Priority::Error, &indented.join("\n"), &fields);
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
