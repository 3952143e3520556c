//! Unlocking a sops file with this host's keys, the three steps joined: the
//! format layer ([`crate::sops`]) reads the file and names the stanzas that
//! hold its data key, the keyring ([`crate::keys`]) recovers the key from
//! them, and the format layer decrypts every value with it and checks the
//! MAC. Neither layer knows the other; this module knows both.

use std::sync::{Condvar, Mutex, PoisonError};

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

/// Files read, parsed and decrypted on several threads, with the data keys
/// that need a key service (gpg and its agent, age plugins, cloud KMS)
/// recovered one file at a time in the files' order: those services are
/// asked exactly as a single thread would ask them, so a host remembered as
/// unreachable for one file is not asked again for the next, and messages do
/// not depend on timing. A file whose key this process recovers on its own
/// ([`keys::recover_data_key_in_process`]) passes its turn without waiting.
pub struct KeyTurns {
    state: Mutex<Turns>,
    moved: Condvar,
}

/// Which files have had their turn.
#[derive(Default)]
struct Turns {
    /// Every file before this one has had its turn.
    next: usize,
    /// Files after `next` that have already passed theirs.
    passed_ahead: Vec<usize>,
}

impl Turns {
    /// File `k` has had its turn.
    fn done(&mut self, k: usize) {
        if k != self.next {
            self.passed_ahead.push(k);
            return;
        }
        self.next += 1;
        while let Some(i) = self.passed_ahead.iter().position(|&p| p == self.next) {
            self.passed_ahead.swap_remove(i);
            self.next += 1;
        }
    }
}

impl KeyTurns {
    /// File 0 goes first.
    pub fn new() -> KeyTurns {
        KeyTurns {
            state: Mutex::new(Turns::default()),
            moved: Condvar::new(),
        }
    }

    /// Runs `f` for file `k` once every file before it has had its turn, then
    /// counts `k`'s turn as had. Every file has its turn (this, or [`pass`]),
    /// even one that failed before it had stanzas, or the files after it
    /// would wait for ever.
    ///
    /// [`pass`]: KeyTurns::pass
    pub fn take<T>(&self, k: usize, f: impl FnOnce() -> T) -> T {
        let mut state = self.state.lock().expect("not poisoned");
        while state.next != k {
            state = self.moved.wait(state).expect("not poisoned");
        }
        let out = f();
        state.done(k);
        drop(state);
        self.moved.notify_all();
        out
    }

    /// Counts file `k`'s turn as had without waiting for the files before it:
    /// it needs no key service.
    pub fn pass(&self, k: usize) {
        // Also from a `Turn` dropped while unwinding, where a second panic would abort.
        self.state.lock().unwrap_or_else(PoisonError::into_inner).done(k);
        self.moved.notify_all();
    }
}

impl Default for KeyTurns {
    fn default() -> Self {
        KeyTurns::new()
    }
}

/// File `k`'s turn, had once whichever way its file goes. A turn not had
/// when this is dropped (a panic while the file was read or parsed, in a
/// build that unwinds) is passed, so that the files after it do not wait for
/// ever.
struct Turn<'t> {
    turns: &'t KeyTurns,
    k: usize,
    had: bool,
}

impl Turn<'_> {
    fn take<T>(mut self, f: impl FnOnce() -> T) -> T {
        self.had = true;
        self.turns.take(self.k, f)
    }

    fn pass(mut self) {
        self.had = true;
        self.turns.pass(self.k);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.had {
            self.turns.pass(self.k);
        }
    }
}

/// Reads, parses and decrypts file `k` of a batch whose data keys are
/// recovered in turn when they need a key service (see [`KeyTurns`]); `read`
/// gives the file's bytes.
pub fn decrypt_in_turn<E>(
    k: usize,
    turns: &KeyTurns,
    read: impl FnOnce() -> Result<Vec<u8>, E>,
    format: Format,
    keyring: &Keyring,
) -> Result<Result<Document, DecryptError>, E> {
    // Every way through has the turn exactly once; a file that cannot be
    // read or parsed asks no key service, so it passes.
    let turn = Turn { turns, k, had: false };
    let file = match read() {
        Ok(bytes) => EncryptedFile::parse_owned(bytes, format),
        Err(e) => {
            turn.pass();
            return Err(e);
        }
    };
    let file = match file {
        Ok(file) => file,
        Err(e) => {
            turn.pass();
            return Ok(Err(e.into()));
        }
    };
    let key = match keys::recover_data_key_in_process(&file.metadata, keyring) {
        Some(key) => {
            turn.pass();
            Ok(key)
        }
        None => turn.take(|| data_key(&file, keyring)),
    };
    Ok(key.and_then(|key| Ok(file.decrypt(&key)?)))
}

