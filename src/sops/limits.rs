//! Bounds on what a sops file can make the parsers build.
//!
//! A sops file is parsed before its MAC can be checked, and anyone who can
//! edit it (it lives in git) chooses those bytes. Without bounds, a few
//! kilobytes of YAML aliases expand into gigabytes (the "billion laughs"), and
//! a line of `[` or `- ` nests deeply enough to overflow the stack: both abort
//! the activation. These bounds refuse such files with an error instead,
//! before the memory is allocated or the nesting is built:
//!
//! - **nesting**: at most [`MAX_DEPTH`] levels of maps and lists, in every
//!   format (YAML, JSON, and the flattened metadata keys of dotenv and ini).
//!   go-yaml stops at 10,000 and Go's `encoding/json` at 10,000 too, but the
//!   tree here is walked recursively (decryption, printing, dropping), and no
//!   real sops file comes near even a hundred levels.
//! - **alias expansion** (YAML): the rule go-yaml v3 applies when it decodes,
//!   by node count: once more than 100 nodes came from aliases in a document of
//!   more than 1,000 nodes, aliases may supply at most 99% of the nodes up to
//!   400,000 nodes, a share that shrinks linearly to 10% at 4,000,000 nodes
//!   and stays there. A Go string is shared when an alias repeats it, but
//!   here an alias copies its value (and so does an anchor, to keep it for
//!   its aliases), so the copies are bounded too: their text plus
//!   [`NODE_COST`] per node at most as many bytes as the file holds, or
//!   [`ALIAS_BYTES_FLOOR`] for a smaller file.
//!
//! Real sops never writes an alias: `sops -e` expands anchors and aliases of
//! the plaintext, so aliases in an encrypted file were added by hand.

use super::tree::{MapEntry, SeqEntry, Value};

/// The deepest nesting of maps and lists accepted; the top-level map is level 1.
pub const MAX_DEPTH: usize = 100;

/// Anchors and aliases may always copy this many bytes, whatever the file's size.
pub const ALIAS_BYTES_FLOOR: u64 = 1 << 20;

/// What a copied node is counted as, besides its text: about what a tree
/// node and its heap allocation take.
pub const NODE_COST: u64 = 64;

/// Alias-made nodes that never count as excessive, as in go-yaml.
const ALIAS_NODES_FREE: u64 = 100;
/// Documents of at most this many nodes are never refused for aliasing, as in go-yaml.
const NODES_FREE: u64 = 1000;
/// Up to this many nodes, aliases may supply 99% of them.
const RATIO_RANGE_LOW: u64 = 400_000;
/// From this many nodes on, aliases may supply 10% of them.
const RATIO_RANGE_HIGH: u64 = 4_000_000;

/// Why a file was refused before it was fully parsed. Names places, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// Maps and lists nest deeper than [`MAX_DEPTH`].
    #[error(
        "maps and lists nest more than {MAX_DEPTH} levels deep (at line {line}); \
         refusing the file before parsing it further (no sops file nests that deep)"
    )]
    TooDeep {
        /// 1-based line where the limit was crossed.
        line: usize,
    },
    /// A dotenv or ini metadata key encodes deeper nesting than [`MAX_DEPTH`].
    #[error(
        "the flattened sops metadata key `{key}...` nests more than {MAX_DEPTH} levels deep; \
         refusing the file before parsing it further (no sops file nests that deep)"
    )]
    KeyTooDeep {
        /// The key's first characters.
        key: String,
    },
    /// Aliases expand to too large a share of the document's nodes.
    #[error(
        "the document contains excessive aliasing (at line {line}): aliases would make {alias_nodes} \
         of its {nodes} nodes; refusing the file before expanding them"
    )]
    ExcessiveAliasing {
        /// 1-based line of the alias that crossed the limit.
        line: usize,
        /// Nodes made by expanding aliases.
        alias_nodes: u64,
        /// All nodes, written or expanded.
        nodes: u64,
    },
    /// Anchors and aliases would copy more than allowed.
    #[error(
        "the document's anchors and aliases would copy more than {allowed} bytes (at line {line}); \
         refusing the file before expanding them"
    )]
    AliasBytes {
        /// 1-based line of the alias that crossed the limit.
        line: usize,
        /// The allowance: the file's size, or [`ALIAS_BYTES_FLOOR`].
        allowed: u64,
    },
}

