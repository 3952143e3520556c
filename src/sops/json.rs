//! sops JSON files (and the JSON envelope of sops's binary format).
//!
//! Reading keeps key order (serde_json's `preserve_order`) and reads every
//! number as a float64, as sops 3.11's JSON store does (Go's `json.Decoder`
//! without `UseNumber`): `42` is the float 42, and a big integer or a long
//! decimal is what the nearest float64 makes of it. sops computed the MAC over
//! that float's spelling, so the parse must round correctly (serde_json's
//! `float_roundtrip`). Writing reproduces
//! what sops prints: Go's `encoding/json` escaping and number spelling,
//! re-indented with one tab per level.

use super::gofmt;
use super::limits::{self, LimitError};
use super::tree::{MapEntry, SeqEntry, Value};

/// Why a JSON document could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonError {
    /// Not valid JSON.
    #[error("invalid JSON at line {line}, column {col}: {reason}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The parser's message.
        reason: String,
    },
    /// The top level is not an object.
    #[error("the top level of the JSON document is not an object; sops files must be objects")]
    NotAnObject,
    /// Nested too deeply.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// Parses a JSON document whose top level is an object.
pub fn parse(text: &[u8]) -> Result<Value, JsonError> {
    limits::check_json_depth(text)?;
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| JsonError::Syntax {
        line: e.line(),
        col: e.column(),
        reason: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(JsonError::NotAnObject);
    }
    Ok(convert(v))
}

/// Like [`parse`], from owned bytes. For the binary store's envelope
/// (`{"data": "ENC[...]", "sops": {...}}`) the `data` string, nearly all of
/// the file, is moved to the front of the file's own buffer and becomes the
/// value, instead of being copied out of it: reading a file of N bytes then
/// needs N bytes, not 2N. Any other document is parsed by [`parse`].
pub fn parse_owned(mut bytes: Vec<u8>) -> Result<Value, JsonError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope<'a> {
        /// Borrowed from the bytes unless it has escapes (sops's base64 has none).
        #[serde(borrow)]
        data: std::borrow::Cow<'a, str>,
        sops: serde_json::Value,
    }
    limits::check_json_depth(&bytes)?;
    // serde's structs also read `[data, sops]` arrays; sops files are objects.
    let is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let found = match serde_json::from_slice::<Envelope<'_>>(&bytes) {
        Ok(Envelope {
            data: std::borrow::Cow::Borrowed(data),
            sops,
        }) if is_object => Some((data.as_ptr() as usize - bytes.as_ptr() as usize, data.len(), sops)),
        _ => None,
    };
    let Some((start, len, sops)) = found else {
        return parse(&bytes);
    };
    bytes.copy_within(start..start + len, 0);
    bytes.truncate(len);
    let data = String::from_utf8(bytes).map_err(|_| JsonError::Syntax {
        line: 1,
        col: 1,
        reason: "the data string is not UTF-8".to_owned(),
    })?;
    Ok(Value::Map(vec![
        MapEntry::Pair("data".to_owned(), Value::Str(data)),
        MapEntry::Pair("sops".to_owned(), convert(sops)),
    ]))
}

fn convert(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => {
            Value::Seq(a.into_iter().map(|v| SeqEntry::Item(convert(v))).collect())
        }
        serde_json::Value::Object(o) => Value::Map(
            o.into_iter()
                .map(|(k, v)| MapEntry::Pair(k, convert(v)))
                .collect(),
        ),
    }
}

/// Go's `json.Marshal` of a string: HTML-safe escapes, `\u2028`/`\u2029` escaped.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push('\t');
    }
}

