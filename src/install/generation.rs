//! Writing one generation of secrets: `<mount>/<N>/...`.
//!
//! Every file is created through directory file descriptors inside the fresh
//! generation, with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0, then given its
//! owner and mode with `fchown`/`fchmod`, and only then its content: no other
//! user can ever open it while it holds bytes it should not see. Directories
//! are created `0700` and widened to `0751 root:keys` once owned.
//!
//! A file whose bytes, owner and mode are the same as in the live generation
//! is not written again but hard-linked from there, once its live copy has
//! been read and compared: an unchanged re-run creates no inode, allocates no
//! page and leaves the next prune only names to remove. A live copy changed
//! behind the installer's back (content, owner or mode) is never linked; the
//! file is written afresh. The comparing can run on other threads
//! ([`LiveCopies`], by keyed digest, so that they hold no decrypted value)
//! while this one links and writes.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, fchown, linkat};
use zeroize::Zeroizing;

use super::state::DigestKey;

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
    /// The live generation, whose unchanged files are linked rather than written.
    previous: Option<OwnedFd>,
    /// Where live copies are read to be compared (wiped on drop).
    scratch: std::cell::RefCell<Zeroizing<Vec<u8>>>,
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
    /// Creates `<mount>/<number>`; it must not exist. `previous` is the live
    /// generation's number: its unchanged files are linked (if it cannot be
    /// opened, every file is written).
    pub fn create(
        mount: &Path,
        number: u64,
        dir_ids: Option<Ids>,
        previous: Option<u64>,
    ) -> Result<Generation, WriteError> {
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
        let previous = previous
            .filter(|&p| p != number)
            .and_then(|p| open_dir(&mount_fd, &p.to_string()).ok());
        Ok(Generation {
            path: mount.join(name),
            dir,
            dir_ids,
            previous,
            scratch: Default::default(),
            files_written: 0,
        })
    }

    /// Links `file` (in `parent`, at `relative`) from the live generation if
    /// `live_matches` says its live copy has exactly the bytes, owner and mode
    /// to be written, or, when it was not told, if [`live_copy_matches`] finds
    /// so now. Any doubt (missing, different, unreadable) says no, and the
    /// caller writes the file.
    #[allow(clippy::too_many_arguments)]
    fn link_unchanged(
        &self,
        relative: &[&str],
        file: &str,
        parent: BorrowedFd<'_>,
        ids: Option<Ids>,
        mode: u32,
        content: &[u8],
        live_matches: Option<bool>,
    ) -> bool {
        let Some(previous) = &self.previous else {
            return false;
        };
        let Some(old_parent) = open_parent(previous.as_fd(), relative) else {
            return false;
        };
        let old_parent = old_parent.as_ref().map_or(previous.as_fd(), |fd| fd.as_fd());
        let same = match live_matches {
            Some(told) => told,
            None => live_copy_matches(
                old_parent,
                file,
                ids,
                mode,
                content,
                &mut self.scratch.borrow_mut(),
            ),
        };
        same && linkat(old_parent, file, parent, file, AtFlags::empty()).is_ok()
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
        self.write_file_told(relative, ids, mode, content, None)
    }

    /// [`Generation::write_file`], told by `live_matches` (from
    /// [`LiveCopies::matches`]) whether the live copy is the same, so that it
    /// is linked without being read again here.
    pub fn write_file_told(
        &mut self,
        relative: &str,
        ids: Option<Ids>,
        mode: u32,
        content: &[u8],
        live_matches: Option<bool>,
    ) -> Result<(), WriteError> {
        let mut parts: Vec<&str> = relative.split('/').collect();
        let file = parts.pop().expect("split yields at least one part");
        let mut holder: Option<OwnedFd> = None;
        for part in &parts {
            let parent = holder.as_ref().map_or(self.dir.as_fd(), |fd| fd.as_fd());
            holder = Some(make_dir(parent, part, self.dir_ids)?);
        }
        let parent = holder.as_ref().map_or(self.dir.as_fd(), |fd| fd.as_fd());
        if self.link_unchanged(&parts, file, parent, ids, mode, content, live_matches) {
            self.files_written += 1;
            crash_point(self.files_written);
            return Ok(());
        }
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

/// The live generation, seen from a thread that compares its copies with
/// what is about to be written.
pub struct LiveCopies {
    dir: OwnedFd,
    /// Where live copies are read (wiped on drop).
    scratch: Zeroizing<Vec<u8>>,
}

impl LiveCopies {
    /// Generation `number` under `mount` (the live one), opened for
    /// comparing its copies on another thread while the next generation is
    /// made ([`LiveCopies::matches`]); `None` if it cannot be opened.
    pub fn open(mount: &Path, number: u64) -> Option<LiveCopies> {
        let mount_fd = nix::fcntl::open(mount, DIR_FLAGS, Mode::empty()).ok()?;
        let dir = open_dir(&mount_fd, &number.to_string()).ok()?;
        Some(LiveCopies {
            dir,
            scratch: Zeroizing::new(Vec::new()),
        })
    }

    /// Whether the live copy of `relative` is a regular file of `len` bytes
    /// whose digest with `key` is `digest`, with `ids` and `mode`.
    pub fn has_digest(
        &mut self,
        relative: &str,
        ids: Option<Ids>,
        mode: u32,
        len: u64,
        key: &DigestKey,
        digest: &str,
    ) -> bool {
        let mut parts: Vec<&str> = relative.split('/').collect();
        let file = parts.pop().expect("split yields at least one part");
        let Some(parent) = open_parent(self.dir.as_fd(), &parts) else {
            return false;
        };
        let parent = parent.as_ref().map_or(self.dir.as_fd(), |fd| fd.as_fd());
        open_if_same_kind(parent, file, ids, mode, len)
            .is_some_and(|live| same_digest(live, len, key, digest, &mut self.scratch))
    }
}

/// The directory `parts` below `top`, opened without following links:
/// `Some(None)` is `top` itself, `None` a part that is missing or no directory.
fn open_parent(top: BorrowedFd<'_>, parts: &[&str]) -> Option<Option<OwnedFd>> {
    let mut holder: Option<OwnedFd> = None;
    for part in parts {
        let at = holder.as_ref().map_or(top, |fd| fd.as_fd());
        holder = Some(open_dir(at, part).ok()?);
    }
    Some(holder)
}

/// Whether `file` in `parent` (the live generation) is a regular file with
/// exactly `content`, `ids` (the caller's own uid when `None`) and `mode`.
fn live_copy_matches(
    parent: BorrowedFd<'_>,
    file: &str,
    ids: Option<Ids>,
    mode: u32,
    content: &[u8],
    scratch: &mut Zeroizing<Vec<u8>>,
) -> bool {
    open_if_same_kind(parent, file, ids, mode, content.len() as u64)
        .is_some_and(|live| same_bytes(live, content, scratch))
}

/// `file` in `parent` (the live generation), opened if it is a regular file
/// of `len` bytes with `ids` (the caller's own uid when `None`) and `mode`.
fn open_if_same_kind(
    parent: BorrowedFd<'_>,
    file: &str,
    ids: Option<Ids>,
    mode: u32,
    len: u64,
) -> Option<std::fs::File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(parent, file, flags, Mode::empty()).ok()?;
    let st = fstat(&fd).ok()?;
    let same_owner = match ids {
        Some(ids) => st.st_uid == ids.uid && st.st_gid == ids.gid,
        None => st.st_uid == nix::unistd::geteuid().as_raw(),
    };
    (SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
        && st.st_mode & 0o7777 == mode as nix::libc::mode_t
        && same_owner
        && u64::try_from(st.st_size) == Ok(len))
    .then(|| std::fs::File::from(fd))
}

