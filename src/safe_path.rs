//! Opening the paths a manifest names without being redirected by another user.
//!
//! The installer runs as root and reads or creates every path the manifest
//! names: sops files, template files, key files, the GnuPG home, the mount
//! point, the live link's directory, the credential store, custom `path` links.
//! Such a path may pass through a directory another user can write to (a home
//! directory, `/tmp`). If root followed a symlink that user planted there, it
//! would read a root-only file and install it as a secret the user can read,
//! or create, mount over or chown a directory of the user's choosing.
//!
//! The rule, applied to every component from `/` down, each opened relative to
//! its parent's descriptor with `O_NOFOLLOW`:
//! - a component that is a symlink is followed only if the *link* is owned by
//!   root or by the trusted user ([`Trust`]: root in system mode, the invoking
//!   user in home-manager's user mode). A link's owner is who chose its target;
//!   the owner of the link is read from the link itself (an `O_PATH` descriptor)
//!   and its target from that same descriptor, so the link cannot be swapped
//!   between the check and the read;
//! - directories writable by others are walked through as they are (`/tmp`
//!   with its sticky bit is fine): what another user can do there is plant
//!   links, and those are not followed. A root-owned link in such a directory
//!   is followed: the sticky bit stops other users from replacing it;
//! - the final component of a file is looked at through `O_PATH` before it is
//!   opened: anything but a regular file (a FIFO, a device, a socket, a
//!   directory) is refused without being opened, and the file is then opened
//!   `O_NONBLOCK|O_NOFOLLOW` and checked to be the same inode, so nothing can
//!   make a read wait forever;
//! - missing directories, when the caller creates them, are made with
//!   `mkdirat` in the parent just opened, never through a path.
//!
//! On NixOS the legitimate links are root's: `/run/secrets`, the store paths
//! of sops files, `/etc/ssh` keys; they keep working.
//!
//! macOS has no `O_PATH`; two small functions stand in for it there
//! (`open_component`, `read_link`, and the flags they use): each object is
//! opened read-only with `O_SYMLINK`, so a link is opened as itself and its
//! owner read from it, and its target is read by name in the directory the
//! walk holds, then the name is checked to be that same link still. What
//! differs is said at each. What was run: the Linux tests of this module and
//! `tests/hostile_paths.rs`, and a type check of the macOS code (`.ci/run`);
//! not run: anything on a Mac.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, mkdirat};
use zeroize::Zeroizing;

/// Stands for every uid in [`Trust`]; `(uid_t)-1` is no one's uid.
const ANYONE: u32 = u32::MAX;

/// Whose symlinks may be followed, besides root's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trust {
    uid: u32,
}

impl Trust {
    /// The user running this process: root in system mode, the user in user mode.
    pub fn invoker() -> Trust {
        Trust {
            uid: nix::unistd::getuid().as_raw(),
        }
    }

    /// The build-time checks (`-check-mode`), which install nothing: run as
    /// a user, following any link cannot make them read what that user could
    /// not, and in the Nix build sandbox root's store links appear owned by
    /// the overflow uid (65534), so every link is followed; run as root,
    /// root's links only.
    pub fn build_check() -> Trust {
        match nix::unistd::getuid().as_raw() {
            0 => Trust::root(),
            _ => Trust { uid: ANYONE },
        }
    }

    /// Root alone.
    pub fn root() -> Trust {
        Trust { uid: 0 }
    }

    /// Root and `uid`.
    pub fn uid(uid: u32) -> Trust {
        Trust { uid }
    }

    fn follows(self, owner: u32) -> bool {
        owner == 0 || owner == self.uid || self.uid == ANYONE
    }

    fn describe(self) -> String {
        if self.uid == 0 {
            "root".to_owned()
        } else {
            format!("root or uid {}", self.uid)
        }
    }
}

