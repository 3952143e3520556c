//! The manifest: what the NixOS module asks the installer to do.
//!
//! sops-nix's NixOS module serialises `config.sops` into a JSON file in the
//! Nix store and runs the installer on it at activation and at boot. This
//! module reads that JSON exactly as sops-nix writes it (unknown fields are
//! ignored, absent ones take sops-nix's defaults) and turns it into checked
//! types: after [`Manifest::from_json`] succeeds, every name is a safe
//! relative path that fits the kernel's limits and holds no control
//! character, every mode one to four octal digits, every owner a plausible
//! user or group name or an id `fchown` will apply, every unit a name systemd
//! accepts, every format known. Problems are collected, not stopped at, so one
//! run lists them all.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sops::Format;

/// A secret's or template's name: a relative path with no `..`, no empty or
/// `.` component, no NUL, not absolute. It names a file under the generation
/// directory, so these rules keep every write inside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Checks a name; the error says what is wrong with it.
    pub fn parse(name: &str) -> Result<Name, String> {
        if name.is_empty() {
            return Err("the name is empty".into());
        }
        if name.contains('\0') {
            return Err("the name contains a NUL byte".into());
        }
        // A newline would start a forged line in the log and in the change
        // lines switch-to-configuration shows; other control characters can
        // rewrite a terminal. No file name needs them.
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(format!(
                "the name contains the control character {c:?}; use letters, digits and punctuation"
            ));
        }
        if name.starts_with('/') {
            return Err("the name is an absolute path; names are relative to the secrets directory".into());
        }
        for part in name.split('/') {
            match part {
                "" => return Err("the name has an empty path component (`//` or a trailing `/`)".into()),
                "." => return Err("the name has a `.` path component".into()),
                ".." => {
                    return Err(
                        "the name has a `..` path component, which would leave the secrets directory".into(),
                    );
                }
                _ if part.len() > NAME_MAX => {
                    return Err(format!(
                        "the path component {:?} is {} bytes long; a file name can have at most {NAME_MAX} (NAME_MAX)",
                        shortened(part),
                        part.len()
                    ));
                }
                _ => {}
            }
        }
        Ok(Name(name.to_owned()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory components and the file name.
    pub fn components(&self) -> (Vec<&str>, &str) {
        let mut parts: Vec<&str> = self.0.split('/').collect();
        let file = parts.pop().expect("a name has at least one component");
        (parts, file)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file mode: permission bits plus setuid/setgid/sticky, nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Mode {
    /// Parses an octal mode of one to four digits, such as `0400` or `440`:
    /// what chmod(1) takes as a number. A sign, a prefix or more digits are
    /// refused rather than guessed at.
    pub fn parse(s: &str) -> Result<Mode, String> {
        if !(1..=4).contains(&s.len()) || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!(
                "mode {s:?} is not an octal mode of 1 to 4 digits (like \"0400\")"
            ));
        }
        let v = u32::from_str_radix(s, 8).expect("1 to 4 octal digits");
        Ok(Mode(v))
    }
}

/// Who owns a file: a name looked up through NSS at install time, or a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A user or group name: not empty, no control character, no `/` or `:`.
    Name(String),
    /// A numeric id, never `u32::MAX`.
    Id(u32),
}

/// The id that `fchown(2)` reads as "leave unchanged": a file given to it
/// would silently stay root's.
const UNCHANGED_ID: u32 = u32::MAX;

impl Owner {
    /// Checks an owner (`what` is `owner` or `group`, `id_field` then `uid`
    /// or `gid`): the name when there is one (sops-nix's rule: a name wins),
    /// else the id, 0 when absent.
    fn parse(
        what: &str,
        id_field: &str,
        name: Option<&str>,
        id: Option<&serde_json::Number>,
    ) -> Result<Owner, String> {
        if let Some(id) = id.filter(|_| name.is_none()) {
            return match id.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(UNCHANGED_ID) => Err(format!(
                    "{id_field} {id} is the id fchown(2) takes as \"leave unchanged\", so the file would stay root's; \
                     give a real id below {UNCHANGED_ID}, or set {what} to a name"
                )),
                Some(v) => Ok(Owner::Id(v)),
                None => Err(format!(
                    "{id_field} {id} is not an id (a whole number from 0 to {})",
                    UNCHANGED_ID - 1
                )),
            };
        }
        let Some(name) = name else {
            return Ok(Owner::Id(0));
        };
        let kind = if what == "owner" { "user" } else { "group" };
        let problem = if name.is_empty() {
            Some("it is empty".to_owned())
        } else if let Some(c) = name.chars().find(|c| c.is_control()) {
            Some(format!("it contains the control character {c:?}"))
        } else if name.contains('/') {
            Some("it contains `/` (it looks like a path)".to_owned())
        } else if name.contains(':') {
            Some("it contains `:`, which separates the fields of /etc/passwd and /etc/group".to_owned())
        } else {
            None
        };
        match problem {
            Some(why) => Err(format!(
                "{what} {name:?} is not a {kind} name: {why}; give the {kind}'s name as `getent {}` shows it, or set {what} to null and give a {id_field}",
                if kind == "user" { "passwd" } else { "group" }
            )),
            None => Ok(Owner::Name(name.to_owned())),
        }
    }
}

/// Units to restart or reload: each one a name systemd accepts for a job
/// (`unit_name_is_valid` with a plain name or a template's instance), so a
/// name can never add a line of its own to `activation-restart-list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Units(Vec<String>);

impl std::ops::Deref for Units {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.0
    }
}

/// The unit types systemd knows (`unit_type_from_string`).
const UNIT_TYPES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// systemd's UNIT_NAME_MAX, which counts the terminating NUL.
const UNIT_NAME_MAX: usize = 256;

/// Why systemd would refuse `name` as a unit to restart or reload, if it would.
///
/// The grammar is systemd's (`unit_name_is_valid` in `src/basic/unit-name.c`):
/// at most 255 bytes; a known unit type after the last `.`; before it only
/// ASCII letters, digits and `:-_.\@`; not starting with `@`. A template
/// (`foo@.service`) cannot be restarted, so an instance needs a non-empty
/// name after the `@`.
pub fn unit_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')))
    {
        return Some(format!(
            "it contains {c:?}; unit names consist of ASCII letters, digits and `:-_.\\@`"
        ));
    }
    if name.len() >= UNIT_NAME_MAX {
        return Some(format!(
            "it is {} bytes long; systemd allows at most {}",
            name.len(),
            UNIT_NAME_MAX - 1
        ));
    }
    let Some((stem, suffix)) = name.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()) else {
        return Some("it has no unit type; write the whole name, like \"nginx.service\"".into());
    };
    if !UNIT_TYPES.contains(&suffix) {
        return Some(format!(
            "\".{suffix}\" is not a unit type ({})",
            UNIT_TYPES.join(", ")
        ));
    }
    match stem.split_once('@') {
        Some(("", _)) => Some("it starts with `@`".into()),
        Some((prefix, "")) => Some(format!(
            "it is a template, which cannot be restarted; name an instance, like \"{prefix}@example.{suffix}\""
        )),
        _ => None,
    }
}

