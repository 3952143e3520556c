//! Stage: the disk changes. The secrets filesystem is mounted (and the
//! capabilities only the mount needed are dropped), generation N+1 is written
//! beside the live one and the link is swapped to it with one `rename(2)`.
//! Any failure before the swap removes the partial generation and unmounts a
//! filesystem this run mounted, so the live secrets stay as they were and
//! reachable.

use super::generation::{Generation, Ids};
use super::item::Item;
use super::report::{Failed, LogLine, Report};
use super::state;
use super::{links, mount};
#[cfg(target_os = "linux")]
use crate::hardening;
use crate::manifest::Manifest;
#[cfg(not(target_os = "macos"))]
use crate::safe_path::{Missing, Trust};

/// Mounts, writes and swaps; returns the number of the generation now live.
pub(super) fn apply(
    manifest: &Manifest,
    items: &[Item<'_>],
    keys_gid: u32,
    record: &[u8],
    report: &mut Report,
) -> Result<u64, Failed> {
    let mount = &manifest.secrets_mount_point;
    // On macOS both branches below set it.
    #[cfg_attr(target_os = "macos", allow(unused_assignments))]
    let mut mounted_now = false;
    if manifest.user_mode {
        // On Linux `%r` is the user's runtime directory, a tmpfs. On macOS it
        // is the user's temporary directory, on disk, so the plaintext needs
        // a RAM disk there too, as sops-nix mounts one in user mode.
        #[cfg(target_os = "macos")]
        {
            let mounted = super::ramdisk::ensure_user(mount).map_err(|e| Failed::one(e.to_string()))?;
            mounted_now = !matches!(mounted, mount::Mounted::AlreadyThere);
        }
        #[cfg(not(target_os = "macos"))]
        {
            let dir = crate::safe_path::open_dir(mount, Trust::invoker(), Missing::Create(0o755))
                .map_err(|e| Failed::one(format!("secretsMountPoint {}: {e}", mount.display())))?;
            nix::sys::stat::fchmod(&dir.fd, nix::sys::stat::Mode::from_bits_truncate(0o751))
                .map_err(|e| Failed::one(format!("cannot chmod {}: {e}", mount.display())))?;
        }
    } else {
        let mounted =
            mount::ensure(mount, keys_gid, manifest.use_tmpfs).map_err(|e| Failed::one(e.to_string()))?;
        mounted_now = !matches!(mounted, mount::Mounted::AlreadyThere);
        if matches!(mounted, mount::Mounted::TmpfsWithoutNoswap) {
            report.log.push(LogLine::warning(
                "this kernel does not support tmpfs noswap; secrets may be swapped out".into(),
            ));
        }
        // The mount was the step that needed most of root's powers.
        #[cfg(target_os = "linux")]
        if let Err(e) = hardening::drop_capabilities(hardening::AFTER_MOUNT) {
            report.log.push(LogLine::warning(format!(
                "could not drop capabilities after mounting: {e}"
            )));
        }
    }
    let swapped = write_and_swap(manifest, items, keys_gid, record);
    // A filesystem this run mounted goes again if the run failed before the
    // swap: it would hide the live generation the link still points into.
    if mounted_now && swapped.is_err() {
        let why = match mount::unmount(mount) {
            Ok(()) => format!(
                "the filesystem this run mounted at {} was unmounted again",
                mount.display()
            ),
            Err(e) => e.to_string(),
        };
        return Err(Failed(
            swapped
                .err()
                .into_iter()
                .flat_map(|f| f.0)
                .chain([why.into()])
                .collect(),
        ));
    }
    let next = swapped?;
    #[cfg(target_os = "linux")]
    if !manifest.user_mode
        && let Err(e) = hardening::drop_capabilities(hardening::AFTER_SWAP)
    {
        report.log.push(LogLine::warning(format!(
            "could not drop capabilities after the swap: {e}"
        )));
    }
    report.generation = Some(next);
    Ok(next)
}

/// Writes generation N+1 (the items, then the record) and makes it live; on
/// any failure the partial generation is removed and the live link is
/// untouched. Returns N+1.
fn write_and_swap(
    manifest: &Manifest,
    items: &[Item<'_>],
    keys_gid: u32,
    record: &[u8],
) -> Result<u64, Failed> {
    let mount = &manifest.secrets_mount_point;
    let live = links::live_generation(mount, &manifest.symlink_path).unwrap_or(0);
    links::remove_leftovers(mount, live).map_err(|e| Failed::one(e.to_string()))?;
    let next = live + 1;
    let dir_ids = (!manifest.user_mode).then_some(Ids {
        uid: 0,
        gid: keys_gid,
    });
    let previous = (live > 0).then_some(live);
    let mut generation =
        Generation::create(mount, next, dir_ids, previous).map_err(|e| Failed::one(e.to_string()))?;
    let written = std::thread::scope(|scope| {
        let told = compare_live_copies(scope, &generation, items);
        for item in items {
            // No verdict (no live generation, or the thread is gone): compared here.
            let same = told.as_ref().map(|rx| rx.recv().unwrap_or(false));
            generation
                .write_file_told(
                    &item.relative(),
                    item.ids,
                    item.mode.0,
                    item.bytes.as_bytes(),
                    same,
                )
                .map_err(|e| format!("{}: {e}", item.shown()))?;
        }
        let root = (!manifest.user_mode).then_some(Ids { uid: 0, gid: 0 });
        generation
            .write_file(state::FILE, root, 0o400, record)
            .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    });
    let path = generation.path().to_path_buf();
    // Closes the generation's directory fd, so that its filesystem can be unmounted.
    drop(generation);
    let removed = || format!("generation {next} was removed; the live secrets are unchanged").into();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&path);
        return Err(Failed(vec![e.into(), removed()]));
    }
    links::swap(&manifest.symlink_path, &path).map_err(|e| {
        let _ = std::fs::remove_dir_all(&path);
        Failed(vec![e.to_string().into(), removed()])
    })?;
    Ok(next)
}

/// How many verdicts the comparing thread may be ahead of the writer.
const AHEAD: usize = 256;

/// Starts a thread that reads the live copy of each item in turn and says
/// whether it is the same (bytes, owner, mode) as what is about to be
/// written, so that reading the live generation and linking into the next
/// one overlap. The verdicts come in the items' order; `None` when there is
/// no live generation or no thread could be started. A writer that stops
/// early drops the receiver, and the thread stops at its next verdict.
fn compare_live_copies<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    generation: &Generation,
    items: &'s [Item<'_>],
) -> Option<std::sync::mpsc::Receiver<bool>> {
    let mut copies = generation.live_copies()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD);
    std::thread::Builder::new()
        .name("live-copies".into())
        .spawn_scoped(scope, move || {
            for item in items {
                let same = copies.matches(&item.relative(), item.ids, item.mode.0, item.bytes.as_bytes());
                if tx.send(same).is_err() {
                    return;
                }
            }
        })
        .ok()?;
    Some(rx)
}