/// Why a path was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A symlink on the way is owned by someone who is not trusted.
    #[error(
        "{link} is a symlink owned by uid {owner}; refusing to follow it: only symlinks owned by {trusted} are followed, \
         since a link another user planted could make this run read or write a file of that user's choosing. \
         Name the real path, or let root own the link"
    )]
    UntrustedLink {
        /// The link.
        link: PathBuf,
        /// Its owner.
        owner: u32,
        /// Who may own links that are followed.
        trusted: String,
    },
    /// The path itself is a symlink where a real directory is required.
    #[error("{path} is a symlink; it must be a real directory")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Something other than a regular file where a file is read.
    #[error("{path} is {kind}, not a regular file")]
    NotRegular {
        /// The path, as resolved.
        path: PathBuf,
        /// "a FIFO", "a directory", ...
        kind: &'static str,
    },
    /// Something other than a directory where one is needed.
    #[error("{path} is {kind}, not a directory")]
    NotDirectory {
        /// The path, as resolved.
        path: PathBuf,
        /// "a regular file", ...
        kind: &'static str,
    },
    /// A symlink loop, or a chain too long to be meant.
    #[error("too many symlinks while resolving {path}")]
    TooManyLinks {
        /// The path asked for.
        path: PathBuf,
    },
    /// The system refused.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "open", "create", ...
        action: &'static str,
        /// The path, as resolved so far.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl OpenError {
    /// The I/O error behind a refusal by the system, for callers whose own
    /// errors carry one; `None` for the refusals of this module's rule.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Splits a refusal by the system (its I/O error) from a refusal by this
    /// module's rule, for callers whose errors keep the two apart.
    pub fn into_io(self) -> Result<std::io::Error, OpenError> {
        match self {
            OpenError::Io { source, .. } => Ok(source),
            other => Err(other),
        }
    }

    /// Whether the path (or a directory on the way) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.io_error()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }
}

fn io(action: &'static str, path: PathBuf, e: Errno) -> OpenError {
    OpenError::Io {
        action,
        path,
        source: std::io::Error::from(e),
    }
}

/// What to do about a missing directory on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Fail (`ENOENT`).
    Fail,
    /// Create it with this mode (before the umask).
    Create(u32),
}

/// How the walk opens each object: on Linux `O_PATH`, which neither reads
/// the object nor follows a final link, so it has no side effect whatever it is.
#[cfg(target_os = "linux")]
const PATH_FLAGS: OFlag = OFlag::O_PATH.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);
/// macOS has no `O_PATH`. `O_SYMLINK` opens a final link as itself (it would
/// otherwise be followed, or with `O_NOFOLLOW` fail with `ELOOP`, which gives
/// no owner to check); read-only, because the walk needs a descriptor for the
/// `*at` calls and `O_SEARCH` (search permission only) exists only since
/// macOS 13, so a directory the invoker can search but not read is refused
/// there when not run as root (user mode, the build-time checks; root reads
/// every directory). `O_NONBLOCK` so that a FIFO does not wait for a writer
/// before it is refused, `O_NOCTTY` so that a terminal is not adopted; a
/// device is opened before it is refused (only root can make one, so no other
/// user can plant one).
#[cfg(target_os = "macos")]
const PATH_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::from_bits_retain(nix::libc::O_SYMLINK))
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);
const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);
const FILE_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);
/// Linux's own limit on links followed in one lookup.
const MAX_LINKS: usize = 40;

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn kind_name(st: &FileStat) -> &'static str {
    match kind(st) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO (named pipe)",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFLNK => "a symlink",
        _ => "of an unknown file type",
    }
}

