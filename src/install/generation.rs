//! Writing one generation of secrets: `<mount>/<N>/...`.
//!
//! Every file is created through directory file descriptors inside the fresh
//! generation, with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0, then given its
//! owner and mode with `fchown`/`fchmod`, and only then its content: no other
//! user can ever open it while it holds bytes it should not see. Directories
//! are created `0700` and widened to `0751 root:keys` once owned.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, fchown};

/// Owner and group for files and directories; `None` in user mode (no chown).
#[derive(Clone, Copy, Debug)]
pub struct Ids {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
}

/// A generation directory being written.
pub struct Generation {
    path: PathBuf,
    dir: OwnedFd,
    dir_ids: Option<Ids>,
    files_written: usize,
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

fn open_dir(parent: impl AsFd, name: &str) -> nix::Result<OwnedFd> {
    openat(parent, name, DIR_FLAGS, Mode::empty())
}

/// Creates (or opens, if it exists) directory `name` in `parent`, owned per `ids`, mode 0751.
fn make_dir(parent: impl AsFd + Copy, name: &str, ids: Option<Ids>) -> Result<OwnedFd, String> {
    let created = match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(format!("cannot create directory {name:?}: {e}")),
    };
    let fd = open_dir(parent, name).map_err(|e| format!("cannot open directory {name:?}: {e}"))?;
    if created {
        if let Some(ids) = ids {
            fchown(&fd, Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)))
                .map_err(|e| format!("cannot chown directory {name:?}: {e}"))?;
        }
        fchmod(&fd, Mode::from_bits_truncate(0o751))
            .map_err(|e| format!("cannot chmod directory {name:?}: {e}"))?;
    }
    Ok(fd)
}

impl Generation {
    /// Creates `<mount>/<number>`; it must not exist.
    pub fn create(mount: &Path, number: u64, dir_ids: Option<Ids>) -> Result<Generation, String> {
        let mount_fd = nix::fcntl::open(mount, DIR_FLAGS, Mode::empty())
            .map_err(|e| format!("cannot open {}: {e}", mount.display()))?;
        let name = number.to_string();
        match mkdirat(&mount_fd, name.as_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(e) => return Err(format!("cannot create {}/{name}: {e}", mount.display())),
        }
        let dir =
            open_dir(&mount_fd, &name).map_err(|e| format!("cannot open {}/{name}: {e}", mount.display()))?;
        if let Some(ids) = dir_ids {
            fchown(&dir, Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)))
                .map_err(|e| format!("cannot chown {}/{name}: {e}", mount.display()))?;
        }
        fchmod(&dir, Mode::from_bits_truncate(0o751))
            .map_err(|e| format!("cannot chmod {}/{name}: {e}", mount.display()))?;
        Ok(Generation {
            path: mount.join(name),
            dir,
            dir_ids,
            files_written: 0,
        })
    }

    /// The generation directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `relative` (slash-separated, already checked to stay inside)
    /// with its owner and mode set before its content.
    pub fn write_file(
        &mut self,
        relative: &str,
        ids: Option<Ids>,
        mode: u32,
        content: &[u8],
    ) -> Result<(), String> {
        let mut parts: Vec<&str> = relative.split('/').collect();
        let file = parts.pop().expect("split yields at least one part");
        let mut holder: Option<OwnedFd> = None;
        for part in parts {
            let parent = holder.as_ref().map_or(self.dir.as_fd(), |fd| fd.as_fd());
            holder = Some(make_dir(parent, part, self.dir_ids)?);
        }
        let parent = holder.as_ref().map_or(self.dir.as_fd(), |fd| fd.as_fd());
        let fd = openat(
            parent,
            file,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot create {relative}: {e}"))?;
        if let Some(ids) = ids {
            fchown(&fd, Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)))
                .map_err(|e| format!("cannot chown {relative} to {}:{}: {e}", ids.uid, ids.gid))?;
        }
        fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| format!("cannot chmod {relative}: {e}"))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(content)
            .map_err(|e| format!("cannot write {relative}: {e}"))?;
        self.files_written += 1;
        crash_point(self.files_written);
        Ok(())
    }
}

/// Test builds can be told to die after writing some files, to prove that a
/// crash mid-install leaves a usable tree. Release builds ignore the variable.
fn crash_point(files_written: usize) {
    #[cfg(debug_assertions)]
    if let Ok(n) = std::env::var("SOPS_INSTALL_SECRETS_TEST_CRASH_AFTER")
        && n.parse() == Ok(files_written)
    {
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = files_written;
}
