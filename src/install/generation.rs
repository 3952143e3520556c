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

/// Why a generation could not be written; `what` names the file or
/// directory, relative to the generation (or the generation itself).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A system call failed.
    #[error("cannot {action} {what}: {source}")]
    Sys {
        /// What was being done.
        action: &'static str,
        /// To what.
        what: String,
        /// Why.
        source: Errno,
    },
    /// Writing the content failed.
    #[error("cannot write {what}: {source}")]
    Write {
        /// The file.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The error of a failed system call; `what` is only spelled out on failure
/// (this runs for every file written).
fn sys(action: &'static str, what: impl FnOnce() -> String) -> impl FnOnce(Errno) -> WriteError {
    move |source| WriteError::Sys {
        action,
        what: what(),
        source,
    }
}

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
fn make_dir(parent: impl AsFd + Copy, name: &str, ids: Option<Ids>) -> Result<OwnedFd, WriteError> {
    let created = match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(sys("create directory", || format!("{name:?}"))(e)),
    };
    let fd = open_dir(parent, name).map_err(sys("open directory", || format!("{name:?}")))?;
    if created {
        if let Some(ids) = ids {
            fchown(&fd, Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)))
                .map_err(sys("chown directory", || format!("{name:?}")))?;
        }
        fchmod(&fd, Mode::from_bits_truncate(0o751))
            .map_err(sys("chmod directory", || format!("{name:?}")))?;
    }
    Ok(fd)
}

impl Generation {
    /// Creates `<mount>/<number>`; it must not exist.
    pub fn create(mount: &Path, number: u64, dir_ids: Option<Ids>) -> Result<Generation, WriteError> {
        let mount_fd = nix::fcntl::open(mount, DIR_FLAGS, Mode::empty())
            .map_err(sys("open", || mount.display().to_string()))?;
        let name = number.to_string();
        match mkdirat(&mount_fd, name.as_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(e) => return Err(sys("create", || format!("{}/{name}", mount.display()))(e)),
        }
        let dir =
            open_dir(&mount_fd, &name).map_err(sys("open", || format!("{}/{name}", mount.display())))?;
        if let Some(ids) = dir_ids {
            fchown(&dir, Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)))
                .map_err(sys("chown", || format!("{}/{name}", mount.display())))?;
        }
        fchmod(&dir, Mode::from_bits_truncate(0o751))
            .map_err(sys("chmod", || format!("{}/{name}", mount.display())))?;
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
    ) -> Result<(), WriteError> {
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
        .map_err(sys("create", || relative.to_owned()))?;
        if let Some(ids) = ids {
            fchown(&fd, Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)))
                .map_err(sys("chown", || format!("{relative} to {}:{}", ids.uid, ids.gid)))?;
        }
        fchmod(&fd, Mode::from_bits_truncate(mode as nix::sys::stat::mode_t))
            .map_err(sys("chmod", || relative.to_owned()))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(content).map_err(|source| WriteError::Write {
            what: relative.to_owned(),
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_twice_is_refused_as_a_failed_create() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generation::create(dir.path(), 1, None).unwrap();
        g.write_file("a/b", None, 0o400, b"x").unwrap();
        let err = g.write_file("a/b", None, 0o400, b"y").unwrap_err();
        assert!(
            matches!(&err, WriteError::Sys { action: "create", what, source: Errno::EEXIST } if what == "a/b"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "cannot create a/b: EEXIST: File exists");
        assert!(matches!(
            Generation::create(dir.path(), 1, None),
            Err(WriteError::Sys { action: "create", .. })
        ));
    }
}
