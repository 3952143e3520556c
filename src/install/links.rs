//! Symlinks: the live-generation link, pruning, and links at custom paths.
//!
//! `/run/secrets` is a symlink to `/run/secrets.d/<N>`. Switching generations
//! is one `rename(2)` of a freshly made symlink over it, so a crash at any
//! moment leaves either the old or the new generation live. Secrets whose
//! `path` is elsewhere get a symlink there pointing into `/run/secrets`. The
//! directories all these links go into are opened by [`crate::safe_path`]'s
//! rule, so that a symlink planted by another user cannot redirect the write.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, readlinkat, renameat};
use nix::sys::stat::{SFlag, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, symlinkat, unlinkat};

use super::generation::Ids;
use crate::safe_path::{self, Missing, Trust};

/// Why a link could not be made, moved or removed, or a generation pruned.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The path has no parent or no file name.
    #[error("{field}{path} has no {missing}")]
    NotAPath {
        /// `"symlinkPath "` for the live link, empty for other links.
        field: &'static str,
        /// The path.
        path: PathBuf,
        /// `parent directory` or `file name`.
        missing: &'static str,
    },
    /// The live link's directory was refused by the safe rule.
    #[error("symlinkPath {path}: {source}")]
    SymlinkPath {
        /// `symlinkPath`.
        path: PathBuf,
        /// Why.
        source: safe_path::OpenError,
    },
    /// A link's directory was refused by the safe rule.
    #[error("{0}")]
    Refused(safe_path::OpenError),
    /// A directory stands where a custom-path link belongs.
    #[error("{0} is a directory; it cannot become a link to the secret")]
    Directory(PathBuf),
    /// A system call failed.
    #[error("cannot {action} {path}: {source}")]
    Sys {
        /// What was being done.
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
    /// A file-system operation of the standard library failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The error of a failed system call; the path is copied only on failure.
fn sys<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(nix::errno::Errno) -> LinkError + 'a {
    move |source| LinkError::Sys {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The same for the standard library's file-system calls.
fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LinkError + 'a {
    move |source| LinkError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the directory a link goes into by [`safe_path`]'s rule, trusting
/// links of root and `trusted_uid`.
fn open_dir_safely(dir: &Path, trusted_uid: u32, missing: Missing) -> Result<OwnedFd, LinkError> {
    safe_path::open_dir(dir, Trust::uid(trusted_uid), missing)
        .map(|d| d.fd)
        .map_err(LinkError::Refused)
}

/// The generation number the live link points at, if it points into `mount`.
pub fn live_generation(mount: &Path, link: &Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    if target.parent()? != mount {
        return None;
    }
    target.file_name()?.to_str()?.parse().ok()
}

fn temp_name(base: &std::ffi::OsStr) -> OsString {
    let mut name = OsString::from(".");
    name.push(base);
    name.push(format!(".tmp-{}", std::process::id()));
    name
}

/// Points `link` at `target` atomically. The link's directory is opened (and
/// made, if missing) by [`safe_path`]'s rule, and the link is made and renamed
/// through that descriptor, so a symlink another user planted above it cannot
/// move the live link into a directory of that user's choosing.
pub fn swap(link: &Path, target: &Path) -> Result<(), LinkError> {
    let not = |missing| LinkError::NotAPath {
        field: "symlinkPath ",
        path: link.to_path_buf(),
        missing,
    };
    let parent = link.parent().ok_or_else(|| not("parent directory"))?;
    let base = link.file_name().ok_or_else(|| not("file name"))?;
    let dir = safe_path::open_dir(parent, Trust::invoker(), Missing::Create(0o755)).map_err(|source| {
        LinkError::SymlinkPath {
            path: link.to_path_buf(),
            source,
        }
    })?;
    let tmp = temp_name(base);
    let tmp = Path::new(&tmp);
    let base = Path::new(base);
    let _ = unlinkat(&dir.fd, tmp, UnlinkatFlags::NoRemoveDir);
    symlinkat(target, dir.fd.as_fd(), tmp).map_err(sys("create a symlink next to", link))?;
    if let Err(e) = renameat(&dir.fd, tmp, &dir.fd, base) {
        // sops-nix replaces a directory that stands where the link belongs.
        let is_dir = fstatat(&dir.fd, base, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR);
        if is_dir {
            // Through our descriptor of the parent, not the path it was found by.
            let in_dir = Path::new("/proc/self/fd")
                .join(dir.fd.as_raw_fd().to_string())
                .join(base);
            std::fs::remove_dir_all(&in_dir).map_err(io("remove directory", link))?;
            renameat(&dir.fd, tmp, &dir.fd, base).map_err(sys("move the new link over", link))?;
        } else {
            let _ = unlinkat(&dir.fd, tmp, UnlinkatFlags::NoRemoveDir);
            return Err(sys("move the new link over", link)(e));
        }
    }
    Ok(())
}

/// Removes generations older than the `keep` newest; never `live`. `keep == 0` keeps all.
///
/// `known` are names of files that an old generation most likely holds (this
/// run's secrets). Those of one path component are unlinked by name first, through a descriptor of the generation:
/// reading a directory of thousands of entries costs about a fifth of
/// unlinking them, and what is left to read afterwards is only what the
/// names missed (a secret since removed, `rendered/`, nested paths), which is
/// then removed as found. A name the generation lacks, or that is a
/// directory there, is skipped.
pub fn prune(mount: &Path, live: u64, keep: u64, known: &[&str]) -> Result<Vec<u64>, LinkError> {
    let mut removed = Vec::new();
    if keep == 0 {
        return Ok(removed);
    }
    let entries = std::fs::read_dir(mount).map_err(io("read", mount))?;
    for entry in entries.flatten() {
        let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if n != live && n + keep <= live {
            let path = entry.path();
            unlink_known(&path, known);
            std::fs::remove_dir_all(&path).map_err(io("remove old generation", &path))?;
            removed.push(n);
        }
    }
    removed.sort_unstable();
    Ok(removed)
}

/// Unlinks each of `names` that is a single path component in the directory
/// `generation`, ignoring every failure: [`prune`] removes whatever remains.
fn unlink_known(generation: &Path, names: &[&str]) {
    if names.is_empty() {
        return;
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(dir) = nix::fcntl::open(generation, flags, nix::sys::stat::Mode::empty()) else {
        return;
    };
    for name in names {
        if name.is_empty() || name.contains('/') || *name == "." || *name == ".." {
            continue;
        }
        let _ = unlinkat(&dir, *name, UnlinkatFlags::NoRemoveDir);
    }
}

/// Removes generation directories newer than the live one: leftovers of a run
/// that died before its swap.
pub fn remove_leftovers(mount: &Path, live: u64) -> Result<(), LinkError> {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if n > live {
            std::fs::remove_dir_all(entry.path())
                .map_err(io("remove unfinished generation", &entry.path()))?;
        }
    }
    Ok(())
}

/// Makes `path` a symlink to `target` owned per `ids` (no chown when `None`),
/// leaving an identical existing link alone.
pub fn link_at(path: &Path, target: &Path, ids: Option<Ids>, trusted_uid: u32) -> Result<(), LinkError> {
    let not = |missing| LinkError::NotAPath {
        field: "",
        path: path.to_path_buf(),
        missing,
    };
    let parent = path.parent().ok_or_else(|| not("parent directory"))?;
    let name = path.file_name().ok_or_else(|| not("file name"))?;
    let dir = open_dir_safely(parent, trusted_uid, Missing::Create(0o755))?;
    let name = Path::new(name);
    if let Ok(st) = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        let is_link = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK;
        let same_target =
            is_link && readlinkat(&dir, name).is_ok_and(|t| t.as_bytes() == target.as_os_str().as_bytes());
        let same_owner = ids.is_none_or(|ids| st.st_uid == ids.uid && st.st_gid == ids.gid);
        if same_target && same_owner {
            return Ok(());
        }
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            return Err(LinkError::Directory(path.to_path_buf()));
        }
    }
    let tmp = temp_name(name.as_os_str());
    let tmp = Path::new(&tmp);
    let _ = unlinkat(&dir, tmp, UnlinkatFlags::NoRemoveDir);
    symlinkat(target, dir.as_fd(), tmp).map_err(sys("create a symlink next to", path))?;
    let result = (|| {
        if let Some(ids) = ids {
            fchownat(
                &dir,
                tmp,
                Some(Uid::from_raw(ids.uid)),
                Some(Gid::from_raw(ids.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(sys("chown the symlink", path))?;
        }
        renameat(&dir, tmp, &dir, name).map_err(sys("move the symlink into place at", path))
    })();
    if result.is_err() {
        let _ = unlinkat(&dir, tmp, UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Removes the symlink at `path` if it still points at `target` (a link we
/// made for a secret that is gone); anything else there is left alone.
pub fn remove_link_if(path: &Path, target: &Path, trusted_uid: u32) -> Result<bool, LinkError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(false);
    };
    if !parent.exists() {
        return Ok(false);
    }
    let dir = open_dir_safely(parent, trusted_uid, Missing::Fail)?;
    let name = Path::new(name);
    match readlinkat(&dir, name) {
        Ok(t) if t.as_bytes() == target.as_os_str().as_bytes() => {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(sys("remove the stale link", path))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_at_a_custom_path_is_refused_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("taken");
        std::fs::create_dir(&at).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let err = link_at(&at, Path::new("/run/secrets/x"), None, uid).unwrap_err();
        assert!(matches!(&err, LinkError::Directory(p) if *p == at), "{err:?}");
        assert!(
            err.to_string()
                .ends_with("is a directory; it cannot become a link to the secret")
        );
        assert!(matches!(
            swap(Path::new("/"), Path::new("/x")),
            Err(LinkError::NotAPath {
                missing: "parent directory",
                ..
            })
        ));
    }

    /// Names unlinked ahead of the sweep neither spare anything in an old
    /// generation nor reach anything outside it.
    #[test]
    fn pruning_by_known_names_removes_every_old_generation_whole_and_nothing_else() {
        let mount = tempfile::tempdir().unwrap();
        let m = mount.path();
        let write = |rel: &str| {
            let path = m.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, rel).unwrap();
        };
        for generation in ["1", "2", "3"] {
            for rel in ["a", "b", "gone", "nested/c", "rendered/t", "d/x"] {
                write(&format!("{generation}/{rel}"));
            }
        }
        // Outside every generation, under names the list carries.
        write("a");
        write("outside/b");
        let known = ["a", "b", "d", "nested/c", "..", ".", "", "missing", "outside"];
        let removed = prune(m, 3, 2, &known).unwrap();
        assert_eq!(removed, vec![1]);
        assert!(!m.join("1").exists());
        let mut left: Vec<String> = walkdir(m);
        left.sort();
        let mut expected: Vec<String> = ["2", "3"]
            .iter()
            .flat_map(|g| {
                ["a", "b", "gone", "nested/c", "rendered/t", "d/x"]
                    .iter()
                    .map(move |rel| format!("{g}/{rel}"))
            })
            .chain(["a".to_owned(), "outside/b".to_owned()])
            .collect();
        expected.sort();
        assert_eq!(left, expected);
        for rel in &left {
            assert_eq!(std::fs::read_to_string(m.join(rel)).unwrap(), *rel);
        }
        // keep == 1 removes 2 as well; keep == 0 removes nothing.
        assert_eq!(prune(m, 3, 0, &known).unwrap(), Vec::<u64>::new());
        assert_eq!(prune(m, 3, 1, &known).unwrap(), vec![2]);
        assert!(!m.join("2").exists() && m.join("3/a").exists() && m.join("a").exists());
    }

    fn walkdir(root: &Path) -> Vec<String> {
        let mut files = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path.strip_prefix(root).unwrap().to_str().unwrap().to_owned());
                }
            }
        }
        files
    }
}
