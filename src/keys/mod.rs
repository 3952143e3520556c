//! Where data keys come from: the identities a host offers, and recovering a
//! file's data key from its key groups with them.
//!
//! A sops file's 32-byte data key is wrapped once per key group (or, with
//! several groups, split with Shamir and one share wrapped per group); any one
//! stanza of a group opens that group's share. [`Keyring`] holds what this host
//! can open stanzas with; [`recover_data_key`] opens groups until enough shares
//! are in hand.

pub mod age_file;
#[cfg(feature = "_net")]
pub mod kms;
pub mod ssh;

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::sops::metadata::{Metadata, Stanza};
use crate::sops::shamir::{self, ShamirError};

/// An identity this host offers, described for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    /// Where it came from: `/etc/ssh/ssh_host_ed25519_key (ssh-to-age)`.
    pub origin: String,
    /// The recipient a file must list for this identity to open it.
    pub recipient: String,
}

/// The identities this host can open stanzas with. Secret material stays in
/// memory inside age's identity types, which zeroize on drop.
#[derive(Default)]
pub struct Keyring {
    age: Vec<Box<dyn age::Identity + Send + Sync>>,
    offered: Vec<Offered>,
    /// Network key services; reads the environment only when first asked.
    #[cfg(feature = "_net")]
    kms: kms::Kms,
}

/// Why an identity source could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An SSH key problem.
    #[error(transparent)]
    Ssh(#[from] ssh::SshKeyError),
    /// An age key file problem.
    #[error(transparent)]
    AgeFile(#[from] age_file::AgeFileError),
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Adds every identity of an age key file.
    pub fn add_age_key_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let keys = age_file::load(path)?;
        self.add_age_keys(keys, &path.display().to_string());
        Ok(())
    }

    /// Adds the identities of age key file text (`SOPS_AGE_KEY`).
    pub fn add_age_keys_text(&mut self, text: &str, origin: &str) -> Result<(), KeyError> {
        let keys = age_file::parse(text, origin)?;
        self.add_age_keys(keys, origin);
        Ok(())
    }

    fn add_age_keys(&mut self, keys: Vec<age::x25519::Identity>, origin: &str) {
        for key in keys {
            self.offered.push(Offered {
                origin: origin.to_owned(),
                recipient: key.to_public().to_string(),
            });
            self.age.push(Box::new(key));
        }
    }

    /// Adds an OpenSSH private key: as an age SSH identity, and for Ed25519
    /// keys also as the X25519 identity ssh-to-age derives from it. Returns
    /// that identity's age recipient, if there is one.
    pub fn add_ssh_key(&mut self, path: &Path) -> Result<Option<String>, KeyError> {
        let ids = ssh::load(path)?;
        let origin = path.display().to_string();
        let mut derived_recipient = None;
        if let Some(derived) = ids.derived {
            derived_recipient = Some(derived.recipient.clone());
            let key: age::x25519::Identity =
                derived.identity.parse().expect("derived identities always parse");
            self.offered.push(Offered {
                origin: format!("{origin} (converted with ssh-to-age)"),
                recipient: derived.recipient,
            });
            self.age.push(Box::new(key));
        }
        self.offered.push(Offered {
            origin,
            recipient: ids.public_key,
        });
        self.age.push(Box::new(ids.ssh));
        Ok(derived_recipient)
    }

    /// What this host offers, for error messages.
    pub fn offered(&self) -> &[Offered] {
        &self.offered
    }

    /// Opens an age stanza's armored file and returns its payload.
    fn open_age(&self, armored: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        if self.age.is_empty() {
            return Err("this host offers no age or SSH identity".to_owned());
        }
        let reader = age::armor::ArmoredReader::new(armored.as_bytes());
        let decryptor = age::Decryptor::new(reader).map_err(|e| format!("corrupt age data: {e}"))?;
        let ids = self.age.iter().map(|i| i.as_ref() as &dyn age::Identity);
        let mut stream = decryptor.decrypt(ids).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => "no identity of this host matches".to_owned(),
            other => other.to_string(),
        })?;
        let mut out = Zeroizing::new(Vec::new());
        stream
            .read_to_end(&mut out)
            .map_err(|e| format!("corrupt age payload: {e}"))?;
        Ok(out)
    }

    /// Opens one stanza, or says why not.
    pub fn open(&self, stanza: &Stanza) -> Result<Zeroizing<Vec<u8>>, String> {
        match stanza {
            Stanza::Age { enc, .. } => self.open_age(enc),
            #[cfg(feature = "gcp-kms")]
            Stanza::GcpKms { .. } => self.kms.open(stanza),
            #[cfg(feature = "vault")]
            Stanza::HcVault { .. } => self.kms.open(stanza),
            #[cfg(feature = "aws-kms")]
            Stanza::AwsKms { .. } => self.kms.open(stanza),
            #[cfg(feature = "azure-kv")]
            Stanza::AzureKv { .. } => self.kms.open(stanza),
            other => Err(format!("{} keys are not supported by this build", other.kind())),
        }
    }
}

