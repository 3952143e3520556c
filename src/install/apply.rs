//! Stage: the disk changes. The secrets filesystem is mounted (and the
//! capabilities only the mount needed are dropped), generation N+1 is written
//! beside the live one and the link is swapped to it with one `rename(2)`.
//! An item whose live copy is the same (bytes, owner, mode) is linked, not
//! written. Readers ([`read_live_copies`], started as soon as the items are
//! settled, kept off the writer's CPU) judge the live copies by their keyed
//! digests while the record is made; the writer judges a batch ahead itself
//! rather than wait for one still being read.
//! Any failure before the swap removes the partial generation and unmounts a
//! filesystem this run mounted, so the live secrets stay as they were and
//! reachable.

use super::generation::{Generation, Ids, LiveCopies, WriteError};
use super::item::Item;
use super::report::{Failed, LogLine, Report};
use super::state;
use super::state::DigestKey;
use super::{links, mount};
#[cfg(target_os = "linux")]
use crate::hardening;
use crate::manifest::Manifest;
#[cfg(not(target_os = "macos"))]
use crate::safe_path::{Missing, Trust};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

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
        return Err(Failed(vec![e.to_string().into(), removed()]));
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
) -> Result<(), WriteItemsError> {
    for item in items {
        // No verdict (no live generation, or a batch the writer reached
        // before any reader): compared here.
        let same = verdicts.next();
        generation
            .write_file_told(
                &item.relative(),
                item.ids,
                item.mode.0,
                item.bytes.as_bytes(),
                same,
            )
            .map_err(|source| WriteItemsError::Item {
                item: item.shown(),
                source,
            })?;
    }
    generation
        .write_file(state::FILE, root, 0o400, record)
        .map_err(WriteItemsError::Record)
}

/// Why the items or the record could not be written into the new generation.
#[derive(Debug, thiserror::Error)]
enum WriteItemsError {
    /// An item's file; `item` names it as messages do (`secret "db/password"`).
    #[error("{item}: {source}")]
    Item {
        /// The item, as shown.
        item: String,
        /// Why.
        source: WriteError,
    },
    /// The generation's record.
    #[error(transparent)]
    Record(WriteError),
}

/// How many verdicts are judged at a time: one hand-over per item would
/// cost the writer a wake-up per item.
const BATCH: usize = 32;

/// The verdicts on the live copies of the items, in the items' order.
/// Readers judge batches of [`BATCH`] items from the first on; the writer,
/// when the batch it has reached is still being read, judges the last one
/// nobody has claimed rather than wait, so the reading is shared by every
/// CPU. A batch the writer reaches before any reader is its own: it then
/// compares each live copy as it goes.
pub(super) struct Verdicts {
    /// The generation judged.
    of: Option<u64>,
    judging: Option<Arc<Judging>>,
    readers: Vec<JoinHandle<()>>,
    /// The writer's own view of the live generation, for the batches it
    /// judges ahead.
    own: Option<LiveCopies>,
    /// The next item's index.
    item: usize,
    /// The verdicts on the rest of its batch, if a reader or the writer
    /// judged it ahead.
    batch: Option<std::vec::IntoIter<bool>>,
}

/// What a live copy must be for its item to be linked. The content is
/// compared by its keyed digest: readers are handed no decrypted value (they
/// read the live copies only, into a buffer wiped on drop).
struct Expected {
    relative: String,
    ids: Option<Ids>,
    mode: u32,
    len: u64,
    digest: String,
}

/// One run's batches, shared by the readers and the writer.
struct Judging {
    expected: Vec<Expected>,
    /// The live record's digest key, with which the items' digests were taken.
    key: DigestKey,
    claims: Mutex<Claims>,
    judged: Condvar,
}

/// Batches `front..back` are claimed by nobody; those before `front` by a
/// reader, those from `back` on by the writer.
struct Claims {
    front: usize,
    back: usize,
    verdicts: Vec<Option<Vec<bool>>>,
    /// Readers that have not ended.
    readers: usize,
}

impl Verdicts {
    /// No verdicts: the writer compares each live copy itself.
    pub(super) fn none() -> Verdicts {
        Verdicts {
            of: None,
            judging: None,
            readers: Vec::new(),
            own: None,
            item: 0,
            batch: None,
        }
    }