impl Units {
    /// Checks a list of units; `field` (`restartUnits`, `reloadUnits`) names it in the errors.
    fn parse(field: &str, units: Option<&[Text]>, bad: &mut impl FnMut(String)) -> Option<Units> {
        let units = units.unwrap_or_default();
        let mut ok = true;
        for u in units {
            if let Some(why) = unit_name_problem(u.as_str()) {
                bad(format!(
                    "{field} entry {:?} is not a systemd unit name: {why}",
                    shortened(u.as_str())
                ));
                ok = false;
            }
        }
        ok.then(|| Units(units.iter().map(|u| u.as_str().to_owned()).collect()))
    }
}

/// One secret to install.
#[derive(Clone, Debug)]
pub struct Secret {
    /// Where it goes below the generation directory.
    pub name: Name,
    /// The slash path of the value in the sops file; empty for the whole file.
    pub key: String,
    /// Where the user wants to find it (a symlink is made if it is not the default).
    pub path: PathBuf,
    /// The owning user.
    pub owner: Owner,
    /// The owning group.
    pub group: Owner,
    /// The sops file holding it.
    pub sops_file: PathBuf,
    /// That file's format.
    pub format: Format,
    /// The file mode.
    pub mode: Mode,
    /// Units to restart when it changes.
    pub restart_units: Units,
    /// Units to reload when it changes.
    pub reload_units: Units,
    /// Also offer it as a systemd credential (`LoadCredential=<name>`).
    pub credential: bool,
}

/// Where a template's text comes from.
#[derive(Clone, Debug)]
pub enum TemplateSource {
    /// Inline text.
    Content(String),
    /// A file (usually in the Nix store).
    File(PathBuf),
}

/// A file rendered from secrets: its text with placeholders replaced.
#[derive(Clone, Debug)]
pub struct Template {
    /// Where it goes below `rendered/`.
    pub name: Name,
    /// The text.
    pub source: TemplateSource,
    /// Where the user wants to find it.
    pub path: PathBuf,
    /// The owning user.
    pub owner: Owner,
    /// The owning group.
    pub group: Owner,
    /// The file mode.
    pub mode: Mode,
    /// Units to restart when it changes.
    pub restart_units: Units,
    /// Units to reload when it changes.
    pub reload_units: Units,
}

/// What to do when some secrets cannot be installed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Install nothing; the live generation stays (sops-nix's behaviour).
    #[default]
    Abort,
    /// Install the rest; each failed secret keeps its live copy (or is absent).
    KeepPrevious,
}

/// Which changes to log.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Logging {
    /// Log each SSH key's derived age recipient.
    pub key_import: bool,
    /// Print `adding/modifying/removing secret` lines.
    pub secret_changes: bool,
}

/// A checked manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The secrets, in manifest order.
    pub secrets: Vec<Secret>,
    /// The templates, in manifest order.
    pub templates: Vec<Template>,
    /// Placeholder string → the secret whose value replaces it.
    pub placeholders: Vec<(String, Name)>,
    /// Where the secrets filesystem is mounted (`/run/secrets.d`).
    pub secrets_mount_point: PathBuf,
    /// The symlink to the live generation (`/run/secrets`).
    pub symlink_path: PathBuf,
    /// How many generations to keep (0: all).
    pub keep_generations: u64,
    /// SSH RSA keys to use as GPG keys (sops-nix's `sops.gnupg.sshKeyPaths`).
    pub ssh_key_paths: Vec<PathBuf>,
    /// A GnuPG home.
    pub gnupg_home: Option<PathBuf>,
    /// An age key file.
    pub age_key_file: Option<PathBuf>,
    /// SSH Ed25519 keys to convert to age identities.
    pub age_ssh_key_paths: Vec<PathBuf>,
    /// tmpfs (with noswap) instead of ramfs.
    pub use_tmpfs: bool,
    /// home-manager mode: no mount, no chown.
    pub user_mode: bool,
    /// What to log.
    pub logging: Logging,
    /// The host's public keys (`age1...` or OpenSSH lines): with
    /// `-check-mode=sopsfile`, every sops file must be openable by them.
    pub host_pub_keys: Vec<String>,
    /// `onFailure`: `abort` (default) or `keep-previous`.
    pub on_failure: OnFailure,
    /// Where credential links go (`/run/credstore`, searched by `LoadCredential=`).
    pub credstore_dir: PathBuf,
}

/// Where a run's identities come from, as a manifest names them: what the
/// keyring is built from. A checked manifest gives its own
/// ([`Manifest::identity_sources`]); [`Prescan`] reads the same from the text
/// alone, through the same steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentitySources {
    /// `ageKeyFile`.
    pub age_key_file: Option<PathBuf>,
    /// `ageSshKeyPaths`.
    pub age_ssh_key_paths: Vec<PathBuf>,
    /// `sshKeyPaths` (SSH RSA keys as GPG keys).
    pub ssh_key_paths: Vec<PathBuf>,
    /// `gnupgHome`.
    pub gnupg_home: Option<PathBuf>,
    /// `logging.keyImport`: each SSH key's import is logged.
    pub log_imports: bool,
}

/// The identity fields as read, before `%r` is expanded.
struct RawSources {
    age_key_file: Option<String>,
    age_ssh_key_paths: Option<Vec<String>>,
    ssh_key_paths: Option<Vec<String>>,
    gnupg_home: Option<String>,
}

impl RawSources {
    /// Empty strings are absent; age paths get `%r` expanded (user mode).
    fn checked(self, logging: Logging, expand: impl Fn(String) -> String) -> IdentitySources {
        IdentitySources {
            age_key_file: self
                .age_key_file
                .filter(|s| !s.is_empty())
                .map(|p| PathBuf::from(expand(p))),
            age_ssh_key_paths: self
                .age_ssh_key_paths
                .unwrap_or_default()
                .into_iter()
                .map(|p| PathBuf::from(expand(p)))
                .collect(),
            ssh_key_paths: self
                .ssh_key_paths
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            gnupg_home: self.gnupg_home.filter(|s| !s.is_empty()).map(PathBuf::from),
            log_imports: logging.key_import,
        }
    }
}

impl Manifest {
    /// Where this manifest's identities come from.
    pub fn identity_sources(&self) -> IdentitySources {
        IdentitySources {
            age_key_file: self.age_key_file.clone(),
            age_ssh_key_paths: self.age_ssh_key_paths.clone(),
            ssh_key_paths: self.ssh_key_paths.clone(),
            gnupg_home: self.gnupg_home.clone(),
            log_imports: self.logging.key_import,
        }
    }
}

