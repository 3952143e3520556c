//! Stage: the plan. From the manifest, the host's identities and the sops
//! files to the items to install, in two steps:
//!
//! - [`gather`] (before the lock): identities, owners, each sops file read
//!   and decrypted once (on two threads, see [`sops_files`]; most files
//!   already were, while the manifest was checked), each value picked by its
//!   key path, template texts.
//!   A problem of the whole run, or of any item unless
//!   `onFailure = "keep-previous"`, stops the run here, before anything on
//!   disk is touched.
//! - [`settle`] (under the lock, with the live generation at hand): failed
//!   items keep their live copy, templates are rendered with the values that
//!   will be installed, and every item gets its digest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::generation::Ids;
use super::identities::identities;
use super::item::{Item, Kind, Origin};
use super::live::Live;
use super::report::{Problem, Problems, Report};
use super::sops_files::{self, Opened};
use super::state::{self, DigestKey};
use super::{Failed, Options, owners};
use crate::manifest::{Manifest, Mode, Name, OnFailure, TemplateSource};
use crate::plaintext::Plaintext;
use crate::safe_path::Trust;
use crate::sops::Format;
use crate::templates;

/// An item as the manifest describes it, with what this run made of it so far.
struct Draft<'m> {
    name: &'m Name,
    kind: Kind,
    /// `None` where the owner could not be resolved.
    ids: Option<Ids>,
    mode: Mode,
    path: &'m Path,
    restart: &'m [String],
    reload: &'m [String],
    credential: bool,
    /// A secret's value or a template's text; `None` where something failed.
    content: Option<Plaintext>,
}

/// What [`gather`] found, for [`settle`].
pub(super) struct Gathered<'m> {
    drafts: Vec<Draft<'m>>,
    /// Problems of single items (kept apart: `keep-previous` installs the rest).
    item_problems: Problems,
    keys_gid: u32,
}

/// The items to install and what became of the others.
pub(super) struct Plan<'m> {
    /// Secrets, then templates, in the manifest's order.
    pub(super) items: Vec<Item<'m>>,
    /// The group of the secrets directories.
    pub(super) keys_gid: u32,
    item_problems: Problems,
    /// "secret \"a\" keeps its previous value" and the like.
    kept: Vec<String>,
}

impl Plan<'_> {
    /// The record of the generation these items make (see [`state`]).
    pub(super) fn record(&self, key: &DigestKey) -> state::Record {
        let of = |kind| {
            self.items
                .iter()
                .filter(move |i| i.kind == kind)
                .map(|i| (i.name.as_str(), i.entry()))
        };
        state::record_json(key, of(Kind::Secret), of(Kind::Template))
    }

    /// How the run ends once installed: failed if any item failed (it kept its
    /// previous copy or is missing) or a step after the swap went wrong, so
    /// that the unit is marked failed and the operator sees what is stale.
    pub(super) fn finish(self, late: Vec<String>) -> Result<(), Failed> {
        if late.is_empty() && self.item_problems.is_empty() {
            return Ok(());
        }
        let mut all = self.item_problems.0;
        all.extend(self.kept.into_iter().map(Problem::from));
        all.extend(late.into_iter().map(Problem::from));
        Err(Failed(all))
    }
}

