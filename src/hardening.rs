//! What the process gives up so that a crash or a later step cannot leak or
//! abuse what the run holds: core dumps from the start, and root's
//! capabilities once the secrets filesystem is mounted.
//!
//! A core dump of a run holds decrypted values and data keys, and would be
//! written to disk (or handed to a crash collector): so the process is made
//! non-dumpable and its core size limit 0 before anything is read.
//!
//! After the mount the installer only writes files inside its own generation,
//! gives them owners and modes, makes links in other users' directories and
//! asks systemd to restart units. It keeps the capabilities those steps need
//! and drops the rest from every set, the bounding set included, so that no
//! helper it starts (systemctl) regains them on exec.
//!
//! Both of the Linux-only pieces (`PR_SET_DUMPABLE` and capability sets) are
//! built on Linux alone. macOS has neither: there the core size limit is all
//! that stops a dump, and root keeps root's powers for the whole run.

#[cfg(target_os = "linux")]
use caps::{CapSet, Capability, CapsHashSet};

/// Capabilities kept between the mount and the swap: writing the generation
/// (`CHOWN`, `FOWNER`, `DAC_OVERRIDE`), unmounting again what this run mounted
/// if it fails before the swap (`SYS_ADMIN`), and dropping the rest later
/// (`SETPCAP`, which the bounding set needs).
#[cfg(target_os = "linux")]
pub const AFTER_MOUNT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_FOWNER,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SETPCAP,
];

/// Capabilities of the threads that read the live copies while the next
/// generation is made (`install::apply`): reading files of any owner, nothing
/// else. They start before the mount and drop to this first thing, so they
/// never hold more than the main thread does after the mount.
#[cfg(target_os = "linux")]
pub const READING_LIVE_COPIES: &[Capability] = &[Capability::CAP_DAC_READ_SEARCH];

/// Capabilities kept after the swap: links at custom paths in other users'
/// directories, owned by the secret's owner.
#[cfg(target_os = "linux")]
pub const AFTER_SWAP: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_FOWNER,
    Capability::CAP_DAC_OVERRIDE,
];

/// Makes the process non-dumpable with a core size limit of 0. Called first
/// thing in `main`, for every subcommand (`decrypt` holds plaintext too).
pub fn forbid_core_dumps() -> Result<(), nix::Error> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

/// Keeps only `keep` in the effective, permitted and inheritable sets and in
/// the bounding set; clears the ambient set. Does nothing for a process that
/// is not root (user mode has nothing to drop). Capability sets belong to a
/// thread: a thread started earlier keeps its own.
#[cfg(target_os = "linux")]
pub fn drop_capabilities(keep: &[Capability]) -> Result<(), caps::errors::CapsError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP in the effective set.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    let inheritable: CapsHashSet = caps::read(None, CapSet::Inheritable)?
        .intersection(&keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Inheritable, &inheritable)?;
    let permitted: CapsHashSet = caps::read(None, CapSet::Permitted)?
        .intersection(&keep)
        .copied()
        .collect();
    // Effective must stay a subset of permitted: shrink it first.
    caps::set(None, CapSet::Effective, &permitted)?;
    caps::set(None, CapSet::Permitted, &permitted)?;
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_sets_kept_shrink_and_never_keep_sys_admin_after_the_swap() {
        assert!(AFTER_SWAP.iter().all(|c| AFTER_MOUNT.contains(c)));
        assert!(!AFTER_SWAP.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!AFTER_SWAP.contains(&Capability::CAP_SETPCAP));
    }

    /// A `Cap...:` line of this thread's status, as a bit set.
    fn thread_caps(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    }

    #[test]
    fn a_thread_that_reads_live_copies_keeps_only_reading_and_the_others_keep_theirs() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            return;
        }
        let before = thread_caps("CapEff:");
        let reading = 1u64 << (Capability::CAP_DAC_READ_SEARCH as u8);
        let seen = std::thread::spawn(|| {
            drop_capabilities(READING_LIVE_COPIES).unwrap();
            ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"].map(thread_caps)
        })
        .join()
        .unwrap();
        assert_eq!(seen[..3], [reading; 3], "effective, permitted, bounding");
        assert_eq!(seen[3..], [0, 0], "inheritable, ambient");
        assert_eq!(
            thread_caps("CapEff:"),
            before,
            "another thread's sets are its own"
        );
        assert_ne!(before & (1 << (Capability::CAP_SYS_ADMIN as u8)), 0);
    }
}