/// What opening the sops files needs from a manifest, read from its text
/// without checking the rest: the identity sources, and each sops file once
/// with the format of the first secret that reads it, in the order secrets
/// first name them (a secret without a file or with an unknown format is
/// passed over). The installer starts opening files from this while the
/// manifest is checked; what it opened is used only for a file the checked
/// manifest reads in the same format, with the same identity sources.
#[derive(Debug, PartialEq, Eq)]
pub struct Prescan {
    /// Where the identities come from.
    pub identities: IdentitySources,
    /// The sops files and their formats.
    pub files: Vec<(PathBuf, Format)>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawPrescan<'a> {
    #[serde(borrow)]
    secrets: Vec<RawFileUse<'a>>,
    ssh_key_paths: Option<Vec<String>>,
    gnupg_home: Option<String>,
    age_key_file: Option<String>,
    age_ssh_key_paths: Option<Vec<String>>,
    user_mode: Option<bool>,
    logging: Option<Logging>,
}

/// A secret's file and format, the rest of it passed over.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawFileUse<'a> {
    #[serde(borrow)]
    sops_file: Option<Text<'a>>,
    #[serde(borrow)]
    format: Option<Text<'a>>,
}

impl Prescan {
    /// Reads the text; `None` where it is not JSON of the manifest's shape
    /// as far as these fields go. `runtime_dir` is as for [`Manifest::parse`].
    pub fn read(bytes: &[u8], runtime_dir: Option<&str>) -> Option<Prescan> {
        let raw: RawPrescan = serde_json::from_str(std::str::from_utf8(bytes).ok()?).ok()?;
        let user_mode = raw.user_mode.unwrap_or(false);
        let identities = RawSources {
            age_key_file: raw.age_key_file,
            age_ssh_key_paths: raw.age_ssh_key_paths,
            ssh_key_paths: raw.ssh_key_paths,
            gnupg_home: raw.gnupg_home,
        }
        .checked(raw.logging.unwrap_or_default(), |p| {
            expand_if_user_mode(p, user_mode, runtime_dir)
        });
        let mut files: Vec<(PathBuf, Format)> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for s in &raw.secrets {
            let Ok(format) = secret_format(s.format.as_ref().map(Text::as_str)) else {
                continue;
            };
            match s.sops_file.as_ref().map(Text::as_str) {
                Some(f) if !f.is_empty() && seen.insert(f) => files.push((PathBuf::from(f), format)),
                _ => {}
            }
        }
        Some(Prescan { identities, files })
    }
}

/// A string of the manifest as read: borrowed from the manifest's bytes
/// unless it had an escape, so that reading many secrets allocates only what
/// the checked manifest keeps.
#[derive(Default)]
struct Text<'a>(Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text<'a>, D::Error> {
        struct Visitor<'a>(PhantomData<&'a str>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor(PhantomData))
    }
}

// The JSON as sops-nix writes it. Strings may be null where the Nix option is nullable.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawManifest<'a> {
    #[serde(borrow)]
    secrets: Vec<RawSecret<'a>>,
    #[serde(borrow)]
    templates: Vec<RawTemplate<'a>>,
    placeholder_by_secret_name: Option<BTreeMap<String, String>>,
    secrets_mount_point: Option<String>,
    symlink_path: Option<String>,
    keep_generations: Option<i64>,
    ssh_key_paths: Option<Vec<String>>,
    gnupg_home: Option<String>,
    age_key_file: Option<String>,
    age_ssh_key_paths: Option<Vec<String>>,
    use_tmpfs: Option<bool>,
    user_mode: Option<bool>,
    logging: Option<Logging>,
    host_pub_keys: Option<Vec<String>>,
    on_failure: Option<String>,
    credstore_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawSecret<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    key: Option<Text<'a>>,
    #[serde(borrow)]
    path: Option<Text<'a>>,
    #[serde(borrow)]
    owner: Option<Text<'a>>,
    uid: Option<serde_json::Number>,
    #[serde(borrow)]
    group: Option<Text<'a>>,
    gid: Option<serde_json::Number>,
    #[serde(borrow)]
    sops_file: Option<Text<'a>>,
    #[serde(borrow)]
    format: Option<Text<'a>>,
    #[serde(borrow)]
    mode: Option<Text<'a>>,
    #[serde(borrow)]
    restart_units: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    reload_units: Option<Vec<Text<'a>>>,
    credential: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawTemplate<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    content: Option<Text<'a>>,
    #[serde(borrow)]
    file: Option<Text<'a>>,
    #[serde(borrow)]
    path: Option<Text<'a>>,
    #[serde(borrow)]
    mode: Option<Text<'a>>,
    #[serde(borrow)]
    owner: Option<Text<'a>>,
    uid: Option<serde_json::Number>,
    #[serde(borrow)]
    group: Option<Text<'a>>,
    gid: Option<serde_json::Number>,
    #[serde(borrow)]
    restart_units: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    reload_units: Option<Vec<Text<'a>>>,
}

/// Every problem found in a manifest.
#[derive(Debug, thiserror::Error)]
#[error("the manifest is not valid:\n  {}", .0.join("\n  "))]
pub struct ManifestErrors(pub Vec<String>);

/// A secret's `format`: absent or empty is YAML, as in sops-nix; an unknown
/// name is returned as the error.
fn secret_format(name: Option<&str>) -> Result<Format, &str> {
    match name {
        None | Some("") => Ok(Format::Yaml),
        Some(f) => Format::from_name(f).ok_or(f),
    }
}

/// A path as a manifest in `user_mode` means it: `%r` expanded when the
/// runtime directory is known.
fn expand_if_user_mode(path: String, user_mode: bool, runtime_dir: Option<&str>) -> String {
    match (user_mode, runtime_dir) {
        (true, Some(dir)) => expand_runtime_dir(&path, dir),
        _ => path,
    }
}

/// Replaces `%r` with the runtime directory and `%%` with `%` (user mode paths).
pub fn expand_runtime_dir(path: &str, runtime_dir: &str) -> String {
    path.split("%%")
        .map(|part| part.replace("%r", runtime_dir))
        .collect::<Vec<_>>()
        .join("%")
}

/// Why macOS's per-user temporary directory cannot stand for `%r`.
#[derive(Debug, thiserror::Error)]
pub enum DarwinTempDirError {
    /// `confstr` gave no value.
    #[error("confstr(_CS_DARWIN_USER_TEMP_DIR) failed: {0}")]
    Confstr(nix::errno::Errno),
    /// The value is not an absolute path in UTF-8.
    #[error("confstr(_CS_DARWIN_USER_TEMP_DIR) gave {0:?}, which is not an absolute path")]
    NotAPath(String),
}

/// `%r` from the value of `DARWIN_USER_TEMP_DIR` (`/var/folders/xy/.../T/`,
/// as `getconf DARWIN_USER_TEMP_DIR` prints it): blanks and newlines at the
/// end and then one trailing `/` are dropped, as sops-nix's installer does
/// with `getconf`'s output, so that `%r/secrets.d` names the same directory
/// for both installers.
pub fn runtime_dir_from_darwin_temp_dir(value: &[u8]) -> Result<String, DarwinTempDirError> {
    let text = String::from_utf8(value.to_vec())
        .map_err(|e| DarwinTempDirError::NotAPath(String::from_utf8_lossy(e.as_bytes()).into_owned()))?;
    let trimmed = text.trim_end_matches([' ', '\t', '\n']);
    let dir = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if !dir.starts_with('/') || dir.contains('\0') {
        return Err(DarwinTempDirError::NotAPath(text));
    }
    Ok(dir.to_owned())
}

