//! Installing a manifest: the activation-time pipeline, top to bottom.
//!
//! ```text
//! identities → owners → decrypt each sops file once → pick values → render templates
//!   (any problem so far: report all, touch nothing)
//! → compare with the live generation → (dry run: report and stop)
//! → mount → write generation N+1 → swap the link → request restarts → custom links → prune
//! ```
//! Nothing on disk changes before every secret is decrypted and every owner
//! resolved; a failure while writing removes the partial generation, so the
//! live one is never touched.

pub mod generation;
pub mod links;
pub mod mount;
pub mod owners;
pub mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::keys::Keyring;
use crate::keys::pgp::GnupgHome;
use crate::manifest::{Manifest, Mode, Name, OnFailure, TemplateSource};
use crate::sops::tree::parse_slash_path;
use crate::sops::{EncryptedFile, Format};
use crate::{templates, units};
use generation::{Generation, Ids};

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
#[derive(Clone, Debug)]
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
    /// `SOPS_AGE_KEY_FILE`, used when the manifest names no age identity.
    pub age_key_file_env: Option<PathBuf>,
    /// `SOPS_GPG_EXEC`: the gpg binary for `gnupgHome` (default `gpg` on `PATH`).
    pub gpg_exec: Option<std::ffi::OsString>,
}

