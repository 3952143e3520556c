//! The `sops` block: who can open the file, which values are encrypted, and the MAC.
//!
//! sops writes this block as a nested map in yaml/json/binary files and as
//! flattened `sops_...` keys in dotenv and ini files; both are read into the
//! same [`Metadata`]. Files from every sops 3.x version share the field names:
//! 3.7-era files list empty `kms: []`, `gcp_kms: []` ... arrays and keep a
//! single key group at the top level, newer ones may use `key_groups`.

use regex::Regex;

use super::tree::{SeqEntry, Value};

/// The metadata key sops adds at the top level of structured files.
pub const METADATA_KEY: &str = "sops";

/// What is wrong with a `sops` block.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    /// There is no `sops` block: the file is plain, not sops-encrypted.
    #[error(
        "it has no `sops` metadata block, so it is not a sops-encrypted file (encrypt it with `sops -e`)"
    )]
    Missing,
    /// The `sops` entry is not a map.
    #[error("its `sops` entry is not a map")]
    NotAMap,
    /// A field has the wrong shape.
    #[error("its sops metadata field `{field}` is invalid: {reason}")]
    Field {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More than one of the mutually exclusive encryption rules is set.
    #[error(
        "its sops metadata sets more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex, unencrypted_regex, encrypted_comment_regex, unencrypted_comment_regex"
    )]
    ConflictingRules,
    /// No key stanza at all.
    #[error("its sops metadata lists no keys")]
    NoKeys,
}

/// One way to recover (a share of) the data key, as listed in a key group.
#[derive(Clone, PartialEq, Eq)]
pub enum Stanza {
    /// An age recipient; `enc` is an ASCII-armored age file holding the data key.
    Age {
        /// `age1...`, or an `ssh-ed25519 AAAA...`/`ssh-rsa AAAA...` public key.
        recipient: String,
        /// The armored age file.
        enc: String,
    },
    /// A PGP key, by fingerprint.
    Pgp {
        /// The key's fingerprint.
        fingerprint: String,
        /// The armored PGP message.
        enc: String,
    },
    /// AWS KMS.
    AwsKms {
        /// The key ARN.
        arn: String,
        /// An IAM role to assume, if any.
        role: String,
        /// The encryption context (KMS's additional authenticated data), in file order.
        context: Vec<(String, String)>,
        /// The AWS profile (shared config) whose credentials to use, if any.
        aws_profile: String,
        /// The base64 ciphertext.
        enc: String,
    },
    /// Google Cloud KMS.
    GcpKms {
        /// `projects/.../cryptoKeys/...`.
        resource_id: String,
        /// The base64 ciphertext.
        enc: String,
    },
    /// HashiCorp Vault transit.
    HcVault {
        /// The Vault server.
        address: String,
        /// The transit engine's mount path.
        engine_path: String,
        /// The transit key.
        key_name: String,
        /// The `vault:v1:...` ciphertext.
        enc: String,
    },
    /// Azure Key Vault.
    AzureKv {
        /// The vault URL.
        vault_url: String,
        /// The key's name.
        name: String,
        /// The key's version.
        version: String,
        /// The base64url ciphertext.
        enc: String,
    },
    /// Huawei Cloud KMS.
    HuaweiKms {
        /// The key id.
        key_id: String,
        /// The ciphertext.
        enc: String,
    },
}

