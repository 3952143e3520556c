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

/// Why a `pgp` stanza did not open, or an SSH key did not become an OpenPGP key.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The armored message does not parse (or its compressed body does not).
    #[error("corrupt PGP message: {0}")]
    Corrupt(#[source] CorruptPgp),
    /// The message parses but is not encrypted to this key (or fails its MDC).
    #[error("the PGP message does not open with this key: {0}")]
    WrongKey(#[source] pgp::errors::Error),
    /// The message holds more than any data key or share needs.
    #[error("the PGP message holds more than {MAX_PAYLOAD} bytes, which no data key needs")]
    TooLarge,
    /// The OpenPGP library refused to build or export a key.
    #[error(transparent)]
    Key(#[from] pgp::errors::Error),
    /// An RSA key's numbers do not form a key.
    #[error("not a valid RSA key: {0}")]
    InvalidRsa(#[source] rsa::Error),
    /// An RSA parameter has its sign bit set.
    #[error("an RSA parameter is negative")]
    NegativeRsaParameter,
    /// `gpg` (or `SOPS_GPG_EXEC`) is not there.
    #[error("{exec} not found on PATH (install gnupg for the installer, or set SOPS_GPG_EXEC)")]
    GpgNotFound {
        /// The command.
        exec: String,
    },
    /// `gpg` could not be started.
    #[error("cannot run {exec}: {source}")]
    GpgSpawn {
        /// The command.
        exec: String,
        /// Why.
        source: std::io::Error,
    },
    /// `gpg` was killed at the deadline.
    #[error("{exec} did not finish within {secs} s (is gpg-agent waiting for a passphrase?)")]
    GpgTimedOut {
        /// The command.
        exec: String,
        /// The deadline.
        secs: u64,
    },
    /// Waiting for `gpg` failed.
    #[error("cannot wait for {exec}: {source}")]
    GpgWait {
        /// The command.
        exec: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key is there but locked by a passphrase nobody can type.
    #[error(
        "the secret key for {fingerprint} in {home} is protected by a passphrase and no agent holds it \
         unlocked; an unattended activation cannot type it (remove the passphrase from a key kept for this host)"
    )]
    GpgLocked {
        /// The stanza's fingerprint.
        fingerprint: String,
        /// The GnuPG home.
        home: String,
    },
    /// The home has no secret key for the stanza.
    #[error("no secret key for {fingerprint} in the GnuPG home {home}")]
    GpgNoSecretKey {
        /// The stanza's fingerprint.
        fingerprint: String,
        /// The GnuPG home.
        home: String,
    },
    /// gpg failed otherwise: its last line of diagnostics (key and user IDs, never data).
    #[error("gpg could not decrypt with the GnuPG home {home}: {last}")]
    GpgFailed {
        /// The GnuPG home.
        home: String,
        /// gpg's last non-empty line.
        last: String,
    },
}

/// What was corrupt in a PGP message: its packets, or the bytes read from it.
#[derive(Debug, thiserror::Error)]
pub enum CorruptPgp {
    /// The packets.
    #[error(transparent)]
    Packets(#[from] pgp::errors::Error),
    /// Reading the (decompressed) literal data.
    #[error(transparent)]
    Read(#[from] std::io::Error),
}

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
            ssh_key::private::KeypairData::Rsa(pair) => rsa_key(pair).map_err(|e| SshKeyError::Parse {
                path: shown.clone(),
                reason: e.to_string(),
            })?,
            other => {
                let kind = other
                    .algorithm()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "unknown".to_owned());
                return Err(SshKeyError::NotRsa { path: shown, kind });
            }
        };
        SshPgpKey::from_rsa(rsa).map_err(|e| SshKeyError::Parse {
            path: shown,
            reason: e.to_string(),
        })
    }

    fn from_rsa(rsa: rsa::RsaPrivateKey) -> Result<SshPgpKey, PgpError> {
        let secret = pgp::crypto::rsa::SecretKey::from(rsa);
        let public_params = PublicParams::RSA((&secret).into());
        // Created at the epoch: the creation time is hashed into the fingerprint.
        let inner = PubKeyInner::new(
            KeyVersion::V4,
            PublicKeyAlgorithm::RSA,
            Timestamp::from_secs(0),
            None,
            public_params,
        )?;
        let public = PublicKey::from_inner(inner)?;
        let primary = SecretKey::new(public, SecretParams::Plain(PlainSecretParams::RSA(secret)))?;

        let mut flags = KeyFlags::default();
        flags.set_certify(true);
        flags.set_sign(true);
        flags.set_encrypt_comms(true);
        flags.set_encrypt_storage(true);
        let details = KeyDetails::new(
            Some(UserId::from_str(Default::default(), USER_ID)?),
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
        let signed = details.sign(
            rand::thread_rng(),
            &primary,
            primary.public_key(),
            &Password::empty(),
        )?;
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
    pub fn public_armored(&self) -> Result<String, PgpError> {
        Ok(self.key.to_public_key().to_armored_string(Default::default())?)
    }

    /// The secret key, ASCII-armored (`ssh-to-pgp --private-key`).
    pub fn secret_armored(&self) -> Result<Zeroizing<String>, PgpError> {
        Ok(Zeroizing::new(self.key.to_armored_string(Default::default())?))
    }

    /// Decrypts an armored PGP message encrypted to this key.
    pub fn decrypt(&self, armored: &str) -> Result<Zeroizing<Vec<u8>>, PgpError> {
        let corrupt = |e| PgpError::Corrupt(CorruptPgp::Packets(e));
        let (message, _) = Message::from_string(armored).map_err(corrupt)?;
        let message = message
            .decrypt(&Password::empty(), &self.key)
            .map_err(PgpError::WrongKey)?;
        let mut message = if message.is_compressed() {
            message.decompress().map_err(corrupt)?
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
            .map_err(|e| PgpError::Corrupt(CorruptPgp::Read(e)))?;
        if data.len() > MAX_PAYLOAD {
            return Err(PgpError::TooLarge);
        }
        Ok(data)
    }
}

/// The RSA key of an OpenSSH key pair. (ssh-key's own conversion rejects the
/// positive-sign padding byte OpenSSH writes before a modulus' top bit.)
fn rsa_key(pair: &ssh_key::private::RsaKeypair) -> Result<rsa::RsaPrivateKey, PgpError> {
    let int = |m: &ssh_key::Mpint| {
        m.as_positive_bytes()
            .map(rsa::BigUint::from_bytes_be)
            .ok_or(PgpError::NegativeRsaParameter)
    };
    let private = &pair.private;
    rsa::RsaPrivateKey::from_components(
        int(&pair.public.n)?,
        int(&pair.public.e)?,
        int(&private.d)?,
        vec![int(&private.p)?, int(&private.q)?],
    )
    .map_err(PgpError::InvalidRsa)
}

/// The fingerprint an RSA SSH public key has as an OpenPGP key (the one
/// [`SshPgpKey`] and sops-nix give its private half), from its exponent and
/// modulus (big-endian).
pub fn ssh_rsa_fingerprint(e: &[u8], n: &[u8]) -> Result<String, PgpError> {
    let public = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e))
        .map_err(PgpError::InvalidRsa)?;
    let inner = PubKeyInner::new(
        KeyVersion::V4,
        PublicKeyAlgorithm::RSA,
        Timestamp::from_secs(0),
        None,
        PublicParams::RSA(public.into()),
    )?;
    let key = PublicKey::from_inner(inner)?;
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
    pub fn decrypt(&self, fingerprint: &str, armored: &str) -> Result<Zeroizing<Vec<u8>>, PgpError> {
        let home = self.home.display().to_string();
        let exec = Path::new(&self.exec).display().to_string();
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
            Err(RunError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(PgpError::GpgNotFound { exec })
            }
            Err(RunError::Spawn(source)) => Err(PgpError::GpgSpawn { exec, source }),
            Err(RunError::TimedOut(t)) => Err(PgpError::GpgTimedOut {
                exec,
                secs: t.as_secs(),
            }),
            Err(RunError::Wait(source)) => Err(PgpError::GpgWait { exec, source }),
        }
    }
}