/// `%r` on macOS when `$XDG_RUNTIME_DIR` is not set (launchd, which starts
/// home-manager's agent, sets no such variable): the user's temporary
/// directory, which sops-nix's installer uses there instead.
#[cfg(target_os = "macos")]
pub fn darwin_user_temp_dir() -> Result<String, DarwinTempDirError> {
    let mut buf = [0u8; PATH_MAX];
    nix::errno::Errno::clear();
    // SAFETY: confstr writes at most `buf.len()` bytes, its NUL included, into `buf`.
    let needed = unsafe {
        nix::libc::confstr(
            nix::libc::_CS_DARWIN_USER_TEMP_DIR,
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if needed == 0 {
        return Err(DarwinTempDirError::Confstr(nix::errno::Errno::last()));
    }
    // `needed` counts the NUL; more than the buffer means it was cut short.
    if needed > buf.len() {
        return Err(DarwinTempDirError::NotAPath(format!(
            "a value of {needed} bytes, longer than PATH_MAX"
        )));
    }
    runtime_dir_from_darwin_temp_dir(&buf[..needed - 1])
}

/// Longest path the kernel takes, counting the terminating NUL (PATH_MAX).
const PATH_MAX: usize = nix::libc::PATH_MAX as usize;
/// Longest file name, one path component (NAME_MAX).
#[cfg(target_os = "linux")]
const NAME_MAX: usize = nix::libc::NAME_MAX as usize;
/// macOS's NAME_MAX (sys/syslimits.h), which the libc crate does not export there.
#[cfg(not(target_os = "linux"))]
const NAME_MAX: usize = 255;

/// The start of a long string, for error messages that must stay readable.
fn shortened(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Why `path` (where a file is read, or a symlink made) is unusable, if it is.
fn path_problem(path: &Path) -> Option<String> {
    let text = path.to_string_lossy();
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Some(format!("contains the control character {c:?}"));
    }
    path_too_long(path)
}

/// Why `path` is too long for the kernel, if it is.
fn path_too_long(path: &Path) -> Option<String> {
    let len = path.as_os_str().len();
    (len >= PATH_MAX).then(|| {
        format!(
            "is {len} bytes long; a path can have at most {} (PATH_MAX)",
            PATH_MAX - 1
        )
    })
}

impl Manifest {
    /// Reads and checks the manifest JSON. `runtime_dir` replaces `%r` in
    /// user mode (`$XDG_RUNTIME_DIR`); it is needed only then.
    pub fn from_json(bytes: &[u8], runtime_dir: Option<&str>) -> Result<Manifest, ManifestErrors> {
        let (manifest, problems) = Manifest::parse(bytes, runtime_dir)?;
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestErrors(problems))
        }
    }

    /// Reads the manifest JSON, keeping every entry that is valid and
    /// returning the problems of the others, so that a run can go on to find
    /// the problems further along (unknown owners, undecryptable files) and
    /// report them all at once. Only JSON that is not a manifest at all is an
    /// error here.
    pub fn parse(bytes: &[u8], runtime_dir: Option<&str>) -> Result<(Manifest, Vec<String>), ManifestErrors> {
        // serde would also accept a JSON array for a struct; only an object is a manifest.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            let why = match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(e) => format!("it is not valid JSON: {e}"),
                Ok(_) => "it is not a JSON object; a manifest is an object with `secrets`, `secretsMountPoint`, ..."
                    .into(),
            };
            return Err(ManifestErrors(vec![why]));
        }
        // Straight into the typed form: no intermediate JSON tree for a
        // manifest of many secrets, its strings borrowed. Valid UTF-8 is
        // checked once for the whole text rather than string by string; text
        // that is not UTF-8 is read as bytes for serde_json's own message.
        let raw: Result<RawManifest, _> = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        };
        let raw =
            raw.map_err(|e| ManifestErrors(vec![format!("it is not JSON of the manifest's shape: {e}")]))?;
        let mut problems = Vec::new();
        let user_mode = raw.user_mode.unwrap_or(false);
        let expand = |p: String| expand_if_user_mode(p, user_mode, runtime_dir);
        #[cfg(not(target_os = "macos"))]
        if user_mode && runtime_dir.is_none() {
            problems.push(
                "userMode is set but $XDG_RUNTIME_DIR is not, so `%r` in paths cannot be expanded".into(),
            );
        }
        #[cfg(target_os = "macos")]
        if user_mode && runtime_dir.is_none() {
            problems.push(
                "userMode is set but neither $XDG_RUNTIME_DIR nor the user's temporary directory \
                 (confstr _CS_DARWIN_USER_TEMP_DIR) is known, so `%r` in paths cannot be expanded"
                    .into(),
            );
        }

        // Required, as for sops-nix's installer: a default here could mount over the host's /run/secrets.d.
        let mount = expand(raw.secrets_mount_point.unwrap_or_default());
        let link = expand(raw.symlink_path.unwrap_or_default());
        for (what, p) in [("secretsMountPoint", &mount), ("symlinkPath", &link)] {
            if p.is_empty() {
                problems.push(format!("{what} is missing"));
            } else if !p.starts_with('/') {
                problems.push(format!("{what} {p:?} is not an absolute path"));
            } else if let Some(why) = path_problem(Path::new(p)) {
                problems.push(format!("{what} {:?} {why}", shortened(p)));
            }
        }
        let link_path = PathBuf::from(&link);

        let mut secrets = Vec::with_capacity(raw.secrets.len());
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(raw.secrets.len());
        for (i, s) in raw.secrets.iter().enumerate() {
            let raw_name = s.name.as_ref().map(Text::as_str);
            let mut bad = |msg: String| problems.push(format!("secret {:?}: {msg}", label(raw_name, i)));
            let name = checked_name(raw_name, &mut bad);
            let format = secret_format(s.format.as_ref().map(Text::as_str))
                .map_err(|f| {
                    bad(format!(
                        "format {f:?} is not one of yaml, json, dotenv, ini, binary"
                    ))
                })
                .ok();
            let mode = checked_mode(s.mode.as_ref().map(Text::as_str), &mut bad);
            let sops_file = match s.sops_file.as_ref().map(Text::as_str) {
                Some(f) if !f.is_empty() => Some(PathBuf::from(f)),
                _ => {
                    bad("it has no sopsFile".into());
                    None
                }
            };
            note_duplicate(
                &mut seen,
                raw_name.filter(|_| name.is_some()),
                i,
                "secret",
                &mut bad,
            );
            let shared = Shared::check(
                name,
                &link_path,
                RawShared {
                    path: s.path.as_ref().map(|p| expand(p.as_str().to_owned())),
                    owner: s.owner.as_ref().map(Text::as_str),
                    uid: s.uid.as_ref(),
                    group: s.group.as_ref().map(Text::as_str),
                    gid: s.gid.as_ref(),
                    restart_units: s.restart_units.as_deref(),
                    reload_units: s.reload_units.as_deref(),
                },
                &mut bad,
            );
            if let (Some(shared), Some(format), Some(mode), Some(sops_file)) =
                (shared, format, mode, sops_file)
            {
                secrets.push(Secret {
                    name: shared.name,
                    key: s.key.as_ref().map_or_else(String::new, |k| k.as_str().to_owned()),
                    path: shared.path,
                    owner: shared.owner,
                    group: shared.group,
                    sops_file,
                    format,
                    mode,
                    restart_units: shared.restart_units,
                    reload_units: shared.reload_units,
                    credential: s.credential.unwrap_or(false),
                });
            }
        }
        check_file_dir_clashes(secrets.iter().map(|s| &s.name), "secret", &mut problems);
        for s in secrets
            .iter()
            .filter(|s| s.credential && s.name.as_str().contains('/'))
        {
            problems.push(format!(
                "secret {:?}: a systemd credential name cannot contain `/`; give the secret a name without one",
                s.name.as_str()
            ));
        }

        let mut templates = Vec::with_capacity(raw.templates.len());
        let mut seen_templates: HashMap<&str, usize> = HashMap::with_capacity(raw.templates.len());
        for (i, t) in raw.templates.iter().enumerate() {
            let raw_name = t.name.as_ref().map(Text::as_str);
            let mut bad = |msg: String| problems.push(format!("template {:?}: {msg}", label(raw_name, i)));
            let name = checked_name(raw_name, &mut bad);
            let source = match (
                t.content.as_ref().map(Text::as_str),
                t.file.as_ref().map(Text::as_str),
            ) {
                (Some(c), _) if !c.is_empty() => Some(TemplateSource::Content(c.to_owned())),
                (_, Some(f)) if !f.is_empty() => Some(TemplateSource::File(PathBuf::from(f))),
                _ => {
                    bad("it has neither content nor file".into());
                    None
                }
            };
            let mode = checked_mode(t.mode.as_ref().map(Text::as_str), &mut bad);
            note_duplicate(
                &mut seen_templates,
                raw_name.filter(|_| name.is_some()),
                i,
                "template",
                &mut bad,
            );
            let shared = Shared::check(
                name,
                &link_path.join("rendered"),
                RawShared {
                    path: t.path.as_ref().map(|p| expand(p.as_str().to_owned())),
                    owner: t.owner.as_ref().map(Text::as_str),
                    uid: t.uid.as_ref(),
                    group: t.group.as_ref().map(Text::as_str),
                    gid: t.gid.as_ref(),
                    restart_units: t.restart_units.as_deref(),
                    reload_units: t.reload_units.as_deref(),
                },
                &mut bad,
            );
            if let (Some(shared), Some(source), Some(mode)) = (shared, source, mode) {
                templates.push(Template {
                    name: shared.name,
                    source,
                    path: shared.path,
                    owner: shared.owner,
                    group: shared.group,
                    mode,
                    restart_units: shared.restart_units,
                    reload_units: shared.reload_units,
                });
            }
        }
        check_file_dir_clashes(templates.iter().map(|t| &t.name), "template", &mut problems);
        if secrets
            .iter()
            .any(|s| s.name.as_str() == "rendered" || s.name.as_str().starts_with("rendered/"))
        {
            problems.push("a secret is named `rendered`, which is where templates are written".into());
        }

        // The Nix module only writes placeholders when there are templates.
        let by_name = raw.placeholder_by_secret_name.unwrap_or_default();
        let mut placeholders = Vec::new();
        if !templates.is_empty() {
            for s in &secrets {
                match by_name.get(s.name.as_str()) {
                    Some(p) if !p.is_empty() => placeholders.push((p.clone(), s.name.clone())),
                    _ => problems.push(format!(
                        "secret {:?}: placeholderBySecretName has no placeholder for it",
                        s.name.as_str()
                    )),
                }
            }
        }

        let logging = raw.logging.unwrap_or_default();
        let IdentitySources {
            age_key_file,
            age_ssh_key_paths,
            ssh_key_paths,
            gnupg_home,
            log_imports: _,
        } = RawSources {
            age_key_file: raw.age_key_file,
            age_ssh_key_paths: raw.age_ssh_key_paths,
            ssh_key_paths: raw.ssh_key_paths,
            gnupg_home: raw.gnupg_home,
        }
        .checked(logging, expand);
        if gnupg_home.is_some() && !ssh_key_paths.is_empty() {
            problems.push("gnupgHome and sshKeyPaths are both set; they are mutually exclusive".into());
        }
        if gnupg_home.is_some() && age_key_file.is_some() {
            problems.push("gnupgHome and ageKeyFile are both set; they are mutually exclusive".into());
        }
        // Absent means 0 (keep all), as in sops-nix's Go installer; the module always writes it.
        let keep = raw.keep_generations.unwrap_or(0);
        if keep < 0 {
            problems.push(format!("keepGenerations {keep} is negative"));
        }

        let on_failure = match raw.on_failure.as_deref() {
            None | Some("abort") => OnFailure::Abort,
            Some("keep-previous") => OnFailure::KeepPrevious,
            Some(other) => {
                problems.push(format!("onFailure {other:?} is not `abort` or `keep-previous`"));
                OnFailure::Abort
            }
        };
        let manifest = Manifest {
            secrets,
            templates,
            placeholders,
            secrets_mount_point: PathBuf::from(mount),
            symlink_path: link_path,
            keep_generations: keep.max(0) as u64,
            ssh_key_paths,
            gnupg_home,
            age_key_file,
            age_ssh_key_paths,
            use_tmpfs: raw.use_tmpfs.unwrap_or(false),
            user_mode,
            logging,
            host_pub_keys: raw.host_pub_keys.unwrap_or_default(),
            on_failure,
            credstore_dir: PathBuf::from(raw.credstore_dir.unwrap_or_else(|| "/run/credstore".into())),
        };
        Ok((manifest, problems))
    }

    /// Reads and checks a manifest file (the installer itself reads its
    /// manifest through [`crate::safe_path`] and calls [`Manifest::parse`]).
    pub fn load(path: &Path, runtime_dir: Option<&str>) -> Result<Manifest, ManifestErrors> {
        let bytes = std::fs::read(path)
            .map_err(|e| ManifestErrors(vec![format!("cannot read manifest {}: {e}", path.display())]))?;
        let (manifest, problems) = Manifest::parse(&bytes, runtime_dir)?;
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestErrors(problems))
        }
    }
}

