//! Installing a manifest: the activation-time pipeline, as named stages.
//!
//! ```text
//! (ahead)        while the manifest is checked, a helper builds the keyring and decrypts
//!                the sops files its text names (sops_files::EarlyFiles; own keys only)
//! plan::gather   identities, owners, each sops file decrypted once (two threads; data
//!                keys that need a key service in the files' order), values, template texts
//!                (any problem: report all, touch nothing)
//! lock           one run per mount from here on (dry runs only read and take none)
//! Live::load     the live generation's digest key (its record parsed later, if at all)
//! plan::settle   failed items keep their live copy (keep-previous); templates rendered
//! (readers)      one reader per other CPU (at most two) starts judging the live copies
//!                by digest, for apply to link the same
//! Plan::record   this run's record, compared with the live one: the same bytes, nothing changed;
//!                else only the live entries whose text differs are parsed
//! diff           changes against the record (or the live files) → change lines, units
//!                (dry run: hand the units over as dry-activation lists and stop)
//! apply          mount, drop capabilities, write generation N+1 (an item whose live
//!                copy the readers found the same is linked), swap the link
//!                (a failure: partial generation removed, a fresh mount unmounted)
//! aftercare      restart requests, custom links, credentials, stale links, prune
//! ```
//! Every stage adds to one [`Report`]: its warnings and change lines reach the
//! journal whether the run succeeds or not. The build-time checks are
//! [`check::check`].

pub mod check;
pub(crate) mod generation;
pub(crate) mod links;
pub mod lock;
pub(crate) mod mount;
pub(crate) mod owners;
pub(crate) mod ramdisk;
pub mod report;
pub mod state;

mod aftercare;
mod apply;
mod diff;
mod identities;
mod item;
mod live;
mod plan;
mod sops_files;

use std::path::PathBuf;

pub use check::check;
pub use owners::KeysGroup;
pub use report::{Failed, LogLine, Outcome, Problem, Report};
pub use sops_files::EarlyFiles;

use live::Live;
use report::LogLine as Line;

/// The build-time checks (`-check-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckMode {
    /// Install for real.
    Off,
    /// Check the manifest alone.
    Manifest,
    /// Also parse every sops file (no key needed) and check key paths and formats.
    SopsFile,
}

/// How this run was asked to behave.
#[derive(Debug)]
pub struct Options {
    /// `-check-mode`.
    pub check_mode: CheckMode,
    /// `-ignore-passwd`: no NSS lookups, everything root-owned.
    pub ignore_passwd: bool,
    /// `NIXOS_ACTION=dry-activate`: report what would change, change nothing.
    pub dry_run: bool,
    /// `SOPS_RESTART_UNITS_VIA_SYSTEMCTL=1`.
    pub restart_via_systemctl: bool,
    /// Where switch-to-configuration reads restart lists (`/run/nixos`).
    pub nixos_run_dir: PathBuf,
    /// The age identities sops reads from its environment (`SOPS_AGE_KEY`,
    /// `SOPS_AGE_KEY_CMD`, `SOPS_AGE_SSH_PRIVATE_KEY_FILE`, and
    /// `SOPS_AGE_KEY_FILE`, which is used only when the manifest names no
    /// age identity).
    pub sops_env: crate::keys::sops_env::SopsAgeEnv,
    /// `SOPS_GPG_EXEC`: the gpg binary for `gnupgHome` (default `gpg` on `PATH`).
    pub gpg_exec: Option<std::ffi::OsString>,
    /// How long to wait for another run on the same mount ([`lock::WAIT_VARIABLE`]).
    pub lock_wait: std::time::Duration,
    /// The secrets directories' group, perhaps looked up ahead.
    pub keys_group: KeysGroup,
    /// Sops files perhaps decrypted ahead, while the manifest was checked.
    pub early_files: EarlyFiles,
}

/// Runs the installation. `earlier` are the manifest's own problems: the run
/// still looks for more (owners, sops files) so that all are reported at
/// once, and writes nothing if there are any.
pub fn install(manifest: &crate::manifest::Manifest, opts: &Options, earlier: Vec<String>) -> Outcome {
    let mut report = Report::default();
    let result = run(manifest, opts, earlier, &mut report);
    Outcome { report, result }
}

fn run(
    manifest: &crate::manifest::Manifest,
    opts: &Options,
    earlier: Vec<String>,
    report: &mut Report,
) -> Result<(), Failed> {
    let gathered = plan::gather(manifest, opts, earlier, report)?;
    let _lock = if opts.dry_run {
        None
    } else {
        let lock = lock::acquire(&manifest.secrets_mount_point, opts.lock_wait);
        Some(lock.map_err(|e| Failed::one(e.to_string()))?)
    };
    let mut live = Live::load(manifest);
    let plan = plan::settle(gathered, manifest, &live);
    // Under the lock the live copies are read while the record is made.
    let verdicts = if opts.dry_run {
        apply::Verdicts::none()
    } else {
        apply::read_live_copies(manifest, &plan.items, &live.digest_key)
    };
    let record = plan.record(&live.digest_key);
    live.compare_record(&record);
    let requests = diff::diff(
        &plan.items,
        &live,
        opts.dry_run,
        manifest.logging.secret_changes,
        report,
    );
    report.requests.add(&requests.restart, &requests.reload);
    if opts.dry_run {
        drop(verdicts);
        dry_run_lists(manifest, opts, &requests, report)?;
        live.leave();
        return Ok(());
    }
    let next = apply::apply(manifest, &plan.items, plan.keys_gid, &record, verdicts, report)?;
    let late = aftercare::aftercare(manifest, opts, &plan.items, &live, &requests, next, report);
    live.leave();
    plan.finish(late)
}

/// A dry run hands the units over as switch-to-configuration's dry-activation lists.
fn dry_run_lists(
    manifest: &crate::manifest::Manifest,
    opts: &Options,
    requests: &crate::units::Requests,
    report: &mut Report,
) -> Result<(), Failed> {
    if !manifest.user_mode {
        let log = crate::units::request(requests, true, opts.restart_via_systemctl, &opts.nixos_run_dir)
            .map_err(Failed::one)?;
        report
            .log
            .extend(log.into_iter().map(|l| Line::info(l, Vec::new())));
    }
    Ok(())
}
