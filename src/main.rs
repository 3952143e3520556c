//! The `sops-install-secrets` command line.
//!
//! Subcommands:
//! - `decrypt [--age-key-file F]... [--ssh-key F]... [--input-type T] [--output-type T] [--extract PATH] FILE`
//!   prints what `sops -d` prints, so any file can be checked against real sops;
//! - `ssh-to-age [--private] FILE` prints the age recipient (or identity) of an
//!   OpenSSH Ed25519 key, as ssh-to-age does.
//! - `ssh-to-pgp [-i FILE] [-o FILE] [--private-key]` prints an RSA SSH key as an
//!   OpenPGP key (its fingerprint on stderr), for `.sops.yaml` `pgp:` rules.
//!
//! - `[-check-mode=off|manifest|sopsfile] [-ignore-passwd] manifest.json`
//!   installs a manifest, exactly as sops-nix's installer is invoked.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sops_install_secrets::install::{self, CheckMode, Options};
use sops_install_secrets::keys::pgp::{GnupgHome, SshPgpKey};
use sops_install_secrets::keys::{Keyring, ssh};
use sops_install_secrets::log::{Logger, Priority};
use sops_install_secrets::manifest::Manifest;
use sops_install_secrets::sops::tree::{parse_extract_path, parse_slash_path};
use sops_install_secrets::sops::{Format, decrypt_owned};

const USAGE: &str = "usage:
  sops-install-secrets demo        (installs bundled examples into a temporary directory)
  sops-install-secrets [-check-mode=off|manifest|sopsfile] [-ignore-passwd] manifest.json
  sops-install-secrets decrypt [--age-key-file FILE]... [--ssh-key FILE]...
                               [--gnupg-home DIR] [--gpg-ssh-key RSA_KEY_FILE]...
                               [--input-type yaml|json|dotenv|ini|binary]
                               [--output-type yaml|json|dotenv|ini|binary]
                               [--extract a/b/c | --extract '[\"a\"][\"b\"][0]'] FILE
  sops-install-secrets ssh-to-age [--private] SSH_KEY_FILE
  sops-install-secrets ssh-to-pgp [-i RSA_KEY_FILE] [-o OUT] [--private-key]

decrypt: with no --age-key-file/--ssh-key/--gnupg-home/--gpg-ssh-key, identities come from
SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, SOPS_AGE_SSH_PRIVATE_KEY_FILE, ~/.config/sops/age/keys.txt
and the GnuPG home (GNUPGHOME or ~/.gnupg, through gpg or SOPS_GPG_EXEC), as sops does.";

/// A command-line mistake: printed with the usage text.
struct UsageError(String);

/// Splits `--flag=value` / `--flag value`; single-dash Go spellings are accepted too.
struct Args {
    rest: std::vec::IntoIter<String>,
}

impl Args {
    fn next_flag(&mut self) -> Option<(String, Option<String>)> {
        let arg = self.rest.next()?;
        if !arg.starts_with('-') || arg == "-" {
            return Some((String::new(), Some(arg)));
        }
        let name = arg.trim_start_matches('-');
        Some(match name.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (name.to_owned(), None),
        })
    }

    fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String, UsageError> {
        inline
            .or_else(|| self.rest.next())
            .ok_or_else(|| UsageError(format!("--{flag} needs a value")))
    }
}

fn format_arg(flag: &str, v: &str) -> Result<Format, UsageError> {
    Format::from_name(v).ok_or_else(|| {
        UsageError(format!(
            "--{flag} {v:?} is not one of yaml, json, dotenv, ini, binary"
        ))
    })
}

fn home_config(rel: &str) -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(Path::new(&x).join(rel));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".config").join(rel))
}

