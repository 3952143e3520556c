//! The manifest: what the NixOS module asks the installer to do.
//!
//! sops-nix's NixOS module serialises `config.sops` into a JSON file in the
//! Nix store and runs the installer on it at activation and at boot. This
//! module reads that JSON exactly as sops-nix writes it (unknown fields are
//! ignored, absent ones take sops-nix's defaults) and turns it into checked
//! types: after [`Manifest::from_json`] succeeds, every name is a safe
//! relative path, every mode a valid octal mode, every format known.
//! Problems are collected, not stopped at, so one run lists them all.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
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
    /// Parses an octal mode such as `0400` or `440`.
    pub fn parse(s: &str) -> Result<Mode, String> {
        let v = u32::from_str_radix(s, 8).map_err(|_| format!("mode {s:?} is not an octal number"))?;
        if v > 0o7777 {
            return Err(format!("mode {s:?} has bits beyond 07777"));
        }
        Ok(Mode(v))
    }
}

/// Who owns a file: a name looked up through NSS at install time, or a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A user or group name.
    Name(String),
    /// A numeric id.
    Id(u32),
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
    pub restart_units: Vec<String>,
    /// Units to reload when it changes.
    pub reload_units: Vec<String>,
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
    pub restart_units: Vec<String>,
    /// Units to reload when it changes.
    pub reload_units: Vec<String>,
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

// The JSON as sops-nix writes it. Strings may be null where the Nix option is nullable.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawManifest {
    secrets: Vec<RawSecret>,
    templates: Vec<RawTemplate>,
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
struct RawSecret {
    name: Option<String>,
    key: Option<String>,
    path: Option<String>,
    owner: Option<String>,
    uid: Option<u32>,
    group: Option<String>,
    gid: Option<u32>,
    sops_file: Option<String>,
    format: Option<String>,
    mode: Option<String>,
    restart_units: Option<Vec<String>>,
    reload_units: Option<Vec<String>>,
    credential: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawTemplate {
    name: Option<String>,
    content: Option<String>,
    file: Option<String>,
    path: Option<String>,
    mode: Option<String>,
    owner: Option<String>,
    uid: Option<u32>,
    group: Option<String>,
    gid: Option<u32>,
    restart_units: Option<Vec<String>>,
    reload_units: Option<Vec<String>>,
}

/// Every problem found in a manifest.
#[derive(Debug, thiserror::Error)]
#[error("the manifest is not valid:\n  {}", .0.join("\n  "))]
pub struct ManifestErrors(pub Vec<String>);

/// Replaces `%r` with the runtime directory and `%%` with `%` (user mode paths).
pub fn expand_runtime_dir(path: &str, runtime_dir: &str) -> String {
    path.split("%%")
        .map(|part| part.replace("%r", runtime_dir))
        .collect::<Vec<_>>()
        .join("%")
}

fn owner(name: Option<String>, id: Option<u32>) -> Owner {
    match name {
        Some(n) => Owner::Name(n),
        None => Owner::Id(id.unwrap_or(0)),
    }
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
        // Straight into the typed form: no intermediate JSON tree for a manifest of many secrets.
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| ManifestErrors(vec![format!("it is not a valid manifest: {e}")]))?;
        let mut problems = Vec::new();
        let user_mode = raw.user_mode.unwrap_or(false);
        let expand = |p: String| -> String {
            match (user_mode, runtime_dir) {
                (true, Some(dir)) => expand_runtime_dir(&p, dir),
                _ => p,
            }
        };
        if user_mode && runtime_dir.is_none() {
            problems.push(
                "userMode is set but $XDG_RUNTIME_DIR is not, so `%r` in paths cannot be expanded".into(),
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
            }
        }
        let link_path = PathBuf::from(&link);

