//! OpenSSH private keys as age identities.
//!
//! A NixOS host has an `ssh_host_ed25519_key` from its first boot, and sops-nix
//! users encrypt to it in two ways:
//! - to the X25519 recipient derived from it (the ssh-to-age conversion): the
//!   Ed25519 seed is hashed with SHA-512 and the first 32 bytes are the X25519
//!   secret scalar; the public side is the Montgomery form of the Ed25519 key;
//! - to the SSH public key itself (`ssh-ed25519 AAAA...` or `ssh-rsa AAAA...`
//!   recipients), which age opens with its ssh identity types.
//!
//! Both identities are built in memory; unlike sops-nix, no age key file is
//! ever written.

use std::path::Path;

use bech32::{Bech32, Hrp};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::safe_path::{self, OpenError, Trust};

/// Why an SSH key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    /// The file could not be read.
    #[error("cannot read SSH key {path}: {source}")]
    Read {
        /// The key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path leads through another user's symlink, or is not a regular file.
    #[error("SSH key {path}: {source}")]
    Unsafe {
        /// The key file.
        path: String,
        /// Why it was not opened.
        source: OpenError,
    },
    /// The file is not an OpenSSH private key.
    #[error("{path} is not an OpenSSH private key ({reason})")]
    Parse {
        /// The key file.
        path: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The key is protected by a passphrase, which an unattended boot cannot type.
    #[error(
        "SSH key {path} is protected by a passphrase; host keys used for sops must be unencrypted (a boot has no one to type it)"
    )]
    Passphrase {
        /// The key file.
        path: String,
    },
    /// A key other than RSA listed where a GPG key is expected.
    #[error(
        "SSH key {path} is of type {kind}; only ssh-rsa keys can be used as GPG keys (sops.gnupg.sshKeyPaths); list ed25519 keys in sops.age.sshKeyPaths"
    )]
    NotRsa {
        /// The key file.
        path: String,
        /// The key's algorithm.
        kind: String,
    },
    /// A key type age cannot use.
    #[error("SSH key {path} is of type {kind}; only ssh-ed25519 and ssh-rsa keys can decrypt sops files")]
    Unsupported {
        /// The key file.
        path: String,
        /// The key's algorithm.
        kind: String,
    },
}

/// An age X25519 identity derived from an Ed25519 SSH key, with its recipient.
pub struct DerivedAgeKey {
    /// `AGE-SECRET-KEY-1...`, upper case, as ssh-to-age prints it.
    pub identity: Zeroizing<String>,
    /// `age1...`.
    pub recipient: String,
}

/// What an SSH private key file yields.
pub struct SshIdentities {
    /// The age ssh identity (opens `ssh-ed25519` / `ssh-rsa` stanzas).
    pub ssh: age::ssh::Identity,
    /// The public key line, `ssh-ed25519 AAAA...` (no comment).
    pub public_key: String,
    /// For Ed25519 keys: the ssh-to-age X25519 identity.
    pub derived: Option<DerivedAgeKey>,
}

/// The ssh-to-age conversion of an Ed25519 seed.
pub fn derive_age_key(seed: &[u8; 32]) -> DerivedAgeKey {
    let digest = Zeroizing::new(Sha512::digest(seed));
    let scalar = Zeroizing::new(<[u8; 32]>::try_from(&digest[..32]).expect("SHA-512 has 64 bytes"));
    let hrp = Hrp::parse("age-secret-key-").expect("valid HRP");
    let encoded =
        Zeroizing::new(bech32::encode::<Bech32>(hrp, scalar.as_slice()).expect("32 bytes fit in bech32"));
    let identity = Zeroizing::new(encoded.to_uppercase());
    let parsed: age::x25519::Identity = identity
        .parse()
        .expect("a bech32 X25519 secret key always parses");
    DerivedAgeKey {
        recipient: parsed.to_public().to_string(),
        identity,
    }
}

/// The age recipient ssh-to-age derives from an Ed25519 public key: the
/// Montgomery form of the Edwards point, bech32-encoded.
pub fn ed25519_public_to_age(public: &[u8; 32]) -> Option<String> {
    let point = curve25519_dalek::edwards::CompressedEdwardsY(*public).decompress()?;
    let hrp = Hrp::parse("age").expect("valid HRP");
    bech32::encode::<Bech32>(hrp, &point.to_montgomery().to_bytes()).ok()
}

