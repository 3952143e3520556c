//! The document tree that every sops format is read into.
//!
//! sops models a file as an ordered tree: maps keep their key order, lists
//! keep theirs, and comments are entries of their own between the items they
//! precede. Order matters twice: the MAC is a hash over the values in document
//! order, and `sops -d` prints the document back in that order. The tree is
//! therefore a list of entries, never a hash map.

use std::fmt;

use zeroize::Zeroize;

/// A value in a sops document, before or after decryption.
///
/// Encrypted files hold `Str("ENC[AES256_GCM,...]")` leaves; after decryption
/// those become the typed value the `type:` field of the ciphertext names.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// YAML `null` / JSON `null`. Never encrypted, never part of the MAC.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer (Go's `int` on the platforms sops ships for).
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    Str(String),
    /// Raw bytes (sops's `type:bytes`).
    Bytes(Vec<u8>),
    /// A timestamp, kept as the RFC 3339 text Go's `time.Time.MarshalText` gives.
    Time(String),
    /// An ordered map.
    Map(Vec<MapEntry>),
    /// An ordered list.
    Seq(Vec<SeqEntry>),
}

/// One entry of a map: a key with its value, or a comment line.
#[derive(Clone, PartialEq)]
pub enum MapEntry {
    /// `key: value`.
    Pair(String, Value),
    /// A comment between entries.
    Comment(Comment),
}

/// One entry of a list: an item, or a comment line.
#[derive(Clone, PartialEq)]
pub enum SeqEntry {
    /// A list item.
    Item(Value),
    /// A comment between items.
    Comment(Comment),
}

/// A comment, without its leading `#`.
#[derive(Clone, PartialEq, Eq)]
pub struct Comment {
    /// The text after `#` (sops encrypts it like a value).
    pub text: String,
    /// Whether it stood at the end of a value's line rather than on a line of its own.
    pub inline: bool,
}

// Plaintext must not leak through `{:?}` in a log line or a panic message.
impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Bool(_) => f.write_str("Bool(..)"),
            Value::Int(_) => f.write_str("Int(..)"),
            Value::Float(_) => f.write_str("Float(..)"),
            Value::Str(_) => f.write_str("Str(..)"),
            Value::Bytes(_) => f.write_str("Bytes(..)"),
            Value::Time(_) => f.write_str("Time(..)"),
            Value::Map(m) => write!(f, "Map({} entries)", m.len()),
            Value::Seq(s) => write!(f, "Seq({} entries)", s.len()),
        }
    }
}

impl fmt::Debug for MapEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapEntry::Pair(k, v) => write!(f, "{k:?}: {v:?}"),
            MapEntry::Comment(_) => f.write_str("#.."),
        }
    }
}

impl fmt::Debug for SeqEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeqEntry::Item(v) => write!(f, "{v:?}"),
            SeqEntry::Comment(_) => f.write_str("#.."),
        }
    }
}

impl Zeroize for Value {
    fn zeroize(&mut self) {
        match self {
            Value::Null => {}
            Value::Bool(b) => b.zeroize(),
            Value::Int(i) => i.zeroize(),
            Value::Float(x) => x.zeroize(),
            Value::Str(s) | Value::Time(s) => s.zeroize(),
            Value::Bytes(b) => b.zeroize(),
            Value::Map(entries) => {
                for e in entries.iter_mut() {
                    match e {
                        MapEntry::Pair(k, v) => {
                            k.zeroize();
                            v.zeroize();
                        }
                        MapEntry::Comment(c) => c.text.zeroize(),
                    }
                }
            }
            Value::Seq(entries) => {
                for e in entries.iter_mut() {
                    match e {
                        SeqEntry::Item(v) => v.zeroize(),
                        SeqEntry::Comment(c) => c.text.zeroize(),
                    }
                }
            }
        }
    }
}

impl Value {
    /// The value at `key` if this is a map holding it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().find_map(|e| match e {
                MapEntry::Pair(k, v) if k == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The `index`th item (comments not counted) if this is a list.
    pub fn item(&self, index: usize) -> Option<&Value> {
        match self {
            Value::Seq(entries) => entries
                .iter()
                .filter_map(|e| match e {
                    SeqEntry::Item(v) => Some(v),
                    SeqEntry::Comment(_) => None,
                })
                .nth(index),
            _ => None,
        }
    }

    /// Roughly how many bytes of text the value holds (keys, strings,
    /// comments), to size output buffers once instead of growing them.
    pub fn text_len(&self) -> usize {
        match self {
            Value::Str(s) | Value::Time(s) => s.len() + 8,
            Value::Bytes(b) => b.len() * 2 + 8,
            Value::Map(entries) => entries
                .iter()
                .map(|e| match e {
                    MapEntry::Pair(k, v) => k.len() + 8 + v.text_len(),
                    MapEntry::Comment(c) => c.text.len() + 8,
                })
                .sum(),
            Value::Seq(entries) => entries
                .iter()
                .map(|e| match e {
                    SeqEntry::Item(v) => v.text_len() + 8,
                    SeqEntry::Comment(c) => c.text.len() + 8,
                })
                .sum(),
            _ => 24,
        }
    }

    /// A short name of the value's kind, for error messages (never the value).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Time(_) => "timestamp",
            Value::Map(_) => "map",
            Value::Seq(_) => "list",
        }
    }
}

