//! The sops file format, decrypt side.
//!
//! A sops file is a document in one of five stores (yaml, json, dotenv, ini,
//! binary) whose leaves are encrypted one by one, plus a `sops` metadata block.
//! Decrypting it takes three steps, each in its own module:
//! 1. read the store into a [`tree::Value`] and the [`metadata::Metadata`]
//!    ([`yaml`], [`json`], [`flat`]);
//! 2. recover the data key from the key groups (not here: the caller's
//!    keyring does it, `crate::keys`, with [`shamir`]; see `crate::unlock`);
//! 3. decrypt every leaf and verify the MAC ([`decrypt`], [`cipher`]).
//!
//! The result, a [`Document`], prints itself as `sops -d` would, whole or one
//! value at a time, and zeroizes its plaintext when dropped.

pub mod cipher;
pub mod decrypt;
pub mod flat;
pub mod gofmt;
pub mod json;
pub mod limits;
pub mod metadata;
pub mod shamir;
pub mod tree;
pub mod yaml;
pub mod yaml_emit;
pub mod yaml_subset;

use std::fmt;
use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

use metadata::{METADATA_KEY, Metadata, MetadataError};
use tree::{MapEntry, PathNotFound, PathStep, Target, Value};

/// The five stores sops reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// YAML (the default for sops-nix secrets).
    Yaml,
    /// JSON.
    Json,
    /// `KEY=value` lines.
    Dotenv,
    /// INI sections.
    Ini,
    /// Any file, stored whole as the `data` value of a JSON document.
    Binary,
}

