//! The secrets filesystem on macOS: a RAM disk, since macOS has no ramfs.
//!
//! As sops-nix does there, a 64 MiB disk backed by memory is attached without
//! mounting it (`hdiutil attach -nomount ram://131072`, which prints the new
//! device, `/dev/diskN`), formatted case-sensitive HFS+ (`newfs_hfs -s`) and
//! mounted on the secrets mount point with `mount -t hfs`. The mount options
//! are sops-nix's (`nobrowse,nodev,nosuid`, the root directory `0751`) plus
//! `noexec`, as on Linux. A file named `sops-nix-secretfs` in the disk's root
//! marks it as the secrets filesystem, which is how sops-nix recognises a disk
//! it mounted before; both installers leave the other's disk in place.
//!
//! Unlike sops-nix, which ignores the tools' exit status, each step must
//! succeed, and a disk this run attached is detached again when a later step
//! fails: an attached RAM disk holds memory (and, once written, plaintext)
//! until it is detached.
//!
//! The plan (the tools' argument lists, reading the device from `hdiutil`'s
//! output) and the runner are plain code, built and tested on every platform
//! with the tools' paths injectable. Only what needs macOS itself (the
//! filesystem type name from `statfs`, and the selection of this module as the
//! installer's mount by `mount.rs`) is behind `cfg(target_os = "macos")`.
//! Owners and groups need nothing here: `owners.rs` resolves names with
//! getpwnam/getgrnam, which on macOS answer from Directory Services.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::libc::dev_t;
use nix::sys::stat::{Mode, fchmod, fstat, fstatat};
use nix::unistd::{Gid, Uid, fchown};

use super::mount::{MountError, Mounted};
use crate::process;
use crate::safe_path::{Missing, Trust};

/// The RAM disk's size: sops-nix's 64 MiB.
pub const SIZE: u64 = 64 * 1024 * 1024;

/// `ram://` counts 512-byte sectors.
const SECTOR: u64 = 512;

/// The file in the disk's root that marks it as the secrets filesystem
/// (sops-nix's name, so that either installer recognises the other's disk).
pub const MARKER: &str = "sops-nix-secretfs";

/// `nobrowse`: not shown in the Finder. `-m=0751`: the HFS root's mode.
const MOUNT_OPTIONS: &str = "nobrowse,nodev,nosuid,noexec,-m=0751";

/// How long one tool may take; attaching and formatting 64 MiB of memory takes
/// well under a second, so this only stops a hung tool from stalling the boot.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the RAM disk could not be set up or taken down.
#[derive(Debug, thiserror::Error)]
pub enum RamDiskError {
    /// The tool could not be started.
    #[error("cannot run {}: {source}", tool.display())]
    Spawn {
        /// The tool's path.
        tool: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The tool was still running at the deadline and was killed.
    #[error("`{command}` did not finish within {} s and was killed", timeout.as_secs())]
    TimedOut {
        /// The command line.
        command: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The tool exited with a failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it said (the tools print no secrets).
        stderr: String,
    },
    /// `hdiutil attach` printed something other than one whole-disk device.
    #[error(
        "hdiutil attach printed {0:?} where a device such as /dev/disk4 was expected; a RAM disk it attached, if any, is left attached (see `hdiutil info`)"
    )]
    Device(String),
    /// A step failed, and detaching the disk again failed too.
    #[error("{cause}; detaching {} again failed too ({detach}): run `hdiutil detach -force {}`", device.display(), device.display())]
    NotDetached {
        /// The step that failed.
        cause: String,
        /// The RAM disk left attached.
        device: PathBuf,
        /// Why detaching failed.
        detach: Box<RamDiskError>,
    },
}

/// Where the tools are. On macOS they are at fixed system paths, never looked
/// up on `PATH`: the installer runs as root (or, in user mode, as the user,
/// whose `PATH` is not what decides where plaintext goes either).
pub struct Tools {
    /// `hdiutil`: attaches and detaches disk images.
    pub hdiutil: PathBuf,
    /// `newfs_hfs`: formats HFS+.
    pub newfs_hfs: PathBuf,
    /// `mount`: mounts with filesystem-specific options.
    pub mount: PathBuf,
    /// The deadline of each tool.
    pub timeout: Duration,
}