/// Parses and decrypts a file whose data key this process recovers with its
/// own identities, asking no key service. `None` for a file that does not
/// parse, needs a key service, or does not decrypt: [`decrypt_in_turn`] opens
/// it again and says why.
pub fn decrypt_in_process(bytes: Vec<u8>, format: Format, keyring: &Keyring) -> Option<Document> {
    let file = EncryptedFile::parse_owned(bytes, format).ok()?;
    let key = keys::recover_data_key_in_process(&file.metadata, keyring)?;
    file.decrypt(&key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files whose turns were taken, in the order they were, 20 times
    /// over: `files` threads started last file first, each waiting for the
    /// files before it; those for which `passes` holds pass their turns.
    fn turns_taken(files: usize, passes: impl Fn(usize) -> bool + Sync) -> Vec<Vec<usize>> {
        (0..20)
            .map(|_| {
                let turns = KeyTurns::new();
                let taken = Mutex::new(Vec::new());
                std::thread::scope(|s| {
                    for k in (0..files).rev() {
                        let (turns, taken, passes) = (&turns, &taken, &passes);
                        s.spawn(move || {
                            if passes(k) {
                                turns.pass(k);
                            } else {
                                turns.take(k, || taken.lock().unwrap().push(k));
                            }
                        });
                    }
                });
                taken.into_inner().unwrap()
            })
            .collect()
    }

    #[test]
    fn turns_are_taken_in_the_files_order_whatever_order_threads_come_in() {
        for taken in turns_taken(6, |_| false) {
            assert_eq!(taken, vec![0, 1, 2, 3, 4, 5]);
        }
    }

    #[test]
    fn a_turn_passed_ahead_counts_once_every_file_before_it_has_had_its_own() {
        let mut turns = Turns::default();
        turns.done(2);
        turns.done(4);
        assert_eq!(turns.next, 0, "files 0 and 1 have not had their turns");
        turns.done(0);
        assert_eq!(turns.next, 1);
        turns.done(1);
        assert_eq!(turns.next, 3, "2 had passed: 3 is next");
        turns.done(3);
        assert_eq!((turns.next, turns.passed_ahead.len()), (5, 0));
    }

    #[test]
    fn files_that_pass_their_turns_never_let_a_later_file_jump_an_earlier_one() {
        // Every third file needs no key service.
        for taken in turns_taken(9, |k| k % 3 == 1) {
            assert_eq!(taken, vec![0, 2, 3, 5, 6, 8]);
        }
    }

    fn fixture(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel)
    }

    #[test]
    fn a_key_recovered_in_process_is_the_one_the_whole_walk_recovers() {
        let mut keyring = Keyring::new();
        for k in ["age1.txt", "age2.txt", "age3.txt"] {
            keyring.add_age_key_file(&fixture("keys").join(k)).unwrap();
        }
        let mut in_process = Vec::new();
        // Files real sops wrote: one or several age recipients, 2-of-2 and
        // 2-of-3 key groups, foreign KMS and PGP stanzas beside ours, PGP only.
        for dir in ["enc", "pgp/enc", "install/enc"] {
            for entry in std::fs::read_dir(fixture(dir)).unwrap() {
                let path = entry.unwrap().path();
                let format = Format::from_path(&path);
                let Ok(file) = EncryptedFile::parse_owned(std::fs::read(&path).unwrap(), format) else {
                    continue;
                };
                let whole = keys::recover_data_key(&file.metadata, &keyring);
                if let Some(key) = keys::recover_data_key_in_process(&file.metadata, &keyring) {
                    let whole = whole.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert_eq!(*key, *whole, "{}", path.display());
                    in_process.push(path.strip_prefix(fixture("")).unwrap().to_owned());
                }
            }
        }
        for opened in [
            "enc/basic.yaml",
            "enc/groups_2of2.yaml",
            "enc/shamir_2of3.yaml",
            "enc/foreign_stanzas.yaml",
            "pgp/enc/pgp_and_age.yaml",
        ] {
            assert!(
                in_process.iter().any(|p| p == std::path::Path::new(opened)),
                "{opened} not opened in process: {in_process:?}"
            );
        }
        // PGP only: gpg would be asked, so it waits for its turn.
        assert!(!in_process.iter().any(|p| p.ends_with("pgp/enc/pgp.yaml")));
    }

    #[test]
    fn a_panic_while_a_file_is_read_still_passes_its_turn_on() {
        let turns = KeyTurns::new();
        let keyring = Keyring::new();
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                decrypt_in_turn(
                    0,
                    &turns,
                    || -> Result<Vec<u8>, ()> { panic!("a bug in a reader") },
                    Format::Yaml,
                    &keyring,
                )
            });
            assert!(reader.join().is_err(), "the reader panicked");
        });
        // Bounded, so that a regression fails instead of hanging the test run.
        let (told, heard) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = told.send(turns.take(1, || "file 1's turn"));
        });
        let got = heard.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(
            got,
            Ok("file 1's turn"),
            "file 1 waited for a turn that was never passed"
        );
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
