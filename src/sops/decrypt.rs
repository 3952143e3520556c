//! Decrypting a document tree and checking its MAC, in one walk.
//!
//! The walk visits leaves in document order, as sops does. For each leaf it
//! decides from the file's [`EncryptionRule`] whether sops encrypted it,
//! decrypts it with the key path as additional data, and feeds its plaintext
//! bytes into a SHA-512 whose hex digest must equal the file's MAC. The MAC
//! itself is stored AES-GCM-encrypted with `lastmodified` as additional data.
//!
//! Rules learned from sops's behaviour:
//! - list items share their list's path (no index in the additional data);
//! - `null` leaves are neither encrypted nor hashed; comments are decrypted
//!   but never hashed, and a comment that does not decrypt is kept as written;
//! - with `mac_only_encrypted`, only encrypted leaves are hashed, after a fixed
//!   32-byte prefix.

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::cipher::{self, CipherError};
use super::gofmt;
use super::metadata::{EncryptionRule, Metadata};
use super::tree::{Comment, MapEntry, SeqEntry, Value};

/// The bytes sops hashes first when `mac_only_encrypted` is set, so that such a
/// MAC never equals the MAC of the same file without the option.
const MAC_ONLY_ENCRYPTED_PREFIX: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b, 0x0b,
    0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// Why a tree could not be decrypted or verified. Names key paths, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// One leaf failed to decrypt.
    #[error("the value at key path `{path}` could not be decrypted: {source}")]
    Value {
        /// The key path, `a/b/c` (list items share their list's path).
        path: String,
        /// What failed.
        source: CipherError,
    },
    /// A leaf the rules say is encrypted is not a string.
    #[error("the value at key path `{path}` should be encrypted but is a plain {kind}")]
    NotEncrypted {
        /// The key path.
        path: String,
        /// The kind of value found.
        kind: &'static str,
    },
    /// The stored MAC does not decrypt.
    #[error("the MAC could not be decrypted ({0}); the file's metadata was altered or the data key is wrong")]
    MacUndecryptable(CipherError),
    /// The file has no MAC.
    #[error("the file has no MAC; refusing to trust it")]
    MacMissing,
    /// The computed MAC differs from the stored one.
    #[error(
        "MAC mismatch: the file was modified after sops encrypted it (a value was altered, added, removed or reordered)"
    )]
    MacMismatch,
}

struct Walk<'a> {
    /// The file's data key, expanded once for values, comments and the MAC.
    cipher: cipher::ValueCipher,
    rule: &'a EncryptionRule,
    mac_only_encrypted: bool,
    hash: Sha512,
    path: Vec<String>,
    /// Comments seen at each nesting level since the last non-comment entry
    /// (as stored, before decryption): the comment-regex rules read them.
    comments: Vec<Vec<String>>,
}