impl Stanza {
    /// The key type as sops names it in the metadata (`age`, `pgp`, `gcp_kms`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Stanza::Age { .. } => "age",
            Stanza::Pgp { .. } => "pgp",
            Stanza::AwsKms { .. } => "kms",
            Stanza::GcpKms { .. } => "gcp_kms",
            Stanza::HcVault { .. } => "hc_vault",
            Stanza::AzureKv { .. } => "azure_kv",
            Stanza::HuaweiKms { .. } => "hckms",
        }
    }

    /// Who the stanza is for: the recipient, fingerprint or resource, for error messages.
    pub fn target(&self) -> String {
        match self {
            Stanza::Age { recipient, .. } => recipient.clone(),
            Stanza::Pgp { fingerprint, .. } => fingerprint.clone(),
            Stanza::AwsKms { arn, role, .. } if !role.is_empty() => format!("{arn} (role {role})"),
            Stanza::AwsKms { arn, .. } => arn.clone(),
            Stanza::GcpKms { resource_id, .. } => resource_id.clone(),
            Stanza::HcVault {
                address,
                engine_path,
                key_name,
                ..
            } => {
                format!("{}/v1/{engine_path}/keys/{key_name}", without_userinfo(address))
            }
            Stanza::AzureKv {
                vault_url,
                name,
                version,
                ..
            } => format!("{}/keys/{name}/{version}", without_userinfo(vault_url)),
            Stanza::HuaweiKms { key_id, .. } => key_id.clone(),
        }
    }
}

/// A URL as it may be shown: `user:password@` (which a stanza could carry and
/// which is refused before any request) is left out of messages and logs.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

impl std::fmt::Debug for Stanza {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.target())
    }
}

/// A key group: any one of its stanzas recovers the group's share of the data key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGroup {
    /// The group's stanzas, in the order sops lists them.
    pub stanzas: Vec<Stanza>,
}

/// Which values of the document are encrypted. sops allows at most one rule;
/// with none, keys ending in `_unencrypted` are left in the clear.
#[derive(Clone, Debug)]
pub enum EncryptionRule {
    /// Values under a key with this suffix are stored in the clear.
    UnencryptedSuffix(String),
    /// Only values under a key with this suffix are encrypted.
    EncryptedSuffix(String),
    /// Values under a key matching this regex are stored in the clear.
    UnencryptedRegex(Regex),
    /// Only values under a key matching this regex are encrypted.
    EncryptedRegex(Regex),
    /// Values after a comment matching this regex are stored in the clear.
    UnencryptedCommentRegex(Regex),
    /// Only values after a comment matching this regex are encrypted.
    EncryptedCommentRegex(Regex),
}

/// The decoded `sops` block.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// The key groups; with more than one, the data key is split with Shamir.
    pub key_groups: Vec<KeyGroup>,
    /// How many groups must be opened (0 in files with a single group).
    pub shamir_threshold: usize,
    /// `lastmodified` as written; the MAC's additional data.
    pub last_modified: String,
    /// The encrypted MAC (`ENC[...]`), empty if the file has none.
    pub mac: String,
    /// The encryption rule.
    pub rule: EncryptionRule,
    /// Whether the MAC covers only encrypted values.
    pub mac_only_encrypted: bool,
    /// The sops version that wrote the file.
    pub version: String,
}

