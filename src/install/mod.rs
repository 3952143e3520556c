//! Installing a manifest: the activation-time pipeline, top to bottom.
//!
//! ```text
//! identities → owners → decrypt each sops file once → pick values → render templates
//!   (any problem so far: report all, touch nothing)
//! → lock the mount (not in dry runs) → compare with the live generation's record
//! → (dry run: report and stop)
//! → mount, drop capabilities → write generation N+1 → swap the link
//!   (a failure before the swap unmounts what this run mounted)
//! → request restarts → custom links → prune → unlock
//! ```
//! Nothing on disk changes before every secret is decrypted and every owner
//! resolved; a failure while writing removes the partial generation, so the
//! live one is never touched.

pub mod generation;
pub mod links;
pub mod lock;
pub mod mount;
pub mod owners;
pub mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::keys::Keyring;
use crate::keys::pgp::GnupgHome;
use crate::manifest::{Manifest, Mode, Name, OnFailure, TemplateSource};
use crate::safe_path::{Missing, Trust};
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
    /// The age identities sops reads from its environment (`SOPS_AGE_KEY`,
    /// `SOPS_AGE_KEY_CMD`, `SOPS_AGE_SSH_PRIVATE_KEY_FILE`, and
    /// `SOPS_AGE_KEY_FILE`, which is used only when the manifest names no
    /// age identity).
    pub sops_env: crate::keys::sops_env::SopsAgeEnv,
    /// `SOPS_GPG_EXEC`: the gpg binary for `gnupgHome` (default `gpg` on `PATH`).
    pub gpg_exec: Option<std::ffi::OsString>,
    /// How long to wait for another run on the same mount ([`lock::WAIT_VARIABLE`]).
    pub lock_wait: std::time::Duration,
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

/// What a run did and saw, for the caller to print, whether it succeeded or not.
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
    /// Keyed digest of `value`, for the generation's record.
    digest: String,
}

