//! The plan's sops files, each read and decrypted once, by this thread and a
//! helper ([`crate::helper`]) together: each takes the next file not yet
//! taken. A data key this process recovers with its own identities is
//! recovered at once; one that needs a key service (gpg, a plugin, a KMS) is
//! recovered one file at a time, in the files' order ([`KeyTurns`]), so key
//! services see what a single thread would do.
//! Results come back in the files' order, whoever opened them.
//!
//! Most files can be opened before that: [`EarlyFiles`] starts a helper on
//! them while the manifest is still being checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use zeroize::Zeroizing;

use super::identities::identities;
use super::report::{LogLine, Problems};
use crate::keys::Keyring;
use crate::keys::sops_env::SopsAgeEnv;
use crate::manifest::{IdentitySources, Prescan};
use crate::safe_path::{OpenError, Trust};
use crate::sops::tree::{PathStep, parse_slash_path};
use crate::sops::{Document, ExtractError, Format};
use crate::unlock::{DecryptError, KeyTurns, decrypt_in_process, decrypt_in_turn};

/// One sops file and what its secrets take from it.
pub(super) struct File {
    pub(super) path: PathBuf,
    pub(super) format: Format,
    /// Indices of the manifest's secrets that read it, in the manifest's order.
    pub(super) users: Vec<usize>,
    /// What each user takes: the whole file (`None`) or the value at a key path.
    picks: Vec<Option<Vec<PathStep>>>,
    /// The file decrypted ahead ([`EarlyFiles`]), if it was.
    ahead: Option<Document>,
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
            ahead: None,
        }
    }

    /// The same file, already decrypted.
    pub(super) fn opened_ahead(self, ahead: Option<Document>) -> File {
        File { ahead, ..self }
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
        untaken(&self.next, &self.files)
            .map(|(k, file)| (k, open(k, file, &self.keyring, &self.turns)))
            .collect()
    }
}

/// Each of `items` that no other thread has taken, with its index: the
/// threads sharing `next` take the next one in turn until none is left.
fn untaken<'a, T>(next: &'a AtomicUsize, items: &'a [T]) -> impl Iterator<Item = (usize, &'a T)> {
    std::iter::from_fn(move || {
        let k = next.fetch_add(1, Ordering::Relaxed);
        items.get(k).map(|item| (k, item))
    })
}