impl Format {
    /// The format sops infers from a file name: `.yaml`/`.yml`, `.json`,
    /// `.env`, `.ini`; anything else is binary.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            Some("env") => Format::Dotenv,
            Some("ini") => Format::Ini,
            _ => Format::Binary,
        }
    }

    /// Parses a format name as sops and sops-nix spell it.
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "yaml" => Format::Yaml,
            "json" => Format::Json,
            "dotenv" => Format::Dotenv,
            "ini" => Format::Ini,
            "binary" => Format::Binary,
            _ => return None,
        })
    }

    /// The format's name as sops spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Yaml => "yaml",
            Format::Json => "json",
            Format::Dotenv => "dotenv",
            Format::Ini => "ini",
            Format::Binary => "binary",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a file could not be read as an encrypted sops file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Invalid YAML.
    #[error(transparent)]
    Yaml(#[from] yaml::YamlError),
    /// Invalid JSON.
    #[error(transparent)]
    Json(#[from] json::JsonError),
    /// Invalid dotenv or ini.
    #[error(transparent)]
    Flat(#[from] flat::FlatError),
    /// Not valid UTF-8.
    #[error("the file is not valid UTF-8 text")]
    Utf8,
    /// The binary store's `data` value is missing.
    #[error("the binary sops document has no `data` value")]
    NoData,
    /// The `sops` block is missing or wrong.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// A sops file as stored: the encrypted tree and its metadata.
pub struct EncryptedFile {
    /// The store it was read from.
    pub format: Format,
    /// One root map per document (YAML files can hold several).
    pub branches: Vec<Value>,
    /// The `sops` block.
    pub metadata: Metadata,
}

fn take_metadata(branch: &mut Value) -> Option<Value> {
    let Value::Map(entries) = branch else { return None };
    let i = entries
        .iter()
        .position(|e| matches!(e, MapEntry::Pair(k, _) if k == METADATA_KEY))?;
    match entries.remove(i) {
        MapEntry::Pair(_, v) => Some(v),
        MapEntry::Comment(_) => None,
    }
}

/// Splits a JSON or binary-store root into its branch and its `sops` block.
fn json_branches(mut root: Value, format: Format) -> Result<(Vec<Value>, Option<Value>), ParseError> {
    let meta = take_metadata(&mut root);
    if format == Format::Binary && !matches!(root.get("data"), Some(Value::Str(_))) {
        if meta.is_none() {
            return Err(MetadataError::Missing.into());
        }
        return Err(ParseError::NoData);
    }
    Ok((vec![root], meta))
}

impl EncryptedFile {
    /// Reads the bytes of a sops file in the given store. Needs no key.
    pub fn parse(bytes: &[u8], format: Format) -> Result<EncryptedFile, ParseError> {
        let text = || std::str::from_utf8(bytes).map_err(|_| ParseError::Utf8);
        let (branches, metadata_value) = match format {
            Format::Yaml => {
                let mut branches = yaml::parse(text()?)?;
                let mut meta = None;
                for (i, b) in branches.iter_mut().enumerate() {
                    let m = take_metadata(b);
                    if i == 0 {
                        meta = m;
                    }
                }
                (branches, meta)
            }
            Format::Json | Format::Binary => json_branches(json::parse(bytes)?, format)?,
            Format::Dotenv => {
                let (root, pairs) = flat::parse_dotenv(text()?)?;
                (
                    vec![root],
                    if pairs.is_empty() {
                        None
                    } else {
                        Some(flat::unflatten(pairs)?)
                    },
                )
            }
            Format::Ini => {
                let (root, pairs) = flat::parse_ini(text()?)?;
                (
                    vec![root],
                    if pairs.is_empty() {
                        None
                    } else {
                        Some(flat::unflatten(pairs)?)
                    },
                )
            }
        };
        EncryptedFile::assemble(format, branches, metadata_value)
    }

    /// Like [`EncryptedFile::parse`], but takes the file's bytes so that they
    /// are not kept alongside the tree: a binary-store file's buffer becomes
    /// its one value (see [`json::parse_owned`]); other files' bytes are freed
    /// before anything is decrypted.
    pub fn parse_owned(bytes: Vec<u8>, format: Format) -> Result<EncryptedFile, ParseError> {
        match format {
            Format::Json | Format::Binary => {
                let (branches, metadata_value) = json_branches(json::parse_owned(bytes)?, format)?;
                EncryptedFile::assemble(format, branches, metadata_value)
            }
            _ => EncryptedFile::parse(&bytes, format),
        }
    }

    fn assemble(
        format: Format,
        branches: Vec<Value>,
        metadata_value: Option<Value>,
    ) -> Result<EncryptedFile, ParseError> {
        let metadata_value = metadata_value.ok_or(MetadataError::Missing)?;
        let metadata = Metadata::from_value(&metadata_value)?;
        Ok(EncryptedFile {
            format,
            branches,
            metadata,
        })
    }

    /// Decrypts every value with `data_key` and verifies the MAC. The key is
    /// recovered from [`EncryptedFile::metadata`]'s stanzas by whoever holds
    /// the identities (`crate::keys`); this layer only knows the format.
    pub fn decrypt(mut self, data_key: &[u8; 32]) -> Result<Document, decrypt::TreeError> {
        let mut doc = Document {
            index: Default::default(),
            format: self.format,
            branches: std::mem::take(&mut self.branches),
        };
        decrypt::decrypt_and_verify(&mut doc.branches, &self.metadata, data_key)?;
        Ok(doc)
    }
}

/// A decrypted sops document. Its plaintext is zeroized on drop.
pub struct Document {
    format: Format,
    branches: Vec<Value>,
    /// Position of each top-level key, built on the first lookup: an
    /// installer picks hundreds of secrets out of one file, and a linear
    /// scan per secret would make that quadratic.
    index: std::sync::OnceLock<std::collections::HashMap<String, usize>>,
}

impl Drop for Document {
    fn drop(&mut self) {
        for b in &mut self.branches {
            b.zeroize();
        }
    }
}

/// Why a value could not be extracted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    /// The path does not exist.
    #[error("{}", describe_missing(.0))]
    NotFound(PathNotFound),
    /// The output store refuses the value; sops's reason.
    #[error("{0}")]
    Refused(String),
    /// The output store cannot print this value.
    #[error("a {kind} cannot be written in {format} format")]
    Unprintable {
        /// What was found.
        kind: &'static str,
        /// The output format.
        format: Format,
    },
}

fn describe_missing(p: &PathNotFound) -> String {
    let missing = match &p.missing {
        PathStep::Key(k) | PathStep::KeyOrIndex(k) => format!("key {k:?}"),
        PathStep::Index(i) => format!("index {i}"),
    };
    if p.found.is_empty() {
        format!("the document has no {missing} at its top level")
    } else {
        format!(
            "{} exists but has no {missing} (it is a {})",
            tree::display_path(&p.found),
            p.parent_kind
        )
    }
}

impl Document {
    /// Follows `path` from the root, using the top-level index for the first step.
    fn lookup(&self, path: &[PathStep]) -> Result<Target<'_>, PathNotFound> {
        let (Some(PathStep::Key(first) | PathStep::KeyOrIndex(first)), Value::Map(entries)) =
            (path.first(), self.root())
        else {
            return self.root().locate(path);
        };
        let index = self.index.get_or_init(|| {
            let mut index = std::collections::HashMap::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                if let MapEntry::Pair(k, _) = e {
                    // The first of duplicate keys wins, as in the linear lookup.
                    index.entry(k.clone()).or_insert(i);
                }
            }
            index
        });
        match index.get(first).map(|&i| &entries[i]) {
            Some(MapEntry::Pair(_, v)) => v.locate(&path[1..]).map_err(|mut e| {
                e.found.insert(0, path[0].clone());
                e
            }),
            _ => self.root().locate(path),
        }
    }

    /// The store the document was read from.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The first (usually only) root map.
    pub fn root(&self) -> &Value {
        &self.branches[0]
    }

    /// The whole file as `sops -d --output-type <output>` prints it.
    pub fn to_plaintext(&self, output: Format) -> Result<Zeroizing<Vec<u8>>, ExtractError> {
        let text = match output {
            Format::Yaml => yaml_emit::emit_documents(&self.branches),
            Format::Json => json::emit_document(self.root()),
            Format::Dotenv => flat::emit_dotenv(self.root()).map_err(ExtractError::Refused)?,
            Format::Ini => flat::emit_ini(&self.branches).map_err(ExtractError::Refused)?,
            Format::Binary => match self.root().get("data") {
                Some(Value::Str(s)) => s.clone(),
                Some(Value::Bytes(b)) => return Ok(Zeroizing::new(b.clone())),
                Some(other) => {
                    return Err(ExtractError::Unprintable {
                        kind: other.kind(),
                        format: Format::Binary,
                    });
                }
                None => {
                    return Err(ExtractError::Refused(
                        "error emitting binary store: no binary data found in tree; \
                         if this is not an encrypted binary file, choose the output with --output-type"
                            .to_owned(),
                    ));
                }
            },
        };
        Ok(Zeroizing::new(text.into_bytes()))
    }

    /// The value at `path` as `sops -d --extract` prints it: strings as they
    /// are, maps as a document, other values in the output store's syntax.
    /// An empty path is the whole file.
    pub fn extract(&self, path: &[PathStep], output: Format) -> Result<Zeroizing<Vec<u8>>, ExtractError> {
        if path.is_empty() {
            return self.to_plaintext(output);
        }
        let value = match self.lookup(path).map_err(ExtractError::NotFound)? {
            Target::Value(v) => v,
            // sops marshals its `Comment` struct: `value: ...` in YAML.
            Target::Comment(c) => {
                let key = if output == Format::Yaml { "value" } else { "Value" };
                let as_struct = Zeroizing::new(Value::Map(vec![MapEntry::Pair(
                    key.to_owned(),
                    Value::Str(c.text.clone()),
                )]));
                return match output {
                    Format::Yaml => Ok(Zeroizing::new(yaml_emit::emit_value(&as_struct).into_bytes())),
                    Format::Json => Ok(Zeroizing::new(json::emit_value(&as_struct).into_bytes())),
                    Format::Ini => Ok(Zeroizing::new(json::marshal_go_comment(&c.text).into_bytes())),
                    Format::Dotenv | Format::Binary => Err(unprintable_value("sops.Comment", output)),
                };
            }
            Target::Entry(entry) => return self.extract_entry(entry, output),
        };
        let text = match value {
            Value::Str(s) => s.clone(),
            Value::Bytes(b) => return Ok(Zeroizing::new(b.clone())),
            Value::Map(_) => {
                // sops puts the map in place of the first document and prints
                // the file: a YAML file's other documents follow it.
                let mut branches = Vec::with_capacity(self.branches.len());
                branches.push(value.clone());
                branches.extend(self.branches[1..].iter().cloned());
                let doc = Document {
                    index: Default::default(),
                    format: self.format,
                    branches,
                };
                return doc.to_plaintext(output);
            }
            other => match output {
                Format::Yaml => yaml_emit::emit_value(other),
                Format::Json => json::emit_value(other),
                Format::Ini => json::marshal_go(other, self.format != Format::Yaml),
                Format::Dotenv | Format::Binary => return Err(unprintable_value(go_type(other), output)),
            },
        };
        Ok(Zeroizing::new(text.into_bytes()))
    }
}