        let mut secrets = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, s) in raw.secrets.into_iter().enumerate() {
            let label = s.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let mut bad = |msg: String| problems.push(format!("secret {label:?}: {msg}"));
            let name = checked_name(s.name.as_deref(), &mut bad);
            let format = match s.format.as_deref() {
                None | Some("") => Some(Format::Yaml),
                Some(f) => Format::from_name(f).or_else(|| {
                    bad(format!(
                        "format {f:?} is not one of yaml, json, dotenv, ini, binary"
                    ));
                    None
                }),
            };
            let mode = checked_mode(s.mode.as_deref(), &mut bad);
            let sops_file = match s.sops_file {
                Some(f) if !f.is_empty() => Some(PathBuf::from(f)),
                _ => {
                    bad("it has no sopsFile".into());
                    None
                }
            };
            note_duplicate(&mut seen, &name, i, "secret", &mut bad);
            if let (Some(name), Some(format), Some(mode), Some(sops_file)) = (name, format, mode, sops_file) {
                let default_path = link_path.join(name.as_str());
                secrets.push(Secret {
                    path: s.path.map(&expand).map_or(default_path, PathBuf::from),
                    name,
                    key: s.key.unwrap_or_default(),
                    owner: owner(s.owner, s.uid),
                    group: owner(s.group, s.gid),
                    sops_file,
                    format,
                    mode,
                    restart_units: s.restart_units.unwrap_or_default(),
                    reload_units: s.reload_units.unwrap_or_default(),
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

        let mut templates = Vec::new();
        let mut seen_templates: HashMap<String, usize> = HashMap::new();
        for (i, t) in raw.templates.into_iter().enumerate() {
            let label = t.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let mut bad = |msg: String| problems.push(format!("template {label:?}: {msg}"));
            let name = checked_name(t.name.as_deref(), &mut bad);
            let source = match (t.content, t.file) {
                (Some(c), _) if !c.is_empty() => Some(TemplateSource::Content(c)),
                (_, Some(f)) if !f.is_empty() => Some(TemplateSource::File(PathBuf::from(f))),
                _ => {
                    bad("it has neither content nor file".into());
                    None
                }
            };
            let mode = checked_mode(t.mode.as_deref(), &mut bad);
            note_duplicate(&mut seen_templates, &name, i, "template", &mut bad);
            if let (Some(name), Some(source), Some(mode)) = (name, source, mode) {
                let default_path = link_path.join("rendered").join(name.as_str());
                templates.push(Template {
                    path: t.path.map(&expand).map_or(default_path, PathBuf::from),
                    name,
                    source,
                    owner: owner(t.owner, t.uid),
                    group: owner(t.group, t.gid),
                    mode,
                    restart_units: t.restart_units.unwrap_or_default(),
                    reload_units: t.reload_units.unwrap_or_default(),
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

        let gnupg_home = raw.gnupg_home.filter(|s| !s.is_empty()).map(PathBuf::from);
        let age_key_file = raw
            .age_key_file
            .filter(|s| !s.is_empty())
            .map(|p| PathBuf::from(expand(p)));
        let ssh_key_paths: Vec<PathBuf> = raw
            .ssh_key_paths
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect();
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
            age_ssh_key_paths: raw
                .age_ssh_key_paths
                .unwrap_or_default()
                .into_iter()
                .map(|p| PathBuf::from(expand(p)))
                .collect(),
            use_tmpfs: raw.use_tmpfs.unwrap_or(false),
            user_mode,
            logging: raw.logging.unwrap_or_default(),
            host_pub_keys: raw.host_pub_keys.unwrap_or_default(),
            on_failure,
            credstore_dir: PathBuf::from(raw.credstore_dir.unwrap_or_else(|| "/run/credstore".into())),
        };
        Ok((manifest, problems))
    }

    /// Reads and checks a manifest file.
    pub fn load(path: &Path, runtime_dir: Option<&str>) -> Result<Manifest, ManifestErrors> {
        let (manifest, problems) = Manifest::load_lenient(path, runtime_dir)?;
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestErrors(problems))
        }
    }

    /// Reads a manifest file like [`Manifest::parse`].
    pub fn load_lenient(
        path: &Path,
        runtime_dir: Option<&str>,
    ) -> Result<(Manifest, Vec<String>), ManifestErrors> {
        let bytes = std::fs::read(path)
            .map_err(|e| ManifestErrors(vec![format!("cannot read manifest {}: {e}", path.display())]))?;
        Manifest::parse(&bytes, runtime_dir)
    }
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

/// Checks an optional octal mode (default `0400`), reporting through `bad`.
fn checked_mode(mode: Option<&str>, bad: &mut impl FnMut(String)) -> Option<Mode> {
    Mode::parse(mode.unwrap_or("0400")).map_err(bad).ok()
}

/// Records a name, reporting the entry that used it first.
fn note_duplicate(
    seen: &mut HashMap<String, usize>,
    name: &Option<Name>,
    i: usize,
    what: &str,
    bad: &mut impl FnMut(String),
) {
    if let Some(n) = name
        && let Some(prev) = seen.insert(n.as_str().to_owned(), i)
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
        for bad in [
            "",
            "/etc/shadow",
            "../../etc/shadow",
            "a/../b",
            "a//b",
            "a/",
            "./a",
            "a\0b",
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
}
