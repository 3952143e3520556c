//! `pgp` stanzas: a sops data key encrypted to an OpenPGP key.
//!
//! A host opens them in one of two ways, as sops-nix hosts do:
//! - **An RSA SSH host key used as an OpenPGP key** (`sops.gnupg.sshKeyPaths`).
//!   The key becomes a version 4 OpenPGP RSA primary key created at the Unix
//!   epoch, so its fingerprint depends on the RSA modulus and exponent alone and
//!   equals the one sops-nix's conversion gives: `.sops.yaml` files written for
//!   sops-nix hosts keep working. The stanza is opened in process; no keyring is
//!   written anywhere.
//! - **A GnuPG home** (`sops.gnupg.home`, `GNUPGHOME`): the real `gpg` binary
//!   (or `SOPS_GPG_EXEC`) decrypts, as sops does, in batch mode with pinentry
//!   disabled so that a passphrase-protected key fails at once instead of
//!   waiting for someone to type.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgp::composed::{KeyDetails, Message, SignedSecretKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::public_key::PublicKeyAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{KeyFlags, PubKeyInner, PublicKey, SecretKey, UserId};
use pgp::types::{
    CompressionAlgorithm, KeyDetails as _, KeyVersion, Password, PlainSecretParams, PublicParams,
    SecretParams, Timestamp,
};
use zeroize::Zeroizing;

use crate::safe_path::{self, Missing, OpenError, Trust};

use super::ssh::{self, SshKeyError};
use crate::process::{self, RunError};

/// The user ID sops-nix gives keys converted from SSH. It does not enter the
/// fingerprint; it is there so that `gpg --import` accepts the exported key.
const USER_ID: &str = "root (Imported from SSH) <root@localhost>";

/// How long `gpg` may take before it is killed. A working decryption takes
/// milliseconds; anything near this is an agent or pinentry waiting for input.
const GPG_TIMEOUT: Duration = Duration::from_secs(20);

/// The most a `pgp` stanza may decrypt to.
const MAX_PAYLOAD: usize = 4096;

/// An RSA SSH key as an OpenPGP key.
pub struct SshPgpKey {
    key: SignedSecretKey,
    fingerprint: String,
}

impl SshPgpKey {
    /// Reads an unencrypted OpenSSH RSA private key and converts it.
    pub fn load(path: &Path) -> Result<SshPgpKey, SshKeyError> {
        let shown = path.display().to_string();
        let key = ssh::read_private_key(path)?;
        let rsa = match key.key_data() {
            ssh_key::private::KeypairData::Rsa(pair) => {
                rsa_key(pair).map_err(|reason| SshKeyError::Parse {
                    path: shown.clone(),
                    reason,
                })?
            }
            other => {
                let kind = other
                    .algorithm()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "unknown".to_owned());
                return Err(SshKeyError::NotRsa { path: shown, kind });
            }
        };
        SshPgpKey::from_rsa(rsa).map_err(|reason| SshKeyError::Parse { path: shown, reason })
    }

    fn from_rsa(rsa: rsa::RsaPrivateKey) -> Result<SshPgpKey, String> {
        let secret = pgp::crypto::rsa::SecretKey::from(rsa);
        let public_params = PublicParams::RSA((&secret).into());
        // Created at the epoch: the creation time is hashed into the fingerprint.
        let inner = PubKeyInner::new(
            KeyVersion::V4,
            PublicKeyAlgorithm::RSA,
            Timestamp::from_secs(0),
            None,
            public_params,
        )
        .map_err(|e| e.to_string())?;
        let public = PublicKey::from_inner(inner).map_err(|e| e.to_string())?;
        let primary = SecretKey::new(public, SecretParams::Plain(PlainSecretParams::RSA(secret)))
            .map_err(|e| e.to_string())?;

        let mut flags = KeyFlags::default();
        flags.set_certify(true);
        flags.set_sign(true);
        flags.set_encrypt_comms(true);
        flags.set_encrypt_storage(true);
        let details = KeyDetails::new(
            Some(UserId::from_str(Default::default(), USER_ID).map_err(|e| e.to_string())?),
            Vec::new(),
            Vec::new(),
            flags,
            Default::default(),
            [SymmetricKeyAlgorithm::AES256, SymmetricKeyAlgorithm::AES128]
                .into_iter()
                .collect(),
            [HashAlgorithm::Sha256, HashAlgorithm::Sha512]
                .into_iter()
                .collect(),
            [CompressionAlgorithm::ZLIB, CompressionAlgorithm::ZIP]
                .into_iter()
                .collect(),
            Default::default(),
        );
        let signed = details
            .sign(
                rand::thread_rng(),
                &primary,
                primary.public_key(),
                &Password::empty(),
            )
            .map_err(|e| e.to_string())?;
        let key = SignedSecretKey::new(primary, signed, Vec::new(), Vec::new());
        let fingerprint = hex_upper(key.fingerprint().as_bytes());
        Ok(SshPgpKey { key, fingerprint })
    }

    /// The 40-hex-digit fingerprint, upper case, as `.sops.yaml` lists it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether a stanza's fingerprint (full, or a 16-digit key ID) names this key.
    pub fn matches(&self, fingerprint: &str) -> bool {
        fingerprint_names(&self.fingerprint, fingerprint)
    }

    /// The public key, ASCII-armored, for `gpg --import` and `.sops.yaml` users.
    pub fn public_armored(&self) -> Result<String, String> {
        self.key
            .to_public_key()
            .to_armored_string(Default::default())
            .map_err(|e| e.to_string())
    }

    /// The secret key, ASCII-armored (`ssh-to-pgp --private-key`).
    pub fn secret_armored(&self) -> Result<Zeroizing<String>, String> {
        self.key
            .to_armored_string(Default::default())
            .map(Zeroizing::new)
            .map_err(|e| e.to_string())
    }

    /// Decrypts an armored PGP message encrypted to this key.
    pub fn decrypt(&self, armored: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let (message, _) = Message::from_string(armored).map_err(|e| format!("corrupt PGP message: {e}"))?;
        let message = message
            .decrypt(&Password::empty(), &self.key)
            .map_err(|e| format!("the PGP message does not open with this key: {e}"))?;
        let mut message = if message.is_compressed() {
            message
                .decompress()
                .map_err(|e| format!("corrupt PGP message: {e}"))?
        } else {
            message
        };
        // A data key (or a Shamir share of one) is a few dozen bytes: read no
        // more than a little beyond that, so a hostile stanza cannot make us
        // inflate a compression bomb. Reading to the end checks the MDC.
        let mut data = Zeroizing::new(Vec::new());
        (&mut message)
            .take(MAX_PAYLOAD as u64 + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("corrupt PGP message: {e}"))?;
        if data.len() > MAX_PAYLOAD {
            return Err(format!(
                "the PGP message holds more than {MAX_PAYLOAD} bytes, which no data key needs"
            ));
        }
        Ok(data)
    }
}

