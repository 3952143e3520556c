//! What a generation records about itself.
//!
//! The next run needs to know what the live generation was made from: the
//! units of a secret that is now gone (to restart them, since the service
//! lost a file it may read) and the custom paths of links that now point
//! nowhere. Each generation keeps that in a small root-only file; it holds
//! names, paths and unit names, never a secret.
//!
//! It also lets the diff tell what changed (change lines, restarts, dry runs)
//! without reading every live copy: for each file it keeps the mode, owner
//! and a keyed digest (HMAC-SHA-256, truncated to 128 bits) of the content,
//! so the next run compares what it is about to write with the record. (The
//! write stage still reads the live copy of each unchanged file before it
//! hard-links it into the next generation: the record says what was written,
//! not what is there now.) The key is random, made
//! when a mount's first recorded generation is written and carried from
//! record to record; it lives in the record itself, a root-only file on the
//! secrets mount, so the digests tell nothing that the reader of the record,
//! root, could not read from the secrets themselves, and nothing survives a
//! reboot. A record without a key (written by an older version, or none at
//! all, as after sops-nix) makes the next run read the live copies instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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
    /// Keyed digest of the content ([`DigestKey::digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Permission bits as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Owner as written (absent in user mode, where nothing is chowned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group as written (absent in user mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// The key of a mount's content digests (32 random bytes, wiped on drop),
/// with the HMAC state already keyed, so that each digest costs only the
/// content's blocks.
#[derive(Clone)]
pub struct DigestKey {
    key: Zeroizing<[u8; 32]>,
    keyed: Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

impl DigestKey {
    /// A new random key.
    pub fn fresh() -> DigestKey {
        use rand::RngCore;
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        DigestKey::new(key)
    }

    fn new(key: Zeroizing<[u8; 32]>) -> DigestKey {
        let keyed = Hmac::<sha2::Sha256>::new_from_slice(&key[..]).expect("any key length");
        DigestKey { key, keyed }
    }

    fn from_text(text: &str) -> Option<DigestKey> {
        let bytes = Zeroizing::new(B64.decode(text).ok()?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return None;
        }
        key.copy_from_slice(&bytes);
        Some(DigestKey::new(key))
    }

    fn to_text(&self) -> String {
        B64.encode(&self.key[..])
    }

    /// The digest a record keeps of `content`.
    pub fn digest(&self, content: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        mac.update(content);
        B64.encode(&mac.finalize().into_bytes()[..16])
    }
}

/// Everything a generation holds, by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// The digest key ([`DigestKey`]); absent in records of older versions.
    #[serde(default, rename = "digestKey", skip_serializing_if = "Option::is_none")]
    pub digest_key: Option<String>,
    /// Secrets.
    pub secrets: BTreeMap<String, Entry>,
    /// Templates.
    pub templates: BTreeMap<String, Entry>,
}

impl State {
    /// The live generation's record; empty if there is none (first run, or
    /// a generation written by sops-nix).
    pub fn load(live_root: &Path) -> State {
        read(live_root).map(|b| State::parse(&b)).unwrap_or_default()
    }

    /// A record's entries; empty if `bytes` are not a record. Its UTF-8 is
    /// checked once for the whole text rather than string by string, as the
    /// manifest's is: about an eighth of the parse of a 1,000-entry record.
    pub fn parse(bytes: &[u8]) -> State {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }

    /// The record's digest key, if it has one.
    pub fn key(&self) -> Option<DigestKey> {
        self.digest_key.as_deref().and_then(DigestKey::from_text)
    }

    /// Keeps `key` in the record (records are written by [`record_json`];
    /// this is for tests that make one by hand).
    #[cfg(test)]
    pub fn set_key(&mut self, key: &DigestKey) {
        self.digest_key = Some(key.to_text());
    }

    /// The JSON of the record (tests; the installer writes [`record_json`]).
    #[cfg(test)]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map of strings serialises")
    }
}

/// The bytes of the live generation's record, if it has one. They are wiped
/// on drop: they hold the digest key.
pub fn read(live_root: &Path) -> Option<Zeroizing<Vec<u8>>> {
    // Walked like every input: the live link is ours, a link planted by another user is not followed.
    crate::safe_path::read(&live_root.join(FILE), crate::safe_path::Trust::invoker())
        .ok()
        .map(Zeroizing::new)
}

