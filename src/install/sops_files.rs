//! The plan's sops files, each read and decrypted once, by this thread and a
//! helper ([`crate::helper`]) together: each takes the next file not yet
//! taken. A data key this process recovers with its own identities is
//! recovered at once; one that needs a key service (gpg, a plugin, a KMS) is
//! recovered one file at a time, in the files' order ([`KeyTurns`]), so key
//! services see what a single thread would do.
//! Results come back in the files' order, whoever opened them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use zeroize::Zeroizing;

use crate::keys::Keyring;
use crate::safe_path::{OpenError, Trust};
use crate::sops::tree::{PathStep, parse_slash_path};
use crate::sops::{ExtractError, Format};
use crate::unlock::{DecryptError, KeyTurns, decrypt_in_turn};

/// One sops file and what its secrets take from it.
pub(super) struct File {
    pub(super) path: PathBuf,
    pub(super) format: Format,
    /// Indices of the manifest's secrets that read it, in the manifest's order.
    pub(super) users: Vec<usize>,
    /// What each user takes: the whole file (`None`) or the value at a key path.
    picks: Vec<Option<Vec<PathStep>>>,
}

impl File {
    /// A file read by `users`; `key_of` gives a user's key (empty: the
    /// whole file).
    pub(super) fn new<'k>(
        path: PathBuf,
        format: Format,
        users: Vec<usize>,
        key_of: impl Fn(usize) -> &'k str,
    ) -> File {
        let whole_file = matches!(format, Format::Binary | Format::Dotenv | Format::Ini);
        let picks = users
            .iter()
            .map(|&i| key_of(i))
            .map(|k| (!(k.is_empty() || whole_file)).then(|| parse_slash_path(k)))
            .collect();
        File {
            path,
            format,
            users,
            picks,
        }
    }
}

/// What became of one file.
pub(super) enum Opened {
    /// It could not be read.
    Unreadable(OpenError),
    /// It could not be parsed or decrypted.
    Undecryptable(DecryptError),
    /// One value per user, in [`File::users`]' order.
    Values(Vec<Result<Zeroizing<Vec<u8>>, ExtractError>>),
}

/// What both threads work from.
struct Shared {
    files: Vec<File>,
    keyring: Keyring,
    turns: KeyTurns,
    /// The next file nobody has taken.
    next: AtomicUsize,
}

impl Shared {
    /// Takes files until none is left.
    fn work(&self) -> Vec<(usize, Opened)> {
        let mut done = Vec::new();
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(file) = self.files.get(k) else {
                return done;
            };
            done.push((k, open(k, file, &self.keyring, &self.turns)));
        }
    }
}

fn open(k: usize, file: &File, keyring: &Keyring, turns: &KeyTurns) -> Opened {
    let read = || crate::safe_path::read(&file.path, Trust::invoker());
    let doc = match decrypt_in_turn(k, turns, read, file.format, keyring) {
        Err(e) => return Opened::Unreadable(e),
        Ok(Err(e)) => return Opened::Undecryptable(e),
        Ok(Ok(doc)) => doc,
    };
    Opened::Values(
        file.picks
            .iter()
            .map(|pick| match pick {
                None => doc.to_plaintext(file.format),
                Some(path) => doc.extract(path, file.format),
            })
            .collect(),
    )
}

/// Files being opened; [`Batch::finish`] joins in and collects them.
pub(super) struct Batch {
    shared: Arc<Shared>,
    helper: Option<JoinHandle<Vec<(usize, Opened)>>>,
}

/// Starts opening `files` with `keyring`. One file needs no helper, and a
/// helper that cannot be started leaves the work to [`Batch::finish`].
pub(super) fn start(files: Vec<File>, keyring: Keyring) -> Batch {
    let shared = Arc::new(Shared {
        files,
        keyring,
        turns: KeyTurns::new(),
        next: AtomicUsize::new(0),
    });
    let helper = (shared.files.len() > 1)
        .then(|| {
            let shared = Arc::clone(&shared);
            crate::helper::spawn("sops-files", move || shared.work()).ok()
        })
        .flatten();
    Batch { shared, helper }
}