/// How an entry is named in its problems: its name (the start of a long
/// one), or its place in the list when it has none.
fn label(name: Option<&str>, i: usize) -> String {
    name.map_or_else(|| format!("#{}", i + 1), shortened)
}

/// Checks an optional name, reporting through `bad`.
fn checked_name(name: Option<&str>, bad: &mut impl FnMut(String)) -> Option<Name> {
    match name.map(Name::parse) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            bad(e);
            None
        }
        None => {
            bad("it has no name".into());
            None
        }
    }
}

/// A checked value, or `None` after reporting its problem through `bad`.
fn checked<T>(value: Result<T, String>, bad: &mut impl FnMut(String)) -> Option<T> {
    value.map_err(bad).ok()
}

/// Whether `name` below `dir` makes a path the kernel takes; reports through `bad` if not.
fn fits_below(dir: &Path, name: &Name, bad: &mut impl FnMut(String)) -> bool {
    // The name and the directory have been checked for control characters
    // on their own. `dir.join(name)` adds one `/` unless `dir` is empty or
    // ends in one; the joined path is made only to be shown.
    let dir_bytes = dir.as_os_str().as_encoded_bytes();
    let slash = usize::from(dir_bytes.last().is_some_and(|&b| b != b'/'));
    if dir_bytes.len() + slash + name.as_str().len() < PATH_MAX {
        return true;
    }
    let full = dir.join(name.as_str());
    let why = path_too_long(&full).expect("as long as counted");
    bad(format!(
        "the name's full path {:?} {why}; choose a shorter name",
        shortened(&full.to_string_lossy())
    ));
    false
}

