//! The `sops-install-secrets` command line.
//!
//! Subcommands:
//! - `decrypt [--age-key-file F]... [--ssh-key F]... [--input-type T] [--output-type T] [--extract PATH] FILE`
//!   prints what `sops -d` prints, so any file can be checked against real sops;
//! - `ssh-to-age [-private-key] [-i FILE] [-o FILE]` prints the age recipients of
//!   OpenSSH Ed25519 public keys (or the identity of a private key), as Mic92's
//!   ssh-to-age does.
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
use sops_install_secrets::keys::sops_env::SopsAgeEnv;
use sops_install_secrets::keys::{Keyring, ssh};
use sops_install_secrets::log::{Logger, Priority};
use sops_install_secrets::manifest::Manifest;
use sops_install_secrets::safe_path::{self, Trust};
use sops_install_secrets::sops::tree::{parse_extract_path, parse_slash_path};
use sops_install_secrets::sops::{Format, decrypt_bytes};

const USAGE: &str = "usage:
  sops-install-secrets demo        (installs bundled examples into a temporary directory)
  sops-install-secrets [-check-mode=off|manifest|sopsfile] [-ignore-passwd] manifest.json
  sops-install-secrets decrypt [--age-key-file FILE]... [--ssh-key FILE]...
                               [--gnupg-home DIR] [--gpg-ssh-key RSA_KEY_FILE]...
                               [--input-type yaml|json|dotenv|ini|binary]
                               [--output-type yaml|json|dotenv|ini|binary]
                               [--extract a/b/c | --extract '[\"a\"][\"b\"][0]'] FILE
  sops-install-secrets ssh-to-age [-private-key] [-i FILE] [-o FILE]
  sops-install-secrets ssh-to-pgp [-i RSA_KEY_FILE] [-o OUT] [--private-key]
  sops-install-secrets --version

Each subcommand takes --help.

decrypt: with no --age-key-file/--ssh-key/--gnupg-home/--gpg-ssh-key, identities come from
SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, SOPS_AGE_KEY_CMD, SOPS_AGE_SSH_PRIVATE_KEY_FILE, ~/.config/sops/age/keys.txt
and the GnuPG home (GNUPGHOME or ~/.gnupg, through gpg or SOPS_GPG_EXEC), as sops does.";

/// What `--version` prints.
const VERSION: &str = concat!("sops-install-secrets ", env!("CARGO_PKG_VERSION"));

const DEMO_HELP: &str =
    "Installs bundled example secrets (encrypted by real sops to a bundled demo key) into a