fn field_err(field: &str, reason: impl Into<String>) -> MetadataError {
    MetadataError::Field {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Reads a scalar field as text, accepting the loose typing sops accepts.
fn text(v: &Value, field: &str) -> Result<String, MetadataError> {
    Ok(match v {
        Value::Str(s) | Value::Time(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Float(f) => super::gofmt::format_f(*f),
        Value::Null => String::new(),
        other => {
            return Err(field_err(
                field,
                format!("expected text, found a {}", other.kind()),
            ));
        }
    })
}

fn items<'a>(v: &'a Value, field: &str) -> Result<Vec<&'a Value>, MetadataError> {
    match v {
        Value::Seq(s) => Ok(s
            .iter()
            .filter_map(|e| match e {
                SeqEntry::Item(v) => Some(v),
                SeqEntry::Comment(_) => None,
            })
            .collect()),
        Value::Null => Ok(Vec::new()),
        other => Err(field_err(
            field,
            format!("expected a list, found a {}", other.kind()),
        )),
    }
}

fn get_text(map: &Value, key: &str, field: &str) -> Result<String, MetadataError> {
    map.get(key).map_or(Ok(String::new()), |v| text(v, field))
}

/// Reads the stanzas of one key group (or of the top level of a single-group file).
fn read_group(map: &Value, prefix: &str) -> Result<Vec<Stanza>, MetadataError> {
    let mut stanzas = Vec::new();
    // sops's own order within a group: kms, gcp_kms, hckms, azure_kv, hc_vault, pgp, age.
    for kind in ["kms", "gcp_kms", "hckms", "azure_kv", "hc_vault", "pgp", "age"] {
        let Some(list) = map.get(kind) else { continue };
        let field = format!("{prefix}{kind}");
        for item in items(list, &field)? {
            let get = |k: &str| get_text(item, k, &format!("{field}.{k}"));
            let enc = get("enc")?;
            stanzas.push(match kind {
                "kms" => Stanza::AwsKms {
                    arn: get("arn")?,
                    role: get("role")?,
                    context: context(item, &format!("{field}.context"))?,
                    aws_profile: get("aws_profile")?,
                    enc,
                },
                "gcp_kms" => Stanza::GcpKms {
                    resource_id: get("resource_id")?,
                    enc,
                },
                "hckms" => Stanza::HuaweiKms {
                    key_id: get("key_id")?,
                    enc,
                },
                "azure_kv" => Stanza::AzureKv {
                    vault_url: get("vault_url")?,
                    name: get("name")?,
                    version: get("version")?,
                    enc,
                },
                "hc_vault" => Stanza::HcVault {
                    address: get("vault_address")?,
                    engine_path: get("engine_path")?,
                    key_name: get("key_name")?,
                    enc,
                },
                "pgp" => Stanza::Pgp {
                    fingerprint: get("fp")?,
                    enc,
                },
                _ => Stanza::Age {
                    recipient: get("recipient")?,
                    enc,
                },
            });
        }
    }
    Ok(stanzas)
}

/// An AWS KMS stanza's `context` map (absent or null: empty).
fn context(item: &Value, field: &str) -> Result<Vec<(String, String)>, MetadataError> {
    match item.get("context") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Map(entries)) => entries
            .iter()
            .filter_map(|e| match e {
                super::tree::MapEntry::Pair(k, v) => Some(text(v, field).map(|v| (k.clone(), v))),
                super::tree::MapEntry::Comment(_) => None,
            })
            .collect(),
        Some(other) => Err(field_err(
            field,
            format!("expected a map, found a {}", other.kind()),
        )),
    }
}

fn regex(field: &str, pattern: &str) -> Result<Regex, MetadataError> {
    Regex::new(pattern).map_err(|e| field_err(field, format!("not a valid regular expression: {e}")))
}