/// The fields of a secret or a template that mean the same for both, as read.
struct RawShared<'r> {
    /// `path`, `%r` already expanded.
    path: Option<String>,
    owner: Option<&'r str>,
    uid: Option<&'r serde_json::Number>,
    group: Option<&'r str>,
    gid: Option<&'r serde_json::Number>,
    restart_units: Option<&'r [Text<'r>]>,
    reload_units: Option<&'r [Text<'r>]>,
}

/// Those fields checked.
struct Shared {
    name: Name,
    /// The custom path, or the default one below the item's directory.
    path: PathBuf,
    owner: Owner,
    group: Owner,
    restart_units: Units,
    reload_units: Units,
}

impl Shared {
    /// Checks every field (each problem goes to `bad`, in this order: the
    /// name's length below `dir`, path, owner, group, units); `None` if any failed.
    fn check(name: Option<Name>, dir: &Path, raw: RawShared, bad: &mut impl FnMut(String)) -> Option<Shared> {
        let name = name.filter(|n| fits_below(dir, n, bad));
        let path = checked_path(raw.path, bad);
        let owner = checked(Owner::parse("owner", "uid", raw.owner, raw.uid), bad);
        let group = checked(Owner::parse("group", "gid", raw.group, raw.gid), bad);
        let restart_units = Units::parse("restartUnits", raw.restart_units, bad);
        let reload_units = Units::parse("reloadUnits", raw.reload_units, bad);
        let (name, path, owner, group, restart_units, reload_units) =
            (name?, path?, owner?, group?, restart_units?, reload_units?);
        Some(Shared {
            path: path.unwrap_or_else(|| dir.join(name.as_str())),
            name,
            owner,
            group,
            restart_units,
            reload_units,
        })
    }
}

/// Checks a custom `path` if there is one: `Some(None)` when there is none,
/// `None` after reporting its problem through `bad`.
fn checked_path(path: Option<String>, bad: &mut impl FnMut(String)) -> Option<Option<PathBuf>> {
    let Some(path) = path else {
        return Some(None);
    };
    match path_problem(Path::new(&path)) {
        Some(why) => {
            bad(format!("path {:?} {why}; choose another path", shortened(&path)));
            None
        }
        None => Some(Some(PathBuf::from(path))),
    }
}

/// Checks an optional octal mode (default `0400`), reporting through `bad`.
fn checked_mode(mode: Option<&str>, bad: &mut impl FnMut(String)) -> Option<Mode> {
    Mode::parse(mode.unwrap_or("0400")).map_err(bad).ok()
}

/// Records a (valid) name, reporting the entry that used it first.
fn note_duplicate<'r>(
    seen: &mut HashMap<&'r str, usize>,
    name: Option<&'r str>,
    i: usize,
    what: &str,
    bad: &mut impl FnMut(String),
) {
    if let Some(n) = name
        && let Some(prev) = seen.insert(n, i)
    {
        bad(format!("{what} #{} has the same name", prev + 1));
    }
}