/// One stanza that was tried, and why it did not open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// `age age1...`, `pgp FBC7...`.
    pub stanza: String,
    /// Why it failed.
    pub reason: String,
}

/// Why the data key could not be recovered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataKeyError {
    /// Not enough key groups could be opened.
    #[error("{}", describe_groups(*.opened, *.needed, .groups))]
    NotEnoughGroups {
        /// How many groups opened.
        opened: usize,
        /// How many are needed.
        needed: usize,
        /// Per group (in file order): `None` if it opened, else every stanza tried.
        groups: Vec<Option<Vec<Attempt>>>,
    },
    /// The shares did not combine.
    #[error("the key group shares do not combine: {0}")]
    Shamir(#[from] ShamirError),
    /// The recovered key is not 32 bytes.
    #[error("the recovered data key has {0} bytes instead of 32")]
    BadLength(usize),
}

fn describe_groups(opened: usize, needed: usize, groups: &[Option<Vec<Attempt>>]) -> String {
    let mut s = if groups.len() == 1 {
        "no key of the file could be opened by this host:".to_owned()
    } else {
        format!(
            "{opened} of {} key groups could be opened, {needed} needed:",
            groups.len()
        )
    };
    for (i, g) in groups.iter().enumerate() {
        if let Some(attempts) = g {
            if groups.len() > 1 {
                s.push_str(&format!("\n  key group {}:", i + 1));
            }
            for a in attempts {
                s.push_str(&format!("\n    {}: {}", a.stanza, a.reason));
            }
        }
    }
    s
}

/// Recovers a file's data key with the identities in `keyring`.
pub fn recover_data_key(metadata: &Metadata, keyring: &Keyring) -> Result<Zeroizing<[u8; 32]>, DataKeyError> {
    let groups = &metadata.key_groups;
    let needed = metadata.groups_needed();
    let mut shares = Vec::new();
    let mut report = Vec::with_capacity(groups.len());
    for group in groups {
        if shares.len() == needed {
            // Enough shares: later groups need not be opened (and their KMS not called).
            report.push(None);
            continue;
        }
        // Local identities first (age, then pgp): they need no network and
        // are fast; network key services last, in the file's order.
        let mut order: Vec<&Stanza> = group.stanzas.iter().collect();
        order.sort_by_key(|s| match s {
            Stanza::Age { .. } => 0,
            Stanza::Pgp { .. } => 1,
            _ => 2,
        });
        let mut attempts = Vec::new();
        let mut opened = None;
        for stanza in order {
            match keyring.open(stanza) {
                Ok(share) => {
                    opened = Some(share);
                    break;
                }
                Err(reason) => attempts.push(Attempt {
                    stanza: format!("{} {}", stanza.kind(), stanza.target()),
                    reason,
                }),
            }
        }
        match opened {
            Some(share) => {
                shares.push(share);
                report.push(None);
            }
            None => report.push(Some(attempts)),
        }
    }
    if shares.len() < needed {
        return Err(DataKeyError::NotEnoughGroups {
            opened: shares.len(),
            needed,
            groups: report,
        });
    }
    let key = if groups.len() > 1 {
        shamir::combine(&shares)?
    } else {
        shares.pop().expect("one share")
    };
    let array: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| DataKeyError::BadLength(key.len()))?;
    Ok(Zeroizing::new(array))
}
