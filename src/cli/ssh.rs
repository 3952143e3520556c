//! `ssh-to-age` and `ssh-to-pgp`: SSH keys as age and OpenPGP keys, with
//! the flags of Mic92's ssh-to-age and sops-nix's ssh-to-pgp.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sops_install_secrets::keys::pgp::SshPgpKey;
use sops_install_secrets::keys::{host_keys, ssh};

use super::{Args, UsageError};

const SSH_TO_AGE_USAGE: &str = "usage: sops-install-secrets ssh-to-age [-private-key] [-i FILE] [-o FILE]

Converts OpenSSH Ed25519 keys to age keys, as Mic92's ssh-to-age does. Reads FILE
(or standard input): public keys, one per line (`ssh-ed25519 AAAA... comment`, as in
~/.ssh/id_ed25519.pub or authorized_keys), each printed as an age recipient (age1...);
with -private-key, an OpenSSH private key, printed as an age identity (AGE-SECRET-KEY-1...).
Given a private key without -private-key, prints its recipient. Lines with other key types
are reported on stderr and skipped.";

pub fn ssh_to_age(mut args: Args) -> Result<ExitCode, UsageError> {
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
            match host_keys::parse_host_key(line) {
                Ok(host_keys::HostKey {
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

pub fn ssh_to_pgp(mut args: Args) -> Result<ExitCode, UsageError> {
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