impl Metadata {
    /// Decodes the `sops` map of a structured file (or the unflattened keys of a flat one).
    pub fn from_value(map: &Value) -> Result<Metadata, MetadataError> {
        if !matches!(map, Value::Map(_)) {
            return Err(MetadataError::NotAMap);
        }
        let top = read_group(map, "")?;
        let key_groups = if !top.is_empty() {
            vec![KeyGroup { stanzas: top }]
        } else {
            let mut groups = Vec::new();
            if let Some(list) = map.get("key_groups") {
                for (i, g) in items(list, "key_groups")?.into_iter().enumerate() {
                    groups.push(KeyGroup {
                        stanzas: read_group(g, &format!("key_groups[{i}]."))?,
                    });
                }
            }
            groups
        };
        if key_groups.iter().all(|g| g.stanzas.is_empty()) {
            return Err(MetadataError::NoKeys);
        }

        let shamir_threshold = match map.get("shamir_threshold") {
            None | Some(Value::Null) => 0,
            Some(v) => {
                let t = text(v, "shamir_threshold")?;
                t.parse()
                    .map_err(|_| field_err("shamir_threshold", "not a non-negative integer"))?
            }
        };

        let mut rules = Vec::new();
        for name in [
            "unencrypted_suffix",
            "encrypted_suffix",
            "unencrypted_regex",
            "encrypted_regex",
            "unencrypted_comment_regex",
            "encrypted_comment_regex",
        ] {
            let value = get_text(map, name, name)?;
            if value.is_empty() {
                continue;
            }
            rules.push(match name {
                "unencrypted_suffix" => EncryptionRule::UnencryptedSuffix(value),
                "encrypted_suffix" => EncryptionRule::EncryptedSuffix(value),
                "unencrypted_regex" => EncryptionRule::UnencryptedRegex(regex(name, &value)?),
                "encrypted_regex" => EncryptionRule::EncryptedRegex(regex(name, &value)?),
                "unencrypted_comment_regex" => EncryptionRule::UnencryptedCommentRegex(regex(name, &value)?),
                _ => EncryptionRule::EncryptedCommentRegex(regex(name, &value)?),
            });
        }
        if rules.len() > 1 {
            return Err(MetadataError::ConflictingRules);
        }
        let rule = rules
            .pop()
            .unwrap_or_else(|| EncryptionRule::UnencryptedSuffix("_unencrypted".to_owned()));

        let mac_only_encrypted = match map.get("mac_only_encrypted") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                let t = text(v, "mac_only_encrypted")?;
                parse_go_bool(&t).ok_or_else(|| field_err("mac_only_encrypted", "not a boolean"))?
            }
        };

        let last_modified = get_text(map, "lastmodified", "lastmodified")?;
        if last_modified.is_empty() {
            return Err(field_err("lastmodified", "missing"));
        }
        Ok(Metadata {
            key_groups,
            shamir_threshold,
            last_modified: normalize_rfc3339(&last_modified)
                .ok_or_else(|| field_err("lastmodified", "not an RFC 3339 timestamp"))?,
            mac: get_text(map, "mac", "mac")?,
            rule,
            mac_only_encrypted,
            version: get_text(map, "version", "version")?,
        })
    }

    /// How many key groups must be opened to recover the data key: one with a
    /// single group, else the Shamir threshold (all groups when it is unset).
    pub fn groups_needed(&self) -> usize {
        match (self.key_groups.len(), self.shamir_threshold) {
            (0 | 1, _) => 1,
            (n, 0) => n,
            (_, t) => t,
        }
    }

    /// Every stanza of every group, for listing recipients in errors.
    pub fn stanzas(&self) -> impl Iterator<Item = &Stanza> {
        self.key_groups.iter().flat_map(|g| g.stanzas.iter())
    }
}

fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// sops parses `lastmodified` with Go's `time.Parse(time.RFC3339, ..)` and
/// uses `Format(time.RFC3339)` of the result as the MAC's additional data,
/// which drops fractional seconds and spells UTC as `Z`.
fn normalize_rfc3339(s: &str) -> Option<String> {
    let b = s.as_bytes();
    // YYYY-MM-DDTHH:MM:SS
    if b.len() < 20 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let zone = match rest {
        "Z" | "z" => "Z".to_owned(),
        "+00:00" => "Z".to_owned(),
        z if z.len() == 6
            && matches!(z.as_bytes()[0], b'+' | b'-')
            && z.as_bytes()[3] == b':'
            && z[1..3].bytes().all(|c| c.is_ascii_digit())
            && z[4..6].bytes().all(|c| c.is_ascii_digit()) =>
        {
            z.to_owned()
        }
        _ => return None,
    };
    Some(format!("{}T{}{zone}", &s[..10], &s[11..19]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_targets_never_show_passwords_in_urls() {
        let vault = Stanza::HcVault {
            address: "https://user:hunter2@vault.example.org:8200".into(),
            engine_path: "sops".into(),
            key_name: "k".into(),
            enc: String::new(),
        };
        assert_eq!(vault.target(), "https://vault.example.org:8200/v1/sops/keys/k");
        let azure = Stanza::AzureKv {
            vault_url: "https://a:b@acme.vault.azure.net/".into(),
            name: "k".into(),
            version: "1".into(),
            enc: String::new(),
        };
        assert_eq!(azure.target(), "https://acme.vault.azure.net//keys/k/1");
        assert_eq!(
            without_userinfo("http://127.0.0.1:1/x@y"),
            "http://127.0.0.1:1/x@y"
        );
    }
    use crate::sops::tree::MapEntry;

    #[test]
    fn rfc3339_is_normalized_like_go() {
        assert_eq!(
            normalize_rfc3339("2024-01-02T03:04:05Z").unwrap(),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            normalize_rfc3339("2024-01-02T03:04:05.123Z").unwrap(),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            normalize_rfc3339("2024-01-02T03:04:05+02:00").unwrap(),
            "2024-01-02T03:04:05+02:00"
        );
        assert!(normalize_rfc3339("yesterday").is_none());
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| MapEntry::Pair(k.into(), v))
                .collect(),
        )
    }

    fn seq(items: Vec<Value>) -> Value {
        Value::Seq(items.into_iter().map(SeqEntry::Item).collect())
    }

    #[test]
    fn aws_kms_stanzas_keep_their_context_and_profile() {
        let m = map(vec![
            (
                "kms",
                seq(vec![map(vec![
                    ("arn", Value::Str("arn:aws:kms:eu-west-1:1:key/k".into())),
                    ("role", Value::Str("arn:aws:iam::1:role/r".into())),
                    (
                        "context",
                        map(vec![
                            ("app", Value::Str("web".into())),
                            ("env", Value::Str("prod".into())),
                        ]),
                    ),
                    ("created_at", Value::Str("2026-01-01T00:00:00Z".into())),
                    ("enc", Value::Str("AQID".into())),
                    ("aws_profile", Value::Str("prod".into())),
                ])]),
            ),
            ("lastmodified", Value::Str("2026-01-01T00:00:00Z".into())),
        ]);
        let md = Metadata::from_value(&m).unwrap();
        let Stanza::AwsKms {
            context, aws_profile, ..
        } = &md.key_groups[0].stanzas[0]
        else {
            panic!("not a kms stanza");
        };
        assert_eq!(
            context,
            &[
                ("app".to_owned(), "web".to_owned()),
                ("env".to_owned(), "prod".to_owned())
            ]
        );
        assert_eq!(aws_profile, "prod");
    }

    #[test]
    fn two_rules_conflict() {
        let m = map(vec![
            (
                "age",
                seq(vec![map(vec![
                    ("recipient", Value::Str("age1x".into())),
                    ("enc", Value::Str("e".into())),
                ])]),
            ),
            ("lastmodified", Value::Str("2024-01-02T03:04:05Z".into())),
            ("unencrypted_suffix", Value::Str("_u".into())),
            ("encrypted_regex", Value::Str("^a".into())),
        ]);
        assert_eq!(
            Metadata::from_value(&m).unwrap_err(),
            MetadataError::ConflictingRules
        );
    }

    #[test]
    fn no_rule_defaults_to_unencrypted_suffix() {
        let m = map(vec![
            (
                "age",
                seq(vec![map(vec![
                    ("recipient", Value::Str("age1x".into())),
                    ("enc", Value::Str("e".into())),
                ])]),
            ),
            ("lastmodified", Value::Str("2024-01-02T03:04:05Z".into())),
        ]);
        let md = Metadata::from_value(&m).unwrap();
        assert!(matches!(md.rule, EncryptionRule::UnencryptedSuffix(ref s) if s == "_unencrypted"));
        assert_eq!(md.key_groups.len(), 1);
    }

    #[test]
    fn empty_key_lists_are_no_keys() {
        let m = map(vec![
            ("kms", seq(vec![])),
            ("age", seq(vec![])),
            ("lastmodified", Value::Str("2024-01-02T03:04:05Z".into())),
        ]);
        assert_eq!(Metadata::from_value(&m).unwrap_err(), MetadataError::NoKeys);
    }
}