/// Identities, owners, decryption and template texts: everything that needs
/// no live generation. `earlier` are the manifest's own problems: the run
/// still looks for more so that all are reported at once.
pub(super) fn gather<'m>(
    manifest: &'m Manifest,
    opts: &Options,
    earlier: Vec<String>,
    report: &mut Report,
) -> Result<Gathered<'m>, Failed> {
    let mut problems = Problems(earlier.into_iter().map(Problem::from).collect());
    let root_owned = opts.ignore_passwd || opts.dry_run;

    // Owners are resolved while files are decrypted: before joining the
    // helper that decrypts ahead, else while the batch below decrypts.
    let ahead_running = opts.early_files.is_running();
    let mut resolved = ahead_running.then(|| drafts(manifest, root_owned));
    // The keyring and the files decrypted ahead, if their helper had the
    // identity sources this manifest names (and the environment named none,
    // as its keyring has none); else the keyring is built now.
    let sources = manifest.identity_sources();
    let mut ahead = opts
        .early_files
        .finish(&sources)
        .filter(|_| opts.sops_env.is_empty());
    let keyring = match &mut ahead {
        Some(a) => {
            report.log.append(&mut a.log);
            problems.0.append(&mut a.problems.0);
            std::mem::take(&mut a.keyring)
        }
        None => identities(
            &sources,
            &opts.sops_env,
            opts.gpg_exec.as_ref(),
            &mut report.log,
            &mut problems,
        ),
    };
    // Each sops file is read and decrypted once, however many secrets use it,
    // on this thread and a helper (each value is picked out on them too).
    let mut file_problems = Problems::default();
    let files = files_by_use(manifest, &mut file_problems)
        .into_iter()
        .map(|(path, format, users)| {
            let early = ahead.as_mut().and_then(|a| a.take(&path, format));
            sops_files::File::new(path, format, users, |i| manifest.secrets[i].key.as_str())
                .opened_ahead(early)
        })
        .collect();
    // Files decrypted ahead that this manifest does not read are wiped now.
    drop(ahead);
    let batch = sops_files::start(files, keyring);
    // Their problems are told first.
    let (mut drafts, mut item_problems, owner_failed) =
        resolved.take().unwrap_or_else(|| drafts(manifest, root_owned));
    let opened = batch.finish();
    let keys_gid = if manifest.user_mode || root_owned {
        opts.keys_group.join();
        0
    } else {
        opts.keys_group.get().unwrap_or_else(|e| {
            problems.push(e.to_string());
            0
        })
    };
    problems.0.extend(file_problems.0);

    // The secrets' drafts come first, in the manifest's order, so `users`
    // (indices of manifest.secrets) index the drafts too.
    for (f, opened) in opened {
        let file = f.path.display().to_string();
        let values = match opened {
            Opened::Values(values) => values,
            Opened::Unreadable(e) => {
                let why = format!(
                    "cannot read sopsFile {file} (used by {}): {e}",
                    secret_names(manifest, &f.users)
                );
                item_problems.push(Problem::about(why, &[("file", &file)]));
                continue;
            }
            Opened::Undecryptable(e) => {
                let why = format!(
                    "cannot decrypt {file} (used by {}): {e}",
                    secret_names(manifest, &f.users)
                );
                item_problems.push(Problem::about(why, &[("file", &file)]));
                continue;
            }
        };
        for (&i, result) in f.users.iter().zip(values) {
            let s = &manifest.secrets[i];
            match result {
                Ok(v) => drafts[i].content = Some(Plaintext::from(v)),
                Err(e) => {
                    item_problems.push(Problem::about(
                        format!("secret {:?}: key {:?} in {file}: {e}", s.name.as_str(), s.key),
                        &[("secret", s.name.as_str()), ("file", &file)],
                    ));
                }
            }
        }
    }

    let first_template = manifest.secrets.len();
    for (i, t) in manifest.templates.iter().enumerate() {
        let text = match &t.source {
            TemplateSource::Content(c) => Some(c.as_bytes().to_vec()),
            TemplateSource::File(f) => match crate::safe_path::read(f, Trust::invoker()) {
                Ok(b) => Some(b),
                Err(e) => {
                    let file = f.display().to_string();
                    item_problems.push(Problem::about(
                        format!("template {:?}: cannot read its file {file}: {e}", t.name.as_str()),
                        &[("template", t.name.as_str()), ("file", &file)],
                    ));
                    None
                }
            },
        };
        drafts[first_template + i].content = text.map(|t| Plaintext::from(zeroize::Zeroizing::new(t)));
    }
    // An item whose owner is unknown is not installed as this run made it.
    for i in owner_failed {
        drafts[i].content = None;
    }

    let keep_previous = manifest.on_failure == OnFailure::KeepPrevious;
    if !problems.is_empty() || (!item_problems.is_empty() && !keep_previous) {
        problems.0.extend(item_problems.0);
        problems.push("nothing was installed; the live secrets are unchanged".to_owned());
        return Err(Failed(problems.0));
    }
    Ok(Gathered {
        drafts,
        item_problems,
        keys_gid,
    })
}