/// Pushes `path`'s components onto `pending` so that the first is popped first.
fn push_components(path: &Path, pending: &mut Vec<OsString>) {
    for c in path.components().rev() {
        match c {
            Component::Normal(p) => pending.push(p.to_owned()),
            Component::ParentDir => pending.push(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// Whether the final component may be a (trusted) symlink.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FinalLink {
    Follow,
    Refuse,
}

/// Opens `name` in `dir` as itself, a symlink included, for [`walk`].
#[cfg(target_os = "linux")]
fn open_component(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    // O_DIRECTORY first: only then does the kernel trigger an automount
    // (autofs, systemd .automount) on the component; anything but a
    // directory, a symlink included, answers ENOTDIR and is opened as itself.
    match openat(dir, name, PATH_FLAGS | OFlag::O_DIRECTORY, Mode::empty()) {
        Err(Errno::ENOTDIR) => openat(dir, name, PATH_FLAGS, Mode::empty()),
        other => other,
    }
}

/// Opens `name` in `dir` as itself, a symlink included, for [`walk`]. macOS
/// triggers its automounts on any lookup, so one open does.
#[cfg(target_os = "macos")]
fn open_component(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(dir, name, PATH_FLAGS, Mode::empty())
}

/// The target of the link `link` (stat `link_st`), found as `name` in `dir`.
/// On Linux it is read from the `O_PATH` descriptor itself: the very link
/// whose owner was checked.
#[cfg(target_os = "linux")]
fn read_link(link: &OwnedFd, _link_st: &FileStat, _dir: &OwnedFd, _name: &OsStr) -> nix::Result<OsString> {
    readlinkat(link, "")
}

/// The target of the link `link` (stat `link_st`), found as `name` in `dir`.
/// macOS reads a link by name only (`freadlink` exists from macOS 13 on, and
/// `readlinkat` takes no empty name), so the name is read in the directory
/// the walk holds open and then looked up again: if it is no longer the link
/// whose owner was checked, the walk stops. What remains is a swap and a swap
/// back between the two calls, which needs a user who may rename that link:
/// in a sticky directory (`/tmp`) only its owner, who is trusted, or the
/// directory's owner; elsewhere anyone who can write to the directory.
#[cfg(target_os = "macos")]
fn read_link(_link: &OwnedFd, link_st: &FileStat, dir: &OwnedFd, name: &OsStr) -> nix::Result<OsString> {
    let target = readlinkat(dir, name)?;
    let now = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if !same_object(&now, link_st) {
        return Err(Errno::EAGAIN);
    }
    Ok(target)
}

/// Whether two stats are of the same file.
fn same_object(a: &FileStat, b: &FileStat) -> bool {
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

/// A path walked down to its final object, which is not a symlink.
struct Walked {
    /// Descriptor of the final object (`O_PATH` on Linux, see [`PATH_FLAGS`]).
    obj: OwnedFd,
    st: FileStat,
    /// Descriptor of the directory holding it, and its name there
    /// (`None` for `/` itself or the working directory).
    parent: Option<(OwnedFd, OsString)>,
    /// The path as resolved, for messages.
    path: PathBuf,
}

fn walk(path: &Path, trust: Trust, missing: Missing, final_link: FinalLink) -> Result<Walked, OpenError> {
    let start = |absolute: bool| -> Result<(OwnedFd, PathBuf), OpenError> {
        let (from, shown) = if absolute {
            ("/", PathBuf::from("/"))
        } else {
            (".", PathBuf::new())
        };
        let fd = nix::fcntl::open(from, PATH_FLAGS.union(OFlag::O_DIRECTORY), Mode::empty())
            .map_err(|e| io("open", PathBuf::from(from), e))?;
        Ok((fd, shown))
    };
    let mut pending = Vec::new();
    push_components(path, &mut pending);
    let (mut fd, mut shown) = start(path.is_absolute())?;
    let mut st = fstat(&fd).map_err(|e| io("inspect", shown.clone(), e))?;
    let mut parent: Option<(OwnedFd, OsString)> = None;
    let mut links = 0;
    let mut creations = 0;
    while let Some(part) = pending.pop() {
        if kind(&st) != SFlag::S_IFDIR {
            return Err(OpenError::NotDirectory {
                path: shown,
                kind: kind_name(&st),
            });
        }
        let here = shown.join(&part);
        let obj = match open_component(&fd, part.as_os_str()) {
            Ok(obj) => obj,
            Err(Errno::ENOENT) if matches!(missing, Missing::Create(_)) && creations <= MAX_LINKS => {
                let Missing::Create(mode) = missing else {
                    unreachable!()
                };
                match mkdirat(
                    &fd,
                    part.as_os_str(),
                    Mode::from_bits_truncate(mode as nix::sys::stat::mode_t),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io("create", here, e)),
                }
                // Opened like any other component: whoever won a race to
                // create it, a link there is judged by the rule.
                creations += 1;
                pending.push(part);
                continue;
            }
            Err(e) => return Err(io("open", here, e)),
        };
        let obj_st = fstat(&obj).map_err(|e| io("inspect", here.clone(), e))?;
        if kind(&obj_st) == SFlag::S_IFLNK {
            if pending.is_empty() && final_link == FinalLink::Refuse {
                return Err(OpenError::Symlink { path: here });
            }
            if !trust.follows(obj_st.st_uid) {
                return Err(OpenError::UntrustedLink {
                    link: here,
                    owner: obj_st.st_uid,
                    trusted: trust.describe(),
                });
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(OpenError::TooManyLinks {
                    path: path.to_owned(),
                });
            }
            let target = read_link(&obj, &obj_st, &fd, part.as_os_str())
                .map_err(|e| io("read the link", here.clone(), e))?;
            let target = PathBuf::from(target);
            if target.as_os_str().is_empty() {
                return Err(io("follow the empty link", here, Errno::ENOENT));
            }
            if target.is_absolute() {
                (fd, shown) = start(true)?;
                st = fstat(&fd).map_err(|e| io("inspect", shown.clone(), e))?;
                parent = None;
            }
            push_components(&target, &mut pending);
            continue;
        }
        if part == ".." {
            shown.pop();
        } else {
            shown.push(&part);
        }
        parent = Some((std::mem::replace(&mut fd, obj), part));
        st = obj_st;
    }
    Ok(Walked {
        obj: fd,
        st,
        parent,
        path: shown,
    })
}

/// A directory opened by [`open_dir`].
#[derive(Debug)]
pub struct Dir {
    /// A read-only descriptor of the directory (usable with the `*at` calls).
    pub fd: OwnedFd,
    /// The path as resolved (symlinks followed), for messages and for
    /// programs that take a path.
    pub path: PathBuf,
    parent: Option<(OwnedFd, OsString)>,
}

impl Dir {
    /// Opens the directory again by its name in its parent, without following
    /// a link: after a mount on it, this is the mounted filesystem's root.
    pub fn reopen(&self) -> Result<OwnedFd, OpenError> {
        match &self.parent {
            Some((parent, name)) => openat(parent, name.as_os_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| io("open", self.path.clone(), e)),
            None => nix::fcntl::open(&self.path, DIR_FLAGS, Mode::empty())
                .map_err(|e| io("open", self.path.clone(), e)),
        }
    }
}

fn finish_dir(walked: Walked) -> Result<Dir, OpenError> {
    if kind(&walked.st) != SFlag::S_IFDIR {
        return Err(OpenError::NotDirectory {
            path: walked.path,
            kind: kind_name(&walked.st),
        });
    }
    // "." of the walk's descriptor: the same directory, now surely readable.
    let fd =
        openat(&walked.obj, ".", DIR_FLAGS, Mode::empty()).map_err(|e| io("open", walked.path.clone(), e))?;
    Ok(Dir {
        fd,
        path: walked.path,
        parent: walked.parent,
    })
}

/// Opens the directory `path` by the rule of this module, creating what is
/// missing when asked to.
pub fn open_dir(path: &Path, trust: Trust, missing: Missing) -> Result<Dir, OpenError> {
    finish_dir(walk(path, trust, missing, FinalLink::Follow)?)
}

/// Like [`open_dir`], but `path` itself must not be a symlink, whoever owns
/// it (a mount point: mounting there would cover wherever it points).
pub fn open_real_dir(path: &Path, trust: Trust, missing: Missing) -> Result<Dir, OpenError> {
    finish_dir(walk(path, trust, missing, FinalLink::Refuse)?)
}

/// Opens the regular file `path` for reading by the rule of this module.
pub fn open_file(path: &Path, trust: Trust) -> Result<File, OpenError> {
    let walked = walk(path, trust, Missing::Fail, FinalLink::Follow)?;
    if kind(&walked.st) != SFlag::S_IFREG {
        return Err(OpenError::NotRegular {
            path: walked.path,
            kind: kind_name(&walked.st),
        });
    }
    let Some((parent, name)) = &walked.parent else {
        return Err(OpenError::NotRegular {
            path: walked.path,
            kind: "a directory",
        });
    };
    // O_NONBLOCK: should the name now be a FIFO, the open does not wait for a writer.
    let fd = openat(parent, name.as_os_str(), FILE_FLAGS, Mode::empty())
        .map_err(|e| io("open", walked.path.clone(), e))?;
    let st = fstat(&fd).map_err(|e| io("inspect", walked.path.clone(), e))?;
    if !same_object(&st, &walked.st) || kind(&st) != SFlag::S_IFREG {
        return Err(OpenError::NotRegular {
            path: walked.path,
            kind: "a file that was replaced while it was opened",
        });
    }
    Ok(File::from(fd))
}

/// Opens the regular file `path` for reading and writing, creating it with
/// `mode` if it is missing (and its directories, 0755): the directory by the
/// rule of this module, the file itself with `O_NOFOLLOW`, so that no link
/// anyone planted in its place is followed. For files the run keeps for
/// itself, such as a lock.
pub fn open_or_create(path: &Path, trust: Trust, mode: u32) -> Result<File, OpenError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(OpenError::NotRegular {
            path: path.to_owned(),
            kind: "a directory",
        });
    };
    let dir = open_dir(parent, trust, Missing::Create(0o755))?;
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(
        &dir.fd,
        name,
        flags,
        Mode::from_bits_truncate(mode as nix::sys::stat::mode_t),
    )
    .map_err(|e| io("open", dir.path.join(name), e))?;
    let st = fstat(&fd).map_err(|e| io("inspect", dir.path.join(name), e))?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(OpenError::NotRegular {
            path: dir.path.join(name),
            kind: kind_name(&st),
        });
    }
    Ok(File::from(fd))
}