impl Walk<'_> {
    /// sops joins the path with `:` and appends one more `:`, so the top
    /// level (where comments can sit) is `:`.
    fn path_string(&self) -> String {
        let mut s = self.path.join(":");
        s.push(':');
        s
    }

    /// sops's decision whether a leaf at the current path is encrypted.
    fn should_encrypt(&self, is_comment: bool) -> bool {
        let any_path = |f: &dyn Fn(&str) -> bool| self.path.iter().any(|p| f(p));
        match self.rule {
            EncryptionRule::UnencryptedSuffix(s) => !any_path(&|p| p.ends_with(s.as_str())),
            EncryptionRule::EncryptedSuffix(s) => any_path(&|p| p.ends_with(s.as_str())),
            EncryptionRule::UnencryptedRegex(r) => !any_path(&|p| r.is_match(p)),
            EncryptionRule::EncryptedRegex(r) => any_path(&|p| r.is_match(p)),
            EncryptionRule::UnencryptedCommentRegex(r) => {
                !self.comments.iter().flatten().any(|c| r.is_match(c))
            }
            EncryptionRule::EncryptedCommentRegex(r) => {
                // The comment that matches the regex is itself left in the clear:
                // when deciding for a comment, its own (last) line does not count.
                let last_level = self.comments.len().saturating_sub(1);
                self.comments.iter().enumerate().any(|(i, level)| {
                    level.iter().enumerate().any(|(j, c)| {
                        let is_self = is_comment && i == last_level && j + 1 == level.len();
                        !is_self && r.is_match(c)
                    })
                })
            }
        }
    }

    fn hash_leaf(&mut self, v: &Value) {
        match v {
            Value::Str(s) | Value::Time(s) => self.hash.update(s.as_bytes()),
            Value::Bytes(b) => self.hash.update(b),
            Value::Int(i) => self.hash.update(i.to_string().as_bytes()),
            Value::Float(f) => self.hash.update(gofmt::format_f(*f).as_bytes()),
            Value::Bool(true) => self.hash.update(b"True"),
            Value::Bool(false) => self.hash.update(b"False"),
            Value::Null | Value::Map(_) | Value::Seq(_) => {}
        }
    }

    /// Decrypts and hashes one leaf. Returns the comment text instead when the
    /// leaf is a list item holding an encrypted comment: sops stores comments
    /// inside lists that way, and they stay out of the MAC like other comments.
    fn leaf(&mut self, v: &mut Value) -> Result<Option<String>, TreeError> {
        if matches!(v, Value::Null) {
            return Ok(None);
        }
        let encrypted = self.should_encrypt(false);
        if encrypted {
            if !matches!(v, Value::Str(_)) {
                return Err(TreeError::NotEncrypted {
                    path: self.path_string(),
                    kind: v.kind(),
                });
            }
            // The ciphertext is taken out and decrypted inside its own buffer,
            // so a large value is never held twice (on error the tree is dropped).
            let Value::Str(stored) = std::mem::replace(v, Value::Null) else {
                unreachable!("checked above")
            };
            let ad = self.path_string();
            let fail = |source| TreeError::Value {
                path: ad.clone(),
                source,
            };
            let (plain, kind) = cipher::decrypt_owned(stored, &self.cipher, &ad).map_err(fail)?;
            if kind == "comment" {
                return Ok(Some(String::from_utf8_lossy(&plain).into_owned()));
            }
            *v = cipher::typed(plain, &kind).map_err(fail)?;
        }
        if encrypted || !self.mac_only_encrypted {
            self.hash_leaf(v);
        }
        Ok(None)
    }

    fn comment(&mut self, c: &mut Comment) {
        if self.should_encrypt(true) {
            c.text = cipher::decrypt_comment(&c.text, &self.cipher, &self.path_string());
        }
    }

    fn value(&mut self, v: &mut Value) -> Result<(), TreeError> {
        match v {
            Value::Map(entries) => self.map(entries),
            Value::Seq(entries) => self.seq(entries),
            leaf => self.leaf(leaf).map(drop),
        }
    }

    fn map(&mut self, entries: &mut [MapEntry]) -> Result<(), TreeError> {
        self.comments.push(Vec::new());
        for entry in entries {
            match entry {
                MapEntry::Comment(c) => {
                    self.comments
                        .last_mut()
                        .expect("pushed above")
                        .push(c.text.clone());
                    self.comment(c);
                }
                MapEntry::Pair(k, v) => {
                    self.path.push(k.clone());
                    let r = self.value(v);
                    self.path.pop();
                    r?;
                    self.comments.last_mut().expect("pushed above").clear();
                }
            }
        }
        self.comments.pop();
        Ok(())
    }

    fn seq(&mut self, entries: &mut [SeqEntry]) -> Result<(), TreeError> {
        self.comments.push(Vec::new());
        for entry in entries {
            match entry {
                SeqEntry::Comment(c) => {
                    self.comments
                        .last_mut()
                        .expect("pushed above")
                        .push(c.text.clone());
                    self.comment(c);
                }
                SeqEntry::Item(v) => {
                    let comment = match v {
                        Value::Map(m) => self.map(m).map(|()| None),
                        Value::Seq(s) => self.seq(s).map(|()| None),
                        leaf => self.leaf(leaf),
                    }?;
                    // An encrypted comment in a list is a string item to
                    // sops while it walks, so it ends the run of comments the
                    // comment-regex rules read, like any item (a file where
                    // that changes what is encrypted fails its MAC in sops).
                    self.comments.last_mut().expect("pushed above").clear();
                    if let Some(text) = comment {
                        *entry = SeqEntry::Comment(Comment { text, inline: false });
                    }
                }
            }
        }
        self.comments.pop();
        Ok(())
    }
}

