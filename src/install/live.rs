//! The live generation as a run finds it, read under the mount's lock: its
//! record, the key of its content digests, and its files where the record
//! cannot answer (a generation of sops-nix or of an older version) or where
//! a failed item keeps its previous copy.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::generation::Ids;
use super::item::Kind;
use super::state::{DigestKey, State};
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
    /// Its record (empty if it has none).
    pub(super) state: State,
    /// Whether the record has digests to compare with.
    pub(super) recorded: bool,
    /// The key of the digests: the record's, or a new one.
    pub(super) digest_key: DigestKey,
    user_mode: bool,
}

impl Live {
    /// Looks at the live generation of `manifest`.
    pub(super) fn load(manifest: &Manifest) -> Live {
        let state = State::load(&manifest.symlink_path);
        let key = state.key();
        Live {
            root: manifest.symlink_path.clone(),
            exists: manifest.symlink_path.exists(),
            recorded: key.is_some(),
            digest_key: key.unwrap_or_else(DigestKey::fresh),
            state,
            user_mode: manifest.user_mode,
        }
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
pub(super) fn read(path: &Path) -> Result<Option<LiveCopy>, String> {
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
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(Some((bytes, meta)))
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