/// Writes a value as sops prints it (comments are dropped: JSON has none).
fn write_value(out: &mut String, v: &Value, level: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&gofmt::format_json(*f)),
        Value::Str(s) | Value::Time(s) => write_string(out, s),
        Value::Bytes(b) => {
            use base64::Engine;
            write_string(out, &base64::engine::general_purpose::STANDARD.encode(b))
        }
        Value::Map(entries) => {
            let pairs: Vec<_> = entries
                .iter()
                .filter_map(|e| match e {
                    MapEntry::Pair(k, v) => Some((k, v)),
                    MapEntry::Comment(_) => None,
                })
                .collect();
            if pairs.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, level + 1);
                write_string(out, k);
                out.push_str(": ");
                write_value(out, v, level + 1);
            }
            indent(out, level);
            out.push('}');
        }
        Value::Seq(entries) => {
            let items: Vec<_> = entries
                .iter()
                .filter_map(|e| match e {
                    SeqEntry::Item(v) => Some(v),
                    SeqEntry::Comment(_) => None,
                })
                .collect();
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, v) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, level + 1);
                write_value(out, v, level + 1);
            }
            indent(out, level);
            out.push(']');
        }
    }
}

/// What `sops -d` prints for a JSON file: the document and a newline.
pub fn emit_document(root: &Value) -> String {
    // Sized once: a growing String frees (unwiped) copies of the plaintext.
    let mut out = String::with_capacity(2 * root.text_len() + 4096);
    write_value(&mut out, root, 0);
    out.push('\n');
    out
}

/// What `sops -d --extract` prints for a non-string, non-map value: no newline.
pub fn emit_value(v: &Value) -> String {
    let mut out = String::with_capacity(2 * v.text_len() + 4096);
    write_value(&mut out, v, 0);
    out
}

/// Go's `json.Marshal` of a value as sops holds it, as the ini store's
/// `--extract` prints one: compact; a map inside a list is a `TreeBranch`,
/// a list of `{"Key":..,"Value":..}` items; a comment is `{"Value":..}`.
///
/// sops builds lists, and maps read from JSON or ini, by appending to nil
/// slices, so empty ones are `null`; its YAML reader makes maps non-nil
/// (`[]`): `empty_maps_are_nil` says which.
pub fn marshal_go(v: &Value, empty_maps_are_nil: bool) -> String {
    let mut out = String::with_capacity(2 * v.text_len() + 64);
    marshal_into(&mut out, v, true, empty_maps_are_nil);
    out
}

/// Go's `json.Marshal` of one of sops's `TreeItem`s (a map entry reached
/// by index): `{"Key":..,"Value":..}`.
pub fn marshal_go_entry(entry: &MapEntry, empty_maps_are_nil: bool) -> String {
    let mut out = String::from("{\"Key\":");
    match entry {
        MapEntry::Pair(k, v) => {
            write_string(&mut out, k);
            out.push_str(",\"Value\":");
            marshal_into(&mut out, v, false, empty_maps_are_nil);
        }
        MapEntry::Comment(c) => {
            out.push_str(&marshal_go_comment(&c.text));
            out.push_str(",\"Value\":null");
        }
    }
    out.push('}');
    out
}