impl Document {
    /// A map entry reached by index, printed as sops marshals its `TreeItem`
    /// struct: `key:`/`value:` in YAML (maps inside as lists of such items),
    /// `{"Key":..,"Value":..}` in JSON.
    fn extract_entry(&self, entry: &MapEntry, output: Format) -> Result<Zeroizing<Vec<u8>>, ExtractError> {
        let nil_maps = self.format != Format::Yaml;
        let text = match output {
            Format::Yaml => yaml_emit::emit_value(&Zeroizing::new(go_struct_entry(entry))),
            Format::Json => json::reindent(&Zeroizing::new(json::marshal_go_entry(entry, nil_maps))),
            Format::Ini => json::marshal_go_entry(entry, nil_maps),
            Format::Dotenv | Format::Binary => return Err(unprintable_value("sops.TreeItem", output)),
        };
        Ok(Zeroizing::new(text.into_bytes()))
    }
}

/// A map entry as go-yaml marshals sops's `TreeItem{Key, Value}`.
fn go_struct_entry(entry: &MapEntry) -> Value {
    let comment = |text: &str| Value::Map(vec![MapEntry::Pair("value".into(), Value::Str(text.to_owned()))]);
    let (key, value) = match entry {
        MapEntry::Pair(k, v) => (Value::Str(k.clone()), go_struct_value(v)),
        MapEntry::Comment(c) => (comment(&c.text), Value::Null),
    };
    Value::Map(vec![
        MapEntry::Pair("key".into(), key),
        MapEntry::Pair("value".into(), value),
    ])
}