temporary directory, as the installer would under /run/secrets, and prints what it made.
Needs no root and touches nothing outside the temporary directory.";

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
    let env = SopsAgeEnv::from_process();
    let problems = env.add_to(&mut keyring, true);
    if !problems.is_empty() {
        return Err(problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "));
    }
    let age_file_set = env.key_file.is_some();
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
    let doc = match decrypt_bytes(&bytes, input, &keyring) {
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

const SSH_TO_AGE_USAGE: &str = "usage: sops-install-secrets ssh-to-age [-private-key] [-i FILE] [-o FILE]

Converts OpenSSH Ed25519 keys to age keys, as Mic92's ssh-to-age does. Reads FILE
(or standard input): public keys, one per line (`ssh-ed25519 AAAA... comment`, as in
~/.ssh/id_ed25519.pub or authorized_keys), each printed as an age recipient (age1...);
with -private-key, an OpenSSH private key, printed as an age identity (AGE-SECRET-KEY-1...).
Given a private key without -private-key, prints its recipient. Lines with other key types
are reported on stderr and skipped.";

fn ssh_to_age(mut args: Args) -> Result<ExitCode, UsageError> {
    let (mut private, mut input, mut output) = (false, None, None);
    while let Some((flag, value)) = args.next_flag() {
        match flag.as_str() {
            "" | "i" => {
                if input.replace(args.value("i", value)?).is_some() {
                    return Err(UsageError("ssh-to-age reads one input".into()));
                }
            }
            "o" => output = Some(args.value(&flag, value)?),
            "private-key" | "private" => private = true,
            "h" | "help" => {
                println!("{SSH_TO_AGE_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(UsageError(format!("unknown flag --{other}"))),
        }
    }
    let fail = |msg: String| {
        eprintln!("sops-install-secrets: {msg}");
        Ok(ExitCode::FAILURE)
    };
    let (text, shown) = match &input {
        Some(f) if f != "-" => match std::fs::read_to_string(f) {
            Ok(t) => (zeroize::Zeroizing::new(t), f.clone()),
            Err(e) => return fail(format!("cannot read {f}: {e}")),
        },
        _ => {
            let mut t = zeroize::Zeroizing::new(String::new());
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut t) {
                return fail(format!("cannot read standard input: {e}"));
            }
            (t, "standard input".to_owned())
        }
    };
    let is_private = text.trim_start().starts_with("-----BEGIN");
    let mut lines: Vec<zeroize::Zeroizing<String>> = Vec::new();
    let mut failed = false;
    if private || is_private {
        if !is_private {
            return fail(format!(
                "{shown} is not an OpenSSH private key (-private-key converts private keys)"
            ));
        }
        let ids = match ssh::from_openssh(&text, &shown) {
            Ok(ids) => ids,
            Err(e) => return fail(e.to_string()),
        };
        let Some(derived) = ids.derived else {
            return fail(format!(
                "{shown} is not an ssh-ed25519 key; only Ed25519 keys convert to age X25519 keys"
            ));
        };
        lines.push(zeroize::Zeroizing::new(if private {
            derived.identity.as_str().to_owned()
        } else {
            derived.recipient.clone()
        }));
    } else {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match ssh::parse_host_key(line) {
                Ok(ssh::HostKey {
                    age: Some(age),
                    ssh: Some(_),
                    ..
                }) => lines.push(zeroize::Zeroizing::new(age)),
                Ok(_) => {
                    // Skipped, not failed: authorized_keys files mix key types.
                    let kind = line.split_whitespace().next().unwrap_or("");
                    eprintln!(
                        "sops-install-secrets: {shown} line {}: skipped a {kind} key; only ssh-ed25519 keys convert to age",
                        n + 1
                    );
                }
                Err(e) => {
                    failed = true;
                    eprintln!("sops-install-secrets: {shown} line {}: {e}", n + 1);
                }
            }
        }
        if lines.is_empty() {
            return fail(format!("{shown} holds no ssh-ed25519 public key"));
        }
    }
    let mut out = zeroize::Zeroizing::new(String::new());
    for l in &lines {
        out.push_str(l);
        out.push('\n');
    }
    let written = match &output {
        Some(path) => write_new_file(Path::new(path), out.as_bytes(), private),
        None => std::io::stdout().lock().write_all(out.as_bytes()),
    };
    if let Err(e) = written {
        return fail(format!("cannot write the key: {e}"));
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

const SSH_TO_PGP_USAGE: &str =
    "usage: sops-install-secrets ssh-to-pgp -i RSA_KEY_FILE [-o OUT] [-private-key]

Prints an OpenSSH RSA private key as the OpenPGP key sops-nix derives from it (for
`pgp:` rules in .sops.yaml and sops.gnupg.sshKeyPaths), ASCII-armoured, public unless
-private-key; its fingerprint goes to stderr.";

fn ssh_to_pgp(mut args: Args) -> Result<ExitCode, UsageError> {
    let (mut input, mut output, mut private) = (None, None, false);
    while let Some((flag, value)) = args.next_flag() {
        match flag.as_str() {
            "" | "i" => input = Some(args.value("i", value)?),
            "o" => output = Some(args.value(&flag, value)?),
            "private-key" => private = true,
            "h" | "help" => {
                println!("{SSH_TO_PGP_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
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
    // Check modes run at build time, where there is no user session: like
    // sops-nix, `%r` then expands to nothing.
    let runtime_dir = std::env::var("XDG_RUNTIME_DIR")
        .ok()
        .or_else(|| (check_mode != CheckMode::Off).then(String::new));
    // Like every path the manifest names: no other user's symlink, a regular file only.
    let trust = match check_mode {
        CheckMode::Off => Trust::invoker(),
        _ => Trust::build_check(),
    };
    let bytes = match safe_path::read(&manifest_path, trust) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sops-install-secrets: cannot read the manifest: {e}");
            return Ok(ExitCode::FAILURE);
        }
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
        dry_run: std::env::var("NIXOS_ACTION").is_ok_and(|v| v == "dry-activate"),
        restart_via_systemctl: std::env::var("SOPS_RESTART_UNITS_VIA_SYSTEMCTL").is_ok_and(|v| v == "1"),
        nixos_run_dir: PathBuf::from("/run/nixos"),
        sops_env: SopsAgeEnv::from_process(),
        gpg_exec: std::env::var_os("SOPS_GPG_EXEC"),
        lock_wait: install::lock::wait_from_env(),
    };
    let logger = Logger::from_env();
    let outcome = install::install(&manifest, &opts, earlier);
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

fn main() -> ExitCode {
    // Before anything is read: no core dump may carry a decrypted value.
    if let Err(e) = sops_install_secrets::hardening::forbid_core_dumps() {
        eprintln!("sops-install-secrets: cannot disable core dumps: {e}");
        return ExitCode::FAILURE;
    }
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
        "demo" if argv.len() > 1 => {
            if matches!(argv[1].as_str(), "-h" | "-help" | "--help") {
                println!("usage: sops-install-secrets demo\n\n{DEMO_HELP}");
                Ok(ExitCode::SUCCESS)
            } else {
                Err(UsageError(format!("demo takes no arguments (got {:?})", argv[1])))
            }
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
        "-h" | "-help" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "-version" | "--version" | "version" => {
            println!("{VERSION}");
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
