//! Unlocking a sops file with this host's keys, the three steps joined: the
//! format layer ([`crate::sops`]) reads the file and names the stanzas that
//! hold its data key, the keyring ([`crate::keys`]) recovers the key from
//! them, and the format layer decrypts every value with it and checks the
//! MAC. Neither layer knows the other; this module knows both.

use crate::keys::{self, DataKeyError, Keyring};
use crate::sops::decrypt::TreeError;
use crate::sops::{Document, EncryptedFile, Format, ParseError};

/// Why a file could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The file is not a readable sops file.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// No usable key.
    #[error("{source}\n{}", describe_offered(.offered))]
    DataKey {
        /// Which stanzas failed and why.
        source: DataKeyError,
        /// What this host offered.
        offered: Vec<keys::Offered>,
    },
    /// A value or the MAC failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn describe_offered(offered: &[keys::Offered]) -> String {
    let mut s = String::new();
    if offered.is_empty() {
        s.push_str(
            "This host offers no local identity (no age key file, SSH key or GPG key); \
             cloud key services, if the file lists any, were asked as shown above.",
        );
    } else {
        s.push_str("This host offers:");
        for o in offered {
            s.push_str(&format!("\n    {} (from {})", o.recipient, o.origin));
        }
    }
    s.push_str(
        "\nAdd one of this host's recipients to the file's creation rule in .sops.yaml and run `sops updatekeys` on the file.",
    );
    s
}

/// Decrypts the bytes of a sops file.
pub fn decrypt_bytes(bytes: &[u8], format: Format, keyring: &Keyring) -> Result<Document, DecryptError> {
    unlock(EncryptedFile::parse(bytes, format)?, keyring)
}

/// Decrypts a sops file, taking its bytes so that they are not kept while
/// the tree is decrypted (see [`EncryptedFile::parse_owned`]).
pub fn decrypt_owned(bytes: Vec<u8>, format: Format, keyring: &Keyring) -> Result<Document, DecryptError> {
    unlock(EncryptedFile::parse_owned(bytes, format)?, keyring)
}

/// Recovers the data key of a parsed file with `keyring` and decrypts it.
pub fn unlock(file: EncryptedFile, keyring: &Keyring) -> Result<Document, DecryptError> {
    let key = keys::recover_data_key(&file.metadata, keyring).map_err(|source| DecryptError::DataKey {
        source,
        offered: keyring.offered().to_vec(),
    })?;
    Ok(file.decrypt(&key)?)
}
