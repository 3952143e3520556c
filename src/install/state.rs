//! What a generation records about itself.
//!
//! The next run needs to know what the live generation was made from: the
//! units of a secret that is now gone (to restart them, since the service
//! lost a file it may read) and the custom paths of links that now point
//! nowhere. Each generation keeps that in a small root-only file; it holds
//! names, paths and unit names, never a secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name inside a generation.
pub const FILE: &str = ".sops-install-secrets.json";

/// One secret or template as installed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Where the user found it (a custom path is a link we made).
    pub path: PathBuf,
    /// Its units.
    pub restart_units: Vec<String>,
    /// Its units.
    pub reload_units: Vec<String>,
    /// Whether a credential link was made for it.
    #[serde(default)]
    pub credential: bool,
}

/// Everything a generation holds, by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Secrets.
    pub secrets: BTreeMap<String, Entry>,
    /// Templates.
    pub templates: BTreeMap<String, Entry>,
}

impl State {
    /// The live generation's record; empty if there is none (first run, or
    /// a generation written by sops-nix).
    pub fn load(live_root: &Path) -> State {
        std::fs::read(live_root.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map of strings serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_absence() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::load(dir.path()), State::default());
        let mut s = State::default();
        s.secrets.insert(
            "a".into(),
            Entry {
                path: "/run/secrets/a".into(),
                restart_units: vec!["x.service".into()],
                reload_units: vec![],
                credential: true,
            },
        );
        std::fs::write(dir.path().join(FILE), s.to_json()).unwrap();
        assert_eq!(State::load(dir.path()), s);
    }
}