    /// The next item's verdict; `None` when the writer is to compare it
    /// itself.
    fn next(&mut self) -> Option<bool> {
        if self.item.is_multiple_of(BATCH) {
            let batch = self.item / BATCH;
            self.batch = self.take(batch).map(Vec::into_iter);
        }
        self.item += 1;
        self.batch.as_mut()?.next()
    }

    /// The verdicts on `batch`, the batch the writer has reached (every one
    /// before it is done with): judged by a reader or ahead by the writer,
    /// or `None` when nobody had claimed it (it is the writer's now) or its
    /// reader ended without handing them over.
    fn take(&mut self, batch: usize) -> Option<Vec<bool>> {
        let judging = Arc::clone(self.judging.as_ref()?);
        let mut claims = judging.claims.lock().ok()?;
        loop {
            if let Some(v) = claims.verdicts.get_mut(batch)?.take() {
                return Some(v);
            }
            if batch >= claims.back {
                return None;
            }
            if batch >= claims.front {
                claims.front = batch + 1;
                return None;
            }
            // Still being read: judge the last unclaimed batch meanwhile.
            if claims.front < claims.back {
                claims.back -= 1;
                let ahead = claims.back;
                drop(claims);
                let verdicts = match &mut self.own {
                    Some(own) => judging.judge(ahead, own),
                    None => vec![false; judging.batch(ahead).len()],
                };
                claims = judging.claims.lock().ok()?;
                claims.verdicts[ahead] = Some(verdicts);
                continue;
            }
            if claims.readers == 0 {
                return None;
            }
            claims = judging.judged.wait(claims).ok()?;
        }
    }
}