/// Whether `live` holds exactly `content`, read in pieces of at most 64 KiB
/// (a large secret is not held twice) into `scratch`, which its owner wipes.
fn same_bytes(live: impl Read, content: &[u8], scratch: &mut Zeroizing<Vec<u8>>) -> bool {
    read_in_pieces(live, content.len(), scratch, |at, piece| {
        content.get(at..at + piece.len()) == Some(piece)
    })
}

/// Whether `live` holds `len` bytes whose digest with `key` is `digest`,
/// read as [`same_bytes`] reads.
fn same_digest(
    live: impl Read,
    len: u64,
    key: &DigestKey,
    digest: &str,
    scratch: &mut Zeroizing<Vec<u8>>,
) -> bool {
    use hmac::Mac;
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    let mut taking = key.start();
    read_in_pieces(live, len, scratch, |_, piece| {
        taking.update(piece);
        true
    }) && DigestKey::text(taking) == digest
}

/// Reads all of `live` into `scratch` in pieces of at most 64 KiB, handing
/// each to `piece` with its offset while it says yes; whether `live` held
/// exactly `len` bytes and every piece was taken.
fn read_in_pieces(
    mut live: impl Read,
    len: usize,
    scratch: &mut Zeroizing<Vec<u8>>,
    mut piece: impl FnMut(usize, &[u8]) -> bool,
) -> bool {
    const PIECE: usize = 64 * 1024;
    // Made once at its full size: growing it would free an unwiped copy.
    if scratch.len() < PIECE {
        **scratch = vec![0; PIECE];
    }
    // One byte more than expected, so that a longer copy shows in one read.
    let buf = &mut scratch[..len.saturating_add(1).min(PIECE)];
    let mut seen = 0;
    loop {
        match live.read(buf) {
            Ok(0) => return seen == len,
            Ok(n) => {
                if seen + n > len || !piece(seen, &buf[..n]) {
                    return false;
                }
                seen += n;
                // A short read of a regular file is its end: a secret is
                // compared in one read, not one more to see nothing follows.
                if n < buf.len() && seen == len {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
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

    impl LiveCopies {
        /// The readers' verdict on a live copy that should hold `content`.
        fn matches(&mut self, relative: &str, ids: Option<Ids>, mode: u32, content: &[u8]) -> bool {
            let key = DigestKey::fresh();
            self.has_digest(
                relative,
                ids,
                mode,
                content.len() as u64,
                &key,
                &key.digest(content),
            )
        }
    }

    #[test]
    fn a_file_written_twice_is_refused_as_a_failed_create() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generation::create(dir.path(), 1, None, None).unwrap();
        g.write_file("a/b", None, 0o400, b"x").unwrap();
        let err = g.write_file("a/b", None, 0o400, b"y").unwrap_err();
        assert!(
            matches!(&err, WriteError::Sys { action: "create", what, source: Errno::EEXIST } if what == "a/b"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "cannot create a/b: EEXIST: File exists");
        assert!(matches!(
            Generation::create(dir.path(), 1, None, None),
            Err(WriteError::Sys { action: "create", .. })
        ));
    }

    #[test]
    fn bytes_are_compared_in_pieces_to_the_end() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut scratch = Zeroizing::new(Vec::new());
        assert!(same_bytes(&big[..], &big, &mut scratch));
        assert_eq!(scratch.len(), 64 * 1024, "read in pieces");
        assert!(same_bytes(&b""[..], b"", &mut scratch));
        let mut changed = big.clone();
        changed[150_000] ^= 1;
        assert!(
            !same_bytes(&changed[..], &big, &mut scratch),
            "a byte in a later piece differs"
        );
        assert!(!same_bytes(&big[..199_999], &big, &mut scratch), "shorter");
        let mut longer = big.clone();
        longer.push(0);
        assert!(!same_bytes(&longer[..], &big, &mut scratch), "longer");
        assert!(
            !same_bytes(&b"ab"[..], b"a", &mut scratch),
            "longer than a small value"
        );
    }

    #[test]
    fn a_small_value_is_compared_in_one_read() {
        struct Counting<'a>(&'a [u8], usize);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.1 += 1;
                self.0.read(buf)
            }
        }
        let mut scratch = Zeroizing::new(Vec::new());
        let mut live = Counting(b"value", 0);
        assert!(same_bytes(&mut live, b"value", &mut scratch));
        assert_eq!(live.1, 1, "a short read is the end of a regular file");
        let mut live = Counting(b"valuE", 0);
        assert!(!same_bytes(&mut live, b"value", &mut scratch));
        // A reader that stops short before the end is read on.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(2);
                self.0.read(&mut buf[..n])
            }
        }
        assert!(same_bytes(Trickle(b"value"), b"value", &mut scratch));
        assert!(!same_bytes(Trickle(b"valu"), b"value", &mut scratch));
        assert!(!same_bytes(Trickle(b"value!"), b"value", &mut scratch));
    }

    fn ino(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path).unwrap().ino()
    }

    #[test]
    fn unchanged_files_are_linked_from_the_live_generation_and_changed_ones_written() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut one = Generation::create(dir.path(), 1, None, None).unwrap();
        for (name, bytes) in [
            ("same", &b"value"[..]),
            ("nested/same", b"v"),
            ("changed", b"old"),
        ] {
            one.write_file(name, None, 0o400, bytes).unwrap();
        }
        one.write_file("mode", None, 0o400, b"m").unwrap();
        one.write_file("tampered", None, 0o400, b"right").unwrap();
        drop(one);
        let g1 = dir.path().join("1");
        // Changed behind the installer's back, same length: must not be linked.
        std::fs::set_permissions(g1.join("tampered"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(g1.join("tampered"), b"wrong").unwrap();
        std::fs::set_permissions(g1.join("tampered"), std::fs::Permissions::from_mode(0o400)).unwrap();

        let mut two = Generation::create(dir.path(), 2, None, Some(1)).unwrap();
        for (name, mode, bytes) in [
            ("same", 0o400, &b"value"[..]),
            ("nested/same", 0o400, b"v"),
            ("changed", 0o400, b"new"),
            ("mode", 0o440, b"m"),
            ("tampered", 0o400, b"right"),
            ("added", 0o400, b"a"),
        ] {
            two.write_file(name, None, mode, bytes).unwrap();
        }
        drop(two);
        let g2 = dir.path().join("2");
        for linked in ["same", "nested/same"] {
            assert_eq!(
                ino(&g1.join(linked)),
                ino(&g2.join(linked)),
                "{linked} was not linked"
            );
        }
        for written in ["changed", "mode", "tampered"] {
            assert_ne!(
                ino(&g1.join(written)),
                ino(&g2.join(written)),
                "{written} was linked"
            );
        }
        assert_eq!(std::fs::read(g2.join("changed")).unwrap(), b"new");
        assert_eq!(std::fs::read(g2.join("tampered")).unwrap(), b"right");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&g2.join("mode")), 0o440);
        assert_eq!(
            mode(&g1.join("mode")),
            0o400,
            "the live copy's mode was not touched"
        );
    }

    #[test]
    fn live_copies_are_compared_apart_and_the_writer_follows_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            LiveCopies::open(dir.path(), 1).is_none(),
            "nothing to compare with"
        );
        let mut one = Generation::create(dir.path(), 1, None, None).unwrap();
        for (name, bytes) in [("same", &b"value"[..]), ("nested/same", b"v"), ("mode", b"m")] {
            one.write_file(name, None, 0o400, bytes).unwrap();
        }
        drop(one);
        let mut two = Generation::create(dir.path(), 2, None, Some(1)).unwrap();
        let mut copies = LiveCopies::open(dir.path(), 1).expect("a live generation");
        assert!(copies.matches("same", None, 0o400, b"value"));
        assert!(copies.matches("nested/same", None, 0o400, b"v"));
        assert!(!copies.matches("same", None, 0o400, b"other"));
        assert!(!copies.matches("same", None, 0o400, b"valu"));
        assert!(!copies.matches("mode", None, 0o440, b"m"));
        assert!(!copies.matches("missing", None, 0o400, b"m"));
        assert!(!copies.matches("nested/missing/x", None, 0o400, b"m"));
        assert!(
            !copies.matches("same/x", None, 0o400, b"m"),
            "a file is no directory"
        );
        let other_owner = Some(Ids {
            uid: nix::unistd::geteuid().as_raw() + 1,
            gid: 0,
        });
        assert!(!copies.matches("same", other_owner, 0o400, b"value"));
        // Told the same: linked without a second look; told different: written.
        two.write_file_told("same", None, 0o400, b"value", Some(true))
            .unwrap();
        two.write_file_told("nested/same", None, 0o400, b"v", Some(false))
            .unwrap();
        drop(two);
        let (g1, g2) = (dir.path().join("1"), dir.path().join("2"));
        assert_eq!(ino(&g1.join("same")), ino(&g2.join("same")));
        assert_ne!(ino(&g1.join("nested/same")), ino(&g2.join("nested/same")));
        assert_eq!(std::fs::read(g2.join("nested/same")).unwrap(), b"v");
    }

    #[test]
    fn a_fifo_or_symlink_in_the_live_generation_is_never_opened_or_linked() {
        let dir = tempfile::tempdir().unwrap();
        drop(Generation::create(dir.path(), 1, None, None).unwrap());
        let g1 = dir.path().join("1");
        nix::unistd::mkfifo(&g1.join("fifo"), Mode::from_bits_truncate(0o400)).unwrap();
        std::fs::write(dir.path().join("elsewhere"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), g1.join("link")).unwrap();
        let mut two = Generation::create(dir.path(), 2, None, Some(1)).unwrap();
        // Would block on the FIFO, or link the symlink's target, if either were followed.
        two.write_file("fifo", None, 0o400, b"").unwrap();
        two.write_file("link", None, 0o644, b"x").unwrap();
        drop(two);
        let g2 = dir.path().join("2");
        assert!(std::fs::symlink_metadata(g2.join("fifo")).unwrap().is_file());
        assert!(std::fs::symlink_metadata(g2.join("link")).unwrap().is_file());
        assert_ne!(ino(&g2.join("link")), ino(&dir.path().join("elsewhere")));
    }
}
