//! One file to install: a secret or a rendered template. After planning,
//! every stage treats the two alike; only where they live in a generation
//! (`rendered/` for templates) and how they are named in messages differ.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::generation::Ids;
use super::state::{Entry, EntryRef, State};
use crate::manifest::{Mode, Name};
use crate::plaintext::Plaintext;

/// What an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A value from a sops file.
    Secret,
    /// A template rendered with secrets' values.
    Template,
}

impl Kind {
    /// Both kinds, in the order they are written, compared and reported.
    pub(crate) const ALL: [Kind; 2] = [Kind::Secret, Kind::Template];

    /// The directory of a generation the kind lives in.
    pub(crate) fn subdir(self) -> Option<&'static str> {
        match self {
            Kind::Secret => None,
            Kind::Template => Some(TEMPLATES_DIR),
        }
    }

    /// How messages name one.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Template => "template",
        }
    }

    /// How sops-nix's change lines name one.
    pub(crate) fn change_noun(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Template => "rendered secret",
        }
    }

    /// Its place in lists kept per kind, in the order of [`Kind::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Kind::Secret => 0,
            Kind::Template => 1,
        }
    }

    /// Where a generation's record keeps this kind.
    pub(crate) fn record(self, state: &State) -> &BTreeMap<String, Entry> {
        match self {
            Kind::Secret => &state.secrets,
            Kind::Template => &state.templates,
        }
    }

    /// `name`'s path relative to a generation.
    pub(crate) fn relative(self, name: &str) -> String {
        match self.subdir() {
            Some(dir) => format!("{dir}/{name}"),
            None => name.to_owned(),
        }
    }

    /// Whether `path` is byte for byte `<link>/<relative>`, [`Kind::under_link`]
    /// as the NixOS module writes it, told without building that path. `false`
    /// may still be another spelling of it (`//`, a trailing `/` on the link).
    pub(crate) fn is_default_path(self, symlink_path: &Path, name: &str, path: &Path) -> bool {
        let (path, link) = (
            path.as_os_str().as_encoded_bytes(),
            symlink_path.as_os_str().as_encoded_bytes(),
        );
        let Some(rest) = path.strip_prefix(link).and_then(|r| r.strip_prefix(b"/")) else {
            return false;
        };
        let rest = match self.subdir() {
            Some(dir) => rest
                .strip_prefix(dir.as_bytes())
                .and_then(|r| r.strip_prefix(b"/")),
            None => Some(rest),
        };
        rest == Some(name.as_bytes())
    }

    /// Where `name` is reached through the live link.
    pub(crate) fn under_link(self, symlink_path: &Path, name: &str) -> PathBuf {
        match self.subdir() {
            Some(dir) => symlink_path.join(dir).join(name),
            None => symlink_path.join(name),
        }
    }
}

/// The directory of a generation that holds rendered templates.
pub(crate) const TEMPLATES_DIR: &str = "rendered";

/// Where an item's bytes, owner and mode come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Decrypted or rendered by this run.
    Fresh,
    /// Kept from the live generation (`onFailure = "keep-previous"`), unchanged.
    Kept,
}

/// A file ready to be written.
#[derive(Debug)]
pub(crate) struct Item<'m> {
    pub(crate) name: &'m Name,
    pub(crate) kind: Kind,
    pub(crate) bytes: Plaintext,
    /// Owner and group; `None` in user mode (no chown).
    pub(crate) ids: Option<Ids>,
    pub(crate) mode: Mode,
    /// Where the user finds it: the default place under the link, or a custom
    /// `path` that becomes a symlink there.
    pub(crate) path: &'m Path,
    pub(crate) restart: &'m [String],
    pub(crate) reload: &'m [String],
    /// Also offered as a systemd credential (secrets only).
    pub(crate) credential: bool,
    pub(crate) origin: Origin,
    /// Keyed digest of `bytes`, for the generation's record.
    pub(crate) digest: String,
}

