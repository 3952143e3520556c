//! Symlinks: the live-generation link, pruning, and links at custom paths.
//!
//! `/run/secrets` is a symlink to `/run/secrets.d/<N>`. Switching generations
//! is one `rename(2)` of a freshly made symlink over it, so a crash at any
//! moment leaves either the old or the new generation live. Secrets whose
//! `path` is elsewhere get a symlink there pointing into `/run/secrets`; its
//! parent directories are walked with `O_NOFOLLOW` so that a symlink planted
//! by another user cannot redirect the write.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, fchownat, symlinkat, unlinkat};

use super::generation::Ids;

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

/// Points `link` at `target` atomically.
pub fn swap(link: &Path, target: &Path) -> Result<(), String> {
    let parent = link
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", link.display()))?;
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let base = link
        .file_name()
        .ok_or_else(|| format!("{} has no file name", link.display()))?;
    let tmp = parent.join(temp_name(base));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        // sops-nix replaces a directory that stands where the link belongs.
        let is_dir = std::fs::symlink_metadata(link).is_ok_and(|m| m.is_dir());
        if is_dir {
            std::fs::remove_dir_all(link)
                .map_err(|e| format!("cannot remove directory {}: {e}", link.display()))?;
            std::fs::rename(&tmp, link)
                .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), link.display()))?;
        } else {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "cannot rename {} to {}: {e}",
                tmp.display(),
                link.display()
            ));
        }
    }
    Ok(())
}

/// Removes generations older than the `keep` newest; never `live`. `keep == 0` keeps all.
pub fn prune(mount: &Path, live: u64, keep: u64) -> Result<Vec<u64>, String> {
    let mut removed = Vec::new();
    if keep == 0 {
        return Ok(removed);
    }
    let entries = std::fs::read_dir(mount).map_err(|e| format!("cannot read {}: {e}", mount.display()))?;
    for entry in entries.flatten() {
        let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if n != live && n + keep <= live {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| format!("cannot remove old generation {}: {e}", entry.path().display()))?;
            removed.push(n);
        }
    }
    removed.sort_unstable();
    Ok(removed)
}

/// Removes generation directories newer than the live one: leftovers of a run
/// that died before its swap.
pub fn remove_leftovers(mount: &Path, live: u64) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if n > live {
            std::fs::remove_dir_all(entry.path()).map_err(|e| {
                format!(
                    "cannot remove unfinished generation {}: {e}",
                    entry.path().display()
                )
            })?;
        }
    }
    Ok(())
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

/// Opens the directory `dir`, creating missing parts (0755), following only
/// symlinks owned by root or by `trusted_uid`.
fn open_dir_safely(dir: &Path, trusted_uid: u32) -> Result<OwnedFd, String> {
    let mut pending: Vec<OsString> = Vec::new();
    for c in dir.components().rev() {
        match c {
            Component::Normal(p) => pending.push(p.to_owned()),
            Component::ParentDir => pending.push(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let open_root =
        || nix::fcntl::open("/", DIR_FLAGS, Mode::empty()).map_err(|e| format!("cannot open /: {e}"));
    let mut fd = open_root()?;
    let mut walked = PathBuf::from("/");
    let mut links_followed = 0;
    while let Some(part) = pending.pop() {
        let part_str = Path::new(&part);
        match fstatat(&fd, part_str, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => {
                match mkdirat(&fd, part_str, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("cannot create {}: {e}", walked.join(&part).display())),
                }
                fd = openat(&fd, part_str, DIR_FLAGS, Mode::empty())
                    .map_err(|e| format!("cannot open {}: {e}", walked.join(&part).display()))?;
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", walked.join(&part).display())),
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
                if st.st_uid != 0 && st.st_uid != trusted_uid {
                    return Err(format!(
                        "{} is a symlink owned by uid {}; refusing to follow it (a link planted by another user could redirect the secret)",
                        walked.join(&part).display(),
                        st.st_uid
                    ));
                }
                links_followed += 1;
                if links_followed > 40 {
                    return Err(format!("too many symlinks under {}", dir.display()));
                }
                let target = readlinkat(&fd, part_str)
                    .map_err(|e| format!("cannot read link {}: {e}", walked.join(&part).display()))?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    fd = open_root()?;
                    walked = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => pending.push(p.to_owned()),
                        Component::ParentDir => pending.push(OsString::from("..")),
                        _ => {}
                    }
                }
            }
            Ok(_) => {
                fd = openat(&fd, part_str, DIR_FLAGS, Mode::empty()).map_err(|e| {
                    format!(
                        "{} is not a directory we can use: {e}",
                        walked.join(&part).display()
                    )
                })?;
                walked.push(&part);
            }
        }
    }
    Ok(fd)
}

/// Makes `path` a symlink to `target` owned per `ids` (no chown when `None`),
/// leaving an identical existing link alone.
pub fn link_at(path: &Path, target: &Path, ids: Option<Ids>, trusted_uid: u32) -> Result<(), String> {
    let parent = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} has no file name", path.display()))?;
    let dir = open_dir_safely(parent, trusted_uid)?;
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
            return Err(format!(
                "{} is a directory; it cannot become a link to the secret",
                path.display()
            ));
        }
    }
    let tmp = temp_name(name.as_os_str());
    let tmp = Path::new(&tmp);
    let _ = unlinkat(&dir, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
    symlinkat(target, dir.as_fd(), tmp)
        .map_err(|e| format!("cannot create a symlink next to {}: {e}", path.display()))?;
    let result = (|| {
        if let Some(ids) = ids {
            fchownat(
                &dir,
                tmp,
                Some(Uid::from_raw(ids.uid)),
                Some(Gid::from_raw(ids.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| format!("cannot chown the symlink {}: {e}", path.display()))?;
        }
        renameat(&dir, tmp, &dir, name)
            .map_err(|e| format!("cannot move the symlink into place at {}: {e}", path.display()))
    })();
    if result.is_err() {
        let _ = unlinkat(&dir, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Removes the symlink at `path` if it still points at `target` (a link we
/// made for a secret that is gone); anything else there is left alone.
pub fn remove_link_if(path: &Path, target: &Path, trusted_uid: u32) -> Result<bool, String> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(false);
    };
    if !parent.exists() {
        return Ok(false);
    }
    let dir = open_dir_safely(parent, trusted_uid)?;
    let name = Path::new(name);
    match readlinkat(&dir, name) {
        Ok(t) if t.as_bytes() == target.as_os_str().as_bytes() => {
            unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(|e| format!("cannot remove the stale link {}: {e}", path.display()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