fn open(k: usize, file: &File, keyring: &Keyring, turns: &KeyTurns) -> Opened {
    let read = || crate::safe_path::read(&file.path, Trust::invoker());
    let decrypted;
    let doc = match &file.ahead {
        // Decrypted ahead, with no key service: its turn passes.
        Some(doc) => {
            turns.pass(k);
            doc
        }
        None => match decrypt_in_turn(k, turns, read, file.format, keyring) {
            Err(e) => return Opened::Unreadable(e),
            Ok(Err(e)) => return Opened::Undecryptable(e),
            Ok(Ok(doc)) => {
                decrypted = doc;
                &decrypted
            }
        },
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

/// Sops files opened ahead, while the manifest is checked: a helper reads
/// the manifest's text ([`Prescan`]), builds the keyring from the identity
/// sources it names, and decrypts each sops file it names whose data key
/// this process recovers with that keyring. [`EarlyFiles::finish`] joins in
/// and hands over what was decrypted, for the files the checked manifest
/// reads in the same format and only if it names the same identity sources;
/// anything else is dropped (and wiped) and opened as usual.
///
/// Only where building the keyring reads key files and nothing else: not
/// with a sops identity in the environment (`SOPS_AGE_KEY_CMD` runs a
/// command) or a GnuPG identity. A file that needs a key service, or fails
/// in any way, is left to [`start`], which opens it in turn and says why.
pub struct EarlyFiles(Mutex<Option<Ahead>>);

/// The helper, and where it hands over its work once the keyring is built
/// (nothing comes if it found no work).
struct Ahead {
    work: mpsc::Receiver<Arc<Work>>,
    helper: JoinHandle<Vec<(usize, Document)>>,
}

/// The files named in the manifest's text and the keyring for them.
struct Work {
    prescan: Prescan,
    keyring: Keyring,
    /// What building the keyring logged and found wrong, told by the run.
    log: Vec<LogLine>,
    problems: Problems,
    /// The next file nobody has taken.
    next: AtomicUsize,
}

impl Work {
    /// Takes files until none is left; returns those decrypted.
    fn run(&self) -> Vec<(usize, Document)> {
        untaken(&self.next, &self.prescan.files)
            .filter_map(|(k, (path, format))| {
                let bytes = crate::safe_path::read(path, Trust::invoker()).ok()?;
                decrypt_in_process(bytes, *format, &self.keyring).map(|doc| (k, doc))
            })
            .collect()
    }

    /// Leaves the files nobody has taken.
    fn stop(&self) {
        self.next.store(self.prescan.files.len(), Ordering::Relaxed);
    }
}

/// What [`EarlyFiles`] decrypted, for the checked manifest.
pub(super) struct OpenedAhead {
    pub(super) keyring: Keyring,
    pub(super) log: Vec<LogLine>,
    pub(super) problems: Problems,
    docs: HashMap<PathBuf, (Format, Document)>,
}

impl OpenedAhead {
    /// `path` as decrypted ahead, if it was, in `format`.
    pub(super) fn take(&mut self, path: &Path, format: Format) -> Option<Document> {
        match self.docs.remove(path) {
            Some((f, doc)) if f == format => Some(doc),
            _ => None,
        }
    }
}

impl EarlyFiles {
    /// Nothing opened ahead.
    pub fn none() -> EarlyFiles {
        EarlyFiles(Mutex::new(None))
    }

    /// Starts the helper on the manifest's `text`, unless `env` names a sops
    /// identity; `runtime_dir` is as for [`crate::manifest::Manifest::parse`].
    pub fn ahead(text: Arc<Vec<u8>>, runtime_dir: Option<String>, env: &SopsAgeEnv) -> EarlyFiles {
        if !env.is_empty() {
            return EarlyFiles::none();
        }
        let (tx, rx) = mpsc::channel();
        let helper = crate::helper::spawn("sops-ahead", move || {
            let Some(prescan) = Prescan::read(&text, runtime_dir.as_deref()) else {
                return Vec::new();
            };
            drop(text);
            let sources = &prescan.identities;
            if prescan.files.is_empty() || sources.gnupg_home.is_some() || !sources.ssh_key_paths.is_empty() {
                return Vec::new();
            }
            let (mut log, mut problems) = (Vec::new(), Problems::default());
            let keyring = identities(sources, &SopsAgeEnv::default(), None, &mut log, &mut problems);
            // A keyring that opens nothing in this process is handed over
            // with no file to take: every file would be read only to be left.
            let first = if keyring.opens_in_process() {
                0
            } else {
                prescan.files.len()
            };
            let work = Arc::new(Work {
                prescan,
                keyring,
                log,
                problems,
                next: AtomicUsize::new(first),
            });
            if tx.send(Arc::clone(&work)).is_err() {
                return Vec::new();
            }
            work.run()
        });
        EarlyFiles(Mutex::new(helper.ok().map(|helper| Ahead { work: rx, helper })))
    }

    /// Whether a helper was started and has not been waited for.
    pub(super) fn is_running(&self) -> bool {
        self.0.lock().is_ok_and(|h| h.is_some())
    }

    /// Joins in decrypting the files left, waits for the helper, and hands
    /// over what was decrypted if `sources` (the checked manifest's) are
    /// those the keyring was built from. Also waits for a helper whose work
    /// is not wanted, so that none is left once capabilities are dropped.
    pub(super) fn finish(&self, sources: &IdentitySources) -> Option<OpenedAhead> {
        let ahead = self.0.lock().expect("not poisoned").take()?;
        // An error: the helper found nothing to do, and ends.
        let work = ahead.work.recv().ok();
        let same = work.as_ref().is_some_and(|w| w.prescan.identities == *sources);
        let mine = match &work {
            Some(w) if same => w.run(),
            Some(w) => {
                w.stop();
                Vec::new()
            }
            None => Vec::new(),
        };
        let theirs = ahead
            .helper
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let work = Arc::into_inner(work.filter(|_| same)?).expect("the helper has ended");
        let mut files: Vec<Option<(PathBuf, Format)>> = work.prescan.files.into_iter().map(Some).collect();
        let docs = mine
            .into_iter()
            .chain(theirs)
            .filter_map(|(k, doc)| files[k].take().map(|(path, format)| (path, (format, doc))))
            .collect();
        Some(OpenedAhead {
            keyring: work.keyring,
            log: work.log,
            problems: work.problems,
            docs,
        })
    }
}

impl std::fmt::Debug for EarlyFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyFiles")
            .field("started", &self.is_running())
            .finish()
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

    /// A manifest's text naming every case's file, with `extra` fields.
    fn manifest_text(extra: &str) -> Arc<Vec<u8>> {
        let secrets: Vec<String> = CASES
            .iter()
            .enumerate()
            .map(|(i, (name, format, _, _))| {
                let path = fixture("install/enc").join(name);
                format!(
                    r#"{{"name":"s{i}","sopsFile":{:?},"format":"{}"}}"#,
                    path.display(),
                    format.name()
                )
            })
            .collect();
        Arc::new(format!(r#"{{"secrets":[{}]{extra}}}"#, secrets.join(",")).into_bytes())
    }

    fn age_sources() -> (String, IdentitySources) {
        let key = fixture("keys/age1.txt");
        let extra = format!(r#","ageKeyFile":{:?}"#, key.display());
        let sources = IdentitySources {
            age_key_file: Some(key),
            ..IdentitySources::default()
        };
        (extra, sources)
    }

    /// What came of each file, comparable: its values, or which failure.
    fn outcome(o: &Opened) -> Result<Vec<Option<Vec<u8>>>, &'static str> {
        match o {
            Opened::Unreadable(_) => Err("unreadable"),
            Opened::Undecryptable(_) => Err("undecryptable"),
            Opened::Values(v) => Ok(v.iter().map(|r| r.as_ref().ok().map(|z| z.to_vec())).collect()),
        }
    }

    #[test]
    fn files_decrypted_ahead_give_what_opening_them_now_gives() {
        let (extra, sources) = age_sources();
        for _ in 0..5 {
            let early = EarlyFiles::ahead(manifest_text(&extra), None, &SopsAgeEnv::default());
            let mut ahead = early.finish(&sources).expect("the same sources");
            assert!(early.finish(&sources).is_none(), "handed over once");
            assert!(ahead.log.is_empty() && ahead.problems.is_empty());
            let now = start(files(1), keyring()).finish();
            let with_ahead: Vec<File> = files(1)
                .into_iter()
                .map(|f| {
                    let doc = ahead.take(&f.path, f.format);
                    // Only what this process decrypts with its own key comes ahead.
                    let name = f.path.file_name().unwrap().to_str().unwrap();
                    let decrypts = !["no-such-file.yaml", "tampered.yaml", "other_key.yaml"].contains(&name);
                    assert_eq!(doc.is_some(), decrypts, "{name}");
                    f.opened_ahead(doc)
                })
                .collect();
            assert!(ahead.docs.is_empty(), "every file taken");
            let later = start(with_ahead, ahead.keyring).finish();
            assert_eq!(later.len(), now.len());
            for ((fa, a), (fb, b)) in later.iter().zip(&now) {
                assert_eq!(fa.path, fb.path);
                assert_eq!(outcome(a), outcome(b), "{}", fa.path.display());
            }
        }
    }

    #[test]
    fn files_decrypted_ahead_are_taken_only_in_their_format() {
        let (extra, sources) = age_sources();
        let mut ahead = EarlyFiles::ahead(manifest_text(&extra), None, &SopsAgeEnv::default())
            .finish(&sources)
            .unwrap();
        let app = fixture("install/enc/app.yaml");
        assert!(ahead.take(&app, Format::Json).is_none());
        assert!(
            ahead.take(&app, Format::Yaml).is_none(),
            "dropped when taken in another format"
        );
        assert!(
            ahead
                .take(&fixture("install/enc/app.json"), Format::Json)
                .is_some()
        );
    }

    #[test]
    fn nothing_comes_ahead_for_other_sources_a_command_or_gnupg() {
        let (extra, sources) = age_sources();
        // The checked manifest names other sources: all is dropped, the helper ended.
        let other = IdentitySources {
            log_imports: true,
            ..sources.clone()
        };
        let early = EarlyFiles::ahead(manifest_text(&extra), None, &SopsAgeEnv::default());
        assert!(format!("{early:?}").contains("started: true"));
        assert!(early.finish(&other).is_none());
        assert!(format!("{early:?}").contains("started: false"));
        // An identity in the environment (a command, perhaps): no helper at all.
        let env = SopsAgeEnv {
            key_cmd: Some("echo".into()),
            ..SopsAgeEnv::default()
        };
        let early = EarlyFiles::ahead(manifest_text(&extra), None, &env);
        assert!(format!("{early:?}").contains("started: false"));
        assert!(early.finish(&sources).is_none());
        // GnuPG, and a text that is no manifest: the helper does nothing.
        let gnupg = format!(r#"{extra},"gnupgHome":"/nonexistent""#);
        let sources_gnupg = IdentitySources {
            gnupg_home: Some(PathBuf::from("/nonexistent")),
            ..sources.clone()
        };
        assert!(
            EarlyFiles::ahead(manifest_text(&gnupg), None, &SopsAgeEnv::default())
                .finish(&sources_gnupg)
                .is_none()
        );
        assert!(
            EarlyFiles::ahead(Arc::new(b"[]".to_vec()), None, &SopsAgeEnv::default())
                .finish(&sources)
                .is_none()
        );
    }

    #[test]
    fn a_keyring_that_opens_nothing_is_handed_over_with_its_problems() {
        let missing = fixture("keys/no-such-key.txt");
        let extra = format!(r#","ageKeyFile":{:?}"#, missing.display());
        let sources = IdentitySources {
            age_key_file: Some(missing),
            ..IdentitySources::default()
        };
        let mut ahead = EarlyFiles::ahead(manifest_text(&extra), None, &SopsAgeEnv::default())
            .finish(&sources)
            .expect("the same sources");
        assert!(!ahead.keyring.opens_in_process());
        assert_eq!(
            ahead.problems.0.len(),
            1,
            "the key file's problem, told once by the run"
        );
        assert!(ahead.problems.0[0].message.starts_with("ageKeyFile: "));
        assert!(
            ahead
                .take(&fixture("install/enc/app.yaml"), Format::Yaml)
                .is_none()
        );
        assert!(ahead.docs.is_empty(), "no file was read");
    }
}