/// Decrypts every encrypted leaf of `branches` in place and verifies the MAC.
///
/// On error the tree is left partly decrypted; callers drop it (it zeroizes).
pub fn decrypt_and_verify(
    branches: &mut [Value],
    metadata: &Metadata,
    data_key: &[u8; 32],
) -> Result<(), TreeError> {
    let mut walk = Walk {
        cipher: cipher::ValueCipher::new(data_key),
        rule: &metadata.rule,
        mac_only_encrypted: metadata.mac_only_encrypted,
        hash: Sha512::new(),
        path: Vec::new(),
        comments: Vec::new(),
    };
    if metadata.mac_only_encrypted {
        walk.hash.update(MAC_ONLY_ENCRYPTED_PREFIX);
    }
    for branch in branches.iter_mut() {
        walk.value(branch)?;
    }
    let computed = hex_upper(&walk.hash.finalize());

    if metadata.mac.is_empty() {
        return Err(TreeError::MacMissing);
    }
    let (stored, _) = cipher::decrypt_raw_with(&metadata.mac, &walk.cipher, &metadata.last_modified)
        .map_err(TreeError::MacUndecryptable)?;
    if stored.as_slice().ct_eq(computed.as_bytes()).into() {
        Ok(())
    } else {
        Err(TreeError::MacMismatch)
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sops::cipher::tests::seal;
    use crate::sops::metadata::KeyGroup;

    fn metadata(rule: EncryptionRule, mac: String) -> Metadata {
        Metadata {
            key_groups: vec![KeyGroup { stanzas: vec![] }],
            shamir_threshold: 0,
            last_modified: "2024-01-02T03:04:05Z".into(),
            mac,
            rule,
            mac_only_encrypted: false,
            version: "3.11.0".into(),
        }
    }

    fn mac_for(parts: &[&[u8]], key: &[u8; 32]) -> String {
        let mut h = Sha512::new();
        for p in parts {
            h.update(p);
        }
        seal(
            hex_upper(&h.finalize()).as_bytes(),
            key,
            "2024-01-02T03:04:05Z",
            "str",
        )
    }

    #[test]
    fn list_items_use_the_list_path_and_mac_covers_plain_values() {
        let key = [9u8; 32];
        let mut doc = vec![Value::Map(vec![
            MapEntry::Pair(
                "list".into(),
                Value::Seq(vec![
                    SeqEntry::Item(Value::Str(seal(b"a", &key, "list:", "str"))),
                    SeqEntry::Item(Value::Str(seal(b"7", &key, "list:", "int"))),
                ]),
            ),
            MapEntry::Pair("x_unencrypted".into(), Value::Bool(true)),
        ])];
        let md = metadata(
            EncryptionRule::UnencryptedSuffix("_unencrypted".into()),
            mac_for(&[b"a", b"7", b"True"], &key),
        );
        decrypt_and_verify(&mut doc, &md, &key).unwrap();
        assert_eq!(doc[0].get("list").unwrap().item(1), Some(&Value::Int(7)));
    }

    #[test]
    fn altered_plain_value_is_a_mac_mismatch() {
        let key = [9u8; 32];
        let mut doc = vec![Value::Map(vec![MapEntry::Pair(
            "a_unencrypted".into(),
            Value::Int(2),
        )])];
        let md = metadata(
            EncryptionRule::UnencryptedSuffix("_unencrypted".into()),
            mac_for(&[b"1"], &key),
        );
        assert_eq!(
            decrypt_and_verify(&mut doc, &md, &key),
            Err(TreeError::MacMismatch)
        );
    }

    #[test]
    fn missing_mac_is_refused() {
        let key = [9u8; 32];
        let mut doc = vec![Value::Map(vec![])];
        let md = metadata(
            EncryptionRule::UnencryptedSuffix("_unencrypted".into()),
            String::new(),
        );
        assert_eq!(
            decrypt_and_verify(&mut doc, &md, &key),
            Err(TreeError::MacMissing)
        );
    }

    #[test]
    fn plain_int_where_ciphertext_belongs_is_refused() {
        let key = [9u8; 32];
        let mut doc = vec![Value::Map(vec![MapEntry::Pair("a".into(), Value::Int(2))])];
        let md = metadata(
            EncryptionRule::UnencryptedSuffix("_unencrypted".into()),
            mac_for(&[], &key),
        );
        assert!(matches!(
            decrypt_and_verify(&mut doc, &md, &key),
            Err(TreeError::NotEncrypted { kind: "int", .. })
        ));
    }
}
