//! One run at a time per secrets mount.
//!
//! Activation and `sops-nix.service` (or two restarts of it, or a switch
//! during boot) can start the installer at the same moment on one mount. Each
//! run removes unfinished generations left by a crash, picks the next number
//! and swaps the link; two runs interleaving those steps delete each other's
//! work and can leave the link on a half-written generation. So a run holds an
//! exclusive `flock(2)` on `<mount>.lock` from before it reads the live
//! generation until it has pruned, and a second run waits for it.
//!
//! The lock file lives beside the mount point, not inside it: the mount may
//! not exist yet, and the run may mount a new filesystem there. It is created
//! `0600` by the run's own user, holds the holder's pid (so a waiting run can
//! say whom it waits for) and is never removed: removing a lock file that
//! another run has open would let a third run lock a fresh inode.

use std::ffi::OsString;
use std::io::{Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The holder's pid is written padded to this width (pids have at most 7 digits).
const PID_WIDTH: usize = 10;

/// How long a run waits for another one by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The environment variable that changes [`DEFAULT_WAIT`] (whole seconds).
pub const WAIT_VARIABLE: &str = "SOPS_INSTALL_SECRETS_LOCK_TIMEOUT";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be created or opened.
    #[error("cannot open the lock file {path} of secretsMountPoint: {source}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another run held the lock for the whole wait.
    #[error(
        "another sops-install-secrets run ({holder}) has held {path} for {waited} s; \
         nothing was changed. Wait for it to finish (or stop it) and run again; \
         {WAIT_VARIABLE} sets how long to wait (seconds)"
    )]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// "pid N", or a description when the pid is unknown.
        holder: String,
        /// Seconds waited.
        waited: u64,
    },
    /// flock itself failed.
    #[error("cannot lock {path}: {source}")]
    Flock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: Errno,
    },
}

/// An exclusive lock on one secrets mount, released on drop.
#[derive(Debug)]
pub struct MountLock {
    _lock: Flock<std::fs::File>,
    path: PathBuf,
}

impl MountLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file of `mount`: `/run/secrets.d` → `/run/secrets.d.lock`.
pub fn lock_path(mount: &Path) -> PathBuf {
    let mut name = OsString::from(mount.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

/// How long to wait: [`WAIT_VARIABLE`] if it holds a number of seconds.
pub fn wait_from_env() -> Duration {
    std::env::var(WAIT_VARIABLE)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_WAIT, Duration::from_secs)
}

/// Takes the lock of `mount`, waiting up to `wait` for another run to finish.
pub fn acquire(mount: &Path, wait: Duration) -> Result<MountLock, LockError> {
    let path = lock_path(mount);
    // The lock file's directory is reached by the rule every input path follows
    // (no link planted by another user), and the file itself is never a link.
    let open = || {
        crate::safe_path::open_or_create(&path, crate::safe_path::Trust::invoker(), 0o600).map_err(|e| {
            LockError::Open {
                path: path.clone(),
                source: e
                    .into_io()
                    .unwrap_or_else(|e| std::io::Error::other(e.to_string())),
            }
        })
    };
    let started = Instant::now();
    let mut file = open()?;
    let lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((f, Errno::EWOULDBLOCK)) => {
                if started.elapsed() >= wait {
                    return Err(LockError::Busy {
                        holder: holder(&f),
                        path,
                        waited: started.elapsed().as_secs(),
                    });
                }
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, Errno::EINTR)) => file = open()?,
            Err((_, source)) => return Err(LockError::Flock { path, source }),
        }
    };
    // Who holds it, for a run that has to wait. Best effort: the lock works
    // without it. Written over the last holder's line at a fixed width rather
    // than after truncating: where the lock file sits on a disk, truncating
    // costs a journal commit on every run.
    let line = format!("{:<PID_WIDTH$}\n", std::process::id());
    let _ = lock.write_all_at(line.as_bytes(), 0).and_then(|()| {
        let longer = lock.metadata()?.len() > line.len() as u64;
        if longer {
            lock.set_len(line.len() as u64)
        } else {
            Ok(())
        }
    });
    Ok(MountLock { _lock: lock, path })
}

/// The pid the holder wrote into the lock file.
fn holder(mut file: &std::fs::File) -> String {
    let mut text = String::new();
    let pid = file
        .rewind()
        .and_then(|()| file.take(32).read_to_string(&mut text))
        .ok()
        .and_then(|_| text.trim().parse::<u32>().ok());
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_sits_beside_the_mount() {
        assert_eq!(
            lock_path(Path::new("/run/secrets.d")),
            PathBuf::from("/run/secrets.d.lock")
        );
    }

    #[test]
    fn a_second_lock_waits_then_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("secrets.d");
        let first = acquire(&mount, Duration::from_secs(1)).unwrap();
        let started = Instant::now();
        let err = acquire(&mount, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let msg = err.to_string();
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("secrets.d.lock"), "{msg}");
        drop(first);
        acquire(&mount, Duration::from_millis(300)).expect("free again once dropped");
    }

    #[test]
    fn the_holder_is_written_over_whatever_an_earlier_holder_left() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("m");
        let me = format!("pid {}", std::process::id());
        for earlier in ["1\n", "4194304\n", "12345678901234567890\n", ""] {
            std::fs::write(lock_path(&mount), earlier).unwrap();
            let lock = acquire(&mount, Duration::ZERO).unwrap();
            let file = std::fs::File::open(lock.path()).unwrap();
            assert_eq!(holder(&file), me, "after {earlier:?}");
            assert_eq!(
                std::fs::metadata(lock.path()).unwrap().len(),
                PID_WIDTH as u64 + 1
            );
        }
    }

    #[test]
    fn the_lock_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let lock = acquire(&dir.path().join("m"), Duration::ZERO).unwrap();
        let mode = std::fs::metadata(lock.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_link_at_the_lock_files_place_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "x").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("m.lock")).unwrap();
        let err = acquire(&dir.path().join("m"), Duration::ZERO).unwrap_err();
        assert!(matches!(err, LockError::Open { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x");
    }
}