/// Reads the regular file `path` whole, by the rule of this module.
pub fn read(path: &Path, trust: Trust) -> Result<Vec<u8>, OpenError> {
    use std::io::Read;
    let mut file = open_file(path, trust)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|source| OpenError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes)
}

/// Reads the regular file `path`, which holds key material, as text: the
/// buffer is sized once from the file's length, so that no copy is left behind
/// by a reallocation, and it is zeroized on drop and on every error.
pub fn read_secret_text(path: &Path, trust: Trust) -> Result<Zeroizing<String>, OpenError> {
    use std::io::Read;
    use zeroize::Zeroize;
    let mut file = open_file(path, trust)?;
    let len = file.metadata().map_or(0, |m| m.len() as usize);
    // One byte more: read_to_end probes for the end without growing the buffer.
    let mut bytes = Zeroizing::new(Vec::with_capacity(len + 1));
    file.read_to_end(&mut bytes).map_err(|source| OpenError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(OpenError::Io {
                action: "read",
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is not UTF-8 text"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn own_links_are_followed_files_and_directories_alike() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), b"x").unwrap();
        symlink("real", dir.path().join("rel")).unwrap();
        symlink(real.join("f"), dir.path().join("abs")).unwrap();
        let me = Trust::invoker();
        assert_eq!(read(&dir.path().join("rel/f"), me).unwrap(), b"x");
        assert_eq!(read(&dir.path().join("abs"), me).unwrap(), b"x");
        assert_eq!(read(&dir.path().join("real/../real/f"), me).unwrap(), b"x");
        let opened = open_dir(&dir.path().join("rel"), me, Missing::Fail).unwrap();
        assert_eq!(opened.path, real.canonicalize().unwrap());
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let err = read(&fifo, Trust::invoker()).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = read(dir.path(), Trust::invoker()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_link_where_a_real_directory_is_required_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        symlink("real", dir.path().join("mnt")).unwrap();
        let err = open_real_dir(&dir.path().join("mnt"), Trust::invoker(), Missing::Fail).unwrap_err();
        assert!(matches!(err, OpenError::Symlink { .. }), "{err}");
        // Through a link in a parent it is fine.
        std::fs::create_dir(dir.path().join("real/sub")).unwrap();
        open_real_dir(&dir.path().join("mnt/sub"), Trust::invoker(), Missing::Fail).unwrap();
    }

    #[test]
    fn a_file_of_our_own_is_created_but_a_link_in_its_place_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("run/secrets.d.lock");
        open_or_create(&lock, Trust::invoker(), 0o600).unwrap();
        assert!(lock.is_file());
        open_or_create(&lock, Trust::invoker(), 0o600).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        symlink(&elsewhere, dir.path().join("run/other.lock")).unwrap();
        let err = open_or_create(&dir.path().join("run/other.lock"), Trust::invoker(), 0o600).unwrap_err();
        assert!(err.to_string().contains("other.lock"), "{err}");
        assert!(!elsewhere.exists());
    }

    #[test]
    fn an_object_is_known_by_its_inode_not_its_name() {
        // What both the final open of a file and (on macOS) the second look at
        // a link rely on to notice a swap.
        let dir = tempfile::tempdir().unwrap();
        let stat = |name: &str| nix::sys::stat::lstat(&dir.path().join(name)).unwrap();
        symlink("a", dir.path().join("link")).unwrap();
        let before = stat("link");
        std::fs::hard_link(dir.path().join("link"), dir.path().join("same")).unwrap();
        assert!(same_object(&before, &stat("same")));
        symlink("b", dir.path().join("other")).unwrap();
        std::fs::rename(dir.path().join("other"), dir.path().join("link")).unwrap();
        assert!(!same_object(&before, &stat("link")));
    }

    #[test]
    fn missing_directories_are_created_and_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        open_dir(&deep, Trust::invoker(), Missing::Create(0o755)).unwrap();
        assert!(deep.is_dir());
        symlink("loop", dir.path().join("loop")).unwrap();
        let err = read(&dir.path().join("loop"), Trust::invoker()).unwrap_err();
        assert!(matches!(err, OpenError::TooManyLinks { .. }), "{err}");
        assert!(
            read(&dir.path().join("absent"), Trust::invoker())
                .unwrap_err()
                .is_not_found()
        );
    }
}