/// How large a share of `nodes` go-yaml lets aliases supply.
fn allowed_alias_ratio(nodes: u64) -> f64 {
    if nodes <= RATIO_RANGE_LOW {
        0.99
    } else if nodes >= RATIO_RANGE_HIGH {
        0.10
    } else {
        let progress = (nodes - RATIO_RANGE_LOW) as f64 / (RATIO_RANGE_HIGH - RATIO_RANGE_LOW) as f64;
        0.99 - 0.89 * progress
    }
}

/// Counts the nodes of one YAML stream and decides, before each alias is
/// copied, whether the copy stays within the bounds.
#[derive(Debug)]
pub struct AliasBudget {
    nodes: u64,
    alias_nodes: u64,
    copied: u64,
    allowed_copy: u64,
}

impl AliasBudget {
    /// A budget for a stream of `text_len` bytes.
    pub fn new(text_len: usize) -> AliasBudget {
        AliasBudget {
            nodes: 0,
            alias_nodes: 0,
            copied: 0,
            allowed_copy: (text_len as u64).max(ALIAS_BYTES_FLOOR),
        }
    }

    fn check_ratio(&self, line: usize) -> Result<(), LimitError> {
        let excessive = self.alias_nodes > ALIAS_NODES_FREE
            && self.nodes > NODES_FREE
            && self.alias_nodes as f64 / self.nodes as f64 > allowed_alias_ratio(self.nodes);
        if excessive {
            return Err(LimitError::ExcessiveAliasing {
                line,
                alias_nodes: self.alias_nodes,
                nodes: self.nodes,
            });
        }
        Ok(())
    }

    /// Counts one node written in the text (a scalar, key, collection or alias).
    ///
    /// Written nodes lower the aliases' share, but the share allowed falls as
    /// the document grows, so a document can cross the limit here too.
    pub fn written(&mut self, line: usize) -> Result<(), LimitError> {
        self.nodes += 1;
        self.check_ratio(line)
    }

    /// Counts the copy of an anchored value an alias stands for; call it
    /// before making the copy.
    pub fn expand(&mut self, shape: &Shape, line: usize) -> Result<(), LimitError> {
        self.nodes += shape.nodes;
        self.alias_nodes += shape.nodes;
        self.copy(shape, line)?;
        self.check_ratio(line)
    }

    /// Counts the copy of an anchored value kept for its aliases; call it
    /// before making the copy. (Nested anchors copy the same text again.)
    pub fn anchored(&mut self, shape: &Shape, line: usize) -> Result<(), LimitError> {
        self.copy(shape, line)
    }

    fn copy(&mut self, shape: &Shape, line: usize) -> Result<(), LimitError> {
        self.copied += shape.bytes + NODE_COST * shape.nodes;
        if self.copied > self.allowed_copy {
            return Err(LimitError::AliasBytes {
                line,
                allowed: self.allowed_copy,
            });
        }
        Ok(())
    }
}

/// What copying a value costs, and how deep it nests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Nodes: the value, its keys, and every value inside it.
    pub nodes: u64,
    /// Bytes of text: keys, strings, byte strings and comments.
    pub bytes: u64,
    /// Levels of maps and lists: 0 for a scalar, 1 for a flat map or list.
    pub height: usize,
}

impl Shape {
    /// Measures a value (built under [`MAX_DEPTH`], so the recursion is bounded).
    pub fn of(value: &Value) -> Shape {
        let mut shape = Shape {
            nodes: 1,
            bytes: 0,
            height: 0,
        };
        let child = |shape: &mut Shape, v: &Value| {
            let c = Shape::of(v);
            shape.nodes += c.nodes;
            shape.bytes += c.bytes;
            shape.height = shape.height.max(c.height + 1);
        };
        match value {
            Value::Str(s) | Value::Time(s) => shape.bytes = s.len() as u64,
            Value::Bytes(b) => shape.bytes = b.len() as u64,
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {}
            Value::Map(entries) => {
                shape.height = 1;
                for e in entries {
                    match e {
                        MapEntry::Pair(k, v) => {
                            shape.nodes += 1;
                            shape.bytes += k.len() as u64;
                            child(&mut shape, v);
                        }
                        MapEntry::Comment(c) => shape.bytes += c.text.len() as u64,
                    }
                }
            }
            Value::Seq(entries) => {
                shape.height = 1;
                for e in entries {
                    match e {
                        SeqEntry::Item(v) => child(&mut shape, v),
                        SeqEntry::Comment(c) => shape.bytes += c.text.len() as u64,
                    }
                }
            }
        }
        shape
    }
}