/// Turns the drafts into items: a failed item keeps its live copy (or is left
/// out), templates are rendered with the secrets' values as they will be
/// installed, and each item's digest is taken with the live record's key.
pub(super) fn settle<'m>(gathered: Gathered<'m>, manifest: &'m Manifest, live: &Live) -> Plan<'m> {
    let Gathered {
        drafts,
        item_problems,
        keys_gid,
    } = gathered;
    let mut kept = Vec::new();
    let make = |d: &Draft<'m>, bytes: Plaintext, ids, mode, origin| Item {
        name: d.name,
        kind: d.kind,
        digest: live.digest_key.digest(bytes.as_bytes()),
        bytes,
        ids,
        mode,
        path: d.path,
        restart: d.restart,
        reload: d.reload,
        credential: d.credential,
        origin,
    };
    let keep = |d: &Draft<'m>, kept: &mut Vec<String>| -> Option<Item<'m>> {
        let (what, had) = match d.kind {
            Kind::Secret => ("value", "it had no previous value"),
            Kind::Template => ("rendering", "it had no previous rendering"),
        };
        match live.previous(d.kind, d.name.as_str()) {
            Some((bytes, ids, mode)) => {
                kept.push(format!(
                    "{} {:?} keeps its previous {what}",
                    d.kind.noun(),
                    d.name.as_str()
                ));
                Some(make(d, bytes, ids, mode, Origin::Kept))
            }
            None => {
                kept.push(format!(
                    "{} {:?} is not installed ({had})",
                    d.kind.noun(),
                    d.name.as_str()
                ));
                None
            }
        }
    };
    let mut items: Vec<Item<'m>> = Vec::with_capacity(drafts.len());
    // Secrets first; templates are rendered once every secret is settled.
    let mut template_drafts = Vec::new();
    for mut d in drafts {
        if d.kind == Kind::Template {
            template_drafts.push(d);
            continue;
        }
        let item = match d.content.take() {
            Some(v) => Some(make(&d, v, d.ids, d.mode, Origin::Fresh)),
            None => keep(&d, &mut kept),
        };
        items.extend(item);
    }
    // Nothing to render: no map of the secrets' values is built.
    if !template_drafts.is_empty() {
        let rendered = {
            let by_name: HashMap<&str, &[u8]> = items
                .iter()
                .map(|s| (s.name.as_str(), s.bytes.as_bytes()))
                .collect();
            let placeholders: Vec<(&[u8], &[u8])> = manifest
                .placeholders
                .iter()
                .filter_map(|(p, name)| by_name.get(name.as_str()).map(|v| (p.as_bytes(), *v)))
                .collect();
            // A template that needs a secret which is not installed cannot be rendered either.
            let missing: Vec<&[u8]> = manifest
                .placeholders
                .iter()
                .filter(|(_, name)| !by_name.contains_key(name.as_str()))
                .map(|(p, _)| p.as_bytes())
                .collect();
            let mut rendered = Vec::with_capacity(template_drafts.len());
            for mut d in template_drafts {
                let usable = d.content.take().filter(|text| {
                    !missing
                        .iter()
                        .any(|p| text.as_bytes().windows(p.len()).any(|w| w == *p))
                });
                let item = match usable {
                    Some(text) => {
                        let bytes = Plaintext::from(templates::render(text.as_bytes(), &placeholders));
                        Some(make(&d, bytes, d.ids, d.mode, Origin::Fresh))
                    }
                    None => keep(&d, &mut kept),
                };
                rendered.extend(item);
            }
            rendered
        };
        items.extend(rendered);
    }
    Plan {
        items,
        keys_gid,
        item_problems,
        kept,
    }
}

/// A draft of each item with its owner resolved, the problems of those whose
/// owner could not be, and their places.
fn drafts(manifest: &Manifest, root_owned: bool) -> (Vec<Draft<'_>>, Problems, Vec<usize>) {
    let mut item_problems = Problems::default();
    let ids_for = |owner, group| -> Result<Option<Ids>, IdsError> {
        if manifest.user_mode {
            return Ok(None);
        }
        if root_owned {
            return Ok(Some(Ids { uid: 0, gid: 0 }));
        }
        resolve_ids(owner, group).map(Some)
    };
    let mut owner_failed = Vec::new();
    let mut drafts = Vec::with_capacity(manifest.secrets.len() + manifest.templates.len());
    for s in &manifest.secrets {
        let ids = ids_for(&s.owner, &s.group).unwrap_or_else(|e| {
            item_problems.push(Problem::about(
                format!("secret {:?}: {e}", s.name.as_str()),
                &[("secret", s.name.as_str())],
            ));
            owner_failed.push(drafts.len());
            None
        });
        drafts.push(Draft {
            name: &s.name,
            kind: Kind::Secret,
            ids,
            mode: s.mode,
            path: &s.path,
            restart: &s.restart_units,
            reload: &s.reload_units,
            credential: s.credential,
            content: None,
        });
    }
    for t in &manifest.templates {
        let ids = ids_for(&t.owner, &t.group).unwrap_or_else(|e| {
            item_problems.push(Problem::about(
                format!("template {:?}: {e}", t.name.as_str()),
                &[("template", t.name.as_str())],
            ));
            owner_failed.push(drafts.len());
            None
        });
        drafts.push(Draft {
            name: &t.name,
            kind: Kind::Template,
            ids,
            mode: t.mode,
            path: &t.path,
            restart: &t.restart_units,
            reload: &t.reload_units,
            credential: false,
            content: None,
        });
    }
    (drafts, item_problems, owner_failed)
}