/// The RSA key of an OpenSSH key pair. (ssh-key's own conversion rejects the
/// positive-sign padding byte OpenSSH writes before a modulus' top bit.)
fn rsa_key(pair: &ssh_key::private::RsaKeypair) -> Result<rsa::RsaPrivateKey, String> {
    let int = |m: &ssh_key::Mpint| {
        m.as_positive_bytes()
            .map(rsa::BigUint::from_bytes_be)
            .ok_or_else(|| "an RSA parameter is negative".to_owned())
    };
    let private = &pair.private;
    rsa::RsaPrivateKey::from_components(
        int(&pair.public.n)?,
        int(&pair.public.e)?,
        int(&private.d)?,
        vec![int(&private.p)?, int(&private.q)?],
    )
    .map_err(|e| format!("not a valid RSA key: {e}"))
}

/// The fingerprint an RSA SSH public key has as an OpenPGP key (the one
/// [`SshPgpKey`] and sops-nix give its private half), from its exponent and
/// modulus (big-endian).
pub fn ssh_rsa_fingerprint(e: &[u8], n: &[u8]) -> Result<String, String> {
    let public = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e))
        .map_err(|e| format!("not a valid RSA key: {e}"))?;
    let inner = PubKeyInner::new(
        KeyVersion::V4,
        PublicKeyAlgorithm::RSA,
        Timestamp::from_secs(0),
        None,
        PublicParams::RSA(public.into()),
    )
    .map_err(|e| e.to_string())?;
    let key = PublicKey::from_inner(inner).map_err(|e| e.to_string())?;
    Ok(hex_upper(key.fingerprint().as_bytes()))
}

/// Whether `wanted` (a stanza's fingerprint: full or a 16-digit key ID, any
/// case, spaces allowed, sops's trailing `!` ignored) names the key of the full
/// upper-case fingerprint `full`. Shorter key IDs are ambiguous and never match.
pub fn fingerprint_names(full: &str, wanted: &str) -> bool {
    let wanted: String = wanted
        .trim_end_matches('!')
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    wanted.len() >= 16 && full.ends_with(&wanted)
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A GnuPG home opened with the `gpg` binary.
pub struct GnupgHome {
    home: PathBuf,
    exec: OsString,
}

impl GnupgHome {
    /// A home, decrypted with `gpg_exec` (`SOPS_GPG_EXEC`) or `gpg` from `PATH`.
    pub fn new(home: PathBuf, gpg_exec: Option<OsString>) -> GnupgHome {
        GnupgHome {
            home,
            exec: gpg_exec.filter(|e| !e.is_empty()).unwrap_or_else(|| "gpg".into()),
        }
    }

    /// A home named by the manifest, found by [`crate::safe_path`]'s rule:
    /// gpg is given the directory the path resolves to, never one reached
    /// through another user's symlink. A missing home is left to gpg to
    /// report, when a file needs it.
    pub fn checked(home: PathBuf, gpg_exec: Option<OsString>) -> Result<GnupgHome, OpenError> {
        match safe_path::open_dir(&home, Trust::invoker(), Missing::Fail) {
            Ok(dir) => Ok(GnupgHome::new(dir.path, gpg_exec)),
            Err(e) if e.is_not_found() => Ok(GnupgHome::new(home, gpg_exec)),
            Err(e) => Err(e),
        }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Decrypts an armored PGP message for the stanza of `fingerprint`.
    pub fn decrypt(&self, fingerprint: &str, armored: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let home = self.home.display().to_string();
        let exec = Path::new(&self.exec).display();
        let mut cmd = Command::new(&self.exec);
        cmd.arg("--homedir").arg(&self.home).args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "error",
            "--decrypt",
        ]);
        match process::run(&mut cmd, armored.as_bytes(), GPG_TIMEOUT) {
            Ok(out) if out.status.success() && !out.stdout.is_empty() => Ok(out.stdout),
            Ok(out) => Err(explain_gpg_failure(&out.stderr, fingerprint, &home)),
            Err(RunError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "{exec} not found on PATH (install gnupg for the installer, or set SOPS_GPG_EXEC)"
            )),
            Err(RunError::Spawn(e)) => Err(format!("cannot run {exec}: {e}")),
            Err(RunError::TimedOut(t)) => Err(format!(
                "{exec} did not finish within {} s (is gpg-agent waiting for a passphrase?)",
                t.as_secs()
            )),
            Err(RunError::Wait(e)) => Err(format!("cannot wait for {exec}: {e}")),
        }
    }
}

