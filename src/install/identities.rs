//! The host's identities, built into the keyring that opens sops files: by
//! [`super::plan::gather`], or ahead on a helper while the manifest is
//! checked ([`super::sops_files::EarlyFiles`]).

use std::ffi::OsString;

use super::report::{LogLine, Problems};
use crate::keys::Keyring;
use crate::keys::pgp::GnupgHome;
use crate::keys::sops_env::SopsAgeEnv;
use crate::manifest::IdentitySources;

/// The host's identities: key files, SSH keys (as age and as OpenPGP keys),
/// sops's environment, a GnuPG home. Keys a host may lack warn; unsafe ones fail.
pub(super) fn identities(
    sources: &IdentitySources,
    env: &SopsAgeEnv,
    gpg_exec: Option<&OsString>,
    log: &mut Vec<LogLine>,
    problems: &mut Problems,
) -> Keyring {
    let mut keyring = Keyring::new();
    if let Some(f) = &sources.age_key_file
        && let Err(e) = keyring.add_age_key_file(f)
    {
        problems.push(format!("ageKeyFile: {e}"));
    }
    // A missing key is a warning (a host may lack one of the listed key
    // types); a key reached through another user's link is an attack.
    let unsafe_key = |e: &crate::keys::KeyError| {
        matches!(
            e,
            crate::keys::KeyError::Ssh(crate::keys::ssh::SshKeyError::Unsafe { .. })
        )
    };
    for p in &sources.age_ssh_key_paths {
        match keyring.add_ssh_key(p) {
            Ok(Some(recipient)) if sources.log_imports => log.push(LogLine::info(
                format!("Imported {} as age key with fingerprint {recipient}", p.display()),
                vec![("key_file", p.display().to_string()), ("recipient", recipient)],
            )),
            Ok(_) => {}
            Err(e) if unsafe_key(&e) => problems.push(format!("ageSshKeyPaths: {e}")),
            // A host may lack one of the listed key types; sops-nix warns and goes on.
            Err(e) => log.push(LogLine::warning(format!("{e}"))),
        }
    }
    let manifest_names_age = sources.age_key_file.is_some() || !sources.age_ssh_key_paths.is_empty();
    for e in env.add_to(&mut keyring, !manifest_names_age) {
        problems.push(e.to_string());
    }
    for p in &sources.ssh_key_paths {
        match keyring.add_ssh_key_as_pgp(p) {
            Ok(fingerprint) if sources.log_imports => log.push(LogLine::info(
                format!(
                    "Imported {} as GPG key with fingerprint {fingerprint}",
                    p.display()
                ),
                vec![
                    ("key_file", p.display().to_string()),
                    ("fingerprint", fingerprint),
                ],
            )),
            Ok(_) => {}
            Err(e) if unsafe_key(&e) => problems.push(format!("sshKeyPaths: {e}")),
            Err(e) => log.push(LogLine::warning(format!("{e}"))),
        }
    }
    if let Some(home) = &sources.gnupg_home {
        match GnupgHome::checked(home.clone(), gpg_exec.cloned()) {
            Ok(home) => keyring.set_gnupg_home(home),
            Err(e) => problems.push(format!("gnupgHome {}: {e}", home.display())),
        }
    }
    keyring
}