/// One thing that stopped the run, with journal fields naming what it is about.
#[derive(Debug)]
pub struct Problem {
    /// What is wrong and what to do (never a secret value).
    pub message: String,
    /// `("secret", name)`, `("file", path)`.
    pub fields: Vec<(&'static str, String)>,
}

impl From<String> for Problem {
    fn from(message: String) -> Problem {
        Problem {
            message,
            fields: Vec::new(),
        }
    }
}

impl Problem {
    fn about(message: String, fields: &[(&'static str, &str)]) -> Problem {
        Problem {
            message,
            fields: fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        }
    }
}

/// Problems collected along the way.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, p: impl Into<Problem>) {
        self.0.push(p.into());
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every problem that stopped the run.
#[derive(Debug)]
pub struct Failed(pub Vec<Problem>);

impl Failed {
    fn one(message: String) -> Failed {
        Failed(vec![message.into()])
    }
}

/// One message for the log, with fields for the journal.
#[derive(Debug)]
pub struct LogLine {
    /// How serious.
    pub priority: crate::log::Priority,
    /// The text (never a secret value).
    pub message: String,
    /// Journal fields: `("secret", name)`, `("file", path)`.
    pub fields: Vec<(&'static str, String)>,
}

impl LogLine {
    fn warning(message: String) -> LogLine {
        LogLine {
            priority: crate::log::Priority::Warning,
            message,
            fields: Vec::new(),
        }
    }

    fn info(message: String, fields: Vec<(&'static str, String)>) -> LogLine {
        LogLine {
            priority: crate::log::Priority::Info,
            message,
            fields,
        }
    }
}

/// What a successful run did, for the caller to print.
#[derive(Debug, Default)]
pub struct Report {
    /// Messages for the log (warnings, key imports).
    pub log: Vec<LogLine>,
    /// sops-nix's change lines, for stdout.
    pub changes: Vec<String>,
    /// The generation now live (none in dry runs and check modes).
    pub generation: Option<u64>,
    /// Units of new or changed secrets and templates.
    pub requests: units::Requests,
}

/// A file ready to be written: plaintext, owner, mode.
struct Prepared<'m> {
    name: &'m Name,
    value: Zeroizing<Vec<u8>>,
    ids: Option<Ids>,
    mode: Mode,
    path: &'m Path,
    restart: &'m [String],
    reload: &'m [String],
    credential: bool,
}

fn identities(manifest: &Manifest, opts: &Options, report: &mut Report, problems: &mut Problems) -> Keyring {
    let mut keyring = Keyring::new();
    if let Some(f) = &manifest.age_key_file
        && let Err(e) = keyring.add_age_key_file(f)
    {
        problems.push(format!("ageKeyFile: {e}"));
    }
    for p in &manifest.age_ssh_key_paths {
        match keyring.add_ssh_key(p) {
            Ok(Some(recipient)) if manifest.logging.key_import => report.log.push(LogLine::info(
                format!("Imported {} as age key with fingerprint {recipient}", p.display()),
                vec![("key_file", p.display().to_string()), ("recipient", recipient)],
            )),
            Ok(_) => {}
            // A host may lack one of the listed key types; sops-nix warns and goes on.
            Err(e) => report.log.push(LogLine::warning(format!("{e}"))),
        }
    }
    if manifest.age_key_file.is_none()
        && manifest.age_ssh_key_paths.is_empty()
        && let Some(f) = &opts.age_key_file_env
        && let Err(e) = keyring.add_age_key_file(f)
    {
        problems.push(format!("SOPS_AGE_KEY_FILE: {e}"));
    }
    for p in &manifest.ssh_key_paths {
        match keyring.add_ssh_key_as_pgp(p) {
            Ok(fingerprint) if manifest.logging.key_import => report.log.push(LogLine::info(
                format!(
                    "Imported {} as GPG key with fingerprint {fingerprint}",
                    p.display()
                ),
                vec![
                    ("key_file", p.display().to_string()),
                    ("fingerprint", fingerprint),
                ],
            )),
            Ok(_) => {}
            Err(e) => report.log.push(LogLine::warning(format!("{e}"))),
        }
    }
    if let Some(home) = &manifest.gnupg_home {
        keyring.set_gnupg_home(GnupgHome::new(home.clone(), opts.gpg_exec.clone()));
    }
    keyring
}

/// Groups secrets by sops file, checking that they agree on its format.
fn files_by_use(manifest: &Manifest, problems: &mut Problems) -> Vec<(PathBuf, Format, Vec<usize>)> {
    let mut files: Vec<(PathBuf, Format, Vec<usize>)> = Vec::new();
    let mut index: HashMap<&Path, usize> = HashMap::new();
    for (i, s) in manifest.secrets.iter().enumerate() {
        match index.get(s.sops_file.as_path()) {
            Some(&f) => {
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
                files.push((s.sops_file.clone(), s.format, vec![i]));
            }
        }
    }
    files
}

fn secret_names(manifest: &Manifest, users: &[usize]) -> String {
    users
        .iter()
        .map(|&i| format!("{:?}", manifest.secrets[i].name.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the host's public keys open enough key groups of a file; if not,
/// a message naming what is missing.
/// An RSA SSH key counts for `pgp` stanzas of its derived fingerprint only when
/// the host uses RSA SSH keys as GPG keys (`pgp_from_ssh`).
fn host_opens(
    metadata: &crate::sops::metadata::Metadata,
    host: &[crate::keys::ssh::HostKey],
    pgp_from_ssh: bool,
) -> Result<(), String> {
    use crate::sops::metadata::Stanza;
    let opens = |stanza: &Stanza| match stanza {
        Stanza::Age { recipient, .. } => {
            let r = recipient.trim();
            host.iter().any(|h| {
                h.age.as_deref() == Some(r)
                    || h.ssh
                        .as_deref()
                        .is_some_and(|ssh| r.split_whitespace().take(2).collect::<Vec<_>>().join(" ") == ssh)
            })
        }
        Stanza::Pgp { fingerprint, .. } if pgp_from_ssh => host.iter().any(|h| {
            h.pgp
                .as_deref()
                .is_some_and(|fp| crate::keys::pgp::fingerprint_names(fp, fingerprint))
        }),
        _ => false,
    };
    let groups = &metadata.key_groups;
    let needed = metadata.groups_needed();
    let opened = groups.iter().filter(|g| g.stanzas.iter().any(opens)).count();
    if opened >= needed {
        return Ok(());
    }
    let recipients: Vec<String> = metadata
        .stanzas()
        .map(|s| format!("{} {}", s.kind(), s.target()))
        .collect();
    let mut offered: Vec<String> = host
        .iter()
        .filter_map(|h| h.age.as_deref().or(h.ssh.as_deref()))
        .map(str::to_owned)
        .collect();
    if pgp_from_ssh {
        offered.extend(
            host.iter()
                .filter_map(|h| h.pgp.as_ref())
                .map(|fp| format!("pgp {fp}")),
        );
    }
    Err(format!(
        "the host's keys open {opened} of the {needed} key group(s) needed. The file lists: {}. The host has: {}. \
         Add the host's recipient (e.g. {}) to the file's creation rule in .sops.yaml and run `sops updatekeys` on it.",
        recipients.join(", "),
        offered.join(", "),
        offered.first().map_or("its age recipient", String::as_str)
    ))
}

/// The build-time checks: the manifest was already checked by parsing it;
/// `sopsfile` also reads every sops file (no decryption) and checks key paths,
/// and, given `hostPubKeys`, that the host will be able to open each file.
pub fn check(manifest: &Manifest, mode: CheckMode, earlier: Vec<String>) -> Result<(), Failed> {
    let mut problems = Problems(earlier.into_iter().map(Problem::from).collect());
    let files = files_by_use(manifest, &mut problems);
    let mut host = Vec::new();
    for k in &manifest.host_pub_keys {
        match crate::keys::ssh::parse_host_key(k) {
            Ok(h) => host.push(h),
            Err(e) => problems.push(format!("hostPubKeys: {e}")),
        }
    }
    if mode == CheckMode::SopsFile {
        for (path, format, users) in &files {
            let file = match std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| EncryptedFile::parse_owned(b, *format).map_err(|e| e.to_string()))
            {
                Ok(f) => f,
                Err(e) => {
                    problems.push(format!(
                        "{} (used by {}): {e}",
                        path.display(),
                        secret_names(manifest, users)
                    ));
                    continue;
                }
            };
            if !host.is_empty()
                && let Err(e) = host_opens(&file.metadata, &host, !manifest.ssh_key_paths.is_empty())
            {
                let shown = path.display().to_string();
                problems.push(Problem::about(
                    format!("{shown} (used by {}): {e}", secret_names(manifest, users)),
                    &[("file", &shown)],
                ));
            }
            if matches!(format, Format::Yaml | Format::Json) {
                for &i in users {
                    let s = &manifest.secrets[i];
                    if s.key.is_empty() {
                        continue;
                    }
                    // Keys are stored in the clear, so the path can be checked without a key.
                    if let Err(e) = file.branches[0].lookup(&parse_slash_path(&s.key)) {
                        problems.push(format!(
                            "secret {:?}: {} has no key path {:?} ({})",
                            s.name.as_str(),
                            path.display(),
                            s.key,
                            crate::sops::ExtractError::NotFound(e)
                        ));
                    }
                }
            }
        }
    }
    for t in &manifest.templates {
        if let TemplateSource::File(f) = &t.source
            && let Err(e) = std::fs::metadata(f)
        {
            problems.push(format!(
                "template {:?}: cannot read {}: {e}",
                t.name.as_str(),
                f.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failed(problems.0))
    }
}

fn resolve_ids(owner: &crate::manifest::Owner, group: &crate::manifest::Owner) -> Result<Ids, String> {
    let uid = owners::uid(owner);
    let gid = owners::gid(group);
    match (uid, gid) {
        (Ok(uid), Ok(gid)) => Ok(Ids { uid, gid }),
        (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Reads the live copy of a file for comparison; `None` if it did not exist.
fn read_live(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, std::io::Error> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(Zeroizing::new(b))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::IsADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Relative paths of the regular files under `dir` (not following links).
fn files_under(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ty) = e.file_type() else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if ty.is_dir() {
            files_under(&e.path(), &rel, out);
        } else {
            out.push(rel);
        }
    }
}

/// Compares what is about to be installed with the live generation.
/// A change of owner, group or mode counts like a change of content: a
/// service that could read its secret may no longer (or now another can).
fn compare(
    live_root: &Path,
    files: &[Prepared<'_>],
    subdir: &str,
    compare_owner: bool,
    report: &mut Report,
) -> units::Changes {
    let mut changes = units::Changes::default();
    let base = if subdir.is_empty() {
        live_root.to_path_buf()
    } else {
        live_root.join(subdir)
    };
    for f in files {
        match read_live(&base.join(f.name.as_str())) {
            Ok(None) => changes.added.push(f.name.to_string()),
            Ok(Some(old)) if old.as_slice() == f.value.as_slice() => {
                use std::os::unix::fs::MetadataExt;
                let same_meta = std::fs::metadata(base.join(f.name.as_str())).is_ok_and(|m| {
                    m.mode() & 0o7777 == f.mode.0
                        && (!compare_owner
                            || f.ids.is_none_or(|ids| m.uid() == ids.uid && m.gid() == ids.gid))
                });
                if !same_meta {
                    changes.modified.push(f.name.to_string());
                }
            }
            Ok(Some(_)) => changes.modified.push(f.name.to_string()),
            Err(e) => {
                report.log.push(LogLine::warning(format!(
                    "cannot read the live copy of {}: {e}; treating it as changed",
                    f.name
                )));
                changes.modified.push(f.name.to_string());
            }
        }
    }
    let mut live = Vec::new();
    files_under(&base, "", &mut live);
    let wanted: std::collections::HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    for name in live {
        if subdir.is_empty() && (name == "rendered" || name.starts_with("rendered/") || name == state::FILE) {
            continue;
        }
        if !wanted.contains(name.as_str()) {
            changes.removed.push(name);
        }
    }
    changes
}

/// Runs the installation. `earlier` are the manifest's own problems: the run
/// still looks for more (owners, sops files) so that all are reported at
/// once, and writes nothing if there are any.
pub fn install(manifest: &Manifest, opts: &Options, earlier: Vec<String>) -> Result<Report, Failed> {
    let mut report = Report::default();
    let mut problems = Problems(earlier.into_iter().map(Problem::from).collect());
    let root_owned = opts.ignore_passwd || opts.dry_run;

    let keyring = identities(manifest, opts, &mut report, &mut problems);

    // Problems of one secret or template (its file, its key, its owner), kept
    // apart from problems of the whole run: with `onFailure = "keep-previous"`
    // those items keep their live copy and the rest is installed.
    let mut item_problems = Problems::default();
    let mut secret_failed = vec![false; manifest.secrets.len()];
    let mut template_failed = vec![false; manifest.templates.len()];

    // Owners first: an unknown user is cheaper to report than a decryption.
    let ids_for = |owner, group| -> Result<Option<Ids>, String> {
        if manifest.user_mode {
            return Ok(None);
        }
        if root_owned {
            return Ok(Some(Ids { uid: 0, gid: 0 }));
        }
        resolve_ids(owner, group).map(Some)
    };
    let mut secret_ids = Vec::new();
    for (i, s) in manifest.secrets.iter().enumerate() {
        secret_ids.push(ids_for(&s.owner, &s.group).unwrap_or_else(|e| {
            item_problems.push(Problem::about(
                format!("secret {:?}: {e}", s.name.as_str()),
                &[("secret", s.name.as_str())],
            ));
            secret_failed[i] = true;
            None
        }));
    }
    let mut template_ids = Vec::new();
    for (i, t) in manifest.templates.iter().enumerate() {
        template_ids.push(ids_for(&t.owner, &t.group).unwrap_or_else(|e| {
            item_problems.push(Problem::about(
                format!("template {:?}: {e}", t.name.as_str()),
                &[("template", t.name.as_str())],
            ));
            template_failed[i] = true;
            None
        }));
    }
    let keys_gid = if manifest.user_mode || root_owned {
        0
    } else {
        owners::keys_gid().unwrap_or_else(|e| {
            problems.push(e);
            0
        })
    };

    // Each sops file is read and decrypted once, however many secrets use it.
    let mut values: Vec<Option<Zeroizing<Vec<u8>>>> = (0..manifest.secrets.len()).map(|_| None).collect();
    for (path, format, users) in files_by_use(manifest, &mut problems) {
        let file = path.display().to_string();
        let fail_all = |why: String, item_problems: &mut Problems, failed: &mut [bool]| {
            item_problems.push(Problem::about(why, &[("file", &file)]));
            for &i in &users {
                failed[i] = true;
            }
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                let why = format!(
                    "cannot read sops file {file} (used by {}): {e}",
                    secret_names(manifest, &users)
                );
                fail_all(why, &mut item_problems, &mut secret_failed);
                continue;
            }
        };
        let doc = match crate::sops::decrypt_owned(bytes, format, &keyring) {
            Ok(d) => d,
            Err(e) => {
                let why = format!(
                    "cannot decrypt {file} (used by {}): {e}",
                    secret_names(manifest, &users)
                );
                fail_all(why, &mut item_problems, &mut secret_failed);
                continue;
            }
        };
        for &i in &users {
            let s = &manifest.secrets[i];
            let whole = s.key.is_empty() || matches!(format, Format::Binary | Format::Dotenv | Format::Ini);
            let result = if whole {
                doc.to_plaintext(format)
            } else {
                doc.extract(&parse_slash_path(&s.key), format)
            };
            match result {
                Ok(v) => values[i] = Some(v),
                Err(e) => {
                    item_problems.push(Problem::about(
                        format!("secret {:?}: key {:?} in {file}: {e}", s.name.as_str(), s.key),
                        &[("secret", s.name.as_str()), ("file", &file)],
                    ));
                    secret_failed[i] = true;
                }
            }
        }
    }

    let mut template_texts = Vec::new();
    for (i, t) in manifest.templates.iter().enumerate() {
        match &t.source {
            TemplateSource::Content(c) => template_texts.push(Some(c.as_bytes().to_vec())),
            TemplateSource::File(f) => match std::fs::read(f) {
                Ok(b) => template_texts.push(Some(b)),
                Err(e) => {
                    let file = f.display().to_string();
                    item_problems.push(Problem::about(
                        format!("template {:?}: cannot read {file}: {e}", t.name.as_str()),
                        &[("template", t.name.as_str()), ("file", &file)],
                    ));
                    template_failed[i] = true;
                    template_texts.push(None);
                }
            },
        }
    }

    let keep_previous = manifest.on_failure == OnFailure::KeepPrevious;
    if !problems.is_empty() || (!item_problems.is_empty() && !keep_previous) {
        problems.0.extend(item_problems.0);
        problems.push("nothing was installed; the live secrets are unchanged".to_owned());
        return Err(Failed(problems.0));
    }

    // Keeping the previous copy of a failed item: its live bytes, owner and mode.
    let previous = |rel: &str| -> Option<(Zeroizing<Vec<u8>>, Option<Ids>, Mode)> {
        use std::os::unix::fs::MetadataExt;
        let path = manifest.symlink_path.join(rel);
        let meta = std::fs::metadata(&path).ok()?;
        let bytes = read_live(&path).ok()??;
        let ids = (!manifest.user_mode).then_some(Ids {
            uid: meta.uid(),
            gid: meta.gid(),
        });
        Some((bytes, ids, Mode(meta.mode() & 0o7777)))
    };
    let mut kept = Vec::new();
    let mut secrets: Vec<Prepared<'_>> = Vec::new();
    for (i, (s, v)) in manifest.secrets.iter().zip(values).enumerate() {
        let (value, ids, mode) = match (secret_failed[i], v) {
            (false, Some(v)) => (v, secret_ids[i], s.mode),
            _ => match previous(s.name.as_str()) {
                Some(p) => {
                    kept.push(format!("secret {:?} keeps its previous value", s.name.as_str()));
                    p
                }
                None => {
                    kept.push(format!(
                        "secret {:?} is not installed (it had no previous value)",
                        s.name.as_str()
                    ));
                    continue;
                }
            },
        };
        secrets.push(Prepared {
            name: &s.name,
            value,
            ids,
            mode,
            path: &s.path,
            restart: &s.restart_units,
            reload: &s.reload_units,
            credential: s.credential,
        });
    }
    let by_name: HashMap<&str, &[u8]> = secrets
        .iter()
        .map(|s| (s.name.as_str(), s.value.as_slice()))
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
    let mut rendered: Vec<Prepared<'_>> = Vec::new();
    for (i, (t, text)) in manifest.templates.iter().zip(template_texts).enumerate() {
        let usable = text.filter(|text| {
            !template_failed[i] && !missing.iter().any(|p| text.windows(p.len()).any(|w| w == *p))
        });
        let (value, ids, mode) = match usable {
            Some(text) => (templates::render(&text, &placeholders), template_ids[i], t.mode),
            None => match previous(&format!("rendered/{}", t.name)) {
                Some(p) => {
                    kept.push(format!(
                        "template {:?} keeps its previous rendering",
                        t.name.as_str()
                    ));
                    p
                }
                None => {
                    kept.push(format!(
                        "template {:?} is not installed (it had no previous rendering)",
                        t.name.as_str()
                    ));
                    continue;
                }
            },
        };
        rendered.push(Prepared {
            name: &t.name,
            value,
            ids,
            mode,
            path: &t.path,
            restart: &t.restart_units,
            reload: &t.reload_units,
            credential: false,
        });
    }

    // Changes against the live generation. At boot there is none: nothing to restart.
    let mut requests = units::Requests::default();
    let live_exists = manifest.symlink_path.exists();
    let old_state = state::State::load(&manifest.symlink_path);
    if live_exists {
        // A dry run does not look owners up, so it cannot compare them.
        let compare_owner = !opts.dry_run;
        let secret_changes = compare(&manifest.symlink_path, &secrets, "", compare_owner, &mut report);
        let template_changes = compare(
            &manifest.symlink_path,
            &rendered,
            "rendered",
            compare_owner,
            &mut report,
        );
        if manifest.logging.secret_changes {
            report
                .changes
                .extend(units::describe(&secret_changes, "secret", opts.dry_run));
            report.changes.extend(units::describe(
                &template_changes,
                "rendered secret",
                opts.dry_run,
            ));
        }
        for (files, changes) in [(&secrets, &secret_changes), (&rendered, &template_changes)] {
            let changed: std::collections::HashSet<&str> = changes
                .added
                .iter()
                .chain(&changes.modified)
                .map(String::as_str)
                .collect();
            for f in files.iter().filter(|f| changed.contains(f.name.as_str())) {
                requests.add(f.restart, f.reload);
            }
        }
        // A service whose secret disappeared must notice too.
        for (old, files) in [(&old_state.secrets, &secrets), (&old_state.templates, &rendered)] {
            let current: std::collections::HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
            for (name, entry) in old {
                if !current.contains(name.as_str()) {
                    requests.add(&entry.restart_units, &entry.reload_units);
                }
            }
        }
    }

    report.requests.add(&requests.restart, &requests.reload);
    if opts.dry_run {
        if !manifest.user_mode {
            let log = units::request(&requests, true, opts.restart_via_systemctl, &opts.nixos_run_dir)
                .map_err(Failed::one)?;
            report
                .log
                .extend(log.into_iter().map(|l| LogLine::info(l, Vec::new())));
        }
        return Ok(report);
    }

    // From here on the disk changes.
    let mount = &manifest.secrets_mount_point;
    if manifest.user_mode {
        std::fs::create_dir_all(mount)
            .map_err(|e| Failed::one(format!("cannot create {}: {e}", mount.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(mount, std::fs::Permissions::from_mode(0o751))
            .map_err(|e| Failed::one(format!("cannot chmod {}: {e}", mount.display())))?;
    } else {
        match mount::ensure(mount, keys_gid, manifest.use_tmpfs).map_err(Failed::one)? {
            mount::Mounted::TmpfsWithoutNoswap => report.log.push(LogLine::warning(
                "this kernel does not support tmpfs noswap; secrets may be swapped out".into(),
            )),
            mount::Mounted::Fresh | mount::Mounted::AlreadyThere => {}
        }
    }
    let live = links::live_generation(mount, &manifest.symlink_path).unwrap_or(0);
    links::remove_leftovers(mount, live).map_err(Failed::one)?;
    let next = live + 1;
    let dir_ids = (!manifest.user_mode).then_some(Ids {
        uid: 0,
        gid: keys_gid,
    });
    let mut generation = Generation::create(mount, next, dir_ids).map_err(Failed::one)?;
    let written = (|| {
        for f in &secrets {
            generation
                .write_file(f.name.as_str(), f.ids, f.mode.0, &f.value)
                .map_err(|e| format!("secret {:?}: {e}", f.name.as_str()))?;
        }
        for f in &rendered {
            generation
                .write_file(&format!("rendered/{}", f.name), f.ids, f.mode.0, &f.value)
                .map_err(|e| format!("template {:?}: {e}", f.name.as_str()))?;
        }
        let entry = |f: &Prepared<'_>| state::Entry {
            path: f.path.to_path_buf(),
            restart_units: f.restart.to_vec(),
            reload_units: f.reload.to_vec(),
            credential: f.credential,
        };
        let record = state::State {
            secrets: secrets.iter().map(|f| (f.name.to_string(), entry(f))).collect(),
            templates: rendered.iter().map(|f| (f.name.to_string(), entry(f))).collect(),
        };
        let root = (!manifest.user_mode).then_some(Ids { uid: 0, gid: 0 });
        generation.write_file(state::FILE, root, 0o400, &record.to_json())?;
        Ok::<(), String>(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(generation.path());
        return Err(Failed(vec![
            e.into(),
            format!("generation {next} was removed; the live secrets are unchanged").into(),
        ]));
    }
    links::swap(&manifest.symlink_path, generation.path()).map_err(|e| {
        let _ = std::fs::remove_dir_all(generation.path());
        Failed::one(e)
    })?;
    report.generation = Some(next);

    // The new generation is live; what follows cannot undo it, so collect problems and go on.
    let mut late = Vec::new();
    if live_exists && !manifest.user_mode {
        match units::request(&requests, false, opts.restart_via_systemctl, &opts.nixos_run_dir) {
            Ok(log) => report
                .log
                .extend(log.into_iter().map(|l| LogLine::info(l, Vec::new()))),
            Err(e) => late.push(e),
        }
    }
    let trusted_uid = nix::unistd::getuid().as_raw();
    for (f, subdir) in secrets
        .iter()
        .map(|f| (f, ""))
        .chain(rendered.iter().map(|f| (f, "rendered")))
    {
        let default = if subdir.is_empty() {
            manifest.symlink_path.join(f.name.as_str())
        } else {
            manifest.symlink_path.join(subdir).join(f.name.as_str())
        };
        if f.path != default
            && let Err(e) = links::link_at(f.path, &default, f.ids, trusted_uid)
        {
            late.push(format!("{:?}: {e}", f.name.as_str()));
        }
    }
    // systemd credentials: `LoadCredential=<name>` finds /run/credstore/<name>,
    // which systemd reads as root, so a root-owned link into /run/secrets serves
    // any service, DynamicUser= ones included, without widening the file's mode.
    if !manifest.user_mode {
        let wanted = secrets.iter().any(|f| f.credential);
        if wanted && !manifest.credstore_dir.exists() {
            // systemd's own credential directories are root-only.
            use std::os::unix::fs::DirBuilderExt;
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&manifest.credstore_dir)
            {
                late.push(format!("cannot create {}: {e}", manifest.credstore_dir.display()));
            }
        }
        for f in secrets.iter().filter(|f| f.credential) {
            let link = manifest.credstore_dir.join(f.name.as_str());
            let target = manifest.symlink_path.join(f.name.as_str());
            if let Err(e) = links::link_at(&link, &target, Some(Ids { uid: 0, gid: 0 }), 0) {
                late.push(format!("secret {:?}: credential: {e}", f.name.as_str()));
            }
        }
        let credentials: std::collections::HashSet<&str> = secrets
            .iter()
            .filter(|f| f.credential)
            .map(|f| f.name.as_str())
            .collect();
        for (name, entry) in &old_state.secrets {
            let still = credentials.contains(name.as_str());
            if entry.credential && !still {
                let target = manifest.symlink_path.join(name);
                if let Err(e) = links::remove_link_if(&manifest.credstore_dir.join(name), &target, 0) {
                    late.push(e);
                }
            }
        }
    }
    // Links left at the custom paths of secrets and templates that are gone.
    for (old, subdir, files) in [
        (&old_state.secrets, "", &secrets),
        (&old_state.templates, "rendered", &rendered),
    ] {
        let paths_in_use: std::collections::HashSet<&Path> = files.iter().map(|f| f.path).collect();
        for (name, entry) in old {
            let target = if subdir.is_empty() {
                manifest.symlink_path.join(name)
            } else {
                manifest.symlink_path.join(subdir).join(name)
            };
            let still_used = paths_in_use.contains(entry.path.as_path());
            if entry.path != target && !still_used {
                match links::remove_link_if(&entry.path, &target, trusted_uid) {
                    Ok(true) => report.log.push(LogLine::info(
                        format!("removed the stale link {}", entry.path.display()),
                        Vec::new(),
                    )),
                    Ok(false) => {}
                    Err(e) => late.push(e),
                }
            }
        }
    }
    if let Err(e) = links::prune(mount, next, manifest.keep_generations) {
        late.push(e);
    }
    report.log.push(LogLine::info(
        format!(
            "installed {} secrets and {} templates as generation {next} in {}",
            secrets.len(),
            rendered.len(),
            mount.display()
        ),
        vec![("generation", next.to_string())],
    ));
    if late.is_empty() && item_problems.is_empty() {
        return Ok(report);
    }
    // Installed, but not everything: the run still fails so that the unit is
    // marked failed and the operator sees which secrets are stale or missing.
    let mut all = item_problems.0;
    all.extend(kept.into_iter().map(Problem::from));
    all.extend(late.into_iter().map(Problem::from));
    Err(Failed(all))
}