impl Drop for Verdicts {
    /// The readers are stopped after the batch each is on, and waited for.
    fn drop(&mut self) {
        if let Some(judging) = &self.judging
            && let Ok(mut claims) = judging.claims.lock()
        {
            claims.front = claims.back;
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Judging {
    fn batch(&self, batch: usize) -> &[Expected] {
        self.expected.chunks(BATCH).nth(batch).unwrap_or_default()
    }

    fn judge(&self, batch: usize, copies: &mut LiveCopies) -> Vec<bool> {
        self.batch(batch)
            .iter()
            .map(|e| copies.has_digest(&e.relative, e.ids, e.mode, e.len, &self.key, &e.digest))
            .collect()
    }

    /// A reader's part: the first unclaimed batch, while one is left.
    fn read(&self, copies: &mut LiveCopies) {
        loop {
            let batch = {
                let Ok(mut claims) = self.claims.lock() else {
                    return;
                };
                if claims.front >= claims.back {
                    return;
                }
                claims.front += 1;
                claims.front - 1
            };
            let verdicts = self.judge(batch, copies);
            let Ok(mut claims) = self.claims.lock() else {
                return;
            };
            claims.verdicts[batch] = Some(verdicts);
            self.judged.notify_all();
        }
    }
}

/// Counts a reader out when it ends, however it ends, so that the writer
/// never waits for a batch nobody will hand over.
struct ReaderGone<'j>(&'j Judging);

impl Drop for ReaderGone<'_> {
    fn drop(&mut self) {
        if let Ok(mut claims) = self.0.claims.lock() {
            claims.readers -= 1;
            self.0.judged.notify_all();
        }
    }
}

/// How many threads read live copies besides the writer: one per other CPU
/// this process may use, at most two (on a 2-CPU host a second reader would
/// only take turns with the first while the writer waits for its batch).
fn reader_count() -> usize {
    #[cfg(target_os = "linux")]
    {
        crate::helper::other_cpu_count().clamp(1, 2)
    }
    #[cfg(not(target_os = "linux"))]
    {
        2
    }
}

/// Starts the threads that read the live copy of each item and say whether
/// it is the same (bytes, owner, mode) as what is about to be written, so
/// that the reading overlaps making the record, mounting and linking. It is
/// called under the mount's lock, which keeps the live generation live
/// until the swap. Each reader first drops every capability but reading
/// files ([`hardening::READING_LIVE_COPIES`]); it is given each item's
/// digest (with `key`), never its value.
pub(super) fn read_live_copies(manifest: &Manifest, items: &[Item<'_>], key: &DigestKey) -> Verdicts {
    let mount = &manifest.secrets_mount_point;
    let Some(live) = links::live_generation(mount, &manifest.symlink_path) else {
        return Verdicts::none();
    };
    let expected = items
        .iter()
        .map(|i| Expected {
            relative: i.relative().into_owned(),
            ids: i.ids,
            mode: i.mode.0,
            len: i.bytes.as_bytes().len() as u64,
            digest: i.digest.clone(),
        })
        .collect();
    judge_live_copies(mount, live, expected, key, reader_count())
}

/// [`read_live_copies`] of generation `live` under `mount`, with `count`
/// readers.
fn judge_live_copies(
    mount: &Path,
    live: u64,
    expected: Vec<Expected>,
    key: &DigestKey,
    count: usize,
) -> Verdicts {
    let batches = expected.len().div_ceil(BATCH);
    let judging = Arc::new(Judging {
        expected,
        key: key.clone(),
        claims: Mutex::new(Claims {
            front: 0,
            back: batches,
            verdicts: vec![None; batches],
            readers: count,
        }),
        judged: Condvar::new(),
    });
    let mut readers = Vec::new();
    for _ in 0..count {
        let started = LiveCopies::open(mount, live).and_then(|mut copies| {
            let judging = Arc::clone(&judging);
            crate::helper::spawn("live-copies", move || {
                let _gone = ReaderGone(&judging);
                // Started before the mount: holds no more than reading needs.
                // If it cannot drop, it judges nothing and the writer compares.
                #[cfg(target_os = "linux")]
                if hardening::drop_capabilities(hardening::READING_LIVE_COPIES).is_err() {
                    return;
                }
                judging.read(&mut copies);
            })
            .ok()
        });
        match started {
            Some(reader) => readers.push(reader),
            // Counted out at once: nothing of this reader's is waited for.
            None => drop(ReaderGone(&judging)),
        }
    }
    Verdicts {
        of: Some(live),
        judging: Some(judging),
        readers,
        own: LiveCopies::open(mount, live),
        item: 0,
        batch: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live generation `1` under a new mount with `n` files, and what
    /// each must be to be linked: every third one is not what it should be
    /// (another content of the same length, another mode, or missing).
    fn live_generation(n: usize, key: &DigestKey) -> (tempfile::TempDir, Vec<Expected>, Vec<bool>) {
        use std::os::unix::fs::PermissionsExt;
        let mount = tempfile::tempdir().unwrap();
        let live = mount.path().join("1");
        std::fs::create_dir(&live).unwrap();
        let me = Ids {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let (mut expected, mut same) = (Vec::new(), Vec::new());
        for i in 0..n {
            let name = format!("s{i:04}");
            let value = format!("value {i:04}");
            let path = live.join(&name);
            let (content, mode) = match i % 9 {
                3 => (format!("VALUE {i:04}"), 0o400),
                6 => (value.clone(), 0o440),
                _ => (value.clone(), 0o400),
            };
            if i % 9 != 0 || i == 0 {
                std::fs::write(&path, &content).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            same.push(i % 3 != 0 || i == 0);
            expected.push(Expected {
                relative: name,
                ids: Some(me),
                mode: 0o400,
                len: value.len() as u64,
                digest: key.digest(value.as_bytes()),
            });
        }
        (mount, expected, same)
    }

    #[test]
    fn every_item_gets_the_verdict_of_its_live_copy_whoever_judges_it() {
        let key = DigestKey::fresh();
        let n = 7 * BATCH + 5;
        for readers in [0, 1, 2] {
            for round in 0..20 {
                let (mount, expected, same) = live_generation(n, &key);
                let mut verdicts = judge_live_copies(mount.path(), 1, expected, &key, readers);
                // Now and then the writer is slow, so that readers run ahead.
                let got: Vec<Option<bool>> = (0..n)
                    .map(|i| {
                        if round % 2 == 1 && i % 50 == 0 {
                            std::thread::sleep(std::time::Duration::from_micros(300));
                        }
                        verdicts.next()
                    })
                    .collect();
                assert_eq!(verdicts.next(), None, "no verdict past the items");
                for (b, batch) in got.chunks(BATCH).enumerate() {
                    let want = &same[b * BATCH..b * BATCH + batch.len()];
                    // A batch the writer reached first is its own to compare (all None).
                    if batch.iter().all(Option::is_none) {
                        continue;
                    }
                    let batch: Vec<bool> = batch
                        .iter()
                        .map(|v| v.expect("a whole batch is judged"))
                        .collect();
                    assert_eq!(batch, want, "batch {b} with {readers} readers, round {round}");
                }
                if readers == 0 {
                    assert!(
                        got.iter().all(Option::is_none),
                        "without readers the writer compares"
                    );
                }
            }
        }
    }

    #[test]
    fn readers_judge_ahead_and_the_writer_takes_their_verdicts() {
        let key = DigestKey::fresh();
        let n = 3 * BATCH;
        let (mount, expected, same) = live_generation(n, &key);
        let mut verdicts = judge_live_copies(mount.path(), 1, expected, &key, 1);
        // The reader judges all three batches while the writer waits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let judging = Arc::clone(verdicts.judging.as_ref().unwrap());
        while judging
            .claims
            .lock()
            .unwrap()
            .verdicts
            .iter()
            .any(Option::is_none)
        {
            assert!(std::time::Instant::now() < deadline, "the reader judged nothing");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let got: Vec<Option<bool>> = (0..n).map(|_| verdicts.next()).collect();
        assert_eq!(got, same.iter().map(|&s| Some(s)).collect::<Vec<_>>());
    }

    #[test]
    fn a_reader_that_ends_without_its_verdicts_leaves_its_batch_to_the_writer() {
        let key = DigestKey::fresh();
        let n = 2 * BATCH;
        let (mount, expected, same) = live_generation(n, &key);
        // No thread: batch 0 is claimed by a reader that then ends.
        let mut verdicts = judge_live_copies(mount.path(), 1, expected, &key, 0);
        let judging = Arc::clone(verdicts.judging.as_ref().unwrap());
        {
            let mut claims = judging.claims.lock().unwrap();
            claims.front = 1;
            claims.readers = 1;
        }
        drop(ReaderGone(&judging));
        let got: Vec<Option<bool>> = (0..n).map(|_| verdicts.next()).collect();
        // Batch 0: nobody's verdicts, the writer compares; batch 1: judged
        // ahead by the writer while batch 0 was still claimed.
        assert!(got[..BATCH].iter().all(Option::is_none), "{got:?}");
        assert_eq!(
            got[BATCH..],
            same[BATCH..].iter().map(|&s| Some(s)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_live_copy_is_judged_by_its_digest_length_mode_and_kind() {
        let key = DigestKey::fresh();
        let (mount, expected, _) = live_generation(1, &key);
        let mut copies = LiveCopies::open(mount.path(), 1).unwrap();
        let e = &expected[0];
        let judge = |copies: &mut LiveCopies, relative: &str, mode: u32, len: u64, digest: &str| {
            copies.has_digest(relative, e.ids, mode, len, &key, digest)
        };
        assert!(judge(&mut copies, &e.relative, e.mode, e.len, &e.digest));
        assert!(!judge(&mut copies, &e.relative, 0o440, e.len, &e.digest), "mode");
        assert!(
            !judge(&mut copies, &e.relative, e.mode, e.len - 1, &e.digest),
            "shorter"
        );
        assert!(
            !judge(&mut copies, &e.relative, e.mode, e.len + 1, &e.digest),
            "longer"
        );
        assert!(
            !judge(
                &mut copies,
                &e.relative,
                e.mode,
                e.len,
                &key.digest(b"value 000X")
            ),
            "content"
        );
        let other = DigestKey::fresh();
        assert!(
            !copies.has_digest(&e.relative, e.ids, e.mode, e.len, &other, &e.digest),
            "another key"
        );
        assert!(
            !judge(&mut copies, "missing", e.mode, e.len, &e.digest),
            "missing"
        );
        std::os::unix::fs::symlink("s0000", mount.path().join("1/link")).unwrap();
        assert!(
            !judge(&mut copies, "link", e.mode, e.len, &e.digest),
            "a symlink is not followed"
        );
    }
}