/// Reads a key file by [`safe_path`]'s rule: through no symlink of another
/// user, and only if it is a regular file.
fn read_key(path: &Path, shown: &str) -> Result<Zeroizing<String>, SshKeyError> {
    safe_path::read_secret_text(path, Trust::invoker()).map_err(|e| match e.into_io() {
        Ok(source) => SshKeyError::Read {
            path: shown.to_owned(),
            source,
        },
        Err(source) => SshKeyError::Unsafe {
            path: shown.to_owned(),
            source,
        },
    })
}

/// Reads an OpenSSH private key file and builds its age identities.
pub fn load(path: &Path) -> Result<SshIdentities, SshKeyError> {
    let shown = path.display().to_string();
    let text = read_key(path, &shown)?;
    from_openssh(&text, &shown)
}

/// Reads an unencrypted OpenSSH private key file.
pub fn read_private_key(path: &Path) -> Result<ssh_key::PrivateKey, SshKeyError> {
    let shown = path.display().to_string();
    let text = read_key(path, &shown)?;
    parse_private_key(&text, &shown)
}

fn parse_private_key(text: &str, shown: &str) -> Result<ssh_key::PrivateKey, SshKeyError> {
    let key = ssh_key::PrivateKey::from_openssh(text.trim()).map_err(|e| SshKeyError::Parse {
        path: shown.to_owned(),
        reason: e.to_string(),
    })?;
    if key.is_encrypted() {
        return Err(SshKeyError::Passphrase {
            path: shown.to_owned(),
        });
    }
    Ok(key)
}

/// Builds age identities from the text of an OpenSSH private key.
pub fn from_openssh(text: &str, shown: &str) -> Result<SshIdentities, SshKeyError> {
    let key = parse_private_key(text, shown)?;
    let derived = match key.key_data() {
        ssh_key::private::KeypairData::Ed25519(pair) => {
            let seed = Zeroizing::new(pair.private.to_bytes());
            Some(derive_age_key(&seed))
        }
        ssh_key::private::KeypairData::Rsa(_) => None,
        other => {
            let kind = other
                .algorithm()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "unknown".to_owned());
            return Err(SshKeyError::Unsupported {
                path: shown.to_owned(),
                kind,
            });
        }
    };
    let public = key.public_key();
    let public_key = format!(
        "{} {}",
        public.algorithm(),
        public
            .to_openssh()
            .map_err(|e| SshKeyError::Parse {
                path: shown.to_owned(),
                reason: e.to_string()
            })?
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
    );
    let ssh = age::ssh::Identity::from_buffer(text.as_bytes(), Some(shown.to_owned())).map_err(|e| {
        SshKeyError::Parse {
            path: shown.to_owned(),
            reason: e.to_string(),
        }
    })?;
    if let age::ssh::Identity::Unsupported(_) = ssh {
        return Err(SshKeyError::Unsupported {
            path: shown.to_owned(),
            kind: public.algorithm().to_string(),
        });
    }
    Ok(SshIdentities {
        ssh,
        public_key,
        derived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_conversion_matches_the_private_one() {
        let seed = [5u8; 32];
        // Ed25519 public key: clamp(SHA-512(seed)[..32]) * B.
        let mut scalar = [0u8; 32];
        scalar.copy_from_slice(&Sha512::digest(seed)[..32]);
        let public = curve25519_dalek::edwards::EdwardsPoint::mul_base_clamped(scalar)
            .compress()
            .to_bytes();
        assert_eq!(
            ed25519_public_to_age(&public),
            Some(derive_age_key(&seed).recipient)
        );
    }

    #[test]
    fn derived_identity_and_recipient_agree() {
        let key = derive_age_key(&[3u8; 32]);
        assert!(key.identity.starts_with("AGE-SECRET-KEY-1"));
        let parsed: age::x25519::Identity = key.identity.parse().unwrap();
        assert_eq!(parsed.to_public().to_string(), key.recipient);
        assert!(key.recipient.starts_with("age1"));
    }
}
