//! Stage: the disk changes. The secrets filesystem is mounted (and the
//! capabilities only the mount needed are dropped), generation N+1 is written
//! beside the live one and the link is swapped to it with one `rename(2)`.
//! An item whose live copy is the same (bytes, owner, mode) is linked, not
//! written; two readers ([`read_live_copies`], started as soon as the items
//! are settled) judge the live copies while the record is made.
//! Any failure before the swap removes the partial generation and unmounts a
//! filesystem this run mounted, so the live secrets stay as they were and
//! reachable.

use super::generation::{Generation, Ids, LiveCopies};
use super::item::Item;
use super::report::{Failed, LogLine, Report};
use super::state;
use super::{links, mount};
#[cfg(target_os = "linux")]
use crate::hardening;
use crate::manifest::Manifest;
#[cfg(not(target_os = "macos"))]
use crate::safe_path::{Missing, Trust};
use std::sync::mpsc::Receiver;

/// Mounts, writes and swaps; returns the number of the generation now live.
pub(super) fn apply(
    manifest: &Manifest,
    items: &[Item<'_>],
    keys_gid: u32,
    record: &state::Record,
    verdicts: Verdicts,
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
    let swapped = write_and_swap(manifest, items, keys_gid, &record.bytes, verdicts);
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
    verdicts: Verdicts,
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
    // Verdicts on another generation than the one linked from are not used.
    let verdicts = if verdicts.of == previous {
        verdicts
    } else {
        Verdicts::none()
    };
    let root = (!manifest.user_mode).then_some(Ids { uid: 0, gid: 0 });
    let written = write_items(&mut generation, items, verdicts, record, root);
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

/// Writes the items into `generation`, linking those the readers found the
/// same, then the record (owned by `root`, when not in user mode).
fn write_items(
    generation: &mut Generation,
    items: &[Item<'_>],
    mut verdicts: Verdicts,
    record: &[u8],
    root: Option<Ids>,
) -> Result<(), String> {
    for item in items {
        // No verdict (no live generation, or no reader): compared here.
        let same = verdicts.next();
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
    generation
        .write_file(state::FILE, root, 0o400, record)
        .map_err(|e| e.to_string())
}

/// How many threads read live copies. Reading one takes four system calls
/// (open, stat, read, close) where linking it takes one.
const READERS: usize = 2;

/// How many verdicts a reader hands over at once: one hand-over per item
/// would cost the writer a wake-up per item.
const BATCH: usize = 32;

/// The readers' verdicts on the live copies of the items, in the items'
/// order: reader `r` judges batches `r`, `r + READERS`, ...
pub(super) struct Verdicts {
    /// The generation judged.
    of: Option<u64>,
    readers: Vec<Option<Receiver<Vec<bool>>>>,
    /// The next item's index.
    item: usize,
    /// The verdicts on the rest of its batch, if its reader gave them.
    batch: Option<std::vec::IntoIter<bool>>,
}

impl Verdicts {
    /// No verdicts: the writer compares each live copy itself.
    pub(super) fn none() -> Verdicts {
        Verdicts {
            of: None,
            readers: Vec::new(),
            item: 0,
            batch: None,
        }
    }

    /// The next item's verdict; `None` when no reader judged it (a reader
    /// that could not start or has stopped): then its whole batch has none.
    fn next(&mut self) -> Option<bool> {
        if self.item.is_multiple_of(BATCH) {
            let reader = self.readers.get(self.item / BATCH % READERS);
            self.batch = reader
                .and_then(Option::as_ref)
                .and_then(|rx| rx.recv().ok())
                .map(Vec::into_iter);
        }
        self.item += 1;
        self.batch.as_mut()?.next()
    }
}

/// Starts the threads that read the live copy of each item and say whether
/// it is the same (bytes, owner, mode) as what is about to be written, so
/// that the reading overlaps making the record, mounting and linking. It is
/// called under the mount's lock, which keeps the live generation live
/// until the swap. Each reader first drops every capability but reading
/// files ([`hardening::READING_LIVE_COPIES`]). When the writer stops early it
/// drops the receivers, and each reader stops at its next batch.
pub(super) fn read_live_copies<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    manifest: &Manifest,
    items: &'s [Item<'_>],
) -> Verdicts {
    let mount = &manifest.secrets_mount_point;
    let Some(live) = links::live_generation(mount, &manifest.symlink_path) else {
        return Verdicts::none();
    };
    let readers = (0..READERS)
        .map(|r| {
            let mut copies = LiveCopies::open(mount, live)?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("live-copies".into())
                .spawn_scoped(scope, move || {
                    // Started before the mount: holds no more than reading needs.
                    // If it cannot drop, it judges nothing and the writer compares.
                    #[cfg(target_os = "linux")]
                    if hardening::drop_capabilities(hardening::READING_LIVE_COPIES).is_err() {
                        return;
                    }
                    for batch in items.chunks(BATCH).skip(r).step_by(READERS) {
                        let judged = batch
                            .iter()
                            .map(|i| copies.matches(&i.relative(), i.ids, i.mode.0, i.bytes.as_bytes()))
                            .collect();
                        if tx.send(judged).is_err() {
                            return;
                        }
                    }
                })
                .ok()?;
            Some(rx)
        })
        .collect();
    Verdicts {
        of: Some(live),
        readers,
        ..Verdicts::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_item_gets_its_own_verdict_and_a_missing_reader_leaves_its_batches_to_the_writer() {
        // Reader 0 judges batches 0 and 2; reader 1 could not start.
        let (tx, rx) = std::sync::mpsc::channel();
        let first: Vec<bool> = (0..BATCH).map(|i| i % 3 == 0).collect();
        let third: Vec<bool> = (0..5).map(|i| i % 2 == 0).collect();
        tx.send(first.clone()).unwrap();
        tx.send(third.clone()).unwrap();
        let mut readers = vec![Some(rx)];
        readers.resize_with(READERS, || None);
        let mut verdicts = Verdicts {
            of: Some(1),
            readers,
            ..Verdicts::none()
        };
        let got: Vec<Option<bool>> = (0..2 * BATCH + 5).map(|_| verdicts.next()).collect();
        let want: Vec<Option<bool>> = first
            .iter()
            .map(|&v| Some(v))
            .chain(std::iter::repeat_n(None, BATCH))
            .chain(third.iter().map(|&v| Some(v)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(verdicts.next(), None, "no verdict past the items");
    }
}
