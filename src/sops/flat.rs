//! sops's dotenv and ini stores: flat files, and the flattened metadata they carry.
//!
//! Flat formats cannot nest, so sops writes its metadata as keys whose names
//! encode the path: `age__list_0__map_recipient` is `age[0].recipient`. In
//! dotenv files those keys carry a `sops_` prefix; in ini files they sit in a
//! `[sops]` section. Values are always strings; newlines inside values are
//! written as `\n`.

use std::collections::HashMap;

use super::gofmt;
use super::limits::{LimitError, MAX_DEPTH};
use super::tree::{Comment, MapEntry, SeqEntry, Value};

const MAP_SEP: &str = "__map_";
const LIST_SEP: &str = "__list_";

/// Why a flat file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlatError {
    /// A dotenv line without `=`.
    #[error("line {0} is neither a comment nor KEY=VALUE")]
    DotenvLine(usize),
    /// An ini line that is not a section, a key or a comment.
    #[error("line {0} is not an ini section, key or comment")]
    IniLine(usize),
    /// Flattened metadata keys that contradict each other.
    #[error("the flattened sops metadata key `{0}` conflicts with another key")]
    Conflict(String),
    /// A flattened metadata key nests too deeply.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

#[derive(Default)]
struct Node {
    value: Option<Value>,
    keys: Vec<(String, Node)>,
    items: Vec<(usize, Node)>,
    /// Where each key and index sits in `keys` and `items`: a linear search
    /// would make a file with many metadata keys quadratic to read.
    key_at: HashMap<String, usize>,
    item_at: HashMap<usize, usize>,
}

impl Node {
    fn child(&mut self, step: Step) -> &mut Node {
        match step {
            Step::Key(k) => {
                let i = match self.key_at.get(&k) {
                    Some(&i) => i,
                    None => {
                        self.key_at.insert(k.clone(), self.keys.len());
                        self.keys.push((k, Node::default()));
                        self.keys.len() - 1
                    }
                };
                &mut self.keys[i].1
            }
            Step::Index(n) => {
                let i = match self.item_at.get(&n) {
                    Some(&i) => i,
                    None => {
                        self.item_at.insert(n, self.items.len());
                        self.items.push((n, Node::default()));
                        self.items.len() - 1
                    }
                };
                &mut self.items[i].1
            }
        }
    }

    fn into_value(mut self, name: &str) -> Result<Value, FlatError> {
        let kinds = [
            self.value.is_some(),
            !self.keys.is_empty(),
            !self.items.is_empty(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return Err(FlatError::Conflict(name.to_owned()));
        }
        if let Some(v) = self.value {
            return Ok(v);
        }
        if !self.items.is_empty() {
            self.items.sort_by_key(|(i, _)| *i);
            return Ok(Value::Seq(
                self.items
                    .into_iter()
                    .map(|(_, n)| n.into_value(name).map(SeqEntry::Item))
                    .collect::<Result<_, _>>()?,
            ));
        }
        Ok(Value::Map(
            self.keys
                .into_iter()
                .map(|(k, n)| n.into_value(name).map(|v| MapEntry::Pair(k, v)))
                .collect::<Result<_, _>>()?,
        ))
    }
}

enum Step {
    Key(String),
    Index(usize),
}

/// Splits `a__list_0__map_b` into `a`, `[0]`, `b`; refuses more than
/// [`MAX_DEPTH`] steps, which would nest the metadata that deep.
fn steps(flat: &str) -> Result<Vec<Step>, LimitError> {
    let mut out = Vec::new();
    let mut rest = flat;
    let mut current_is_index = false;
    loop {
        if out.len() == MAX_DEPTH {
            return Err(LimitError::KeyTooDeep {
                key: flat.chars().take(60).collect(),
            });
        }
        // One scan for the next `__` that starts a separator (scanning for
        // each separator apart would rescan the rest of a long key each step).
        let mut from = 0;
        let next = loop {
            let Some(i) = rest[from..].find("__").map(|i| from + i) else {
                break None;
            };
            match [MAP_SEP, LIST_SEP]
                .into_iter()
                .find(|sep| rest[i..].starts_with(sep))
            {
                Some(sep) => break Some((i, sep)),
                None => from = i + 1,
            }
        };
        let (part, after) = match next {
            Some((i, sep)) => (&rest[..i], Some((&rest[i + sep.len()..], sep == LIST_SEP))),
            None => (rest, None),
        };
        out.push(if current_is_index {
            Step::Index(part.parse().unwrap_or(0))
        } else {
            Step::Key(part.to_owned())
        });
        match after {
            Some((r, is_index)) => {
                rest = r;
                current_is_index = is_index;
            }
            None => return Ok(out),
        }
    }
}

/// Rebuilds the metadata map from flattened `(key, value)` pairs.
pub fn unflatten(pairs: Vec<(String, Value)>) -> Result<Value, FlatError> {
    let mut root = Node::default();
    for (key, value) in pairs {
        let mut node = &mut root;
        for step in steps(&key)? {
            node = node.child(step);
        }
        if node.value.is_some() {
            return Err(FlatError::Conflict(key));
        }
        node.value = Some(value);
    }
    root.into_value("sops")
}

/// How the dotenv and ini stores write a value (Go's `ValToString`): floats
/// always with a decimal point or exponent, timestamps as RFC 3339 without
/// fractional seconds, anything else as Go's `%v` prints it.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Time(t) => rfc3339_seconds(t),
        Value::Float(f) => {
            let g = gofmt::format_upper_g(*f);
            if g.contains('.') || g.contains('E') || !f.is_finite() {
                g
            } else {
                format!("{g}.0")
            }
        }
        other => go_v(other),
    }
}

