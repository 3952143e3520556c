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
//!
//! A run compares its own record with the live one as bytes first (the same:
//! nothing changed) and then entry by entry ([`delta`]): only the live entries
//! whose text is not this run's are parsed.

use std::collections::BTreeMap;
use std::ops::Range;
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
        let mut digest = self.start();
        digest.update(content);
        DigestKey::text(digest)
    }

    /// A digest taken piece by piece: [`Mac::update`] it, then
    /// [`DigestKey::text`].
    pub(crate) fn start(&self) -> Hmac<sha2::Sha256> {
        self.keyed.clone()
    }

    /// The text of a digest [`DigestKey::start`]ed.
    pub(crate) fn text(digest: Hmac<sha2::Sha256>) -> String {
        B64.encode(&digest.finalize().into_bytes()[..16])
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

/// A record made by [`record_json`]: its text, and where each entry lies in
/// it, so that a live record can be compared with it entry by entry
/// ([`delta`]).
pub struct Record {
    /// The JSON, written as it is.
    pub bytes: Vec<u8>,
    /// Each entry's text (`"name":{...}`), secrets then templates, in order.
    members: [Vec<Range<usize>>; 2],
    /// Where the secrets' entries start, just after their map's `{`.
    entries_start: usize,
}

/// What opens each map of a record, and what closes the record, as
/// [`record_json`] writes them and [`delta`] expects them.
const OPEN_SECRETS: &[u8] = br#","secrets":{"#;
const OPEN_TEMPLATES: &[u8] = br#"},"templates":{"#;
const CLOSE: &[u8] = b"}}";

/// The JSON of a [`State`] with `key`, made from borrowed entries (by name).
/// Written member by member, byte for byte as serde_json writes the
/// [`State`] (the tests hold the two together), to know where each is.
pub fn record_json<'a>(
    key: &DigestKey,
    secrets: impl IntoIterator<Item = (&'a str, EntryRef<'a>)>,
    templates: impl IntoIterator<Item = (&'a str, EntryRef<'a>)>,
) -> Record {
    let maps = [ByName::new(secrets), ByName::new(templates)];
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
    let mut out = Vec::with_capacity(128 + size(&maps[0]) + size(&maps[1]));
    out.extend_from_slice(br#"{"digestKey":"#);
    json(&mut out, &Zeroizing::new(key.to_text()).as_str());
    let mut members: [Vec<Range<usize>>; 2] = Default::default();
    let mut entries_start = 0;
    for (k, (map, open)) in maps.iter().zip([OPEN_SECRETS, OPEN_TEMPLATES]).enumerate() {
        out.extend_from_slice(open);
        if k == 0 {
            entries_start = out.len();
        }
        members[k].reserve_exact(map.0.len());
        for (i, (name, entry)) in map.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let start = out.len();
            json(&mut out, name);
            out.push(b':');
            json(&mut out, entry);
            members[k].push(start..out.len());
        }
    }
    out.extend_from_slice(CLOSE);
    Record {
        bytes: out,
        members,
        entries_start,
    }
}

/// One value, as compact JSON.
fn json(out: &mut Vec<u8>, value: &impl Serialize) {
    serde_json::to_writer(out, value).expect("strings, numbers and lists serialise");
}

/// What a live record holds that this run's [`Record`] does not: see [`delta`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// The live entries whose text is not byte for byte this run's entry of
    /// the same name: changed, or gone from this run. (`digest_key` is not read.)
    pub differing: State,
    /// This run's names that the live record lacks: secrets, then templates,
    /// each in the record's (sorted) order.
    pub absent: [Vec<String>; 2],
}