/// Go's `json.Indent(.., "", "\t")` of compact JSON, as sops reindents what
/// it marshals: a line per element, `": "` after keys, empty `{}`/`[]` kept.
pub fn reindent(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = compact.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.push(chars.next().expect("peeked"));
                } else {
                    depth += 1;
                    indent(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                indent(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                indent(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    out
}

/// Go's `json.Marshal` of sops's `Comment` struct.
pub fn marshal_go_comment(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str("{\"Value\":");
    write_string(&mut out, text);
    out.push('}');
    out
}

fn marshal_into(out: &mut String, v: &Value, top: bool, nil_maps: bool) {
    match v {
        Value::Seq(e) if e.is_empty() => out.push_str("null"),
        Value::Map(e) if e.is_empty() && nil_maps && !top => out.push_str("null"),
        Value::Map(entries) if !top => {
            out.push('[');
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"Key\":");
                match e {
                    MapEntry::Pair(k, v) => {
                        write_string(out, k);
                        out.push_str(",\"Value\":");
                        marshal_into(out, v, false, nil_maps);
                    }
                    MapEntry::Comment(c) => {
                        out.push_str(&marshal_go_comment(&c.text));
                        out.push_str(",\"Value\":null");
                    }
                }
                out.push('}');
            }
            out.push(']');
        }
        Value::Seq(entries) => {
            out.push('[');
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match e {
                    SeqEntry::Item(v) => marshal_into(out, v, false, nil_maps),
                    SeqEntry::Comment(c) => out.push_str(&marshal_go_comment(&c.text)),
                }
            }
            out.push(']');
        }
        // A top-level map never reaches here (sops prints it as a document).
        other => write_value(out, other, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_number_is_a_float_like_sops_3_11() {
        let v = parse(br#"{"a": 1, "b": 1.0, "c": 1e6, "d": -0}"#).unwrap();
        assert_eq!(v.get("a"), Some(&Value::Float(1.0)));
        assert_eq!(v.get("b"), Some(&Value::Float(1.0)));
        assert_eq!(v.get("c"), Some(&Value::Float(1e6)));
        assert!(matches!(v.get("d"), Some(Value::Float(z)) if z.is_sign_negative()));
    }

    #[test]
    fn long_decimals_round_to_the_nearest_float_like_go() {
        // Spellings sops 3.11 wrote: Go parses them correctly rounded, and
        // serde_json's default fast path is one ulp off on these.
        for text in [
            "9.357950974492867e+24",
            "0.09319654275417233",
            "949729.1914651861",
            "6.95e-291",
        ] {
            let v = parse(format!("{{\"a\": {text}}}").as_bytes()).unwrap();
            assert_eq!(v.get("a"), Some(&Value::Float(text.parse().unwrap())), "{text}");
        }
    }

    #[test]
    fn strings_are_escaped_like_go() {
        let mut s = String::new();
        write_string(&mut s, "<a&b>\u{2028}\u{1}é");
        assert_eq!(s, r#""\u003ca\u0026b\u003e\u2028\u0001é""#);
    }

    #[test]
    fn key_order_is_kept() {
        let v = parse(br#"{"z": 1, "a": 2}"#).unwrap();
        assert_eq!(emit_document(&v), "{\n\t\"z\": 1,\n\t\"a\": 2\n}\n");
    }

    #[test]
    fn reindent_is_go_json_indent_with_tabs() {
        assert_eq!(
            reindent(r#"{"Key":"a:b","Value":[1,{},[],"x,\"y"]}"#),
            "{\n\t\"Key\": \"a:b\",\n\t\"Value\": [\n\t\t1,\n\t\t{},\n\t\t[],\n\t\t\"x,\\\"y\"\n\t]\n}"
        );
    }

    #[test]
    fn binary_envelope_is_read_in_place_like_any_document() {
        for text in [
            &br#"{"data": "ENC[x]", "sops": {"mac": "m", "n": [1, 2.5]}}"#[..],
            br#" {"sops": {"mac": "m"}, "data": "ENC[x]"}"#,
            // Not the envelope: an escape, another key, a duplicate, an array.
            br#"{"data": "ENC", "sops": {}}"#,
            br#"{"data": "x", "other": 1, "sops": {}}"#,
            br#"{"data": "x", "data": "y", "sops": {}}"#,
        ] {
            let general = parse(text).unwrap();
            let owned = parse_owned(text.to_vec()).unwrap();
            assert_eq!(owned.get("data"), general.get("data"));
            assert_eq!(owned.get("sops"), general.get("sops"));
            assert_eq!(owned.get("other"), general.get("other"));
        }
        assert_eq!(
            parse_owned(br#"["ENC[x]", {}]"#.to_vec()).unwrap_err(),
            JsonError::NotAnObject
        );
        assert!(matches!(
            parse_owned(br#"{"data": "x", "sops": "#.to_vec()),
            Err(JsonError::Syntax { .. })
        ));
    }

    #[test]
    fn top_level_array_is_refused() {
        assert_eq!(parse(b"[1]").unwrap_err(), JsonError::NotAnObject);
    }
}