impl Tools {
    /// macOS's own copies.
    pub fn system() -> Tools {
        Tools {
            hdiutil: "/usr/bin/hdiutil".into(),
            newfs_hfs: "/sbin/newfs_hfs".into(),
            mount: "/sbin/mount".into(),
            timeout: TOOL_TIMEOUT,
        }
    }
}

/// Sectors for `bytes`, rounded up.
pub fn sectors(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR)
}

/// `hdiutil attach -nomount ram://N`: a RAM disk of `sectors` sectors, not mounted.
pub fn attach_args(sectors: u64) -> Vec<OsString> {
    vec![
        "attach".into(),
        "-nomount".into(),
        format!("ram://{sectors}").into(),
    ]
}

/// `newfs_hfs -s DEVICE`: case-sensitive HFS+, as secret names are.
pub fn newfs_args(device: &Path) -> Vec<OsString> {
    vec!["-s".into(), device.into()]
}

/// `mount -t hfs -o OPTIONS DEVICE TARGET`.
pub fn mount_args(device: &Path, target: &Path) -> Vec<OsString> {
    vec![
        "-t".into(),
        "hfs".into(),
        "-o".into(),
        MOUNT_OPTIONS.into(),
        device.into(),
        target.into(),
    ]
}

/// `hdiutil detach [-force] DEVICE`: unmounts what is mounted from the disk
/// and frees its memory; `-force` even while files on it are open.
pub fn detach_args(device: &Path, force: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["detach".into()];
    if force {
        args.push("-force".into());
    }
    args.push(device.into());
    args
}

/// The device `hdiutil attach -nomount` printed: one line, `/dev/disk`
/// followed by the disk's number, padded with blanks. Anything else (a slice
/// such as `/dev/disk4s1`, several lines, another path) is refused, since
/// the device is formatted next.
pub fn parse_device(stdout: &[u8]) -> Result<PathBuf, RamDiskError> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.trim_end();
    let refused = || RamDiskError::Device(line.chars().take(200).collect());
    let number = line.strip_prefix("/dev/disk").ok_or_else(refused)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refused());
    }
    Ok(PathBuf::from(line))
}

/// The command line, for messages.
fn shown(tool: &Path, args: &[OsString]) -> String {
    let mut s = tool.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs one tool with the deadline; its standard output when it succeeds.
fn run(tools: &Tools, tool: &Path, args: Vec<OsString>) -> Result<Vec<u8>, RamDiskError> {
    let out = process::run(Command::new(tool).args(&args), b"", tools.timeout).map_err(|e| match e {
        process::RunError::Spawn(source) | process::RunError::Wait(source) => RamDiskError::Spawn {
            tool: tool.to_path_buf(),
            source,
        },
        process::RunError::TimedOut(timeout) => RamDiskError::TimedOut {
            command: shown(tool, &args),
            timeout,
        },
    })?;
    if !out.status.success() {
        return Err(RamDiskError::Failed {
            command: shown(tool, &args),
            status: out.status,
            stderr: out.stderr.trim_end().to_owned(),
        });
    }
    Ok(out.stdout.to_vec())
}

/// Attaches a RAM disk of `size` bytes, formats it and mounts it on `target`;
/// returns its device. If formatting or mounting fails, the disk is detached
/// again before the error is returned.
pub fn attach_and_mount(tools: &Tools, size: u64, target: &Path) -> Result<PathBuf, RamDiskError> {
    let printed = run(tools, &tools.hdiutil, attach_args(sectors(size)))?;
    let device = parse_device(&printed)?;
    let made = run(tools, &tools.newfs_hfs, newfs_args(&device))
        .and_then(|_| run(tools, &tools.mount, mount_args(&device, target)));
    match made {
        Ok(_) => Ok(device),
        Err(cause) => Err(undo(tools, &device, cause)),
    }
}

/// Detaches `device` (forcibly if a plain detach fails); `cause` is what made
/// it necessary, returned with the detach's failure if there is one.
fn undo(tools: &Tools, device: &Path, cause: RamDiskError) -> RamDiskError {
    match detach(tools, device) {
        Ok(()) => cause,
        Err(e) => RamDiskError::NotDetached {
            cause: cause.to_string(),
            device: device.to_path_buf(),
            detach: Box::new(e),
        },
    }
}

/// Detaches `device`, forcibly if files on it are still open (as Linux's
/// lazy unmount does for the ramfs).
pub fn detach(tools: &Tools, device: &Path) -> Result<(), RamDiskError> {
    run(tools, &tools.hdiutil, detach_args(device, false))
        .or_else(|_| run(tools, &tools.hdiutil, detach_args(device, true)))
        .map(drop)
}

/// Whether what is mounted at the mount point is a secrets RAM disk made
/// before (by this installer or by sops-nix): an HFS filesystem, mounted
/// there (its device differs from its parent's), holding the marker. A
/// marker on the disk below, without a mount, does not count.
pub fn is_secrets_disk(fs_type: &str, dir_dev: dev_t, parent_dev: dev_t, has_marker: bool) -> bool {
    fs_type == "hfs" && dir_dev != parent_dev && has_marker
}

/// The RAM disk this run attached, with its mount point: what
/// [`unmount`] detaches if the run fails before the swap.
static ATTACHED: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);