/// Turns gpg's complaint into what to do about it. gpg's diagnostics carry key
/// IDs and user IDs, never the decrypted data.
fn explain_gpg_failure(stderr: &str, fingerprint: &str, home: &str) -> String {
    let has = |s: &str| stderr.contains(s);
    // A locked key also ends in "No secret key": look for the passphrase first.
    if has("No pinentry")
        || has("Operation cancelled")
        || has("Bad passphrase")
        || has("Inappropriate ioctl")
        || has("problem with the agent")
    {
        format!(
            "the secret key for {fingerprint} in {home} is protected by a passphrase and no agent holds it \
             unlocked; an unattended activation cannot type it (remove the passphrase from a key kept for this host)"
        )
    } else if has("No secret key") {
        format!("no secret key for {fingerprint} in the GnuPG home {home}")
    } else {
        let last = stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("gpg failed without a message");
        format!("gpg could not decrypt with the GnuPG home {home}: {last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sops-nix's own conversion (`pkgs/sops-install-secrets/sshkeys`, built
    /// from its source with Go) derives from `tests/fixtures/keys/host_rsa`;
    /// `gpg --show-keys` on its output prints the same fingerprint.
    const SOPS_NIX_FINGERPRINT: &str = "52347B17CB87CF7B724FEACF3E54A544D8560FBD";

    fn fixture_key() -> SshPgpKey {
        SshPgpKey::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/host_rsa"
        )))
        .unwrap()
    }

    #[test]
    fn fingerprint_equals_the_one_sops_nix_derives() {
        assert_eq!(fixture_key().fingerprint(), SOPS_NIX_FINGERPRINT);
    }

    #[test]
    fn the_public_half_alone_gives_the_same_fingerprint() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/host_rsa.pub"
        ))
        .unwrap();
        let key = ssh_key::PublicKey::from_openssh(text.trim()).unwrap();
        let rsa = key.key_data().rsa().unwrap();
        let e = rsa.e.as_positive_bytes().unwrap();
        let n = rsa.n.as_positive_bytes().unwrap();
        assert_eq!(ssh_rsa_fingerprint(e, n).unwrap(), SOPS_NIX_FINGERPRINT);
    }

    #[test]
    fn key_ids_and_fingerprints_match_case_and_space_insensitively() {
        let key = fixture_key();
        let fp = key.fingerprint().to_owned();
        assert_eq!(fp.len(), 40);
        assert!(key.matches(&fp.to_ascii_lowercase()));
        assert!(key.matches(&fp[24..]), "a 16-digit key ID names the key");
        let spaced: String = fp
            .chars()
            .enumerate()
            .flat_map(|(i, c)| (i % 4 == 0 && i > 0).then_some(' ').into_iter().chain([c]))
            .collect();
        assert!(key.matches(&spaced));
        assert!(!key.matches(&fp[32..]), "8-digit key IDs are ambiguous");
        let other = format!("{}{}", if fp.starts_with('0') { '1' } else { '0' }, &fp[1..]);
        assert!(!key.matches(&other));
    }

    #[test]
    fn gpg_failures_say_what_to_do() {
        let no_key = "gpg: encrypted with rsa3072 key, ID 1234\ngpg: decryption failed: No secret key\n";
        assert_eq!(
            explain_gpg_failure(no_key, "FP", "/h"),
            "no secret key for FP in the GnuPG home /h"
        );
        let locked = "gpg: public key decryption failed: No pinentry\ngpg: decryption failed: No secret key";
        assert!(explain_gpg_failure(locked, "FP", "/h").contains("passphrase"));
        assert!(explain_gpg_failure("gpg: odd\n", "FP", "/h").ends_with("gpg: odd"));
    }
}