/// Compares a live record with `new`, both made by [`record_json`] with the
/// same key, entry by entry: an entry whose text is byte for byte the new
/// one's is passed over unparsed (one memory comparison); only the others
/// are parsed. With one secret of 1,000 changed this replaces parsing the
/// whole live record. `None` if the live text does not have the shape
/// [`record_json`] writes (another key, spacing, a truncated file): the
/// caller then parses it whole.
pub fn delta(new: &Record, live: &[u8]) -> Option<Delta> {
    let text = &new.bytes;
    // The digest key and the opening of the secrets: the same bytes.
    let mut at = new.entries_start;
    if live.get(..at)? != &text[..at] {
        return None;
    }
    let mut delta = Delta::default();
    for (k, members) in new.members.iter().enumerate() {
        if k == 1 {
            if !live[at..].starts_with(OPEN_TEMPLATES) {
                return None;
            }
            at += OPEN_TEMPLATES.len();
        }
        let differing = match k {
            0 => &mut delta.differing.secrets,
            _ => &mut delta.differing.templates,
        };
        let mut next = 0;
        let mut first = true;
        let mut previous = Previous::None;
        loop {
            match *live.get(at)? {
                b'}' => break,
                b',' if !first => at += 1,
                _ if first => {}
                _ => return None,
            }
            first = false;
            if let Some(len) = members
                .get(next)
                .and_then(|m| same_entry_at(live, at, &text[m.clone()]))
            {
                at += len;
                previous = Previous::Own(next);
                next += 1;
                continue;
            }
            let (name, colon) = name_of_member(live, at)?;
            // Names follow each other in order, each once, as a map writes them.
            let before = match &previous {
                Previous::None => None,
                Previous::Own(i) => Some(name_at(text, members[*i].start)?),
                Previous::Parsed(n) => Some(n.clone()),
            };
            if before.is_some_and(|b| b >= name) {
                return None;
            }
            // This run's names before it are not in the live record.
            let mut same_name = None;
            while let Some(m) = members.get(next) {
                let own = name_at(text, m.start)?;
                match own.cmp(&name) {
                    std::cmp::Ordering::Less => delta.absent[k].push(own),
                    std::cmp::Ordering::Equal => same_name = Some(m.clone()),
                    std::cmp::Ordering::Greater => break,
                }
                next += 1;
                if same_name.is_some() {
                    break;
                }
            }
            if let Some(len) = same_name.and_then(|m| same_entry_at(live, at, &text[m])) {
                at += len;
                previous = Previous::Own(next - 1);
                continue;
            }
            let mut entries = serde_json::Deserializer::from_slice(&live[colon + 1..]).into_iter::<Entry>();
            let entry = entries.next()?.ok()?;
            at = colon + 1 + entries.byte_offset();
            previous = Previous::Parsed(name.clone());
            differing.insert(name, entry);
        }
        for m in &members[next..] {
            delta.absent[k].push(name_at(text, m.start)?);
        }
    }
    (&live[at..] == CLOSE).then_some(delta)
}

/// The length of `own` (an entry's whole text) if the live record has
/// exactly that entry at `at`: a JSON member ends where its text does, so
/// the same bytes are the same entry.
fn same_entry_at(live: &[u8], at: usize, own: &[u8]) -> Option<usize> {
    (live[at..].starts_with(own) && matches!(live.get(at + own.len()), Some(b',' | b'}')))
        .then_some(own.len())
}

/// The live entry before the one at hand, in [`delta`].
enum Previous {
    None,
    /// The same text as this run's entry of that index.
    Own(usize),
    /// Parsed, with this name.
    Parsed(String),
}

/// The name of the entry whose text starts at `at` (`"name":{...}`), and
/// where its `:` is.
fn name_of_member(text: &[u8], at: usize) -> Option<(String, usize)> {
    let mut names = serde_json::Deserializer::from_slice(text.get(at..)?).into_iter::<String>();
    let name = names.next()?.ok()?;
    let colon = at + names.byte_offset();
    (text.get(colon) == Some(&b':')).then_some((name, colon))
}