impl Batch {
    /// Opens what is left on this thread, waits for the helper, and returns
    /// each file with what became of it, in the files' order.
    pub(super) fn finish(self) -> Vec<(File, Opened)> {
        let mut slots: Vec<Option<Opened>> = (0..self.shared.files.len()).map(|_| None).collect();
        for (k, o) in self.shared.work() {
            slots[k] = Some(o);
        }
        if let Some(h) = self.helper {
            for (k, o) in h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                slots[k] = Some(o);
            }
        }
        let shared = Arc::into_inner(self.shared).expect("the helper has ended");
        shared
            .files
            .into_iter()
            .zip(slots)
            .map(|(f, o)| (f, o.expect("every file is taken once")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel)
    }

    fn keyring() -> Keyring {
        let mut k = Keyring::new();
        k.add_age_key_file(&fixture("keys/age1.txt")).unwrap();
        k
    }

    /// (file, format, key) and what is expected of it.
    const CASES: [(&str, Format, &str, Expect); 8] = [
        (
            "app.yaml",
            Format::Yaml,
            "app/db_password",
            Expect::Value("app.db_password.out"),
        ),
        ("no-such-file.yaml", Format::Yaml, "a", Expect::Unreadable),
        (
            "tampered.yaml",
            Format::Yaml,
            "app/db_password",
            Expect::Undecryptable,
        ),
        ("app.json", Format::Json, "", Expect::Value("app_json.whole.out")),
        ("other_key.yaml", Format::Yaml, "other", Expect::Undecryptable),
        ("app_v2.yaml", Format::Yaml, "no/such/key", Expect::NoKey),
        ("app.env", Format::Dotenv, "", Expect::Value("app_env.whole.out")),
        (
            "blob.bin",
            Format::Binary,
            "",
            Expect::Value("blob_bin.whole.out"),
        ),
    ];

    #[derive(Clone, Copy, Debug)]
    enum Expect {
        Value(&'static str),
        Unreadable,
        Undecryptable,
        NoKey,
    }

    fn files(rounds: usize) -> Vec<File> {
        (0..rounds)
            .flat_map(|_| CASES.iter())
            .enumerate()
            .map(|(i, (name, format, key, _))| {
                File::new(fixture("install/enc").join(name), *format, vec![i], |_| key)
            })
            .collect()
    }

    #[test]
    fn files_come_back_in_their_order_whoever_opened_them() {
        for _ in 0..5 {
            let opened = start(files(3), keyring()).finish();
            assert_eq!(opened.len(), 3 * CASES.len());
            for (i, (file, o)) in opened.iter().enumerate() {
                let (name, _, _, expect) = CASES[i % CASES.len()];
                assert_eq!(file.users, vec![i]);
                assert!(file.path.ends_with(name), "{}", file.path.display());
                match (expect, o) {
                    (Expect::Value(out), Opened::Values(v)) => {
                        let want = std::fs::read(fixture("install/expected").join(out)).unwrap();
                        assert_eq!(v.len(), 1);
                        assert_eq!(v[0].as_ref().map(|z| z.to_vec()).ok(), Some(want), "{name}");
                    }
                    (Expect::NoKey, Opened::Values(v)) => assert!(v[0].is_err(), "{name}"),
                    (Expect::Unreadable, Opened::Unreadable(_)) => {}
                    (Expect::Undecryptable, Opened::Undecryptable(_)) => {}
                    (e, _) => panic!("{name}: expected {e:?}"),
                }
            }
        }
    }

    #[test]
    fn one_file_or_none_is_opened_without_a_helper() {
        let one = start(files(1).into_iter().take(1).collect(), keyring());
        assert!(one.helper.is_none());
        assert!(matches!(one.finish()[..], [(_, Opened::Values(_))]));
        let none = start(Vec::new(), keyring());
        assert!(none.helper.is_none() && none.finish().is_empty());
        assert!(start(files(1), keyring()).helper.is_some());
    }
}
