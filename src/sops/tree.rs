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
    /// A list index. Comments count, as in sops (its lists hold them as items).
    Index(usize),
    /// A component of a slash path (`a/0/b`): a map key, or on a list the
    /// index it spells in decimal digits.
    KeyOrIndex(String),
}

impl fmt::Display for PathStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathStep::Key(k) | PathStep::KeyOrIndex(k) => write!(f, "[{k:?}]"),
            PathStep::Index(i) => write!(f, "[{i}]"),
        }
    }
}

impl PathStep {
    /// The list index this step selects, if it can select one.
    fn index(&self) -> Option<usize> {
        match self {
            PathStep::Index(i) => Some(*i),
            PathStep::KeyOrIndex(k) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => {
                k.parse().ok()
            }
            _ => None,
        }
    }
}

/// Formats a path the way `sops --extract` spells it: `["a"]["b"][0]`.
pub fn display_path(path: &[PathStep]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// Parses a secret's `key` as sops-nix spells it: `a/b/c` walks nested maps.
///
/// A component walks into a map by key; on a list, a component of decimal
/// digits is an index (sops-nix cannot reach into lists at all). So `a/0/b`
/// is sops's `["a"][0]["b"]` where `a` is a list and `["a"]["0"]["b"]` where
/// it is a map. As in sops, a list's comments count as items.
pub fn parse_slash_path(key: &str) -> Vec<PathStep> {
    if key.is_empty() {
        return Vec::new();
    }
    key.split('/')
        .map(|s| PathStep::KeyOrIndex(s.to_owned()))
        .collect()
}

/// Parses `sops --extract` syntax, `["a"]['b'][0]`, exactly as sops 3.11 does.
///
/// sops splits the text at every `[`; each part must end with `]`; a part
/// starting with a quote is a key (the characters between the first and the
/// last, with no escapes), any other is a decimal index. A key holding `[`
/// therefore cannot be named. What sops refuses, or would crash on (`[]`, a
/// lone quote, a negative index), is refused with the reason.
pub fn parse_extract_path(spec: &str) -> Result<Vec<PathStep>, String> {
    let mut steps = Vec::new();
    for part in spec.split('[').filter(|p| !p.is_empty()) {
        let inner = part
            .strip_suffix(']')
            .ok_or_else(|| format!("component {part:?} does not end with ]"))?;
        if inner.starts_with(['"', '\'']) {
            if inner.len() < 2 {
                return Err(format!("component {part:?} is an unterminated key"));
            }
            steps.push(PathStep::Key(inner[1..inner.len() - 1].to_owned()));
        } else {
            // Go's strconv.Atoi: an optional sign, then decimal digits.
            let digits = inner.strip_prefix('+').unwrap_or(inner);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "component {part:?} is neither a quoted key nor a list index"
                ));
            }
            let i = digits
                .parse()
                .map_err(|_| format!("component {part:?} is too large an index"))?;
            steps.push(PathStep::Index(i));
        }
    }
    Ok(steps)
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

/// What a path leads to.
pub enum Target<'a> {
    /// A value.
    Value(&'a Value),
    /// A comment of a list, which sops counts as an item.
    Comment(&'a Comment),
    /// An entry of a map reached by an index (`["map"][0]`): sops's maps are
    /// lists of key/value items, and its `--extract` indexes them too.
    Entry(&'a MapEntry),
}

impl fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Value(v) => write!(f, "Value({v:?})"),
            Target::Comment(_) => f.write_str("Comment(..)"),
            Target::Entry(e) => write!(f, "Entry({e:?})"),
        }
    }
}

impl Value {
    /// Follows `path` from this value.
    pub fn lookup(&self, path: &[PathStep]) -> Result<&Value, PathNotFound> {
        match self.locate(path)? {
            Target::Value(v) => Ok(v),
            Target::Comment(_) | Target::Entry(_) => Err(PathNotFound {
                found: path[..path.len() - 1].to_vec(),
                missing: path[path.len() - 1].clone(),
                parent_kind: "list whose item there is a comment",
            }),
        }
    }