/// Go's `time.RFC3339` layout of a timestamp held in `RFC3339Nano` form.
fn rfc3339_seconds(t: &str) -> String {
    match t.find('.') {
        Some(dot) => {
            let zone = t[dot..].find(['Z', '+', '-']).map_or(t.len(), |z| dot + z);
            format!("{}{}", &t[..dot], &t[zone..])
        }
        None => t.to_owned(),
    }
}

/// Go's `time.Time.String()` of a timestamp held in `RFC3339Nano` form:
/// `2024-01-02 03:04:05.5 +0000 UTC`.
fn go_time_string(t: &str) -> String {
    let (date, rest) = t.split_once('T').unwrap_or((t, ""));
    let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let zone = match zone {
        "Z" | "" => "+0000 UTC".to_owned(),
        z => {
            let numeric = z.replace(':', "");
            format!("{numeric} {numeric}")
        }
    };
    format!("{date} {clock} {zone}")
}

/// Go's `%v` of a value as sops holds it: lists and maps (`[]interface{}`,
/// `TreeBranch`) in brackets, map entries and comments as the structs they
/// are (`{key value}`, `{text}`).
fn go_v(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => gofmt::format_g(*f),
        Value::Str(s) => s.clone(),
        Value::Time(t) => go_time_string(t),
        Value::Bytes(b) => {
            let items: Vec<String> = b.iter().map(u8::to_string).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Seq(entries) => {
            let items: Vec<String> = entries
                .iter()
                .map(|e| match e {
                    SeqEntry::Item(v) => go_v(v),
                    SeqEntry::Comment(c) => format!("{{{}}}", c.text),
                })
                .collect();
            format!("[{}]", items.join(" "))
        }
        Value::Map(entries) => {
            let items: Vec<String> = entries
                .iter()
                .map(|e| match e {
                    MapEntry::Pair(k, v) => format!("{{{k} {}}}", go_v(v)),
                    MapEntry::Comment(c) => format!("{{{{{}}} <nil>}}", c.text),
                })
                .collect();
            format!("[{}]", items.join(" "))
        }
    }
}

/// A parsed dotenv file: the entries and the `sops_` metadata pairs.
pub fn parse_dotenv(text: &str) -> Result<(Value, Vec<(String, Value)>), FlatError> {
    let mut entries = Vec::new();
    let mut metadata = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            entries.push(MapEntry::Comment(Comment {
                text: c.to_owned(),
                inline: false,
            }));
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(FlatError::DotenvLine(i + 1))?;
        let value = Value::Str(value.replace("\\n", "\n"));
        match key.strip_prefix("sops_") {
            Some(meta) => metadata.push((meta.to_owned(), value)),
            None => entries.push(MapEntry::Pair(key.to_owned(), value)),
        }
    }
    Ok((Value::Map(entries), metadata))
}