/// Checks that a JSON text nests no deeper than [`MAX_DEPTH`], in one pass
/// that allocates nothing, so that the parser never starts on a deeper one.
/// (serde_json stops at 128 levels by itself, but reports it as invalid JSON.)
pub fn check_json_depth(text: &[u8]) -> Result<(), LimitError> {
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(LimitError::TooDeep { line });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_ratio_follows_go_yaml_between_the_bounds() {
        assert_eq!(allowed_alias_ratio(1_000), 0.99);
        assert_eq!(allowed_alias_ratio(RATIO_RANGE_LOW), 0.99);
        assert!((allowed_alias_ratio(2_200_000) - 0.545).abs() < 1e-9);
        assert_eq!(allowed_alias_ratio(RATIO_RANGE_HIGH), 0.10);
        assert_eq!(allowed_alias_ratio(40_000_000), 0.10);
    }

    #[test]
    fn small_documents_may_be_mostly_aliases() {
        // 1,000 nodes, 99% of them from aliases: allowed, as go-yaml allows it.
        let mut b = AliasBudget::new(0);
        for _ in 0..10 {
            b.written(1).unwrap();
        }
        let shape = Shape {
            nodes: 990,
            bytes: 0,
            height: 1,
        };
        b.expand(&shape, 1).unwrap();
        // One more alias of the same size tips it over 99% of more than 1,000 nodes.
        b.written(2).unwrap();
        assert!(matches!(
            b.expand(&shape, 2),
            Err(LimitError::ExcessiveAliasing { line: 2, .. })
        ));
    }

    #[test]
    fn written_nodes_can_cross_the_limit_as_the_allowed_share_falls() {
        let mut b = AliasBudget::new(0);
        b.nodes = 3_000_000;
        b.alias_nodes = 1_000_000; // a third: allowed at 3,000,000 nodes (34.7%)
        b.check_ratio(1).unwrap();
        // At 4,000,000 nodes only 10% may come from aliases.
        b.nodes = 3_999_999;
        assert!(b.written(9).is_err());
    }

    #[test]
    fn alias_bytes_are_bounded_by_the_file_size_or_the_floor() {
        let big = Shape {
            nodes: 1,
            bytes: ALIAS_BYTES_FLOOR - NODE_COST,
            height: 0,
        };
        let mut small_file = AliasBudget::new(10);
        small_file.expand(&big, 1).unwrap();
        assert_eq!(
            small_file.expand(&Shape { bytes: 1, ..big }, 3),
            Err(LimitError::AliasBytes {
                line: 3,
                allowed: ALIAS_BYTES_FLOOR
            })
        );
        let mut big_file = AliasBudget::new(3 << 20);
        big_file.anchored(&big, 1).unwrap();
        for _ in 0..2 {
            big_file.expand(&big, 1).unwrap();
        }
        assert!(big_file.anchored(&Shape { bytes: 1, ..big }, 1).is_err());
        // Nodes count even without text.
        let mut nodes = AliasBudget::new(0);
        let empty = Shape {
            nodes: ALIAS_BYTES_FLOOR / NODE_COST,
            bytes: 0,
            height: 1,
        };
        nodes.anchored(&empty, 1).unwrap();
        assert!(nodes.anchored(&Shape { nodes: 1, ..empty }, 1).is_err());
    }

    #[test]
    fn shape_counts_keys_text_and_height() {
        let v = Value::Map(vec![
            MapEntry::Pair(
                "ab".into(),
                Value::Seq(vec![SeqEntry::Item(Value::Str("xyz".into()))]),
            ),
            MapEntry::Pair("c".into(), Value::Int(1)),
        ]);
        assert_eq!(
            Shape::of(&v),
            Shape {
                nodes: 6,
                bytes: 6,
                height: 2
            }
        );
    }

    #[test]
    fn json_depth_ignores_brackets_inside_strings() {
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(
            check_json_depth(deep.as_bytes()),
            Err(LimitError::TooDeep { line: 1 })
        );
        let ok = format!(
            "{{\"a\": {}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        check_json_depth(ok.as_bytes()).unwrap();
        let quoted = format!("{{\"a\": \"\\\"{}\"}}", "[".repeat(1000));
        check_json_depth(quoted.as_bytes()).unwrap();
    }
}
