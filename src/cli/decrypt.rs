//! `decrypt`: prints what `sops -d` prints (whole file, `--extract`,
//! `--output-type`), so any file can be checked against real sops, with the
//! identities sops itself would use when none are named.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sops_install_secrets::keys::Keyring;
use sops_install_secrets::keys::pgp::GnupgHome;
use sops_install_secrets::keys::sops_env::SopsAgeEnv;
use sops_install_secrets::sops::Format;
use sops_install_secrets::sops::tree::{parse_extract_path, parse_slash_path};
use sops_install_secrets::unlock::decrypt_owned;

use super::{Args, USAGE, UsageError};

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

/// Runs `decrypt` with its arguments.
pub fn decrypt(mut args: Args) -> Result<ExitCode, UsageError> {
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