/// What `sops -d` prints for a dotenv file, or, for a map or list value,
/// sops's reason to refuse.
pub fn emit_dotenv(root: &Value) -> Result<String, String> {
    let mut out = String::with_capacity(2 * root.text_len());
    if let Value::Map(entries) = root {
        for e in entries {
            match e {
                MapEntry::Comment(c) => {
                    out.push('#');
                    out.push_str(&c.text);
                }
                MapEntry::Pair(k, Value::Map(_) | Value::Seq(_)) => {
                    return Err(format!(
                        "cannot use complex value in dotenv file; offending key {k}"
                    ));
                }
                MapEntry::Pair(k, Value::Str(s)) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(&s.replace('\n', "\\n"));
                }
                MapEntry::Pair(k, v) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(&scalar_text(v));
                }
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// Strips an ini comment's marker as sops does (all leading `;`/`#` and spaces).
fn strip_comment_marker(c: &str) -> String {
    if c.starts_with(';') {
        c.trim_start_matches([';', ' ']).to_owned()
    } else if c.starts_with('#') {
        c.trim_start_matches(['#', ' ']).to_owned()
    } else {
        c.to_owned()
    }
}

/// Removes ini value quoting: `"..."`, `` `...` `` and `"""..."""`.
fn unquote_ini(v: &str) -> &str {
    for q in ["\"\"\"", "`", "\""] {
        if v.len() >= 2 * q.len() && v.starts_with(q) && v.ends_with(q) {
            return &v[q.len()..v.len() - q.len()];
        }
    }
    v
}

/// A parsed ini file: one map entry per section (keys before any section go
/// to `DEFAULT`), and the `[sops]` section's pairs.
pub fn parse_ini(text: &str) -> Result<(Value, Vec<(String, Value)>), FlatError> {
    let mut sections: Vec<(String, Vec<MapEntry>)> = vec![("DEFAULT".to_owned(), Vec::new())];
    let mut pending_comment: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with(';') || line.starts_with('#') {
            // go-ini joins consecutive comment lines; sops strips the marker
            // of the first one only. Appended in place: rebuilding the text
            // for every line would make a long run of comment lines quadratic.
            match &mut pending_comment {
                Some(prev) => {
                    prev.push('\n');
                    prev.push_str(line);
                }
                None => pending_comment = Some(strip_comment_marker(line)),
            }
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let mut entries = Vec::new();
            if let Some(c) = pending_comment.take() {
                entries.push(MapEntry::Comment(Comment {
                    text: c,
                    inline: false,
                }));
            }
            sections.push((name.trim().to_owned(), entries));
            continue;
        }
        let (key, rest) = split_ini_key(line).ok_or(FlatError::IniLine(i + 1))?;
        let value = unquote_ini(rest.trim()).to_owned();
        let entries = &mut sections.last_mut().expect("DEFAULT is always there").1;
        entries.push(MapEntry::Pair(key, Value::Str(value)));
        // sops keeps a key's comment after the key and writes it back before it.
        if let Some(c) = pending_comment.take() {
            entries.push(MapEntry::Comment(Comment {
                text: c,
                inline: false,
            }));
        }
    }
    let mut metadata = Vec::new();
    let mut out = Vec::new();
    for (name, entries) in sections {
        if name == "sops" {
            for e in entries {
                if let MapEntry::Pair(k, Value::Str(v)) = e {
                    metadata.push((k, Value::Str(v.replace("\\n", "\n"))));
                }
            }
        } else {
            // The section before any header, `DEFAULT`, is always there (go-ini
            // lists it), so other stores print it, empty or not.
            out.push(MapEntry::Pair(name, Value::Map(entries)));
        }
    }
    Ok((Value::Map(out), metadata))
}

/// Splits `key = value` (or `key: value`) as go-ini does: a key in
/// backticks, triple quotes or quotes may hold `=` and `:`. Returns the key
/// and the text after the delimiter.
fn split_ini_key(line: &str) -> Option<(String, &str)> {
    for q in ["`", "\"\"\"", "\""] {
        if let Some(inner) = line.strip_prefix(q) {
            let end = inner.find(q)?;
            let after = inner[end + q.len()..].trim_start();
            let rest = after.strip_prefix(['=', ':'])?;
            return Some((inner[..end].to_owned(), rest));
        }
    }
    let split = line.find(['=', ':'])?;
    Some((line[..split].trim().to_owned(), &line[split + 1..]))
}

/// Quotes an ini value the way sops's ini library writes it.
fn quote_ini(v: &str) -> String {
    if v.contains('\n') || v.contains('`') {
        format!("\"\"\"{v}\"\"\"")
    } else if v.contains('#') || v.contains(';') {
        format!("`{v}`")
    } else if v.trim() != v {
        format!("\"{v}\"")
    } else {
        v.to_owned()
    }
}

/// The section go-ini writes without a header: keys before any `[section]`.
const DEFAULT_SECTION: &str = "DEFAULT";

/// What `sops -d` prints for an ini file (every document of a YAML file is
/// written into it): sections separated by blank lines, `DEFAULT`'s keys
/// first and without a header, `=` aligned within a section, comments as
/// `; text` before the key they follow. A top-level value that is not a
/// section (a map) is refused with sops's reason.
pub fn emit_ini(branches: &[Value]) -> Result<String, String> {
    let mut blocks = Vec::new();
    for branch in branches {
        let Value::Map(sections) = branch else { continue };
        for section in sections {
            let (name, entries) = match section {
                MapEntry::Comment(_) => continue,
                MapEntry::Pair(name, Value::Map(entries)) => (name, entries),
                MapEntry::Pair(..) => {
                    return Err(
                        "Error encoding section: Section values should always be TreeBranches".to_owned(),
                    );
                }
            };
            blocks.push(ini_section(name, entries));
        }
    }
    // go-ini writes nothing for an empty DEFAULT section, not even the blank line.
    blocks.retain(|b| !b.is_empty());
    Ok(blocks.join("\n"))
}

fn ini_section(name: &str, entries: &[MapEntry]) -> String {
    let mut block = String::new();
    let mut rest: &[MapEntry] = entries;
    let mut section_comment = None;
    if let Some(MapEntry::Comment(c)) = rest.first() {
        section_comment = Some(&c.text);
        rest = &rest[1..];
    }
    // sops hands a comment to the key before it (the last such comment
    // wins); comments before the first key are lost.
    let mut keys: Vec<(&str, &Value, Option<&str>)> = Vec::new();
    for e in rest {
        match e {
            MapEntry::Pair(k, v) => keys.push((k, v, None)),
            MapEntry::Comment(c) => {
                if let Some(last) = keys.last_mut() {
                    last.2 = Some(&c.text);
                }
            }
        }
    }
    if name == DEFAULT_SECTION && keys.is_empty() {
        return block;
    }
    if let Some(c) = section_comment {
        push_comment(&mut block, c, false);
    }
    if name != DEFAULT_SECTION {
        block.push_str(&format!("[{name}]\n"));
    }
    let names: Vec<String> = keys.iter().map(|(k, ..)| quote_ini_key(k)).collect();
    // go-ini aligns by byte length, not characters.
    let width = names.iter().map(String::len).max().unwrap_or(0);
    for ((_, v, comment), name) in keys.into_iter().zip(&names) {
        if let Some(c) = comment {
            push_comment(&mut block, c, true);
        }
        let pad = width - name.len();
        block.push_str(&format!(
            "{name}{} = {}\n",
            " ".repeat(pad),
            quote_ini(&scalar_text(v))
        ));
    }
    block
}

/// Quotes a key name as go-ini writes it: in backticks if it holds a quote or
/// a key-value delimiter, in triple quotes if it holds a backtick.
fn quote_ini_key(k: &str) -> String {
    if k.contains(['"', '=', ':']) {
        format!("`{k}`")
    } else if k.contains('`') {
        format!("\"\"\"{k}\"\"\"")
    } else {
        k.to_owned()
    }
}

/// go-ini's comment lines: `; ` before text without a marker; a key's comment
/// lines are trimmed, a section's are not.
fn push_comment(out: &mut String, text: &str, trim: bool) {
    for line in text.split('\n') {
        match line.chars().next() {
            Some(m @ (';' | '#')) => {
                out.push(m);
                out.push(' ');
                out.push_str(line[1..].trim());
            }
            _ => {
                out.push_str("; ");
                out.push_str(if trim { line.trim() } else { line });
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_metadata_rebuilds_lists_of_maps() {
        let v = unflatten(vec![
            ("age__list_0__map_recipient".into(), Value::Str("r0".into())),
            ("age__list_1__map_recipient".into(), Value::Str("r1".into())),
            ("mac".into(), Value::Str("m".into())),
        ])
        .unwrap();
        assert_eq!(
            v.get("age").unwrap().item(1).unwrap().get("recipient"),
            Some(&Value::Str("r1".into()))
        );
        assert_eq!(v.get("mac"), Some(&Value::Str("m".into())));
    }

    #[test]
    fn keys_split_at_separators_only_and_nest_at_most_max_depth() {
        let names = |key: &str| -> Vec<String> {
            steps(key)
                .unwrap()
                .into_iter()
                .map(|s| match s {
                    Step::Key(k) => k,
                    Step::Index(i) => format!("[{i}]"),
                })
                .collect()
        };
        assert_eq!(names("a__b__list_2__map_c__x"), ["a__b", "[2]", "c__x"]);
        assert_eq!(names("__map_a"), ["", "a"]);
        let deep = |n: usize| format!("k{}", "__map_k".repeat(n));
        assert_eq!(steps(&deep(MAX_DEPTH - 1)).unwrap().len(), MAX_DEPTH);
        assert!(matches!(
            steps(&deep(MAX_DEPTH)),
            Err(LimitError::KeyTooDeep { .. })
        ));
        assert!(matches!(
            unflatten(vec![(deep(100_000), Value::Str("v".into()))]),
            Err(FlatError::Limit(LimitError::KeyTooDeep { .. }))
        ));
    }

    #[test]
    fn ini_comment_lines_join_with_newlines() {
        // As go-ini joins them and sops reads them (fixture ini_plain_comment_lines):
        // the first line loses its marker, the later ones keep theirs.
        let (v, _) = parse_ini("[s]\n; one\n# two\n;three\nk = v\n").unwrap();
        let Some(Value::Map(entries)) = v.get("s") else {
            panic!()
        };
        assert!(matches!(&entries[1], MapEntry::Comment(c) if c.text == "one\n# two\n;three"));
    }

    #[test]
    fn dotenv_splits_at_the_first_equals_and_unescapes_newlines() {
        let (v, meta) = parse_dotenv("# c\nA=b=c\nsops_mac=x\nM=1\\n2\n").unwrap();
        assert_eq!(v.get("A"), Some(&Value::Str("b=c".into())));
        assert_eq!(v.get("M"), Some(&Value::Str("1\n2".into())));
        assert_eq!(meta.len(), 1);
        assert_eq!(emit_dotenv(&v).unwrap(), "# c\nA=b=c\nM=1\\n2\n");
    }

    #[test]
    fn ini_keys_are_quoted_and_aligned_by_bytes_as_go_ini_does() {
        let (v, _) = parse_ini("[s]\nab = 2\n").unwrap();
        let Value::Map(mut sections) = v else { panic!() };
        let MapEntry::Pair(_, Value::Map(keys)) = &mut sections[1] else {
            panic!()
        };
        for k in ["ключ", "x=y", "t`k"] {
            keys.push(MapEntry::Pair(k.into(), Value::Int(1)));
        }
        // What sops 3.11 printed for these keys.
        assert_eq!(
            emit_ini(&[Value::Map(sections)]).unwrap(),
            "[s]\nab        = 2\nключ  = 1\n`x=y`     = 1\n\"\"\"t`k\"\"\" = 1\n"
        );
    }

    #[test]
    fn quoted_ini_keys_are_read_as_go_ini_reads_them() {
        let (v, _) = parse_ini("[s]\n`a:b` = 1\n\"\"\"t`k\"\"\" = 2\n`q\"q`: 3\nplain = 4\n").unwrap();
        let s = v.get("s").unwrap();
        for (k, want) in [("a:b", "1"), ("t`k", "2"), ("q\"q", "3"), ("plain", "4")] {
            assert_eq!(s.get(k), Some(&Value::Str(want.into())), "{k}");
        }
    }

    #[test]
    fn ini_comment_lines_keep_their_markers_after_the_first() {
        let (v, _) = parse_ini("[s]\n; one\n# two\nk = v\n").unwrap();
        assert_eq!(emit_ini(&[v]).unwrap(), "[s]\n; one\n# two\nk = v\n");
    }

    #[test]
    fn ini_aligns_keys_and_keeps_comments_before_keys() {
        let (v, _) = parse_ini("; top\n[s]\nhost = h\n# about long\nlonger_key = v\n").unwrap();
        assert_eq!(
            emit_ini(&[v]).unwrap(),
            "; top\n[s]\nhost       = h\n; about long\nlonger_key = v\n"
        );
    }
}