/// Groups secrets by sops file, checking that they agree on its format.
pub(super) fn files_by_use(
    manifest: &Manifest,
    problems: &mut Problems,
) -> Vec<(PathBuf, Format, Vec<usize>)> {
    let mut files: Vec<(PathBuf, Format, Vec<usize>)> = Vec::new();
    let mut index: HashMap<&Path, usize> = HashMap::new();
    // Secrets of one file mostly come one after another: most lookups are the last file again.
    let mut last: Option<(&Path, usize)> = None;
    for (i, s) in manifest.secrets.iter().enumerate() {
        let found = match last {
            Some((path, f)) if path.as_os_str() == s.sops_file.as_os_str() => Some(f),
            _ => index.get(s.sops_file.as_path()).copied(),
        };
        if let Some(f) = found {
            last = Some((&s.sops_file, f));
        }
        match found {
            Some(f) => {
                let (_, format, users) = &mut files[f];
                if *format != s.format {
                    let first = &manifest.secrets[users[0]];
                    problems.push(format!(
                        "secret {:?} reads {} as {}, but secret {:?} reads it as {}; one file has one format",
                        s.name.as_str(),
                        s.sops_file.display(),
                        s.format,
                        first.name.as_str(),
                        format
                    ));
                }
                users.push(i);
            }
            None => {
                index.insert(&s.sops_file, files.len());
                last = Some((&s.sops_file, files.len()));
                files.push((s.sops_file.clone(), s.format, vec![i]));
            }
        }
    }
    files
}

pub(super) fn secret_names(manifest: &Manifest, users: &[usize]) -> String {
    users
        .iter()
        .map(|&i| format!("{:?}", manifest.secrets[i].name.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why an item's owner could not be resolved: its user, its group, or both.
#[derive(Debug, thiserror::Error)]
enum IdsError {
    /// One of the two.
    #[error(transparent)]
    One(owners::OwnerError),
    /// Both.
    #[error("{0}; {1}")]
    Both(owners::OwnerError, owners::OwnerError),
}

fn resolve_ids(owner: &crate::manifest::Owner, group: &crate::manifest::Owner) -> Result<Ids, IdsError> {
    let uid = owners::uid(owner);
    let gid = owners::gid(group);
    match (uid, gid) {
        (Ok(uid), Ok(gid)) => Ok(Ids { uid, gid }),
        (Err(a), Err(b)) => Err(IdsError::Both(a, b)),
        (Err(e), _) | (_, Err(e)) => Err(IdsError::One(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Owner;

    #[test]
    fn an_unknown_user_and_group_are_both_told() {
        let user = Owner::Name("no-such-user-sis-test".into());
        let group = Owner::Name("no-such-group-sis-test".into());
        let err = resolve_ids(&user, &group).unwrap_err();
        assert!(matches!(err, IdsError::Both(..)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "user \"no-such-user-sis-test\" does not exist on this host (create it, or set owner to an \
             existing user); group \"no-such-group-sis-test\" does not exist on this host (create it, or \
             set group to an existing group)"
        );
        let err = resolve_ids(&Owner::Id(0), &group).unwrap_err();
        assert!(
            matches!(err, IdsError::One(owners::OwnerError::NoGroup(_))),
            "{err:?}"
        );
        assert!(resolve_ids(&Owner::Id(0), &Owner::Id(0)).is_ok());
    }
}
