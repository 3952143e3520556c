//! The secrets filesystem: a ramfs (never swapped) or, on request, a tmpfs
//! with `noswap`, mounted `nodev,nosuid,noexec` and owned `root:keys 0751`.
//! That is Linux; on macOS, [`ensure`] and [`unmount`] are the RAM disk's
//! (`ramdisk.rs`), with this module's error and outcome types.

#[cfg(target_os = "linux")]
use std::path::Path;
use std::path::PathBuf;

#[cfg(target_os = "linux")]
use nix::mount::{MsFlags, mount};
#[cfg(target_os = "linux")]
use nix::sys::stat::{Mode, fchmod};
#[cfg(target_os = "linux")]
use nix::sys::statfs::{FsType, TMPFS_MAGIC, fstatfs};
#[cfg(target_os = "linux")]
use nix::unistd::{Gid, Uid, fchown};
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;

use crate::safe_path;
#[cfg(target_os = "linux")]
use crate::safe_path::{Missing, Trust};

#[cfg(target_os = "macos")]
pub use super::ramdisk::{ensure, unmount};

/// ramfs's magic number (linux/magic.h); `nix` names tmpfs's but not this one.
#[cfg(target_os = "linux")]
const RAMFS_MAGIC: FsType = FsType(0x858458f6);

/// Why the secrets filesystem could not be set up (or taken down again).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be opened by the safe rule (or is a symlink).
    #[error("secretsMountPoint {path}: {source}")]
    Open {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: safe_path::OpenError,
    },
    /// statfs failed.
    #[error("cannot statfs {path}: {source}")]
    Statfs {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
    /// The kernel refused the mount.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    #[error("cannot mount {fstype} at {path}: {source}")]
    Mount {
        /// `ramfs` or `tmpfs`.
        fstype: &'static str,
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
    /// Something else was mounted there meanwhile.
    #[error("{path} changed while it was being mounted; refusing to chown what is there now")]
    Changed {
        /// The mount point.
        path: PathBuf,
    },
    /// The mounted directory could not be reopened.
    #[error("{0}")]
    Reopen(safe_path::OpenError),
    /// chown failed.
    #[error("cannot chown {path} to root:{gid}: {source}")]
    Chown {
        /// The mount point.
        path: PathBuf,
        /// The `keys` group.
        gid: u32,
        /// Why.
        source: nix::errno::Errno,
    },
    /// chmod failed.
    #[error("cannot chmod {path}: {source}")]
    Chmod {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
    /// The marker file could not be created on a fresh RAM disk (macOS).
    #[error("cannot mark {path} as the secrets filesystem: {source}")]
    Marker {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
    /// The RAM disk could not be set up or detached (macOS).
    #[error("{0}")]
    RamDisk(#[from] super::ramdisk::RamDiskError),
    /// umount failed.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    #[error("cannot unmount {path} again: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
}

/// What happened while mounting, for the log.
pub enum Mounted {
    /// A suitable filesystem was already there.
    AlreadyThere,
    /// Mounted now.
    Fresh,
    /// tmpfs mounted without `noswap`: the kernel refused the option.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    TmpfsWithoutNoswap,
}

/// Whether `dir` is itself a mount point (its device differs from its parent's,
/// or it is the root of its filesystem as /proc/self/mountinfo lists it).
#[cfg(target_os = "linux")]
fn is_mount_point(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(canonical) = dir.canonicalize() else {
        return false;
    };
    let want = canonical.to_string_lossy();
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
#[cfg(target_os = "linux")]
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&code, 8) {
                out.push(v as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// Mounts the secrets filesystem at `dir` unless the right kind is mounted there.
///
/// `dir` must be a real directory: a symlink there, whoever owns it, is
/// refused before anything is mounted, since the mount would cover wherever it
/// points. Its parents are walked by [`safe_path`]'s rule (root's links only),
/// the mount goes onto the directory so opened (through its `/proc/self/fd`
/// entry, not the path), and owner and mode are set through a descriptor
/// opened after the mount: they land on the new filesystem, never on a
/// directory beneath it.
#[cfg(target_os = "linux")]
pub fn ensure(dir: &Path, keys_gid: u32, use_tmpfs: bool) -> Result<Mounted, MountError> {
    let path = || dir.to_path_buf();
    let opened = safe_path::open_real_dir(dir, Trust::invoker(), Missing::Create(0o755))
        .map_err(|source| MountError::Open { path: path(), source })?;
    let want = if use_tmpfs { TMPFS_MAGIC } else { RAMFS_MAGIC };
    let fs = fstatfs(&opened.fd).map_err(|source| MountError::Statfs { path: path(), source })?;
    let mut result = Mounted::AlreadyThere;
    if fs.filesystem_type() != want || !is_mount_point(&opened.path) {
        let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        let fstype = if use_tmpfs { "tmpfs" } else { "ramfs" };
        let options = if use_tmpfs {
            "mode=0751,noswap"
        } else {
            "mode=0751"
        };
        let target = PathBuf::from(format!("/proc/self/fd/{}", opened.fd.as_raw_fd()));
        let refused = |source| MountError::Mount {
            fstype,
            path: path(),
            source,
        };
        match mount(Some("none"), &target, Some(fstype), flags, Some(options)) {
            Ok(()) => result = Mounted::Fresh,
            // Kernels before 6.4 do not know `noswap`.
            Err(nix::errno::Errno::EINVAL) if use_tmpfs => {
                mount(Some("none"), &target, Some(fstype), flags, Some("mode=0751")).map_err(refused)?;
                result = Mounted::TmpfsWithoutNoswap;
            }
            Err(e) => return Err(refused(e)),
        }
    }
    let owned = (|| {
        let mounted = opened.reopen().map_err(MountError::Reopen)?;
        let fs = fstatfs(&mounted).map_err(|source| MountError::Statfs { path: path(), source })?;
        if fs.filesystem_type() != want {
            return Err(MountError::Changed { path: path() });
        }
        fchown(&mounted, Some(Uid::from_raw(0)), Some(Gid::from_raw(keys_gid))).map_err(|source| {
            MountError::Chown {
                path: path(),
                gid: keys_gid,
                source,
            }
        })?;
        fchmod(&mounted, Mode::from_bits_truncate(0o751))
            .map_err(|source| MountError::Chmod { path: path(), source })
    })();
    if let Err(e) = owned {
        // What this call mounted goes again: it would hide what lies beneath.
        if !matches!(result, Mounted::AlreadyThere) {
            let _ = unmount(dir);
        }
        return Err(e);
    }
    Ok(result)
}

/// Unmounts what this run mounted at `dir` (after a failure before the swap).
/// Nothing of the run holds a file open there by then; if something else
/// does, the filesystem is detached so that the one below shows again.
#[cfg(target_os = "linux")]
pub fn unmount(dir: &Path) -> Result<(), MountError> {
    use nix::mount::{MntFlags, umount2};
    let failed = |source| MountError::Unmount {
        path: dir.to_path_buf(),
        source,
    };
    match umount2(dir, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            umount2(dir, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/run/my\040secrets"), "/run/my secrets");
        assert_eq!(unescape_mountinfo("/run/secrets.d"), "/run/secrets.d");
    }
}