/// The digest key at the start of a record written by [`record_json`], read
/// without parsing the entries that follow it: a run whose record comes out
/// byte for byte as the live one need not parse the live one at all.
pub fn key_at_start(record: &[u8]) -> Option<DigestKey> {
    let rest = record.strip_prefix(br#"{"digestKey":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    DigestKey::from_text(std::str::from_utf8(&rest[..end]).ok()?)
}

/// An [`Entry`] borrowed from what was installed: the record of a generation
/// of many secrets is written without copying every name, path and unit list
/// into owned maps first. Serialises exactly as [`Entry`] does.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryRef<'a> {
    /// See [`Entry::path`].
    pub path: &'a Path,
    /// See [`Entry::restart_units`].
    pub restart_units: &'a [String],
    /// See [`Entry::reload_units`].
    pub reload_units: &'a [String],
    /// See [`Entry::credential`].
    pub credential: bool,
    /// See [`Entry::digest`].
    pub digest: &'a str,
    /// See [`Entry::mode`].
    pub mode: u32,
    /// See [`Entry::uid`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// See [`Entry::gid`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// The JSON of a [`State`] with `key`, made from borrowed entries (by name).
pub fn record_json<'a>(
    key: &DigestKey,
    secrets: impl IntoIterator<Item = (&'a str, EntryRef<'a>)>,
    templates: impl IntoIterator<Item = (&'a str, EntryRef<'a>)>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct StateRef<'a> {
        #[serde(rename = "digestKey")]
        digest_key: String,
        secrets: ByName<'a>,
        templates: ByName<'a>,
    }
    let record = StateRef {
        digest_key: key.to_text(),
        secrets: ByName::new(secrets),
        templates: ByName::new(templates),
    };
    // About what each entry takes, so that the text is not copied as it grows.
    let size = |m: &ByName<'_>| -> usize {
        m.0.iter()
            .map(|(name, e)| {
                let units: usize = e
                    .restart_units
                    .iter()
                    .chain(e.reload_units)
                    .map(|u| u.len() + 3)
                    .sum();
                160 + name.len() + e.path.as_os_str().len() + e.digest.len() + units
            })
            .sum()
    };
    let mut out = Vec::with_capacity(128 + size(&record.secrets) + size(&record.templates));
    serde_json::to_writer(&mut out, &record).expect("a map of strings serialises");
    out
}

/// Entries in the order of their names, as a `BTreeMap` keeps and serialises
/// them (the last of equal names wins there too), without building one.
struct ByName<'a>(Vec<(&'a str, EntryRef<'a>)>);

impl<'a> ByName<'a> {
    fn new(entries: impl IntoIterator<Item = (&'a str, EntryRef<'a>)>) -> ByName<'a> {
        let mut all: Vec<_> = entries.into_iter().collect();
        // Stable, so that of equal names the last given stays last.
        all.sort_by(|a, b| a.0.cmp(b.0));
        let mut kept: Vec<(&'a str, EntryRef<'a>)> = Vec::with_capacity(all.len());
        for entry in all {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        ByName(kept)
    }
}