/// Mounts a RAM disk at `dir` unless a secrets disk is mounted there, and
/// makes its root `root:keys 0751` (user mode: the caller's, `0751`).
///
/// The mount point is opened by [`crate::safe_path`]'s rule first; owner and
/// mode are then set through a descriptor opened after the mount, and only if
/// that descriptor is on a new filesystem, never on the directory beneath.
/// `fs_type` reads a descriptor's filesystem type name (`statfs`'s
/// `f_fstypename` on macOS).
pub fn ensure_with(
    tools: &Tools,
    dir: &Path,
    keys_gid: Option<u32>,
    fs_type: impl Fn(&OwnedFd) -> Result<String, Errno>,
) -> Result<Mounted, MountError> {
    let path = || dir.to_path_buf();
    let statfs = |source| MountError::Statfs { path: path(), source };
    let opened = crate::safe_path::open_real_dir(dir, Trust::invoker(), Missing::Create(0o755))
        .map_err(|source| MountError::Open { path: path(), source })?;
    let before = fstat(&opened.fd).map_err(statfs)?;
    let parent = fstatat(&opened.fd, "..", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(statfs)?;
    let has_marker = fstatat(&opened.fd, MARKER, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok();
    if is_secrets_disk(
        &fs_type(&opened.fd).map_err(statfs)?,
        before.st_dev,
        parent.st_dev,
        has_marker,
    ) {
        return Ok(Mounted::AlreadyThere);
    }
    let device = attach_and_mount(tools, SIZE, &opened.path)?;
    let owned = (|| {
        let mounted = opened.reopen().map_err(MountError::Reopen)?;
        let now = fstat(&mounted).map_err(statfs)?;
        if now.st_dev == before.st_dev || fs_type(&mounted).map_err(statfs)? != "hfs" {
            return Err(MountError::Changed { path: path() });
        }
        if let Some(gid) = keys_gid {
            fchown(&mounted, Some(Uid::from_raw(0)), Some(Gid::from_raw(gid))).map_err(|source| {
                MountError::Chown {
                    path: path(),
                    gid,
                    source,
                }
            })?;
        }
        fchmod(&mounted, Mode::from_bits_truncate(0o751))
            .map_err(|source| MountError::Chmod { path: path(), source })?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(&mounted, MARKER, flags, Mode::from_bits_truncate(0o444))
            .map(drop)
            .map_err(|source| MountError::Marker { path: path(), source })
    })();
    if let Err(e) = owned {
        // The disk is detached, not only unmounted: it would keep its memory.
        return Err(match detach(tools, &device) {
            Ok(()) => e,
            Err(why) => MountError::RamDisk(RamDiskError::NotDetached {
                cause: e.to_string(),
                device,
                detach: Box::new(why),
            }),
        });
    }
    *ATTACHED.lock().unwrap_or_else(|p| p.into_inner()) = Some((dir.to_path_buf(), device));
    Ok(Mounted::Fresh)
}

/// Detaches the RAM disk this run attached at `dir` (after a failure before
/// the swap); a disk it did not attach is left alone.
pub fn unmount_with(tools: &Tools, dir: &Path) -> Result<(), MountError> {
    let mut attached = ATTACHED.lock().unwrap_or_else(|p| p.into_inner());
    match attached.take() {
        Some((at, device)) if at == dir => detach(tools, &device).map_err(MountError::RamDisk),
        other => {
            *attached = other;
            Ok(())
        }
    }
}

/// `statfs`'s filesystem type name (`f_fstypename`), as [`ensure_with`] reads it.
#[cfg(target_os = "macos")]
fn fs_type_name(fd: &OwnedFd) -> Result<String, Errno> {
    nix::sys::statfs::fstatfs(fd).map(|s| s.filesystem_type_name().to_owned())
}

/// The installer's mount on macOS ([`super::mount::ensure`] on Linux).
/// `useTmpfs` has no meaning there (there is no tmpfs either), as in sops-nix.
#[cfg(target_os = "macos")]
pub fn ensure(dir: &Path, keys_gid: u32, _use_tmpfs: bool) -> Result<Mounted, MountError> {
    ensure_with(&Tools::system(), dir, Some(keys_gid), fs_type_name)
}

/// The mount in user mode (home-manager's agent): a RAM disk as in system
/// mode, since macOS's per-user temporary directory, where `%r` points, is on
/// disk; sops-nix mounts one there too. The disk's root stays the user's, who
/// mounted it (`0751`); nothing is chowned.
#[cfg(target_os = "macos")]
pub fn ensure_user(dir: &Path) -> Result<Mounted, MountError> {
    ensure_with(&Tools::system(), dir, None, fs_type_name)
}

/// Detaches the RAM disk this run mounted at `dir`.
#[cfg(target_os = "macos")]
pub fn unmount(dir: &Path) -> Result<(), MountError> {
    unmount_with(&Tools::system(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn sixty_four_mib_is_131072_sectors_and_partial_sectors_round_up() {
        assert_eq!(sectors(SIZE), 131_072);
        assert_eq!(sectors(513), 2);
        assert_eq!(
            strings(attach_args(sectors(SIZE))),
            ["attach", "-nomount", "ram://131072"]
        );
    }

    #[test]
    fn the_plan_formats_case_sensitive_hfs_and_mounts_it_hidden_without_dev_suid_or_exec() {
        let dev = Path::new("/dev/disk4");
        assert_eq!(strings(newfs_args(dev)), ["-s", "/dev/disk4"]);
        assert_eq!(
            strings(mount_args(dev, Path::new("/run/secrets.d"))),
            [
                "-t",
                "hfs",
                "-o",
                "nobrowse,nodev,nosuid,noexec,-m=0751",
                "/dev/disk4",
                "/run/secrets.d"
            ]
        );
        assert_eq!(strings(detach_args(dev, false)), ["detach", "/dev/disk4"]);
        assert_eq!(
            strings(detach_args(dev, true)),
            ["detach", "-force", "/dev/disk4"]
        );
    }

    #[test]
    fn hdiutil_output_gives_the_whole_disk_device() {
        // hdiutil pads the device name with blanks before the newline.
        assert_eq!(
            parse_device(b"/dev/disk4          \t\n").unwrap(),
            Path::new("/dev/disk4")
        );
        assert_eq!(parse_device(b"/dev/disk12\n").unwrap(), Path::new("/dev/disk12"));
    }

    #[test]
    fn anything_but_one_whole_disk_device_is_refused() {
        for bad in [
            &b""[..],
            b"\n",
            b"/dev/disk",
            b"/dev/disk4s1",
            b"/dev/disk4 /dev/disk5",
            b"/dev/disk4\n/dev/disk5\n",
            b"/dev/rdisk4",
            b" /dev/disk4",
            b"/dev/disk4/../sda",
            b"hdiutil: attach failed - no such file",
        ] {
            let err = parse_device(bad).unwrap_err();
            assert!(matches!(err, RamDiskError::Device(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_secrets_disk_is_a_mounted_hfs_with_the_marker() {
        assert!(is_secrets_disk("hfs", 5, 1, true));
        assert!(!is_secrets_disk("hfs", 1, 1, true), "marker on the disk below");
        assert!(!is_secrets_disk("hfs", 5, 1, false), "another HFS mount");
        assert!(
            !is_secrets_disk("apfs", 5, 1, true),
            "not a RAM disk we formatted"
        );
    }

    /// Fake tools in a temporary directory that append their name and
    /// arguments to `calls` and behave as `script` says for each tool.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        /// `behaviour(name)` is the shell body run after the call is logged.
        fn new(behaviour: &dyn Fn(&str) -> String) -> Fake {
            let dir = tempfile::tempdir().unwrap();
            for name in ["hdiutil", "newfs_hfs", "mount"] {
                let path = dir.path().join(name);
                let script = format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{}\n",
                    dir.path().join("calls").display(),
                    behaviour(name)
                );
                std::fs::write(&path, script).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            Fake { dir }
        }

        fn tools(&self) -> Tools {
            Tools {
                hdiutil: self.dir.path().join("hdiutil"),
                newfs_hfs: self.dir.path().join("newfs_hfs"),
                mount: self.dir.path().join("mount"),
                timeout: Duration::from_secs(10),
            }
        }

        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("calls"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// hdiutil prints a device for `attach`; every other call succeeds.
    fn working(name: &str) -> String {
        match name {
            "hdiutil" => r#"[ "$1" = attach ] && printf '/dev/disk7          \t\n'; exit 0"#.into(),
            _ => "exit 0".into(),
        }
    }

    const ATTACH: &str = "hdiutil attach -nomount ram://131072";
    const NEWFS: &str = "newfs_hfs -s /dev/disk7";
    const MOUNT: &str = "mount -t hfs -o nobrowse,nodev,nosuid,noexec,-m=0751 /dev/disk7 /run/secrets.d";

    #[test]
    fn the_runner_attaches_formats_and_mounts_in_order() {
        let fake = Fake::new(&working);
        let device = attach_and_mount(&fake.tools(), SIZE, Path::new("/run/secrets.d")).unwrap();
        assert_eq!(device, Path::new("/dev/disk7"));
        assert_eq!(fake.calls(), [ATTACH, NEWFS, MOUNT]);
    }

    #[test]
    fn a_failed_mount_detaches_the_disk_and_says_why() {
        let fake = Fake::new(&|name| match name {
            "mount" => "echo 'mount_hfs: Resource busy' >&2; exit 1".into(),
            other => working(other),
        });
        let err = attach_and_mount(&fake.tools(), SIZE, Path::new("/run/secrets.d")).unwrap_err();
        assert!(matches!(err, RamDiskError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("mount_hfs: Resource busy"), "{err}");
        assert_eq!(fake.calls(), [ATTACH, NEWFS, MOUNT, "hdiutil detach /dev/disk7"]);
    }

    #[test]
    fn a_failed_format_detaches_the_disk_and_mounts_nothing() {
        let fake = Fake::new(&|name| match name {
            "newfs_hfs" => "exit 1".into(),
            other => working(other),
        });
        attach_and_mount(&fake.tools(), SIZE, Path::new("/run/secrets.d")).unwrap_err();
        assert_eq!(fake.calls(), [ATTACH, NEWFS, "hdiutil detach /dev/disk7"]);
    }

    #[test]
    fn a_busy_disk_is_detached_by_force_and_a_stuck_one_is_named() {
        // A plain detach fails (files open); -force works.
        let fake = Fake::new(&|name| match name {
            "hdiutil" => r#"case "$1 $2" in
                "attach -nomount") echo /dev/disk7 ;;
                "detach /dev/disk7") exit 16 ;;
            esac"#
                .into(),
            "mount" => "exit 1".into(),
            other => working(other),
        });
        let err = attach_and_mount(&fake.tools(), SIZE, Path::new("/run/secrets.d")).unwrap_err();
        assert!(matches!(err, RamDiskError::Failed { .. }), "{err}");
        assert_eq!(
            fake.calls(),
            [
                ATTACH,
                NEWFS,
                MOUNT,
                "hdiutil detach /dev/disk7",
                "hdiutil detach -force /dev/disk7"
            ]
        );

        // Neither works: the error names the disk left attached and what to run.
        let fake = Fake::new(&|name| match name {
            "hdiutil" => r#"[ "$1" = attach ] && echo /dev/disk7 && exit 0; exit 1"#.into(),
            "mount" => "exit 1".into(),
            other => working(other),
        });
        let err = attach_and_mount(&fake.tools(), SIZE, Path::new("/run/secrets.d")).unwrap_err();
        assert!(matches!(err, RamDiskError::NotDetached { .. }), "{err}");
        assert!(
            err.to_string().contains("hdiutil detach -force /dev/disk7"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_or_garbled_attach_runs_nothing_else() {
        let fake = Fake::new(&|name| match name {
            "hdiutil" => {
                "echo 'hdiutil: attach failed - Resource temporarily unavailable' >&2; exit 1".into()
            }
            other => working(other),
        });
        let err = attach_and_mount(&fake.tools(), SIZE, Path::new("/run/secrets.d")).unwrap_err();
        assert!(
            err.to_string().contains("Resource temporarily unavailable"),
            "{err}"
        );
        assert_eq!(fake.calls(), [ATTACH]);

        let fake = Fake::new(&|name| match name {
            "hdiutil" => "echo /dev/disk7s1".into(),
            other => working(other),
        });
        let err = attach_and_mount(&fake.tools(), SIZE, Path::new("/run/secrets.d")).unwrap_err();
        assert!(
            matches!(err, RamDiskError::Device(ref d) if d == "/dev/disk7s1"),
            "{err}"
        );
        assert_eq!(fake.calls(), [ATTACH]);
    }

    #[test]
    fn a_hung_tool_is_killed_and_the_disk_detached() {
        let fake = Fake::new(&|name| match name {
            "newfs_hfs" => "exec sleep 30".into(),
            other => working(other),
        });
        let mut tools = fake.tools();
        tools.timeout = Duration::from_millis(300);
        let err = attach_and_mount(&tools, SIZE, Path::new("/run/secrets.d")).unwrap_err();
        assert!(matches!(err, RamDiskError::TimedOut { .. }), "{err}");
        assert_eq!(fake.calls(), [ATTACH, NEWFS, "hdiutil detach /dev/disk7"]);
    }

    #[test]
    fn a_mount_that_did_not_take_is_refused_nothing_is_chowned_and_the_disk_is_detached() {
        // The fake mount does nothing, so the mount point stays on the disk
        // below: the owner and mode must not be set there.
        let fake = Fake::new(&working);
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets.d");
        let err = ensure_with(&fake.tools(), &dir, Some(12345), |_| Ok("hfs".into()))
            .err()
            .expect("refused");
        assert!(matches!(err, MountError::Changed { .. }), "{err}");
        let calls = fake.calls();
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert_eq!(calls[3], "hdiutil detach /dev/disk7");
        let st = std::fs::metadata(&dir).unwrap();
        assert_ne!(std::os::unix::fs::MetadataExt::gid(&st), 12345);
        assert!(!dir.join(MARKER).exists());
        // Nothing was attached by this run as far as unmount is concerned.
        unmount_with(&fake.tools(), &dir).unwrap();
        assert_eq!(fake.calls().len(), 4);
    }

    /// Unmounts the stand-in filesystem however the test ends.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Whether this test can run (as root); under `CI` it must, so not being
    /// root fails there instead of skipping.
    fn as_root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        assert!(
            root || std::env::var_os("CI").is_none(),
            "CI runs as root: this test must run there"
        );
        root
    }

    /// The tests that attach a disk share [`ATTACHED`]; they take turns.
    static ATTACHING: Mutex<()> = Mutex::new(());

    #[test]
    fn a_fresh_disk_is_owned_root_keys_0751_marked_found_again_and_detached_on_unmount() {
        if !as_root() {
            return;
        }
        let _turn = ATTACHING.lock().unwrap_or_else(|p| p.into_inner());
        // The fake mount mounts a real tmpfs on the target (its sixth
        // argument), standing in for the HFS RAM disk.
        let fake = Fake::new(&|name| match name {
            "mount" => r#"exec mount -t tmpfs -o mode=0700 none "$6""#.into(),
            other => working(other),
        });
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets.d");
        let _guard = Unmount(dir.clone());
        let hfs = |_: &OwnedFd| Ok("hfs".to_owned());
        let got = ensure_with(&fake.tools(), &dir, Some(4242), hfs).unwrap();
        assert!(matches!(got, Mounted::Fresh));
        let st = nix::sys::stat::stat(&dir).unwrap();
        let parent = nix::sys::stat::stat(root.path()).unwrap();
        assert_ne!(
            st.st_dev, parent.st_dev,
            "the owner went onto the mounted filesystem"
        );
        assert_eq!((st.st_uid, st.st_gid, st.st_mode & 0o7777), (0, 4242, 0o751));
        let marker = nix::sys::stat::lstat(&dir.join(MARKER)).unwrap();
        assert_eq!((marker.st_uid, marker.st_mode & 0o7777), (0, 0o444));
        assert_eq!(
            fake.calls(),
            [
                ATTACH,
                NEWFS,
                format!(
                    "mount -t hfs -o nobrowse,nodev,nosuid,noexec,-m=0751 /dev/disk7 {}",
                    dir.display()
                )
                .as_str()
            ]
        );

        // The next run finds it and attaches nothing.
        let again = ensure_with(&fake.tools(), &dir, Some(4242), hfs).unwrap();
        assert!(matches!(again, Mounted::AlreadyThere));
        assert_eq!(fake.calls().len(), 3);

        // A failed run detaches the disk it attached.
        unmount_with(&fake.tools(), &dir).unwrap();
        assert_eq!(fake.calls().last().unwrap(), "hdiutil detach /dev/disk7");
    }

    #[test]
    fn in_user_mode_the_disk_keeps_the_mounting_users_owner_and_gets_0751_and_the_marker() {
        if !as_root() {
            return;
        }
        let _turn = ATTACHING.lock().unwrap_or_else(|p| p.into_inner());
        // The stand-in filesystem's root belongs to 4243:4244, as a RAM disk
        // a user mounts belongs to that user; with no `keys` group given,
        // that owner must stay.
        let fake = Fake::new(&|name| match name {
            "mount" => r#"exec mount -t tmpfs -o mode=0700,uid=4243,gid=4244 none "$6""#.into(),
            other => working(other),
        });
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets.d");
        let _guard = Unmount(dir.clone());
        let hfs = |_: &OwnedFd| Ok("hfs".to_owned());
        let got = ensure_with(&fake.tools(), &dir, None, hfs).unwrap();
        assert!(matches!(got, Mounted::Fresh));
        let st = nix::sys::stat::stat(&dir).unwrap();
        let parent = nix::sys::stat::stat(root.path()).unwrap();
        assert_ne!(st.st_dev, parent.st_dev, "the disk is mounted");
        assert_eq!((st.st_uid, st.st_gid, st.st_mode & 0o7777), (4243, 4244, 0o751));
        assert!(nix::sys::stat::lstat(&dir.join(MARKER)).is_ok());
        let again = ensure_with(&fake.tools(), &dir, None, hfs).unwrap();
        assert!(matches!(again, Mounted::AlreadyThere));
        unmount_with(&fake.tools(), &dir).unwrap();
        assert_eq!(fake.calls().last().unwrap(), "hdiutil detach /dev/disk7");
    }
}