/// One step of a path into the tree: a map key or a list index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathStep {
    /// A map key.
    Key(String),
    /// A list index (comments not counted).
    Index(usize),
}

impl fmt::Display for PathStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathStep::Key(k) => write!(f, "[{k:?}]"),
            PathStep::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// Formats a path the way `sops --extract` spells it: `["a"]["b"][0]`.
pub fn display_path(path: &[PathStep]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// Parses a secret's `key` as sops-nix spells it: `a/b/c` walks nested maps.
///
/// sops-nix only walks maps, so every component is a map key, including ones
/// made of digits.
pub fn parse_slash_path(key: &str) -> Vec<PathStep> {
    if key.is_empty() {
        return Vec::new();
    }
    key.split('/').map(|s| PathStep::Key(s.to_owned())).collect()
}

/// Parses `sops --extract` syntax: `["a"]["b"][0]`.
pub fn parse_extract_path(spec: &str) -> Option<Vec<PathStep>> {
    let mut steps = Vec::new();
    let mut rest = spec.trim();
    while !rest.is_empty() {
        rest = rest.strip_prefix('[')?;
        if let Some(after_quote) = rest.strip_prefix('"') {
            // Keys are Go-quoted strings; `\"` and `\\` are the escapes that occur in practice.
            let mut key = String::new();
            let mut chars = after_quote.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => key.push(chars.next()?.1),
                    '"' => break i,
                    c => key.push(c),
                }
            };
            rest = after_quote[end + 1..].strip_prefix(']')?;
            steps.push(PathStep::Key(key));
        } else {
            let close = rest.find(']')?;
            steps.push(PathStep::Index(rest[..close].trim().parse().ok()?));
            rest = &rest[close + 1..];
        }
    }
    Some(steps)
}

/// Why a path does not lead to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathNotFound {
    /// The longest prefix of the path that exists.
    pub found: Vec<PathStep>,
    /// The step that does not exist below it.
    pub missing: PathStep,
    /// The kind of the value at `found` (a map, a list, a string, ...).
    pub parent_kind: &'static str,
}

impl Value {
    /// Follows `path` from this value.
    pub fn lookup(&self, path: &[PathStep]) -> Result<&Value, PathNotFound> {
        let mut current = self;
        for (depth, step) in path.iter().enumerate() {
            let next = match step {
                PathStep::Key(k) => current.get(k),
                PathStep::Index(i) => current.item(*i),
            };
            current = next.ok_or_else(|| PathNotFound {
                found: path[..depth].to_vec(),
                missing: step.clone(),
                parent_kind: current.kind(),
            })?;
        }
        Ok(current)
    }
}

impl Value {
    /// Every value spelled out, for test failure messages only (never in production paths).
    #[cfg(test)]
    pub(crate) fn dump(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("{b}"),
            Value::Int(i) => format!("{i}"),
            Value::Float(f) => format!("{f}f"),
            Value::Str(s) => format!("{s:?}"),
            Value::Bytes(b) => format!("bytes{b:?}"),
            Value::Time(t) => format!("time({t})"),
            Value::Map(m) => {
                let inner: Vec<String> = m
                    .iter()
                    .map(|e| match e {
                        MapEntry::Pair(k, v) => format!("{k:?}: {}", v.dump()),
                        MapEntry::Comment(c) => format!("#{:?}{}", c.text, if c.inline { "i" } else { "" }),
                    })
                    .collect();
                format!("{{{}}}", inner.join(", "))
            }
            Value::Seq(s) => {
                let inner: Vec<String> = s
                    .iter()
                    .map(|e| match e {
                        SeqEntry::Item(v) => v.dump(),
                        SeqEntry::Comment(c) => format!("#{:?}{}", c.text, if c.inline { "i" } else { "" }),
                    })
                    .collect();
                format!("[{}]", inner.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_syntax_round_trips_keys_and_indices() {
        let p = parse_extract_path(r#"["a b"]["c\"d"][3]"#).unwrap();
        assert_eq!(
            p,
            vec![
                PathStep::Key("a b".into()),
                PathStep::Key("c\"d".into()),
                PathStep::Index(3)
            ]
        );
        assert_eq!(parse_extract_path(r#"["a""#), None);
        assert_eq!(parse_extract_path("a"), None);
    }

    #[test]
    fn slash_path_walks_maps_only() {
        assert_eq!(
            parse_slash_path("ssh_keys/0"),
            vec![PathStep::Key("ssh_keys".into()), PathStep::Key("0".into())]
        );
        assert!(parse_slash_path("").is_empty());
    }

    #[test]
    fn lookup_reports_deepest_existing_prefix() {
        let doc = Value::Map(vec![MapEntry::Pair(
            "a".into(),
            Value::Map(vec![MapEntry::Pair("b".into(), Value::Int(1))]),
        )]);
        let err = doc.lookup(&parse_slash_path("a/c/d")).unwrap_err();
        assert_eq!(err.found, vec![PathStep::Key("a".into())]);
        assert_eq!(err.missing, PathStep::Key("c".into()));
        assert_eq!(err.parent_kind, "map");
        assert_eq!(doc.lookup(&parse_slash_path("a/b")).unwrap(), &Value::Int(1));
    }

    #[test]
    fn debug_never_prints_plaintext() {
        let v = Value::Str("hunter2".into());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
