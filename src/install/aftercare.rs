//! Stage: after the swap. The new generation is live and nothing here can
//! undo it, so problems are collected and the run goes on: restart and
//! reload requests, links at custom paths, systemd credential links, links
//! left by items that are gone, pruning old generations, and the line that
//! says what was installed.

use std::collections::HashSet;
use std::path::Path;

use super::generation::Ids;
use super::item::{Item, Kind};
use super::live::Live;
use super::report::{LogLine, Report, count};
use super::{Options, links};
use crate::manifest::Manifest;
use crate::safe_path::{Missing, Trust};
use crate::units::{self, Requests};

/// Everything after the swap to generation `next`; returns what went wrong.
pub(super) fn aftercare(
    manifest: &Manifest,
    opts: &Options,
    items: &[Item<'_>],
    live: &Live,
    requests: &Requests,
    next: u64,
    report: &mut Report,
) -> Vec<String> {
    let mut late = Vec::new();
    if live.exists && !manifest.user_mode {
        match units::request(requests, false, opts.restart_via_systemctl, &opts.nixos_run_dir) {
            Ok(log) => report
                .log
                .extend(log.into_iter().map(|l| LogLine::info(l, Vec::new()))),
            Err(e) => late.push(e),
        }
    }
    let trusted_uid = nix::unistd::getuid().as_raw();
    for item in items {
        if item.at_default_path(&manifest.symlink_path) {
            continue;
        }
        let default = item.under_link(&manifest.symlink_path);
        if let Err(e) = links::link_at(item.path, &default, item.ids, trusted_uid).map_err(|e| e.to_string())
        {
            late.push(format!("{:?}: {e}", item.name.as_str()));
        }
    }
    if !manifest.user_mode {
        credentials(manifest, items, live, &mut late);
    }
    stale_links(manifest, items, live, trusted_uid, report, &mut late);
    // The generation before this one holds most of this run's secrets;
    // `prune` takes those at its top (a name without `/`).
    let known: Vec<&str> = items
        .iter()
        .filter(|i| i.kind == Kind::Secret)
        .map(|i| i.name.as_str())
        .collect();
    if let Err(e) = links::prune(
        &manifest.secrets_mount_point,
        next,
        manifest.keep_generations,
        &known,
    ) {
        late.push(e.to_string());
    }
    let of = |kind| items.iter().filter(|i| i.kind == kind).count();
    report.log.push(LogLine::info(
        format!(
            "installed {} and {} as generation {next} in {}",
            count(of(Kind::Secret), "secret"),
            count(of(Kind::Template), "template"),
            manifest.secrets_mount_point.display()
        ),
        vec![("generation", next.to_string())],
    ));
    late
}

/// systemd credentials: `LoadCredential=<name>` finds /run/credstore/<name>,
/// which systemd reads as root, so a root-owned link into /run/secrets serves
/// any service, DynamicUser= ones included, without widening the file's mode.
fn credentials(manifest: &Manifest, items: &[Item<'_>], live: &Live, late: &mut Vec<String>) {
    let credential: Vec<&Item<'_>> = items.iter().filter(|i| i.credential).collect();
    // systemd's own credential directories are root-only.
    if !credential.is_empty()
        && let Err(e) =
            crate::safe_path::open_dir(&manifest.credstore_dir, Trust::root(), Missing::Create(0o700))
    {
        late.push(format!("credstoreDir {}: {e}", manifest.credstore_dir.display()));
    }
    for item in &credential {
        let link = manifest.credstore_dir.join(item.name.as_str());
        let target = manifest.symlink_path.join(item.name.as_str());
        if let Err(e) = links::link_at(&link, &target, Some(Ids { uid: 0, gid: 0 }), 0) {
            late.push(format!("secret {:?}: credential: {e}", item.name.as_str()));
        }
    }
    let still: HashSet<&str> = credential.iter().map(|i| i.name.as_str()).collect();
    for (name, entry) in &live.record().secrets {
        if entry.credential && !still.contains(name.as_str()) {
            let target = manifest.symlink_path.join(name);
            if let Err(e) = links::remove_link_if(&manifest.credstore_dir.join(name), &target, 0) {
                late.push(e.to_string());
            }
        }
    }
}

/// Links left at the custom paths of secrets and templates that are gone.
fn stale_links(
    manifest: &Manifest,
    items: &[Item<'_>],
    live: &Live,
    trusted_uid: u32,
    report: &mut Report,
    late: &mut Vec<String>,
) {
    for kind in Kind::ALL {
        let record = kind.record(live.record());
        if record.is_empty() {
            continue;
        }
        // Built only if some entry had a custom path: hashing a path walks its components.
        let mut paths_in_use: Option<HashSet<&Path>> = None;
        for (name, entry) in record {
            if kind.is_default_path(&manifest.symlink_path, name, &entry.path) {
                continue;
            }
            let target = kind.under_link(&manifest.symlink_path, name);
            let in_use = paths_in_use
                .get_or_insert_with(|| items.iter().filter(|i| i.kind == kind).map(|i| i.path).collect());
            if entry.path != target && !in_use.contains(entry.path.as_path()) {
                match links::remove_link_if(&entry.path, &target, trusted_uid) {
                    Ok(true) => report.log.push(LogLine::info(
                        format!("removed the stale link {}", entry.path.display()),
                        Vec::new(),
                    )),
                    Ok(false) => {}
                    Err(e) => late.push(e.to_string()),
                }
            }
        }
    }
}