/// The identities sops itself would use when none are named on the command line.
fn default_keyring() -> Result<Keyring, String> {
    let mut keyring = Keyring::new();
    let mut age_file_set = false;
    if let Some(f) = std::env::var_os("SOPS_AGE_KEY_FILE").filter(|f| !f.is_empty()) {
        keyring
            .add_age_key_file(Path::new(&f))
            .map_err(|e| e.to_string())?;
        age_file_set = true;
    }
    if let Ok(text) = std::env::var("SOPS_AGE_KEY") {
        let text = zeroize::Zeroizing::new(text);
        keyring
            .add_age_keys_text(&text, "SOPS_AGE_KEY")
            .map_err(|e| e.to_string())?;
    }
    if let Some(f) = std::env::var_os("SOPS_AGE_SSH_PRIVATE_KEY_FILE").filter(|f| !f.is_empty()) {
        keyring.add_ssh_key(Path::new(&f)).map_err(|e| e.to_string())?;
    }
    if !age_file_set && let Some(default) = home_config("sops/age/keys.txt").filter(|p| p.exists()) {
        keyring.add_age_key_file(&default).map_err(|e| e.to_string())?;
    }
    let gnupg_home = std::env::var_os("GNUPGHOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".gnupg")))
        .filter(|h| h.is_dir());
    if let Some(home) = gnupg_home {
        keyring.set_gnupg_home(GnupgHome::new(home, std::env::var_os("SOPS_GPG_EXEC")));
    }
    Ok(keyring)
}

fn decrypt(mut args: Args) -> Result<ExitCode, UsageError> {
    let mut age_files = Vec::new();
    let mut ssh_keys = Vec::new();
    let mut gpg_ssh_keys = Vec::new();
    let mut gnupg_home = None;
    let (mut input, mut output, mut extract, mut file) = (None, None, None, None);
    while let Some((flag, value)) = args.next_flag() {
        match flag.as_str() {
            "" => {
                if file.replace(value.expect("positional has a value")).is_some() {
                    return Err(UsageError("decrypt takes one FILE".into()));
                }
            }
            "age-key-file" => age_files.push(args.value(&flag, value)?),
            "ssh-key" => ssh_keys.push(args.value(&flag, value)?),
            "gpg-ssh-key" => gpg_ssh_keys.push(args.value(&flag, value)?),
            "gnupg-home" => gnupg_home = Some(args.value(&flag, value)?),
            "input-type" => input = Some(format_arg(&flag, &args.value(&flag, value)?)?),
            "output-type" => output = Some(format_arg(&flag, &args.value(&flag, value)?)?),
            "extract" => extract = Some(args.value(&flag, value)?),
            "h" | "help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(UsageError(format!("unknown flag --{other}"))),
        }
    }
    let file = PathBuf::from(file.ok_or_else(|| UsageError("decrypt needs a FILE".into()))?);
    let input = input.unwrap_or_else(|| Format::from_path(&file));
    let output = output.unwrap_or(input);
    let path = match extract.as_deref() {
        None => Vec::new(),
        Some(spec) if spec.starts_with('[') => parse_extract_path(spec)
            .ok_or_else(|| UsageError(format!("--extract {spec:?} is not of the form [\"a\"][\"b\"][0]")))?,
        Some(spec) => parse_slash_path(spec),
    };

    let fail = |msg: String| {
        eprintln!("sops-install-secrets: {msg}");
        Ok(ExitCode::FAILURE)
    };
    let keyring =
        if age_files.is_empty() && ssh_keys.is_empty() && gpg_ssh_keys.is_empty() && gnupg_home.is_none() {
            match default_keyring() {
                Ok(k) => k,
                Err(e) => return fail(e),
            }
        } else {
            let mut k = Keyring::new();
            for f in &age_files {
                if let Err(e) = k.add_age_key_file(Path::new(f)) {
                    return fail(e.to_string());
                }
            }
            for f in &ssh_keys {
                if let Err(e) = k.add_ssh_key(Path::new(f)) {
                    return fail(e.to_string());
                }
            }
            for f in &gpg_ssh_keys {
                if let Err(e) = k.add_ssh_key_as_pgp(Path::new(f)) {
                    return fail(e.to_string());
                }
            }
            if let Some(home) = gnupg_home {
                k.set_gnupg_home(GnupgHome::new(home.into(), std::env::var_os("SOPS_GPG_EXEC")));
            }
            k
        };
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
    };
    let doc = match decrypt_owned(bytes, input, &keyring) {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot decrypt {} (as {input}): {e}", file.display())),
    };
    let out = match doc.extract(&path, output) {
        Ok(o) => o,
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(&out).and_then(|()| stdout.flush()) {
        return fail(format!("cannot write to stdout: {e}"));
    }
    Ok(ExitCode::SUCCESS)
}

fn ssh_to_age(mut args: Args) -> Result<ExitCode, UsageError> {
    let mut private = false;
    let mut file = None;
    while let Some((flag, value)) = args.next_flag() {
        match flag.as_str() {
            "" => file = value,
            "private" => private = true,
            other => return Err(UsageError(format!("unknown flag --{other}"))),
        }
    }
    let file = PathBuf::from(file.ok_or_else(|| UsageError("ssh-to-age needs an SSH key file".into()))?);
    let ids = match ssh::load(&file) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("sops-install-secrets: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(derived) = ids.derived else {
        eprintln!(
            "sops-install-secrets: {} is not an ssh-ed25519 key; only Ed25519 keys convert to age X25519 keys",
            file.display()
        );
        return Ok(ExitCode::FAILURE);
    };
    let mut stdout = std::io::stdout().lock();
    let line = if private {
        derived.identity.as_str()
    } else {
        derived.recipient.as_str()
    };
    if writeln!(stdout, "{line}").is_err() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn ssh_to_pgp(mut args: Args) -> Result<ExitCode, UsageError> {
    let (mut input, mut output, mut private) = (None, None, false);
    while let Some((flag, value)) = args.next_flag() {
        match flag.as_str() {
            "" | "i" => input = Some(args.value("i", value)?),
            "o" => output = Some(args.value(&flag, value)?),
            "private-key" => private = true,
            other => return Err(UsageError(format!("unknown flag --{other}"))),
        }
    }
    let input = PathBuf::from(input.ok_or_else(|| UsageError("ssh-to-pgp needs -i RSA_KEY_FILE".into()))?);
    let fail = |msg: String| {
        eprintln!("sops-install-secrets: {msg}");
        Ok(ExitCode::FAILURE)
    };
    let key = match SshPgpKey::load(&input) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let armored = if private {
        key.secret_armored()
    } else {
        key.public_armored().map(zeroize::Zeroizing::new)
    };
    let armored = match armored {
        Ok(a) => a,
        Err(e) => return fail(format!("cannot serialize the key: {e}")),
    };
    let written = match &output {
        Some(path) => write_new_file(Path::new(path), armored.as_bytes(), private),
        None => std::io::stdout().lock().write_all(armored.as_bytes()),
    };
    if let Err(e) = written {
        return fail(format!("cannot write the key: {e}"));
    }
    eprintln!("{}", key.fingerprint());
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to a file that must not exist yet; mode 0600 for secret keys.
fn write_new_file(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?
        .write_all(bytes)
}

/// The activation-time mode, with sops-nix's flags (Go style `-flag`, GNU `--flag` too).
fn install_manifest(argv: Vec<String>) -> Result<ExitCode, UsageError> {
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
            other => return Err(UsageError(format!("unknown flag -{other}"))),
        }
    }
    let manifest_path = PathBuf::from(manifest_path.ok_or_else(|| UsageError("no manifest given".into()))?);
    // Check modes run at build time, where there is no user session: like
    // sops-nix, `%r` then expands to nothing.
    let runtime_dir = std::env::var("XDG_RUNTIME_DIR")
        .ok()
        .or_else(|| (check_mode != CheckMode::Off).then(String::new));
    let (manifest, earlier) = match Manifest::load_lenient(&manifest_path, runtime_dir.as_deref()) {
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
        dry_run: std::env::var("NIXOS_ACTION").is_ok_and(|v| v == "dry-activate"),
        restart_via_systemctl: std::env::var("SOPS_RESTART_UNITS_VIA_SYSTEMCTL").is_ok_and(|v| v == "1"),
        nixos_run_dir: PathBuf::from("/run/nixos"),
        age_key_file_env: std::env::var_os("SOPS_AGE_KEY_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        gpg_exec: std::env::var_os("SOPS_GPG_EXEC"),
    };
    let logger = Logger::from_env();
    match install::install(&manifest, &opts, earlier) {
        Ok(report) => {
            for line in &report.log {
                let fields: Vec<(&str, &str)> = line.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                logger.log(line.priority, &line.message, &fields);
            }
            let mut stdout = std::io::stdout().lock();
            for line in &report.changes {
                let _ = writeln!(stdout, "{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
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

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let result = match argv[0].as_str() {
        "decrypt" => {
            argv.remove(0);
            decrypt(Args {
                rest: argv.into_iter(),
            })
        }
        "ssh-to-age" => {
            argv.remove(0);
            ssh_to_age(Args {
                rest: argv.into_iter(),
            })
        }
        "ssh-to-pgp" => {
            argv.remove(0);
            ssh_to_pgp(Args {
                rest: argv.into_iter(),
            })
        }
        "demo" => match sops_install_secrets::demo::demo() {
            Ok(text) => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("sops-install-secrets: demo failed: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => install_manifest(argv),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(msg)) => {
            eprintln!("sops-install-secrets: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
