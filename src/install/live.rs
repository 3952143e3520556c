//! The live generation as a run finds it, read under the mount's lock: its
//! record, the key of its content digests, and its files where the record
//! cannot answer (a generation of sops-nix or of an older version) or where
//! a failed item keeps its previous copy.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::generation::Ids;
use super::item::Kind;
use super::state::{self, DigestKey, Record, State};
use crate::manifest::{Manifest, Mode};
use crate::plaintext::Plaintext;
use crate::safe_path::{OpenError, Trust};

/// A live file's bytes and metadata.
pub(super) type LiveCopy = (Zeroizing<Vec<u8>>, std::fs::Metadata);

/// What the live generation is.
pub(super) struct Live {
    /// `symlinkPath`.
    pub(super) root: PathBuf,
    /// Whether there is a live generation at all (at boot there is none).
    pub(super) exists: bool,
    /// Its record's entries: empty if it has none, and also once the record
    /// this run makes is the same as the live one; only those that differ
    /// from this run's after an entry by entry comparison (see
    /// [`Live::compare_record`]).
    state: State,
    /// This run's names that the live record lacks, by kind, when the
    /// comparison was entry by entry (see [`Live::lacks`]).
    absent: Option<[Vec<String>; 2]>,
    /// The live record's bytes, until [`Live::compare_record`] has seen them.
    unread: Option<Zeroizing<Vec<u8>>>,
    /// Whether the record has digests to compare with.
    pub(super) recorded: bool,
    /// Whether this run's record is byte for byte the live one: nothing changed.
    pub(super) same_record: bool,
    /// The key of the digests: the record's, or a new one.
    pub(super) digest_key: DigestKey,
    user_mode: bool,
}

impl Live {
    /// Looks at the live generation of `manifest`. A record made by this
    /// version gives its key at once and is parsed only if this run's record
    /// turns out different; any other is parsed now.
    pub(super) fn load(manifest: &Manifest) -> Live {
        Live::at(&manifest.symlink_path, manifest.user_mode)
    }

    fn at(root: &Path, user_mode: bool) -> Live {
        let bytes = state::read(root);
        let (state, unread, key) = match bytes.as_deref().map(|b| (state::key_at_start(b), b)) {
            Some((Some(key), _)) => (State::default(), bytes, Some(key)),
            Some((None, b)) => {
                let state = State::parse(b);
                let key = state.key();
                (state, None, key)
            }
            None => (State::default(), None, None),
        };
        Live {
            root: root.to_path_buf(),
            exists: root.exists(),
            recorded: key.is_some(),
            same_record: false,
            digest_key: key.unwrap_or_else(DigestKey::fresh),
            state,
            absent: None,
            unread,
            user_mode,
        }
    }

    /// Compares the record this run will write with the live one. The same
    /// bytes mean the same names, paths, units, digests, modes and owners:
    /// nothing to tell, restart or clean up, and the live record's entries are
    /// never parsed. Otherwise they are compared entry by entry and only the
    /// entries that differ are parsed ([`state::delta`]); a live record of
    /// another shape is parsed whole.
    pub(super) fn compare_record(&mut self, record: &Record) {
        let Some(bytes) = self.unread.take() else {
            return;
        };
        if bytes.as_slice() == record.bytes {
            self.same_record = true;
            return;
        }
        if let Some(delta) = state::delta(record, &bytes) {
            self.state = delta.differing;
            self.absent = Some(delta.absent);
            return;
        }
        self.state = State::parse(&bytes);
        // A record whose start was whole but whose entries are not is no record.
        self.recorded = self.state.key().is_some();
    }

    /// The live record's entries (see [`Live::state`]): after an entry by
    /// entry comparison, only those that are not this run's byte for byte.
    pub(super) fn record(&self) -> &State {
        debug_assert!(self.unread.is_none(), "the record is compared before it is used");
        &self.state
    }

    /// Whether the live record has no entry `name` of `kind`. With
    /// [`Live::record`] this tells an entry that is the same as this run's
    /// (absent from both when only differing entries were parsed) from one
    /// that is new.
    pub(super) fn lacks(&self, kind: Kind, name: &str) -> bool {
        match &self.absent {
            Some(absent) => absent[kind.index()]
                .binary_search_by(|n| n.as_str().cmp(name))
                .is_ok(),
            None => !kind.record(&self.state).contains_key(name),
        }
    }

    /// Done with: the digest key is wiped; the parsed record (names, paths,
    /// units, digests; no secret) is left to the kernel, the process ending
    /// soon, rather than freed entry by entry.
    pub(super) fn leave(self) {
        let Live {
            state, digest_key, ..
        } = self;
        drop(digest_key);
        std::mem::forget(state);
    }

    /// The live copy of a failed item, kept with its bytes, owner and mode.
    pub(super) fn previous(&self, kind: Kind, name: &str) -> Option<(Plaintext, Option<Ids>, Mode)> {
        use std::os::unix::fs::MetadataExt;
        let (bytes, meta) = read(&kind.under_link(&self.root, name)).ok()??;
        let ids = (!self.user_mode).then_some(Ids {
            uid: meta.uid(),
            gid: meta.gid(),
        });
        Some((Plaintext::from(bytes), ids, Mode(meta.mode() & 0o7777)))
    }
}