impl Serialize for ByName<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, entry)| (name, entry)))
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
                digest: Some("d".into()),
                mode: Some(0o400),
                uid: Some(0),
                gid: None,
            },
        );
        s.set_key(&DigestKey::fresh());
        std::fs::write(dir.path().join(FILE), s.to_json()).unwrap();
        assert_eq!(State::load(dir.path()), s);
        assert!(State::load(dir.path()).key().is_some());
    }

    #[test]
    fn digests_depend_on_the_key_and_the_content() {
        let (a, b) = (DigestKey::fresh(), DigestKey::fresh());
        assert_eq!(a.digest(b"x"), a.digest(b"x"));
        assert_ne!(a.digest(b"x"), a.digest(b"y"));
        assert_ne!(a.digest(b"x"), b.digest(b"x"));
        let mut s = State::default();
        s.set_key(&a);
        assert_eq!(s.key().unwrap().digest(b"x"), a.digest(b"x"));
        assert_eq!(format!("{a:?}"), "DigestKey(..)");
    }

    #[test]
    fn a_record_made_from_borrowed_entries_reads_back_as_the_owned_one() {
        let key = DigestKey::fresh();
        let units = vec!["a.service".to_owned()];
        let entry = |uid| EntryRef {
            path: Path::new("/run/secrets/x"),
            restart_units: &units,
            reload_units: &[],
            credential: true,
            digest: "d",
            mode: 0o440,
            uid,
            gid: uid,
        };
        let json = record_json(&key, [("x", entry(Some(3)))], [("t", entry(None))]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), &json).unwrap();
        let mut want = State::default();
        want.set_key(&key);
        let owned = |uid| Entry {
            path: "/run/secrets/x".into(),
            restart_units: units.clone(),
            reload_units: vec![],
            credential: true,
            digest: Some("d".into()),
            mode: Some(0o440),
            uid,
            gid: uid,
        };
        want.secrets.insert("x".into(), owned(Some(3)));
        want.templates.insert("t".into(), owned(None));
        assert_eq!(State::load(dir.path()), want);
        assert_eq!(json, want.to_json());
    }

    #[test]
    fn entries_are_written_in_name_order_as_the_owned_record_writes_them() {
        let key = DigestKey::fresh();
        // Out of order, with a prefix of another, non-ASCII, quotes and a
        // newline (escaped in JSON), and one name given twice (the last wins).
        let names = [
            "b",
            "a/x",
            "a",
            "\u{e9}t\u{e9}",
            "q\"uote",
            "new\nline",
            "a",
            "Z",
            "a-b",
            "10",
            "9",
        ];
        let digests: Vec<String> = (0..names.len()).map(|i| format!("d{i}")).collect();
        let paths: Vec<PathBuf> = names.iter().map(|n| Path::new("/run/secrets").join(n)).collect();
        let units = vec!["a.service".to_owned(), "b@x.service".to_owned()];
        let entry = |i: usize| EntryRef {
            path: &paths[i],
            restart_units: if i.is_multiple_of(2) { &units } else { &[] },
            reload_units: if i.is_multiple_of(3) { &units[1..] } else { &[] },
            credential: i.is_multiple_of(4),
            digest: &digests[i],
            mode: 0o400 + i as u32,
            uid: (!i.is_multiple_of(5)).then_some(i as u32),
            gid: (!i.is_multiple_of(5)).then_some(100 + i as u32),
        };
        let json = record_json(
            &key,
            names.iter().enumerate().map(|(i, n)| (*n, entry(i))),
            names.iter().enumerate().rev().map(|(i, n)| (*n, entry(i))),
        );
        let owned = |i: usize| Entry {
            path: paths[i].clone(),
            restart_units: entry(i).restart_units.to_vec(),
            reload_units: entry(i).reload_units.to_vec(),
            credential: entry(i).credential,
            digest: Some(digests[i].clone()),
            mode: Some(entry(i).mode),
            uid: entry(i).uid,
            gid: entry(i).gid,
        };
        let mut want = State::default();
        want.set_key(&key);
        for (i, n) in names.iter().enumerate() {
            want.secrets.insert((*n).to_owned(), owned(i));
        }
        for (i, n) in names.iter().enumerate().rev() {
            want.templates.insert((*n).to_owned(), owned(i));
        }
        assert_eq!(want.secrets["a"].digest.as_deref(), Some("d6"));
        assert_eq!(want.templates["a"].digest.as_deref(), Some("d2"));
        assert_eq!(
            String::from_utf8(json).unwrap(),
            String::from_utf8(want.to_json()).unwrap()
        );
    }

    #[test]
    fn the_key_is_read_from_the_start_of_a_record_without_its_entries() {
        let key = DigestKey::fresh();
        let json = record_json(&key, [], []);
        let found = key_at_start(&json).expect("a record made here starts with its key");
        assert_eq!(found.digest(b"x"), key.digest(b"x"));
        assert_eq!(State::parse(&json).key().unwrap().digest(b"x"), key.digest(b"x"));
        // Anything else is left to the full parse.
        let old = br#"{"secrets":{},"templates":{},"digestKey":"AAAA"}"#;
        assert!(key_at_start(old).is_none());
        assert!(key_at_start(br#"{"digestKey":"short"}"#).is_none());
        assert!(key_at_start(br#"{"digestKey":"#).is_none());
        assert!(key_at_start(b"").is_none());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_no_record() {
        let key = DigestKey::fresh();
        let units = vec!["a.service".to_owned()];
        let entry = EntryRef {
            path: Path::new("/run/secrets/x"),
            restart_units: &units,
            reload_units: &[],
            credential: false,
            digest: "d",
            mode: 0o400,
            uid: Some(0),
            gid: Some(0),
        };
        let json = record_json(&key, [("x", entry)], []);
        assert_eq!(State::parse(&json).secrets["x"].restart_units, units);
        // One byte of the path made invalid UTF-8: the whole record is refused.
        let at = json.windows(3).position(|w| w == b"/x\"").expect("the path") + 1;
        let mut bad = json.clone();
        bad[at] = 0xff;
        assert_eq!(State::parse(&bad), State::default());
        assert_eq!(State::parse(b"\xff{}"), State::default());
    }

    #[test]
    fn a_record_of_an_older_version_has_no_key_and_no_digests() {
        let old = r#"{"secrets":{"a":{"path":"/run/secrets/a","restartUnits":[],"reloadUnits":[]}},"templates":{}}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert!(s.key().is_none());
        assert_eq!(s.secrets["a"].digest, None);
    }
}
