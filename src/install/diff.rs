//! Stage: what changes against the live generation, and which units must
//! restart or reload. A change of owner, group or mode counts like a change
//! of content: a service that could read its secret may no longer (or now
//! another can). A secret or template that disappears restarts its units too.
//!
//! With a record written by this version (digests, modes, owners) nothing
//! live is read; otherwise each live copy is read and its metadata compared.
//! A record that comes out byte for byte as the live one means no change at
//! all, and the live one is not even parsed; otherwise only its entries that
//! are not byte for byte this run's are.

use std::collections::HashSet;

use super::item::{Item, Kind, Origin};
use super::live::{self, Live};
use super::report::{LogLine, Report};
use super::state;
use crate::units::{self, Changes, Requests};

/// Compares `items` with the live generation; adds sops-nix's change lines to
/// the report (when `log_changes`) and returns the units to act on. At boot
/// there is no live generation: nothing to restart.
pub(super) fn diff(
    items: &[Item<'_>],
    live: &Live,
    dry_run: bool,
    log_changes: bool,
    report: &mut Report,
) -> Requests {
    let mut requests = Requests::default();
    if !live.exists {
        return requests;
    }
    // A dry run does not look owners up, so it cannot compare them.
    let compare_owner = !dry_run;
    let mut by_kind = Vec::new();
    for kind in Kind::ALL {
        let of_kind: Vec<&Item<'_>> = items.iter().filter(|i| i.kind == kind).collect();
        let changes = compare(kind, &of_kind, live, compare_owner, report);
        if log_changes {
            report
                .changes
                .extend(units::describe(&changes, kind.change_noun(), dry_run));
        }
        by_kind.push((kind, of_kind, changes));
    }
    let any_changed = |c: &Changes| !c.added.is_empty() || !c.modified.is_empty();
    for (_, of_kind, changes) in by_kind.iter().filter(|(_, _, c)| any_changed(c)) {
        let changed: HashSet<&str> = changes
            .added
            .iter()
            .chain(&changes.modified)
            .map(String::as_str)
            .collect();
        for item in of_kind.iter().filter(|i| changed.contains(i.name.as_str())) {
            requests.add(item.restart, item.reload);
        }
    }
    // A service whose secret disappeared must notice too.
    for (kind, of_kind, changes) in &by_kind {
        let record = kind.record(live.record());
        if record.is_empty() {
            continue;
        }
        if live.recorded {
            // The comparison with the record has already found them, in its order.
            for entry in changes.removed.iter().filter_map(|name| record.get(name)) {
                requests.add(&entry.restart_units, &entry.reload_units);
            }
            continue;
        }
        let current: HashSet<&str> = of_kind.iter().map(|i| i.name.as_str()).collect();
        for (name, entry) in record {
            if !current.contains(name.as_str()) {
                requests.add(&entry.restart_units, &entry.reload_units);
            }
        }
    }
    requests
}

/// The changes of one kind of item.
fn compare(
    kind: Kind,
    items: &[&Item<'_>],
    live: &Live,
    compare_owner: bool,
    report: &mut Report,
) -> Changes {
    if live.same_record {
        return Changes::default();
    }
    if live.recorded {
        return compare_with_record(kind, items, live, compare_owner);
    }
    let mut changes = Changes::default();
    let base = match kind.subdir() {
        Some(dir) => live.root.join(dir),
        None => live.root.clone(),
    };
    // A kept item is the live copy itself: unchanged by definition.
    for item in items.iter().filter(|i| i.origin == Origin::Fresh) {
        match live::read(&base.join(item.name.as_str())) {
            Ok(None) => changes.added.push(item.name.to_string()),
            Ok(Some((old, m))) if old.as_slice() == item.bytes.as_bytes() => {
                use std::os::unix::fs::MetadataExt;
                let same_meta = m.mode() & 0o7777 == item.mode.0
                    && (!compare_owner
                        || item
                            .ids
                            .is_none_or(|ids| m.uid() == ids.uid && m.gid() == ids.gid));
                if !same_meta {
                    changes.modified.push(item.name.to_string());
                }
            }
            Ok(Some(_)) => changes.modified.push(item.name.to_string()),
            Err(e) => {
                report.log.push(LogLine::warning(format!(
                    "cannot read the live copy of {}: {e}; treating it as changed",
                    item.name
                )));
                changes.modified.push(item.name.to_string());
            }
        }
    }
    let mut found = Vec::new();
    live::files_under(&base, "", &mut found);
    let wanted: HashSet<&str> = items.iter().map(|i| i.name.as_str()).collect();
    let templates_dir = super::item::TEMPLATES_DIR;
    for name in found {
        let elsewhere = kind == Kind::Secret
            && (name == templates_dir
                || name.starts_with(&format!("{templates_dir}/"))
                || name == state::FILE);
        if !elsewhere && !wanted.contains(name.as_str()) {
            changes.removed.push(name);
        }
    }
    changes
}

/// [`compare`] against the live generation's record. An item the record
/// has no entry for is new if the live record lacks it, and otherwise the
/// same as its live entry (which was then not parsed: see [`Live::lacks`]).
fn compare_with_record(kind: Kind, items: &[&Item<'_>], live: &Live, compare_owner: bool) -> Changes {
    let record = kind.record(live.record());
    let mut changes = Changes::default();
    for item in items.iter().filter(|i| i.origin == Origin::Fresh) {
        let name = item.name.as_str();
        let Some(old) = record.get(name) else {
            if live.lacks(kind, name) {
                changes.added.push(name.to_owned());
            }
            continue;
        };
        let same_owner = !compare_owner
            || item
                .ids
                .is_none_or(|ids| old.uid == Some(ids.uid) && old.gid == Some(ids.gid));
        if old.digest.as_deref() != Some(item.digest.as_str()) || old.mode != Some(item.mode.0) || !same_owner
        {
            changes.modified.push(name.to_owned());
        }
    }
    let wanted: HashSet<&str> = items.iter().map(|i| i.name.as_str()).collect();
    changes.removed = record
        .keys()
        .filter(|name| !wanted.contains(name.as_str()))
        .cloned()
        .collect();
    changes
}
