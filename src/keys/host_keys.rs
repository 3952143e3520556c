//! The build-time recipient check (`hostPubKeys`): whether the public keys a
//! host will have open enough key groups of a sops file, so that a missing
//! recipient fails the build instead of the boot. An SSH Ed25519 key counts
//! through its ssh-to-age recipient, an SSH RSA key (on a host that uses RSA
//! SSH keys as GPG keys) through its derived OpenPGP fingerprint.

use crate::sops::metadata::Metadata;

use super::pgp;
use super::ssh::ed25519_public_to_age;

/// A host's public key as a recipient check sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKey {
    /// The age recipient that opens files encrypted to it (`age1...`).
    pub age: Option<String>,
    /// For SSH keys, `type base64` without the comment.
    pub ssh: Option<String>,
    /// For RSA SSH keys, the OpenPGP fingerprint they have as `sops.gnupg.sshKeyPaths` keys.
    pub pgp: Option<String>,
}

/// Why a host key could not be read, or the host's keys do not open a file.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// `age1...` that does not parse.
    #[error("{text:?} is not an age recipient: {reason}")]
    NotAgeRecipient {
        /// The key as given.
        text: String,
        /// The age library's reason.
        reason: String,
    },
    /// Neither form.
    #[error("{text:?} is neither an age recipient nor an OpenSSH public key: {source}")]
    NotSshKey {
        /// The key as given.
        text: String,
        /// Why the OpenSSH parser refused it.
        source: ssh_key::Error,
    },
    /// The parsed key could not be written back as a line.
    #[error(transparent)]
    Encode(#[from] ssh_key::Error),
    /// The keys open too few key groups.
    #[error("{}", describe_missing(*.opened, *.needed, .listed, .offered))]
    TooFewGroups {
        /// Key groups the host's keys open.
        opened: usize,
        /// Key groups needed.
        needed: usize,
        /// The file's stanzas, `kind target`.
        listed: Vec<String>,
        /// What the host has: recipients, SSH keys, `pgp FINGERPRINT`.
        offered: Vec<String>,
    },
}

fn describe_missing(opened: usize, needed: usize, listed: &[String], offered: &[String]) -> String {
    format!(
        "the host's keys open {opened} of the {needed} key group(s) needed. The file lists: {}. The host has: {}. \
         Add the host's recipient (e.g. {}) to the file's creation rule in .sops.yaml and run `sops updatekeys` on it.",
        listed.join(", "),
        offered.join(", "),
        offered.first().map_or("its age recipient", String::as_str)
    )
}

/// Reads `age1...` or an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
pub fn parse_host_key(text: &str) -> Result<HostKey, HostKeyError> {
    let text = text.trim();
    if text.starts_with("age1") {
        text.parse::<age::x25519::Recipient>()
            .map_err(|e| HostKeyError::NotAgeRecipient {
                text: text.to_owned(),
                reason: e.to_string(),
            })?;
        return Ok(HostKey {
            age: Some(text.to_owned()),
            ssh: None,
            pgp: None,
        });
    }
    let key = ssh_key::PublicKey::from_openssh(text).map_err(|source| HostKeyError::NotSshKey {
        text: text.to_owned(),
        source,
    })?;
    let line = key.to_openssh()?;
    let ssh = line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let age = match key.key_data() {
        ssh_key::public::KeyData::Ed25519(pk) => ed25519_public_to_age(&pk.0),
        _ => None,
    };
    let pgp = match key.key_data() {
        ssh_key::public::KeyData::Rsa(pk) => match (pk.e.as_positive_bytes(), pk.n.as_positive_bytes()) {
            (Some(e), Some(n)) => pgp::ssh_rsa_fingerprint(e, n).ok(),
            _ => None,
        },
        _ => None,
    };
    Ok(HostKey {
        age,
        ssh: Some(ssh),
        pgp,
    })
}

/// Whether the host's public keys open enough key groups of a file; if not,
/// a message naming what is missing.
/// An RSA SSH key counts for `pgp` stanzas of its derived fingerprint only when
/// the host uses RSA SSH keys as GPG keys (`pgp_from_ssh`).
pub fn host_opens(metadata: &Metadata, host: &[HostKey], pgp_from_ssh: bool) -> Result<(), HostKeyError> {
    use crate::sops::metadata::Stanza;
    let opens = |stanza: &Stanza| match stanza {
        Stanza::Age { recipient, .. } => {
            let r = recipient.trim();
            host.iter().any(|h| {
                h.age.as_deref() == Some(r)
                    || h.ssh
                        .as_deref()
                        .is_some_and(|ssh| r.split_whitespace().take(2).collect::<Vec<_>>().join(" ") == ssh)
            })
        }
        Stanza::Pgp { fingerprint, .. } if pgp_from_ssh => host.iter().any(|h| {
            h.pgp
                .as_deref()
                .is_some_and(|fp| pgp::fingerprint_names(fp, fingerprint))
        }),
        _ => false,
    };
    let groups = &metadata.key_groups;
    let needed = metadata.groups_needed();
    let opened = groups.iter().filter(|g| g.stanzas.iter().any(opens)).count();
    if opened >= needed {
        return Ok(());
    }
    let listed: Vec<String> = metadata
        .stanzas()
        .map(|s| format!("{} {}", s.kind(), s.target()))
        .collect();
    let mut offered: Vec<String> = host
        .iter()
        .filter_map(|h| h.age.as_deref().or(h.ssh.as_deref()))
        .map(str::to_owned)
        .collect();
    if pgp_from_ssh {
        offered.extend(
            host.iter()
                .filter_map(|h| h.pgp.as_ref())
                .map(|fp| format!("pgp {fp}")),
        );
    }
    Err(HostKeyError::TooFewGroups {
        opened,
        needed,
        listed,
        offered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_of_neither_form_is_told_apart_from_a_bad_age_recipient() {
        let err = parse_host_key("age1notarecipient").unwrap_err();
        assert!(matches!(err, HostKeyError::NotAgeRecipient { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("\"age1notarecipient\" is not an age recipient: "),
            "{err}"
        );

        let err = parse_host_key("ssh-ed25519 AAAAnotbase64").unwrap_err();
        assert!(matches!(err, HostKeyError::NotSshKey { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("is neither an age recipient nor an OpenSSH public key"),
            "{err}"
        );
    }

    #[test]
    fn too_few_groups_lists_the_file_and_the_host() {
        let err = HostKeyError::TooFewGroups {
            opened: 0,
            needed: 1,
            listed: vec!["age age1file".into()],
            offered: vec!["age1host".into()],
        };
        assert_eq!(
            err.to_string(),
            "the host's keys open 0 of the 1 key group(s) needed. The file lists: age age1file. \
             The host has: age1host. Add the host's recipient (e.g. age1host) to the file's creation rule \
             in .sops.yaml and run `sops updatekeys` on it."
        );
    }
}