/// A value inside a `TreeItem`: its maps are lists of items, its comments structs.
fn go_struct_value(v: &Value) -> Value {
    match v {
        Value::Map(entries) => Value::Seq(
            entries
                .iter()
                .map(|e| tree::SeqEntry::Item(go_struct_entry(e)))
                .collect(),
        ),
        Value::Seq(entries) => Value::Seq(
            entries
                .iter()
                .map(|e| {
                    tree::SeqEntry::Item(match e {
                        tree::SeqEntry::Item(v) => go_struct_value(v),
                        tree::SeqEntry::Comment(c) => {
                            Value::Map(vec![MapEntry::Pair("value".into(), Value::Str(c.text.clone()))])
                        }
                    })
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// sops's reasons for not printing a single non-string value.
fn unprintable_value(go_type: &str, output: Format) -> ExtractError {
    ExtractError::Refused(match output {
        Format::Binary => {
            "Binary files are not structured and extracting a single value is not possible".to_owned()
        }
        _ => format!("the dotenv store only supports emitting strings, got {go_type}"),
    })
}

/// The Go type sops holds a value in, as `%T` names it.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float64",
        Value::Str(_) => "string",
        Value::Bytes(_) => "[]uint8",
        Value::Time(_) => "time.Time",
        Value::Map(_) => "sops.TreeBranch",
        Value::Seq(_) => "[]interface {}",
    }
}