/// Turns gpg's complaint into what to do about it. gpg's diagnostics carry key
/// IDs and user IDs, never the decrypted data.
fn explain_gpg_failure(stderr: &str, fingerprint: &str, home: &str) -> PgpError {
    let has = |s: &str| stderr.contains(s);
    // A locked key also ends in "No secret key": look for the passphrase first.
    if has("No pinentry")
        || has("Operation cancelled")
        || has("Bad passphrase")
        || has("Inappropriate ioctl")
        || has("problem with the agent")
    {
        PgpError::GpgLocked {
            fingerprint: fingerprint.to_owned(),
            home: home.to_owned(),
        }
    } else if has("No secret key") {
        PgpError::GpgNoSecretKey {
            fingerprint: fingerprint.to_owned(),
            home: home.to_owned(),
        }
    } else {
        let last = stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("gpg failed without a message");
        PgpError::GpgFailed {
            home: home.to_owned(),
            last: last.to_owned(),
        }
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
        let e = explain_gpg_failure(no_key, "FP", "/h");
        assert!(matches!(e, PgpError::GpgNoSecretKey { .. }), "{e:?}");
        assert_eq!(e.to_string(), "no secret key for FP in the GnuPG home /h");
        let locked = "gpg: public key decryption failed: No pinentry\ngpg: decryption failed: No secret key";
        let e = explain_gpg_failure(locked, "FP", "/h");
        assert!(matches!(e, PgpError::GpgLocked { .. }), "{e:?}");
        assert!(e.to_string().contains("passphrase"));
        let e = explain_gpg_failure("gpg: odd\n", "FP", "/h");
        assert!(matches!(e, PgpError::GpgFailed { .. }), "{e:?}");
        assert!(e.to_string().ends_with("gpg: odd"));
    }
}
