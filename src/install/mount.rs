//! The secrets filesystem: a ramfs (never swapped) or, on request, a tmpfs
//! with `noswap`, mounted `nodev,nosuid,noexec` and owned `root:keys 0751`.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, fchmod};
use nix::sys::statfs::{FsType, TMPFS_MAGIC, fstatfs};
use nix::unistd::{Gid, Uid, fchown};

use crate::safe_path::{self, Missing, Trust};

/// ramfs's magic number (linux/magic.h); `nix` names tmpfs's but not this one.
const RAMFS_MAGIC: FsType = FsType(0x858458f6);

/// What happened while mounting, for the log.
pub enum Mounted {
    /// A suitable filesystem was already there.
    AlreadyThere,
    /// Mounted now.
    Fresh,
    /// tmpfs mounted without `noswap`: the kernel refused the option.
    TmpfsWithoutNoswap,
}

/// Whether `dir` is itself a mount point (its device differs from its parent's,
/// or it is the root of its filesystem as /proc/self/mountinfo lists it).
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
pub fn ensure(dir: &Path, keys_gid: u32, use_tmpfs: bool) -> Result<Mounted, String> {
    let shown = dir.display();
    let opened = safe_path::open_real_dir(dir, Trust::invoker(), Missing::Create(0o755))
        .map_err(|e| format!("secretsMountPoint {shown}: {e}"))?;
    let want = if use_tmpfs { TMPFS_MAGIC } else { RAMFS_MAGIC };
    let fs = fstatfs(&opened.fd).map_err(|e| format!("cannot statfs {shown}: {e}"))?;
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
        match mount(Some("none"), &target, Some(fstype), flags, Some(options)) {
            Ok(()) => result = Mounted::Fresh,
            // Kernels before 6.4 do not know `noswap`.
            Err(nix::errno::Errno::EINVAL) if use_tmpfs => {
                mount(Some("none"), &target, Some(fstype), flags, Some("mode=0751"))
                    .map_err(|e| format!("cannot mount tmpfs at {shown}: {e}"))?;
                result = Mounted::TmpfsWithoutNoswap;
            }
            Err(e) => return Err(format!("cannot mount {fstype} at {shown}: {e}")),
        }
    }
    let mounted = opened.reopen().map_err(|e| e.to_string())?;
    let fs = fstatfs(&mounted).map_err(|e| format!("cannot statfs {shown}: {e}"))?;
    if fs.filesystem_type() != want {
        return Err(format!(
            "{shown} changed while it was being mounted; refusing to chown what is there now"
        ));
    }
    fchown(&mounted, Some(Uid::from_raw(0)), Some(Gid::from_raw(keys_gid)))
        .map_err(|e| format!("cannot chown {shown} to root:{keys_gid}: {e}"))?;
    fchmod(&mounted, Mode::from_bits_truncate(0o751)).map_err(|e| format!("cannot chmod {shown}: {e}"))?;
    Ok(result)
}

/// Unmounts what this run mounted at `dir` (after a failure before the swap).
/// Nothing of the run holds a file open there by then; if something else
/// does, the filesystem is detached so that the one below shows again.
pub fn unmount(dir: &Path) -> Result<(), String> {
    use nix::mount::{MntFlags, umount2};
    match umount2(dir, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(dir, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
            .map_err(|e| format!("cannot unmount {} again: {e}", dir.display())),
        Err(e) => Err(format!("cannot unmount {} again: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/run/my\040secrets"), "/run/my secrets");
        assert_eq!(unescape_mountinfo("/run/secrets.d"), "/run/secrets.d");
    }
}