    /// Follows `path` from this value, as sops's `Truncate` does.
    pub fn locate(&self, path: &[PathStep]) -> Result<Target<'_>, PathNotFound> {
        let mut current = Target::Value(self);
        for (depth, step) in path.iter().enumerate() {
            let not_found = |kind| PathNotFound {
                found: path[..depth].to_vec(),
                missing: step.clone(),
                parent_kind: kind,
            };
            let value = match current {
                Target::Value(v) => v,
                Target::Comment(_) => return Err(not_found("comment")),
                Target::Entry(_) => return Err(not_found("map entry")),
            };
            current = match (value, step, step.index()) {
                (Value::Seq(entries), _, Some(i)) => match entries.get(i) {
                    Some(SeqEntry::Item(v)) => Target::Value(v),
                    Some(SeqEntry::Comment(c)) => Target::Comment(c),
                    None => return Err(not_found(value.kind())),
                },
                (Value::Map(entries), PathStep::Index(i), _) => {
                    Target::Entry(entries.get(*i).ok_or_else(|| not_found(value.kind()))?)
                }
                (_, PathStep::Key(k) | PathStep::KeyOrIndex(k), _) => {
                    Target::Value(value.get(k).ok_or_else(|| not_found(value.kind()))?)
                }
                _ => return Err(not_found(value.kind())),
            };
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
    fn extract_syntax_is_split_as_sops_splits_it() {
        let p = parse_extract_path(r#"["a b"]['c'][3]["d\"e"][+1]["]"]"#).unwrap();
        assert_eq!(
            p,
            vec![
                PathStep::Key("a b".into()),
                PathStep::Key("c".into()),
                PathStep::Index(3),
                // No escapes: the key is what lies between the quotes.
                PathStep::Key("d\\\"e".into()),
                PathStep::Index(1),
                PathStep::Key("]".into()),
            ]
        );
        for refused in [r#"["a""#, "a", "[]", "[-1]", r#"["]"#, "[1 ]", r#"["a"]x"#] {
            assert!(parse_extract_path(refused).is_err(), "{refused}");
        }
        assert_eq!(parse_extract_path(""), Ok(vec![]));
    }

    #[test]
    fn slash_path_numbers_index_lists_and_name_map_keys() {
        let doc = Value::Map(vec![
            MapEntry::Pair(
                "l".into(),
                Value::Seq(vec![
                    SeqEntry::Comment(Comment {
                        text: "c".into(),
                        inline: false,
                    }),
                    SeqEntry::Item(Value::Int(7)),
                ]),
            ),
            MapEntry::Pair(
                "m".into(),
                Value::Map(vec![MapEntry::Pair("0".into(), Value::Int(8))]),
            ),
        ]);
        // Comments count, as in sops's `["l"][1]`.
        assert_eq!(doc.lookup(&parse_slash_path("l/1")).unwrap(), &Value::Int(7));
        assert!(matches!(
            doc.locate(&parse_slash_path("l/0")),
            Ok(Target::Comment(_))
        ));
        assert!(doc.lookup(&parse_slash_path("l/0")).is_err());
        assert_eq!(doc.lookup(&parse_slash_path("m/0")).unwrap(), &Value::Int(8));
        // A quoted key never indexes a list; an index never names a map key.
        assert!(
            doc.lookup(&[PathStep::Key("l".into()), PathStep::Key("1".into())])
                .is_err()
        );
        assert!(
            doc.lookup(&[PathStep::Key("m".into()), PathStep::Index(0)])
                .is_err()
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
        assert_eq!(err.found, vec![PathStep::KeyOrIndex("a".into())]);
        assert_eq!(err.missing, PathStep::KeyOrIndex("c".into()));
        assert_eq!(err.parent_kind, "map");
        assert_eq!(doc.lookup(&parse_slash_path("a/b")).unwrap(), &Value::Int(1));
    }

    #[test]
    fn debug_never_prints_plaintext() {
        let v = Value::Str("hunter2".into());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