impl Item<'_> {
    /// Its path relative to a generation (no copy for a secret: this runs for
    /// every file written).
    pub(crate) fn relative(&self) -> std::borrow::Cow<'_, str> {
        match self.kind {
            Kind::Secret => std::borrow::Cow::Borrowed(self.name.as_str()),
            Kind::Template => std::borrow::Cow::Owned(self.kind.relative(self.name.as_str())),
        }
    }

    /// Where it is reached through the live link.
    pub(crate) fn under_link(&self, symlink_path: &Path) -> PathBuf {
        self.kind.under_link(symlink_path, self.name.as_str())
    }

    /// Whether its `path` is the default one, [`Item::under_link`], told
    /// without building that path (this runs for every item).
    pub(crate) fn at_default_path(&self, symlink_path: &Path) -> bool {
        // As the NixOS module writes it, byte for byte: `<link>/<relative>`.
        if self
            .kind
            .is_default_path(symlink_path, self.name.as_str(), self.path)
        {
            return true;
        }
        // Any other spelling of it (`//`, a trailing `/` on the link) is
        // compared component by component.
        let relative = self.relative();
        self.path
            .strip_prefix(symlink_path)
            .is_ok_and(|rest| rest == Path::new(&*relative))
    }

    /// "secret \"a/b\"".
    pub(crate) fn shown(&self) -> String {
        format!("{} {:?}", self.kind.noun(), self.name.as_str())
    }

    /// What the record keeps of it.
    pub(crate) fn entry(&self) -> EntryRef<'_> {
        EntryRef {
            path: self.path,
            restart_units: self.restart,
            reload_units: self.reload,
            credential: self.credential,
            digest: &self.digest,
            mode: self.mode.0,
            uid: self.ids.map(|ids| ids.uid),
            gid: self.ids.map(|ids| ids.gid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plaintext::Plaintext;

    #[test]
    fn the_default_path_is_known_however_it_is_spelt() {
        let name = Name::parse("db/password").unwrap();
        let at = |kind, path: &str, link: &str| {
            Item {
                name: &name,
                kind,
                bytes: Plaintext::from(zeroize::Zeroizing::new(b"v".to_vec())),
                ids: None,
                mode: Mode(0o400),
                path: Path::new(path),
                restart: &[],
                reload: &[],
                credential: false,
                origin: Origin::Fresh,
                digest: String::new(),
            }
            .at_default_path(Path::new(link))
        };
        let secret = Kind::Secret;
        assert!(at(secret, "/run/secrets/db/password", "/run/secrets"));
        assert!(at(secret, "/run/secrets//db/password", "/run/secrets"));
        assert!(at(secret, "/run/secrets/db/password", "/run/secrets/"));
        assert!(at(secret, "/run/secrets/db//password/", "/run/secrets"));
        assert!(!at(secret, "/run/secrets/db/passwordx", "/run/secrets"));
        assert!(!at(secret, "/run/secretsX/db/password", "/run/secrets"));
        assert!(!at(secret, "/run/secrets/db-password", "/run/secrets"));
        assert!(!at(secret, "/etc/db/password", "/run/secrets"));
        assert!(!at(secret, "/run/secrets/rendered/db/password", "/run/secrets"));
        let template = Kind::Template;
        assert!(at(template, "/run/secrets/rendered/db/password", "/run/secrets"));
        assert!(!at(template, "/run/secrets/db/password", "/run/secrets"));
        // Same length, same start and end, another middle.
        assert!(!at(template, "/run/secrets/renderXd/db/password", "/run/secrets"));

        // The byte-for-byte test alone, as the record's entries are checked:
        // only the spelling the module writes; any other is left to the caller.
        let exact = |kind: Kind, path: &str| {
            kind.is_default_path(Path::new("/run/secrets"), "db/password", Path::new(path))
        };
        assert!(exact(secret, "/run/secrets/db/password"));
        assert!(exact(template, "/run/secrets/rendered/db/password"));
        for other in [
            "/run/secrets//db/password",
            "/run/secrets/db//password/",
            "/run/secrets/db/passwordx",
            "/run/secretsX/db/password",
            "/run/secrets/rendered/db/password",
            "/run/secrets",
            "",
        ] {
            assert!(!exact(secret, other), "{other}");
        }
        assert!(!exact(template, "/run/secrets/db/password"));
        assert!(!exact(template, "/run/secrets/renderXd/db/password"));
    }
}
