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

use sops_install_secrets::keys::Keyring;
use sops_install_secrets::keys::pgp::GnupgHome;
use sops_install_secrets::keys::sops_env::SopsAgeEnv;
use sops_install_secrets::sops::Format;
use sops_install_secrets::sops::tree::{parse_extract_path, parse_slash_path};
use sops_install_secrets::unlock::decrypt_owned;

mod cli;

use cli::{Args, DEMO_HELP, USAGE, UsageError, VERSION};

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
    // As sops: without --output-type, the file name decides, not --input-type.
    let output = output.unwrap_or_else(|| Format::from_path(&file));
    let path = match extract.as_deref() {
        None => Vec::new(),
        Some(spec) if spec.starts_with('[') => parse_extract_path(spec).map_err(|why| {
            UsageError(format!(
                "--extract {spec:?}: {why}; the form is [\"a\"][\"b\"][0]"
            ))
        })?,
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
            cli::ssh::ssh_to_age(Args {
                rest: argv.into_iter(),
            })
        }
        "ssh-to-pgp" => {
            argv.remove(0);
            cli::ssh::ssh_to_pgp(Args {
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
        "demo" => match cli::demo::demo() {
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
        _ => cli::install::install_manifest(argv),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(msg)) => {
            eprintln!("sops-install-secrets: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