/// A name cannot be both a file and a directory: `a` and `a/b` clash.
fn check_file_dir_clashes<'a>(names: impl Iterator<Item = &'a Name>, what: &str, problems: &mut Vec<String>) {
    let mut all: Vec<&str> = names.map(Name::as_str).collect();
    all.sort_unstable();
    for pair in all.windows(2) {
        if let Some(rest) = pair[1].strip_prefix(pair[0])
            && rest.starts_with('/')
        {
            problems.push(format!(
                "{what} {:?} is a file, but {what} {:?} needs it to be a directory",
                pair[0], pair[1]
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_generation_directory() {
        assert!(Name::parse("ssh_keys/private_key").is_ok());
        assert!(Name::parse(&"a".repeat(255)).is_ok());
        let err = Name::parse(&format!("dir/{}", "a".repeat(256))).unwrap_err();
        assert!(err.contains("NAME_MAX"), "{err}");
        for bad in [
            "",
            "/etc/shadow",
            "../../etc/shadow",
            "a/../b",
            "a//b",
            "a/",
            "./a",
            "a\0b",
            "a\nb",
            "a\rb",
            "a\tb",
            "a\u{1b}[2Jb",
            "a\u{7f}",
            "a\u{85}b",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(Mode::parse("0400"), Ok(Mode(0o400)));
        assert_eq!(Mode::parse("440"), Ok(Mode(0o440)));
        assert!(Mode::parse("0800").is_err());
        assert!(Mode::parse("rw").is_err());
        assert!(Mode::parse("17777").is_err());
        assert_eq!(Mode::parse("0"), Ok(Mode(0)));
        assert_eq!(Mode::parse("4755"), Ok(Mode(0o4755)));
        // from_str_radix alone takes a sign; a mode has none.
        for bad in ["+400", "-400", "", " 400", "400 ", "0o400", "00400", "４００"] {
            let err = Mode::parse(bad).unwrap_err();
            assert!(err.contains("1 to 4 digits"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn unit_names_follow_systemds_grammar() {
        for good in [
            "nginx.service",
            "foo@bar.service",
            "getty@tty1.service",
            "a@b@c.service",
            "foo@..service",
            "sys-devices-x.device",
            "var-lib-x\\x2dy.mount",
            "sshd.socket",
            "x.timer",
            "multi-user.target",
            "a:b_c.path",
            "machine.slice",
            "x.scope",
            "x.swap",
            "x.automount",
        ] {
            assert_eq!(unit_name_problem(good), None, "{good:?}");
        }
        let long_ok = format!("{}.service", "a".repeat(255 - 8));
        assert_eq!(unit_name_problem(&long_ok), None);
        let too_long = format!("{}.service", "a".repeat(256 - 8));
        assert!(unit_name_problem(&too_long).unwrap().contains("at most 255"));
        for (bad, why) in [
            ("", "empty"),
            ("nginx", "no unit type"),
            (".service", "no unit type"),
            ("nginx.serv", "not a unit type"),
            ("nginx.service\nevil.service", "'\\n'"),
            ("nginx.service evil.service", "' '"),
            ("ngïnx.service", "'ï'"),
            ("a/b.service", "'/'"),
            ("@x.service", "starts with `@`"),
            ("foo@.service", "template"),
        ] {
            let got = unit_name_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(got.contains(why), "{bad:?}: {got}");
        }
    }

    #[test]
    fn owners_are_names_or_ids_fchown_applies() {
        let num = |v: i64| serde_json::Number::from(v);
        assert_eq!(Owner::parse("owner", "uid", None, None), Ok(Owner::Id(0)));
        assert_eq!(
            Owner::parse("owner", "uid", None, Some(&num(0))),
            Ok(Owner::Id(0))
        );
        assert_eq!(
            Owner::parse("owner", "uid", None, Some(&num(4294967294))),
            Ok(Owner::Id(4294967294))
        );
        assert_eq!(
            Owner::parse("group", "gid", Some("nginx"), Some(&num(0))),
            Ok(Owner::Name("nginx".into()))
        );
        for (id, why) in [
            (4294967295, "leave unchanged"),
            (-1, "not an id"),
            (4294967296, "not an id"),
        ] {
            let err = Owner::parse("owner", "uid", None, Some(&num(id))).unwrap_err();
            assert!(err.contains(why) && err.contains("uid"), "{id}: {err}");
        }
        for (name, why) in [
            ("", "empty"),
            ("root\nforged", "control character"),
            ("../etc/shadow", "`/`"),
            ("/etc/passwd", "`/`"),
            ("a:b", "`:`"),
        ] {
            let err = Owner::parse("group", "gid", Some(name), None).unwrap_err();
            assert!(err.contains(why) && err.starts_with("group "), "{name:?}: {err}");
        }
    }

    #[test]
    fn sops_nix_defaults_apply() {
        let m = Manifest::from_json(
            br#"{"secrets":[{"name":"a","key":"a","sopsFile":"/s.yaml","owner":null,"uid":0,"group":null,"gid":0}],
                "secretsMountPoint":"/run/secrets.d","symlinkPath":"/run/secrets","keepGenerations":1,
                "ageKeyFile":null,"unknownFutureField":3}"#,
            None,
        )
        .unwrap();
        let s = &m.secrets[0];
        assert_eq!(s.format, Format::Yaml);
        assert_eq!(s.mode, Mode(0o400));
        assert_eq!(s.owner, Owner::Id(0));
        assert_eq!(s.path, PathBuf::from("/run/secrets/a"));
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Manifest::from_json(
            br#"{"secretsMountPoint":"/run/secrets.d","symlinkPath":"/run/secrets","secrets":[
                {"name":"../x","sopsFile":"/s"},
                {"name":"b","sopsFile":"/s","mode":"9"},
                {"name":"c","sopsFile":"/s","format":"toml"},
                {"name":"c","sopsFile":"/s"}],
              "templates":[{"name":"t"}]}"#,
            None,
        )
        .unwrap_err();
        let all = err.0.join("\n");
        for needle in ["`..`", "\"9\"", "toml", "same name", "neither content nor file"] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }

    #[test]
    fn strings_with_escapes_read_as_the_same_strings() {
        // Strings without an escape are borrowed from the manifest's bytes,
        // those with one are unescaped into their own: both must mean the same.
        let m = Manifest::from_json(
            br#"{"secretsMountPoint":"/run/secrets.d","symlinkPath":"/run/secrets","secrets":[
                {"name":"a\u002fb","key":"k\"q","sopsFile":"/s\u00e9","owner":"\u0061lice",
                 "mode":"\u0030440","restartUnits":["x\u002eservice","y.service"],"format":"j\u0073on"},
                {"name":"plain","key":"k","sopsFile":"/s","owner":"alice","mode":"0440","restartUnits":["x.service"]}],
              "templates":[{"name":"t\u0031","content":"line\nnext {{a}}","reloadUnits":["z.service"]}],
              "placeholderBySecretName":{"a/b":"<a>","plain":"<p>"}}"#,
            None,
        )
        .unwrap();
        let (a, plain) = (&m.secrets[0], &m.secrets[1]);
        assert_eq!(a.name.as_str(), "a/b");
        assert_eq!(a.key, "k\"q");
        assert_eq!(a.sops_file, Path::new("/s\u{e9}"));
        assert_eq!(a.owner, Owner::Name("alice".into()));
        assert_eq!(a.mode, Mode(0o440));
        assert_eq!(a.format, Format::Json);
        assert_eq!(&a.restart_units[..], ["x.service", "y.service"]);
        assert_eq!(a.path, Path::new("/run/secrets/a/b"));
        assert_eq!(
            (plain.name.as_str(), plain.key.as_str(), &plain.owner, plain.mode),
            ("plain", "k", &Owner::Name("alice".into()), Mode(0o440))
        );
        assert_eq!(&plain.restart_units[..], ["x.service"]);
        let t = &m.templates[0];
        assert_eq!(t.name.as_str(), "t1");
        assert!(matches!(&t.source, TemplateSource::Content(c) if c == "line\nnext {{a}}"));
        assert_eq!(&t.reload_units[..], ["z.service"]);
        // An escaped unit name is checked as what it means.
        let err = Manifest::from_json(
            br#"{"secretsMountPoint":"/m","symlinkPath":"/l","secrets":[
                {"name":"a","sopsFile":"/s","restartUnits":["x\nevil.service"]}]}"#,
            None,
        )
        .unwrap_err();
        assert!(
            err.0
                .join("\n")
                .contains("restartUnits entry \"x\\nevil.service\""),
            "{err}"
        );
    }

    #[test]
    fn a_name_fits_below_its_directory_up_to_path_max() {
        let longest = PATH_MAX - 1;
        for link in ["/l", "/l/"] {
            // The name's full path is the link's directory, one `/` (unless the
            // link ends in one) and the name: 20 components of 200 bytes and a rest.
            let dir_len = "/l".len() + 1;
            let name_of = |len: usize| {
                let mut parts = vec!["n".repeat(200); len / 201];
                parts.push("r".repeat(len - parts.len() * 201));
                parts.join("/")
            };
            let manifest = |name: &str| {
                format!(
                    r#"{{"secretsMountPoint":"/m","symlinkPath":"{link}","secrets":[{{"name":"{name}","sopsFile":"/s"}}]}}"#
                )
            };
            let fits = name_of(longest - dir_len);
            assert_eq!(Path::new(link).join(&fits).as_os_str().len(), longest);
            Manifest::from_json(manifest(&fits).as_bytes(), None).unwrap();
            let over = name_of(longest - dir_len + 1);
            let err = Manifest::from_json(manifest(&over).as_bytes(), None).unwrap_err();
            assert!(
                err.0.join("\n").contains(&format!("is {PATH_MAX} bytes long")),
                "{link}: {err}"
            );
        }
    }

    #[test]
    fn a_manifest_that_is_not_utf8_is_refused_as_json() {
        let err = Manifest::from_json(b"{\"secrets\":[{\"name\":\"a\xff\"}]}", None).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.0[0].starts_with("it is not JSON of the manifest's shape: "),
            "{err}"
        );
    }

    #[test]
    fn only_a_json_object_is_a_manifest() {
        assert!(Manifest::parse(b"[]", None).is_err());
        let (_, problems) = Manifest::parse(b"{}", None).unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("secretsMountPoint is missing")),
            "{problems:?}"
        );
    }

    #[test]
    fn file_and_directory_names_clash() {
        let err = Manifest::from_json(
            br#"{"secretsMountPoint":"/m","symlinkPath":"/l","secrets":[{"name":"a","sopsFile":"/s"},{"name":"a/b","sopsFile":"/s"}]}"#,
            None,
        )
        .unwrap_err();
        assert!(err.0[0].contains("needs it to be a directory"), "{:?}", err.0);
    }

    #[test]
    fn runtime_dir_expands_in_user_mode() {
        assert_eq!(
            expand_runtime_dir("%r/secrets", "/run/user/1000"),
            "/run/user/1000/secrets"
        );
        assert_eq!(expand_runtime_dir("%%r/x", "/run/user/1000"), "%r/x");
    }

    #[test]
    fn the_darwin_temp_dir_loses_its_trailing_slash_as_in_sops_nix() {
        let temp = "/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T";
        for printed in [
            format!("{temp}/"),
            format!("{temp}/\n"),
            format!("{temp}/ \t\n"),
            temp.to_owned(),
        ] {
            assert_eq!(
                runtime_dir_from_darwin_temp_dir(printed.as_bytes()).unwrap(),
                temp,
                "{printed:?}"
            );
        }
        // Only one slash goes, as with sops-nix's TrimSuffix.
        assert_eq!(
            runtime_dir_from_darwin_temp_dir(b"/var/folders/x/T//").unwrap(),
            "/var/folders/x/T/"
        );
        let dir = runtime_dir_from_darwin_temp_dir(format!("{temp}/").as_bytes()).unwrap();
        assert_eq!(
            expand_runtime_dir("%r/secrets.d", &dir),
            format!("{temp}/secrets.d")
        );
    }

    #[test]
    fn a_darwin_temp_dir_that_is_not_an_absolute_path_is_refused() {
        for bad in [
            &b""[..],
            b"/",
            b"\n",
            b"T/",
            b"relative/T/",
            b"/var/\xff/T/",
            b"/var/\0x/T/",
        ] {
            let err = runtime_dir_from_darwin_temp_dir(bad).unwrap_err();
            assert!(matches!(err, DarwinTempDirError::NotAPath(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn user_mode_without_a_runtime_dir_names_what_is_missing() {
        let (_, problems) = Manifest::parse(
            br#"{"secretsMountPoint":"%r/s.d","symlinkPath":"%r/s","userMode":true}"#,
            None,
        )
        .unwrap();
        assert!(
            problems.iter().any(|p| p.contains("$XDG_RUNTIME_DIR")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_prescan_reads_the_identity_sources_and_files_the_checked_manifest_has() {
        let cases: [(&[u8], Option<&str>); 4] = [
            // User mode: `%r` in age paths, not in sshKeyPaths (sops-nix expands only the former).
            (
                br#"{"userMode":true,"secretsMountPoint":"%r/secrets.d","symlinkPath":"%r/secrets",
                    "ageKeyFile":"%r/age.txt","ageSshKeyPaths":["%r/k","/etc/ssh/x"],
                    "sshKeyPaths":["%r/rsa"],"logging":{"keyImport":true},
                    "secrets":[{"name":"a","sopsFile":"/s/a.yaml"},{"name":"b","sopsFile":"/s/b.json","format":"json"},
                               {"name":"c","sopsFile":"/s/a.yaml","key":"c"}]}"#,
                Some("/run/user/1000"),
            ),
            // Escapes, null and empty strings, and keys that come after the secrets.
            (
                br#"{"secretsMountPoint":"/run/secrets.d","symlinkPath":"/run/secrets",
                    "secrets":[{"name":"a","sopsFile":"/s\u002fa.env","format":"dotenv"},
                               {"name":"b","sopsFile":"/s/b.yaml","format":null},
                               {"name":"c","sopsFile":"/s/c.yaml","format":""}],
                    "ageKeyFile":"","gnupgHome":"/var/lib/g\u006epg","sshKeyPaths":null}"#,
                None,
            ),
            // No identity at all, nothing but the required fields.
            (
                br#"{"secretsMountPoint":"/m","symlinkPath":"/l","secrets":[{"name":"a","sopsFile":"/s.bin","format":"binary"}]}"#,
                None,
            ),
            // User mode without a runtime directory: nothing is expanded.
            (
                br#"{"userMode":true,"secretsMountPoint":"/m","symlinkPath":"/l","ageKeyFile":"%r/age.txt",
                    "secrets":[{"name":"a","sopsFile":"/s.ini","format":"ini"}]}"#,
                None,
            ),
        ];
        for (text, runtime_dir) in cases {
            let (m, _) = Manifest::parse(text, runtime_dir).unwrap();
            let scan = Prescan::read(text, runtime_dir).unwrap();
            assert_eq!(
                scan.identities,
                m.identity_sources(),
                "{}",
                String::from_utf8_lossy(text)
            );
            // Each file once, in the order secrets first name it, with that secret's format.
            let mut files: Vec<(PathBuf, Format)> = Vec::new();
            for s in &m.secrets {
                if !files.iter().any(|(p, _)| *p == s.sops_file) {
                    files.push((s.sops_file.clone(), s.format));
                }
            }
            assert_eq!(scan.files, files, "{}", String::from_utf8_lossy(text));
        }
        let (m, _) = Manifest::parse(cases[0].0, cases[0].1).unwrap();
        assert_eq!(m.age_key_file, Some(PathBuf::from("/run/user/1000/age.txt")));
        assert_eq!(m.ssh_key_paths, [PathBuf::from("%r/rsa")]);
        assert_eq!(
            Prescan::read(cases[1].0, None).unwrap().files[0].0,
            Path::new("/s/a.env")
        );
    }

    #[test]
    fn a_prescan_passes_over_secrets_without_a_file_or_a_known_format() {
        // The checked manifest refuses the first three; the prescan takes
        // the next secret's file and format instead, or none.
        let text = br#"{"secrets":[{"name":"a","sopsFile":"/x.yaml","format":"toml"},
                                     {"name":"b","sopsFile":""},{"name":"c"},
                                     {"name":"d","sopsFile":"/x.yaml","format":"json"},
                                     {"name":"e","sopsFile":"/x.yaml","format":"yaml"}]}"#;
        let scan = Prescan::read(text, None).unwrap();
        assert_eq!(scan.files, [(PathBuf::from("/x.yaml"), Format::Json)]);
        assert_eq!(scan.identities, IdentitySources::default());
        for not_a_manifest in [&b"[1]"[..], b"{", b"{\"secrets\":3}", b"\xff{}"] {
            assert_eq!(Prescan::read(not_a_manifest, None), None);
        }
    }
}