fn identities(manifest: &Manifest, opts: &Options, report: &mut Report, problems: &mut Problems) -> Keyring {
    let mut keyring = Keyring::new();
    if let Some(f) = &manifest.age_key_file
        && let Err(e) = keyring.add_age_key_file(f)
    {
        problems.push(format!("ageKeyFile: {e}"));
    }
    // A missing key is a warning (a host may lack one of the listed key
    // types); a key reached through another user's link is an attack.
    let unsafe_key = |e: &crate::keys::KeyError| {
        matches!(
            e,
            crate::keys::KeyError::Ssh(crate::keys::ssh::SshKeyError::Unsafe { .. })
        )
    };
    for p in &manifest.age_ssh_key_paths {
        match keyring.add_ssh_key(p) {
            Ok(Some(recipient)) if manifest.logging.key_import => report.log.push(LogLine::info(
                format!("Imported {} as age key with fingerprint {recipient}", p.display()),
                vec![("key_file", p.display().to_string()), ("recipient", recipient)],
            )),
            Ok(_) => {}
            Err(e) if unsafe_key(&e) => problems.push(format!("ageSshKeyPaths: {e}")),
            // A host may lack one of the listed key types; sops-nix warns and goes on.
            Err(e) => report.log.push(LogLine::warning(format!("{e}"))),
        }
    }
    let manifest_names_age = manifest.age_key_file.is_some() || !manifest.age_ssh_key_paths.is_empty();
    for e in opts.sops_env.add_to(&mut keyring, !manifest_names_age) {
        problems.push(e.to_string());
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
            Err(e) if unsafe_key(&e) => problems.push(format!("sshKeyPaths: {e}")),
            Err(e) => report.log.push(LogLine::warning(format!("{e}"))),
        }
    }
    if let Some(home) = &manifest.gnupg_home {
        match GnupgHome::checked(home.clone(), opts.gpg_exec.clone()) {
            Ok(home) => keyring.set_gnupg_home(home),
            Err(e) => problems.push(format!("gnupgHome {}: {e}", home.display())),
        }
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
            let file = match crate::safe_path::read(path, Trust::build_check())
                .map_err(|e| format!("sopsFile: {e}"))
                .and_then(|b| EncryptedFile::parse(&b, *format).map_err(|e| e.to_string()))
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

/// A live file's bytes and metadata.
type LiveCopy = (Zeroizing<Vec<u8>>, std::fs::Metadata);

/// Reads the live copy of a file, with its metadata, for comparison; `None`
/// if there is no regular file there. The path is walked by the rule of
/// [`crate::safe_path`]: the live link is ours, and no link planted by
/// another user is followed to reach a file that is not.
fn read_live(path: &Path) -> Result<Option<LiveCopy>, String> {
    use std::io::Read;
    let mut file = match crate::safe_path::open_file(path, crate::safe_path::Trust::invoker()) {
        Ok(f) => f,
        Err(e)
            if e.is_not_found()
                || matches!(e, crate::safe_path::OpenError::NotRegular { .. })
                || e.io_error().and_then(std::io::Error::raw_os_error)
                    == Some(nix::errno::Errno::ENOTDIR as i32) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(Some((bytes, meta)))
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
///
/// With the live generation's record (`recorded`: written by this version,
/// with digests) the comparison is with the record alone, without reading a
/// live file; without one, each live copy is read and stat'ed.
fn compare(
    live_root: &Path,
    files: &[Prepared<'_>],
    subdir: &str,
    recorded: Option<&std::collections::BTreeMap<String, state::Entry>>,
    compare_owner: bool,
    report: &mut Report,
) -> units::Changes {
    if let Some(record) = recorded {
        return compare_with_record(files, record, compare_owner);
    }
    let mut changes = units::Changes::default();
    let base = if subdir.is_empty() {
        live_root.to_path_buf()
    } else {
        live_root.join(subdir)
    };
    for f in files {
        match read_live(&base.join(f.name.as_str())) {
            Ok(None) => changes.added.push(f.name.to_string()),
            Ok(Some((old, m))) if old.as_slice() == f.value.as_slice() => {
                use std::os::unix::fs::MetadataExt;
                let same_meta = m.mode() & 0o7777 == f.mode.0
                    && (!compare_owner || f.ids.is_none_or(|ids| m.uid() == ids.uid && m.gid() == ids.gid));
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

/// [`compare`] against the live generation's record.
fn compare_with_record(
    files: &[Prepared<'_>],
    record: &std::collections::BTreeMap<String, state::Entry>,
    compare_owner: bool,
) -> units::Changes {
    let mut changes = units::Changes::default();
    for f in files {
        let name = f.name.as_str();
        let Some(old) = record.get(name) else {
            changes.added.push(name.to_owned());
            continue;
        };
        let same_owner = !compare_owner
            || f.ids
                .is_none_or(|ids| old.uid == Some(ids.uid) && old.gid == Some(ids.gid));
        if old.digest.as_deref() != Some(f.digest.as_str()) || old.mode != Some(f.mode.0) || !same_owner {
            changes.modified.push(name.to_owned());
        }
    }
    let wanted: std::collections::HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    changes.removed = record
        .keys()
        .filter(|name| !wanted.contains(name.as_str()))
        .cloned()
        .collect();
    changes
}

/// Writes generation N+1 (secrets, rendered templates, the record) and makes
/// it live; on any failure the partial generation is removed and the live
/// link is untouched. Returns N+1.
fn write_and_swap(
    manifest: &Manifest,
    secrets: &[Prepared<'_>],
    rendered: &[Prepared<'_>],
    keys_gid: u32,
    digest_key: &state::DigestKey,
) -> Result<u64, Failed> {
    let mount = &manifest.secrets_mount_point;
    let live = links::live_generation(mount, &manifest.symlink_path).unwrap_or(0);
    links::remove_leftovers(mount, live).map_err(Failed::one)?;
    let next = live + 1;
    let dir_ids = (!manifest.user_mode).then_some(Ids {
        uid: 0,
        gid: keys_gid,
    });
    let mut generation = Generation::create(mount, next, dir_ids).map_err(Failed::one)?;
    let written = (|| {
        for f in secrets {
            generation
                .write_file(f.name.as_str(), f.ids, f.mode.0, &f.value)
                .map_err(|e| format!("secret {:?}: {e}", f.name.as_str()))?;
        }
        for f in rendered {
            generation
                .write_file(&format!("rendered/{}", f.name), f.ids, f.mode.0, &f.value)
                .map_err(|e| format!("template {:?}: {e}", f.name.as_str()))?;
        }
        let entry = |f: &Prepared<'_>| state::Entry {
            path: f.path.to_path_buf(),
            restart_units: f.restart.to_vec(),
            reload_units: f.reload.to_vec(),
            credential: f.credential,
            digest: Some(f.digest.clone()),
            mode: Some(f.mode.0),
            uid: f.ids.map(|ids| ids.uid),
            gid: f.ids.map(|ids| ids.gid),
        };
        let mut record = state::State {
            digest_key: None,
            secrets: secrets.iter().map(|f| (f.name.to_string(), entry(f))).collect(),
            templates: rendered.iter().map(|f| (f.name.to_string(), entry(f))).collect(),
        };
        record.set_key(digest_key);
        let root = (!manifest.user_mode).then_some(Ids { uid: 0, gid: 0 });
        generation.write_file(state::FILE, root, 0o400, &record.to_json())?;
        Ok::<(), String>(())
    })();
    let path = generation.path().to_path_buf();
    // Closes the generation's directory fd, so that its filesystem can be unmounted.
    drop(generation);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&path);
        return Err(Failed(vec![
            e.into(),
            format!("generation {next} was removed; the live secrets are unchanged").into(),
        ]));
    }
    links::swap(&manifest.symlink_path, &path).map_err(|e| {
        let _ = std::fs::remove_dir_all(&path);
        Failed(vec![
            e.into(),
            format!("generation {next} was removed; the live secrets are unchanged").into(),
        ])
    })?;
    Ok(next)
}

/// "1 secret", "2 secrets".
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// How a run ended: what it did and saw (warnings, change lines, the
/// generation it installed), and the problems that made it fail, if any. The
/// report is kept on failure too, so that every warning and change line
/// reaches the journal whatever the outcome.
#[derive(Debug)]
pub struct Outcome {
    /// Everything the run logged or changed.
    pub report: Report,
    /// `Err` with every problem when the run failed (possibly after installing).
    pub result: Result<(), Failed>,
}

/// Runs the installation. `earlier` are the manifest's own problems: the run
/// still looks for more (owners, sops files) so that all are reported at
/// once, and writes nothing if there are any.
pub fn install(manifest: &Manifest, opts: &Options, earlier: Vec<String>) -> Outcome {
    let mut report = Report::default();
    let result = run(manifest, opts, earlier, &mut report);
    Outcome { report, result }
}

fn run(manifest: &Manifest, opts: &Options, earlier: Vec<String>, report: &mut Report) -> Result<(), Failed> {
    let mut problems = Problems(earlier.into_iter().map(Problem::from).collect());
    let root_owned = opts.ignore_passwd || opts.dry_run;

    let keyring = identities(manifest, opts, report, &mut problems);

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
        let bytes = match crate::safe_path::read(&path, Trust::invoker()) {
            Ok(b) => b,
            Err(e) => {
                let why = format!(
                    "cannot read sopsFile {file} (used by {}): {e}",
                    secret_names(manifest, &users)
                );
                fail_all(why, &mut item_problems, &mut secret_failed);
                continue;
            }
        };
        let doc = match crate::sops::decrypt_bytes(&bytes, format, &keyring) {
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
            TemplateSource::File(f) => match crate::safe_path::read(f, Trust::invoker()) {
                Ok(b) => template_texts.push(Some(b)),
                Err(e) => {
                    let file = f.display().to_string();
                    item_problems.push(Problem::about(
                        format!("template {:?}: cannot read its file {file}: {e}", t.name.as_str()),
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

    // From here on the live generation is read, compared and replaced: one run
    // at a time per mount (a dry run only reads, and waits for nobody).
    let _lock = if opts.dry_run {
        None
    } else {
        Some(
            lock::acquire(&manifest.secrets_mount_point, opts.lock_wait)
                .map_err(|e| Failed::one(e.to_string()))?,
        )
    };

    // What the live generation recorded about itself, and the key of its
    // content digests (a new one on a mount whose record has none).
    let old_state = state::State::load(&manifest.symlink_path);
    let digest_key = old_state.key().unwrap_or_else(state::DigestKey::fresh);

    // Keeping the previous copy of a failed item: its live bytes, owner and mode.
    let previous = |rel: &str| -> Option<(Zeroizing<Vec<u8>>, Option<Ids>, Mode)> {
        use std::os::unix::fs::MetadataExt;
        let (bytes, meta) = read_live(&manifest.symlink_path.join(rel)).ok()??;
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
            digest: digest_key.digest(&value),
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
            digest: digest_key.digest(&value),
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
    if live_exists {
        // A dry run does not look owners up, so it cannot compare them.
        let compare_owner = !opts.dry_run;
        let recorded = old_state.key().is_some();
        let secret_changes = compare(
            &manifest.symlink_path,
            &secrets,
            "",
            recorded.then_some(&old_state.secrets),
            compare_owner,
            report,
        );
        let template_changes = compare(
            &manifest.symlink_path,
            &rendered,
            "rendered",
            recorded.then_some(&old_state.templates),
            compare_owner,
            report,
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
        return Ok(());
    }

    // From here on the disk changes.
    let mount = &manifest.secrets_mount_point;
    let mut mounted_now = false;
    if manifest.user_mode {
        let dir = crate::safe_path::open_dir(mount, Trust::invoker(), Missing::Create(0o755))
            .map_err(|e| Failed::one(format!("secretsMountPoint {}: {e}", mount.display())))?;
        nix::sys::stat::fchmod(&dir.fd, nix::sys::stat::Mode::from_bits_truncate(0o751))
            .map_err(|e| Failed::one(format!("cannot chmod {}: {e}", mount.display())))?;
    } else {
        let mounted = mount::ensure(mount, keys_gid, manifest.use_tmpfs).map_err(Failed::one)?;
        mounted_now = !matches!(mounted, mount::Mounted::AlreadyThere);
        if matches!(mounted, mount::Mounted::TmpfsWithoutNoswap) {
            report.log.push(LogLine::warning(
                "this kernel does not support tmpfs noswap; secrets may be swapped out".into(),
            ));
        }
        // The mount was the step that needed most of root's powers.
        if let Err(e) = crate::hardening::drop_capabilities(crate::hardening::AFTER_MOUNT) {
            report.log.push(LogLine::warning(format!(
                "could not drop capabilities after mounting: {e}"
            )));
        }
    }
    let swapped = write_and_swap(manifest, &secrets, &rendered, keys_gid, &digest_key);
    // A filesystem this run mounted goes again if the run failed before the
    // swap: it would hide the live generation the link still points into.
    if mounted_now && swapped.is_err() {
        let why = match mount::unmount(mount) {
            Ok(()) => format!(
                "the filesystem this run mounted at {} was unmounted again",
                mount.display()
            ),
            Err(e) => e,
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
    if !manifest.user_mode
        && let Err(e) = crate::hardening::drop_capabilities(crate::hardening::AFTER_SWAP)
    {
        report.log.push(LogLine::warning(format!(
            "could not drop capabilities after the swap: {e}"
        )));
    }
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
        // systemd's own credential directories are root-only.
        if wanted
            && let Err(e) =
                crate::safe_path::open_dir(&manifest.credstore_dir, Trust::root(), Missing::Create(0o700))
        {
            late.push(format!("credstoreDir {}: {e}", manifest.credstore_dir.display()));
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
            "installed {} and {} as generation {next} in {}",
            count(secrets.len(), "secret"),
            count(rendered.len(), "template"),
            mount.display()
        ),
        vec![("generation", next.to_string())],
    ));
    if late.is_empty() && item_problems.is_empty() {
        return Ok(());
    }
    // Installed, but not everything: the run still fails so that the unit is
    // marked failed and the operator sees which secrets are stale or missing.
    let mut all = item_problems.0;
    all.extend(kept.into_iter().map(Problem::from));
    all.extend(late.into_iter().map(Problem::from));
    Err(Failed(all))
}
