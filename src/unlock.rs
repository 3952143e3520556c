//! Unlocking a sops file with this host's keys, the three steps joined: the
//! format layer ([`crate::sops`]) reads the file and names the stanzas that
//! hold its data key, the keyring ([`crate::keys`]) recovers the key from
//! them, and the format layer decrypts every value with it and checks the
//! MAC. Neither layer knows the other; this module knows both.

use std::sync::{Condvar, Mutex};

use zeroize::Zeroizing;

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
    let key = data_key(&file, keyring)?;
    Ok(file.decrypt(&key)?)
}

/// The data key of a parsed file, recovered with `keyring`.
pub fn data_key(file: &EncryptedFile, keyring: &Keyring) -> Result<Zeroizing<[u8; 32]>, DecryptError> {
    keys::recover_data_key(&file.metadata, keyring).map_err(|source| DecryptError::DataKey {
        source,
        offered: keyring.offered().to_vec(),
    })
}

/// Files read, parsed and decrypted on several threads, with their data keys
/// still recovered one file at a time in the files' order: the key services
/// (gpg and its agent, age plugins, cloud KMS) are asked exactly as a single
/// thread would ask them, so a host remembered as unreachable for one file
/// is not asked again for the next, and messages do not depend on timing.
pub struct KeyTurns {
    next: Mutex<usize>,
    moved: Condvar,
}

impl KeyTurns {
    /// File 0 goes first.
    pub fn new() -> KeyTurns {
        KeyTurns {
            next: Mutex::new(0),
            moved: Condvar::new(),
        }
    }

    /// Runs `f` for file `k` once every file before it has had its turn, then
    /// hands the turn to file `k + 1`. Every file takes its turn, even one
    /// that failed before it had stanzas, or the files after it would wait
    /// for ever.
    pub fn take<T>(&self, k: usize, f: impl FnOnce() -> T) -> T {
        let mut next = self.next.lock().expect("not poisoned");
        while *next != k {
            next = self.moved.wait(next).expect("not poisoned");
        }
        let out = f();
        *next += 1;
        drop(next);
        self.moved.notify_all();
        out
    }
}

impl Default for KeyTurns {
    fn default() -> Self {
        KeyTurns::new()
    }
}

/// Reads, parses and decrypts file `k` of a batch whose data keys are
/// recovered in turn (see [`KeyTurns`]); `read` gives the file's bytes.
pub fn decrypt_in_turn<E>(
    k: usize,
    turns: &KeyTurns,
    read: impl FnOnce() -> Result<Vec<u8>, E>,
    format: Format,
    keyring: &Keyring,
) -> Result<Result<Document, DecryptError>, E> {
    // Every way through takes the turn exactly once.
    let file = match read() {
        Ok(bytes) => EncryptedFile::parse_owned(bytes, format),
        Err(e) => {
            turns.take(k, || ());
            return Err(e);
        }
    };
    let file = match file {
        Ok(file) => file,
        Err(e) => {
            turns.take(k, || ());
            return Ok(Err(e.into()));
        }
    };
    let key = turns.take(k, || data_key(&file, keyring));
    Ok(key.and_then(|key| Ok(file.decrypt(&key)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_taken_in_the_files_order_whatever_order_threads_come_in() {
        for _ in 0..20 {
            let turns = KeyTurns::new();
            let taken = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                // Started last file first: each must still wait for the ones before it.
                for k in (0..6).rev() {
                    let (turns, taken) = (&turns, &taken);
                    s.spawn(move || turns.take(k, || taken.lock().unwrap().push(k)));
                }
            });
            assert_eq!(*taken.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
        }
    }

    #[test]
    fn a_file_that_fails_before_its_stanzas_still_passes_the_turn_on() {
        let turns = KeyTurns::new();
        let keyring = Keyring::new();
        // File 0 cannot be read, file 1 is not a sops file: neither has a data
        // key to recover, and file 2 must not wait for ever behind them.
        let unreadable = decrypt_in_turn(0, &turns, || Err("no such file"), Format::Yaml, &keyring);
        assert_eq!(unreadable.err(), Some("no such file"));
        let garbage = decrypt_in_turn(
            1,
            &turns,
            || Ok::<_, ()>(b"a: 1\n".to_vec()),
            Format::Yaml,
            &keyring,
        );
        assert!(matches!(garbage, Ok(Err(DecryptError::Parse(_)))));
        assert_eq!(turns.take(2, || "file 2's turn"), "file 2's turn");
    }
}