/// The name of the entry whose text starts at `at`.
fn name_at(text: &[u8], at: usize) -> Option<String> {
    serde_json::Deserializer::from_slice(text.get(at..)?)
        .into_iter::<String>()
        .next()?
        .ok()
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
        let json = record_json(&key, [("x", entry(Some(3)))], [("t", entry(None))]).bytes;
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
        )
        .bytes;
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
        let json = record_json(&key, [], []).bytes;
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
        let json = record_json(&key, [("x", entry)], []).bytes;
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

    /// An entry owned by a test, lent to [`record_json`] as an [`EntryRef`].
    struct Owned {
        path: PathBuf,
        restart: Vec<String>,
        reload: Vec<String>,
        credential: bool,
        digest: String,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    }

    impl Owned {
        fn lent(&self) -> EntryRef<'_> {
            EntryRef {
                path: &self.path,
                restart_units: &self.restart,
                reload_units: &self.reload,
                credential: self.credential,
                digest: &self.digest,
                mode: self.mode,
                uid: self.uid,
                gid: self.gid,
            }
        }
    }

    /// A small deterministic stream of choices (splitmix64).
    struct Choices(u64);

    impl Choices {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }

        fn entry(&mut self, name: &str) -> Owned {
            let units = |c: &mut Choices| -> Vec<String> {
                (0..c.below(3))
                    .map(|i| format!("u{i}-{}.service", c.below(2)))
                    .collect()
            };
            Owned {
                path: match self.below(3) {
                    0 => PathBuf::from(format!("/etc/custom/{name}")),
                    _ => PathBuf::from(format!("/run/secrets/{name}")),
                },
                restart: units(self),
                reload: units(self),
                credential: self.below(4) == 0,
                digest: format!("d{}", self.below(3)),
                mode: [0o400, 0o440, 0o600][self.below(3) as usize],
                uid: [None, Some(0), Some(1000)][self.below(3) as usize],
                gid: [None, Some(0), Some(5)][self.below(3) as usize],
            }
        }
    }

    /// Names that sort and escape in every way JSON has: quotes, backslashes,
    /// a control character, non-ASCII, slashes, prefixes of each other.
    const NAMES: [&str; 12] = [
        "a", "a b", "ab", "b\"q", "c\\d", "db/x", "e\u{1}", "s00001", "s00010", "z", "é", "ü/ß",
    ];

    /// Two records of random overlap (live, then this run's), made by the
    /// same key, as owned entries by kind.
    type Pair = [[Vec<(&'static str, Owned)>; 2]; 2];

    fn pair(c: &mut Choices) -> Pair {
        let [mut live, mut now]: Pair = Default::default();
        for (live, now) in live.iter_mut().zip(&mut now) {
            for name in NAMES {
                // Live only, this run only, both the same, both different, neither.
                match c.below(5) {
                    0 => live.push((name, c.entry(name))),
                    1 => now.push((name, c.entry(name))),
                    2 => {
                        let seed = c.below(u64::MAX);
                        live.push((name, Choices(seed).entry(name)));
                        now.push((name, Choices(seed).entry(name)));
                    }
                    3 => {
                        live.push((name, c.entry(name)));
                        now.push((name, c.entry(name)));
                    }
                    _ => {}
                }
            }
        }
        [live, now]
    }

    fn record_of(key: &DigestKey, maps: &[Vec<(&'static str, Owned)>; 2]) -> Record {
        let lent = |k: usize| maps[k].iter().map(|(n, e)| (*n, e.lent()));
        record_json(key, lent(0), lent(1))
    }

    /// What parsing both records whole finds: the live entries that are not
    /// this run's, and this run's names the live record lacks.
    fn expected(live: &State, new: &State) -> Delta {
        let mut d = Delta::default();
        for (k, (old, now)) in [(&live.secrets, &new.secrets), (&live.templates, &new.templates)]
            .into_iter()
            .enumerate()
        {
            let differing = match k {
                0 => &mut d.differing.secrets,
                _ => &mut d.differing.templates,
            };
            for (name, entry) in old {
                if now.get(name) != Some(entry) {
                    differing.insert(name.clone(), entry.clone());
                }
            }
            d.absent[k] = now.keys().filter(|n| !old.contains_key(*n)).cloned().collect();
        }
        d
    }

    #[test]
    fn the_delta_of_two_records_is_what_parsing_both_whole_finds() {
        let key = DigestKey::fresh();
        let mut c = Choices(7);
        let mut parsed = 0;
        for _ in 0..400 {
            let [old, now] = pair(&mut c);
            let (live, new) = (record_of(&key, &old), record_of(&key, &now));
            let want = expected(&State::parse(&live.bytes), &State::parse(&new.bytes));
            let got = delta(&new, &live.bytes).expect("two records of one key have a delta");
            assert_eq!(got, want, "live {}", String::from_utf8_lossy(&live.bytes));
            parsed += got.differing.secrets.len() + got.differing.templates.len();
        }
        assert!(parsed > 0, "some scenarios had entries to parse");
    }

    #[test]
    fn a_live_record_of_another_shape_gives_no_delta_or_the_one_parsing_finds() {
        let key = DigestKey::fresh();
        let mut c = Choices(11);
        let mut answered = 0;
        for round in 0..12 {
            let [old, now] = pair(&mut c);
            let (live, new) = (record_of(&key, &old), record_of(&key, &now));
            let bytes = &live.bytes;
            let want = |changed: &[u8]| {
                let whole = State::parse(changed);
                (whole != State::default()).then(|| expected(&whole, &State::parse(&new.bytes)))
            };
            // A changed text may still parse to the same entry (an unknown
            // field is ignored): parsed, it is this run's again, no change.
            let now = State::parse(&new.bytes);
            let mut check = |changed: Vec<u8>, what: &str| {
                if let Some(mut got) = delta(&new, &changed) {
                    answered += 1;
                    got.differing.secrets.retain(|n, e| now.secrets.get(n) != Some(e));
                    got.differing
                        .templates
                        .retain(|n, e| now.templates.get(n) != Some(e));
                    assert_eq!(
                        Some(got),
                        want(&changed),
                        "{what}: {}",
                        String::from_utf8_lossy(&changed)
                    );
                }
            };
            // Cut short anywhere: never a delta.
            for end in 0..bytes.len() {
                assert_eq!(delta(&new, &bytes[..end]), None, "cut at {end}");
            }
            // Something after the end, another key, spaces.
            check([bytes.as_slice(), b" "].concat(), "a space after");
            check(record_of(&DigestKey::fresh(), &old).bytes, "another key");
            let spaced = String::from_utf8(bytes.clone()).unwrap().replace(",\"", ", \"");
            check(spaced.into_bytes(), "spaced");
            // Each byte changed in turn, to another that JSON gives meaning to.
            for at in (round % 7..bytes.len()).step_by(7) {
                for b in [b'"', b',', b'}', b'0', b'a', b'\\'] {
                    let mut changed = bytes.clone();
                    changed[at] = b;
                    check(changed, "a byte changed");
                }
            }
        }
        assert!(answered > 0, "some changed records still had a delta");
    }

    #[test]
    fn a_live_record_out_of_name_order_gives_no_delta() {
        let key = DigestKey::fresh();
        let mut c = Choices(3);
        let (a, b) = (c.entry("a"), c.entry("b"));
        let new = record_json(&key, [("a", a.lent()), ("b", b.lent())], []);
        // The live record written by hand with its entries swapped.
        let member = |name: &str, e: &Owned| {
            let mut out = Vec::new();
            json(&mut out, &name);
            out.push(b':');
            json(&mut out, &e.lent());
            out
        };
        let head = &new.bytes[..new.entries_start];
        let swapped = [
            head,
            &member("b", &b),
            b",",
            &member("a", &a),
            br#"},"templates":{}}"#,
        ]
        .concat();
        assert_ne!(State::parse(&swapped), State::default(), "it is valid JSON");
        assert_eq!(delta(&new, &swapped), None);
    }
}