/// Reads the live copy of a file, with its metadata; `None` if there is no
/// regular file there. The path is walked by the rule of
/// [`crate::safe_path`]: the live link is ours, and no link planted by
/// another user is followed to reach a file that is not.
pub(super) fn read(path: &Path) -> Result<Option<LiveCopy>, ReadError> {
    use std::io::Read;
    let mut file = match crate::safe_path::open_file(path, Trust::invoker()) {
        Ok(f) => f,
        Err(e)
            if e.is_not_found()
                || matches!(e, OpenError::NotRegular { .. })
                || e.io_error().and_then(std::io::Error::raw_os_error)
                    == Some(nix::errno::Errno::ENOTDIR as i32) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(ReadError::Open(e)),
    };
    let meta = file.metadata().map_err(ReadError::Io)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.read_to_end(&mut bytes).map_err(ReadError::Io)?;
    Ok(Some((bytes, meta)))
}

/// Why a live copy could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// Opening it by the safe rule failed.
    #[error(transparent)]
    Open(OpenError),
    /// Its metadata or its bytes could not be read.
    #[error(transparent)]
    Io(std::io::Error),
}

/// Relative paths of the regular files under `dir` (not following links).
pub(super) fn files_under(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ty) = e.file_type() else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if ty.is_dir() {
            files_under(&e.path(), &rel, out);
        } else {
            out.push(rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::state::{EntryRef, FILE, record_json};

    fn record(key: &DigestKey, names: &[&str]) -> Record {
        let entry = EntryRef {
            path: Path::new("/run/secrets/x"),
            restart_units: &[],
            reload_units: &[],
            credential: false,
            digest: "d",
            mode: 0o400,
            uid: Some(0),
            gid: Some(0),
        };
        record_json(key, names.iter().map(|n| (*n, entry.clone())), [])
    }

    fn live_with(bytes: &[u8]) -> (tempfile::TempDir, Live) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), bytes).unwrap();
        let live = Live::at(dir.path(), false);
        (dir, live)
    }

    #[test]
    fn a_record_made_again_byte_for_byte_is_never_parsed() {
        let key = DigestKey::fresh();
        let old = record(&key, &["a", "b"]);
        let (_dir, mut live) = live_with(&old.bytes);
        assert!(live.recorded);
        assert_eq!(
            live.digest_key.digest(b"x"),
            key.digest(b"x"),
            "the key is the record's"
        );
        live.compare_record(&old);
        assert!(live.same_record);
        assert!(live.record().secrets.is_empty(), "nothing left to act on");
    }

    #[test]
    fn a_different_record_is_parsed_where_it_differs() {
        let key = DigestKey::fresh();
        let (_dir, mut live) = live_with(&record(&key, &["a", "b"]).bytes);
        live.compare_record(&record(&key, &["a", "c"]));
        assert!(!live.same_record);
        assert!(live.recorded);
        // "a" is the same text in both: not parsed, and not new.
        let names: Vec<&String> = live.record().secrets.keys().collect();
        assert_eq!(names, ["b"], "only the entry that is gone is left to act on");
        assert!(!live.lacks(Kind::Secret, "a"));
        assert!(live.lacks(Kind::Secret, "c"));
        assert!(
            !live.lacks(Kind::Secret, "b"),
            "b is live (and gone from this run)"
        );
    }

    #[test]
    fn a_live_record_parsed_whole_lacks_what_it_has_no_entry_for() {
        let key = DigestKey::fresh();
        // Spaced out: not the shape the record is written in, so parsed whole.
        let spaced = String::from_utf8(record(&key, &["a", "b"]).bytes)
            .unwrap()
            .replace(r#"","secrets":{"#, r#"", "secrets": {"#);
        let (_dir, mut live) = live_with(spaced.as_bytes());
        live.compare_record(&record(&key, &["a", "c"]));
        assert!(live.recorded);
        let names: Vec<&String> = live.record().secrets.keys().collect();
        assert_eq!(names, ["a", "b"]);
        assert!(!live.lacks(Kind::Secret, "a"));
        assert!(live.lacks(Kind::Secret, "c"));
    }

    #[test]
    fn a_record_whose_entries_are_broken_is_no_record() {
        let key = DigestKey::fresh();
        let mut broken = record(&key, &["a"]).bytes;
        broken.truncate(broken.len() - 5);
        let (_dir, mut live) = live_with(&broken);
        live.compare_record(&record(&key, &["a"]));
        assert!(!live.same_record);
        assert!(!live.recorded, "the diff reads the live copies instead");
        assert!(live.record().secrets.is_empty());
    }

    #[test]
    fn a_record_without_its_key_first_is_parsed_at_once() {
        let older = br#"{"secrets":{"a":{"path":"/run/secrets/a","restartUnits":[],"reloadUnits":[]}},"templates":{}}"#;
        let (_dir, mut live) = live_with(older);
        assert!(!live.recorded);
        assert!(live.record().secrets.contains_key("a"));
        live.compare_record(&record(&DigestKey::fresh(), &["a"]));
        assert!(
            !live.same_record,
            "only a record with a key is compared by its bytes"
        );
        assert!(
            live.record().secrets.contains_key("a"),
            "its entries, parsed at once, stay for the diff"
        );
        assert!(!live.lacks(Kind::Secret, "a"));
    }
}
