//! Where data keys come from: the identities a host offers, and recovering a
//! file's data key from its key groups with them.
//!
//! A sops file's 32-byte data key is wrapped once per key group (or, with
//! several groups, split with Shamir and one share wrapped per group); any one
//! stanza of a group opens that group's share. [`Keyring`] holds what this host
//! can open stanzas with; [`recover_data_key`] opens groups until enough shares
//! are in hand.

pub mod age_file;
pub mod host_keys;
#[cfg(feature = "_net")]
pub mod kms;
pub mod pgp;
pub mod sops_env;
pub mod ssh;
mod x25519;

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::sops::metadata::{Metadata, Stanza};
use crate::sops::shamir::{self, ShamirError};

/// An identity this host offers, described for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    /// Where it came from: `/etc/ssh/ssh_host_ed25519_key (ssh-to-age)`.
    pub origin: String,
    /// The recipient a file must list for this identity to open it.
    pub recipient: String,
}

/// The identities this host can open stanzas with. Secret material stays in
/// memory inside age's identity types, which zeroize on drop.
#[derive(Default)]
pub struct Keyring {
    age: Vec<Box<dyn age::Identity + Send + Sync>>,
    plugins: Vec<Plugin>,
    pgp_keys: Vec<pgp::SshPgpKey>,
    gnupg: Option<pgp::GnupgHome>,
    offered: Vec<Offered>,
    /// Network key services; reads the environment only when first asked.
    #[cfg(feature = "_net")]
    kms: kms::Kms,
}

/// Why an identity source could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An SSH key problem.
    #[error(transparent)]
    Ssh(#[from] ssh::SshKeyError),
    /// An age key file problem.
    #[error(transparent)]
    AgeFile(#[from] age_file::AgeFileError),
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Whether it holds an identity that opens a stanza in this process
    /// (an age identity not held by a plugin), as
    /// [`recover_data_key_in_process`] needs.
    pub fn opens_in_process(&self) -> bool {
        !self.age.is_empty()
    }

    /// Adds every identity of an age key file.
    pub fn add_age_key_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let keys = age_file::load(path)?;
        self.add_age_keys(keys, &path.display().to_string());
        Ok(())
    }

    /// Adds the identities of age key file text (`SOPS_AGE_KEY`).
    pub fn add_age_keys_text(&mut self, text: &str, origin: &str) -> Result<(), KeyError> {
        let keys = age_file::parse(text, origin)?;
        self.add_age_keys(keys, origin);
        Ok(())
    }

    fn add_age_keys(&mut self, keys: age_file::AgeKeys, origin: &str) {
        let mut names: Vec<&str> = keys.plugins.iter().map(|k| k.plugin()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            self.offered.push(Offered {
                origin: origin.to_owned(),
                recipient: format!("age1{name}1... (an identity of age-plugin-{name})"),
            });
            // A missing binary is told only if a stanza of this plugin needs it.
            let runner =
                age::plugin::IdentityPluginV1::new(name, &keys.plugins, PluginUi(name.to_owned())).ok();
            self.plugins.push(Plugin {
                name: name.to_owned(),
                runner,
            });
        }
        for key in keys.native {
            let key = x25519::X25519Identity::new(&key);
            self.offered.push(Offered {
                origin: origin.to_owned(),
                recipient: key.recipient(),
            });
            self.age.push(Box::new(key));
        }
    }

    /// Adds an OpenSSH private key: as an age SSH identity, and for Ed25519
    /// keys also as the X25519 identity ssh-to-age derives from it. Returns
    /// that identity's age recipient, if there is one.
    pub fn add_ssh_key(&mut self, path: &Path) -> Result<Option<String>, KeyError> {
        let ids = ssh::load(path)?;
        let origin = path.display().to_string();
        let mut derived_recipient = None;
        if let Some(derived) = ids.derived {
            derived_recipient = Some(derived.recipient.clone());
            let key: age::x25519::Identity =
                derived.identity.parse().expect("derived identities always parse");
            let key = x25519::X25519Identity::new(&key);
            self.offered.push(Offered {
                origin: format!("{origin} (converted with ssh-to-age)"),
                recipient: derived.recipient,
            });
            self.age.push(Box::new(key));
        }
        self.offered.push(Offered {
            origin,
            recipient: ids.public_key,
        });
        self.age.push(Box::new(ids.ssh));
        Ok(derived_recipient)
    }

    /// Adds an RSA SSH key as an OpenPGP key (sops-nix's `sops.gnupg.sshKeyPaths`).
    /// Returns its fingerprint.
    pub fn add_ssh_key_as_pgp(&mut self, path: &Path) -> Result<String, KeyError> {
        let key = pgp::SshPgpKey::load(path)?;
        let fingerprint = key.fingerprint().to_owned();
        self.offered.push(Offered {
            origin: format!("{} (as a PGP key)", path.display()),
            recipient: format!("pgp {fingerprint}"),
        });
        self.pgp_keys.push(key);
        Ok(fingerprint)
    }

    /// Opens `pgp` stanzas with the `gpg` binary and this GnuPG home.
    pub fn set_gnupg_home(&mut self, home: pgp::GnupgHome) {
        self.offered.push(Offered {
            origin: "gpg".to_owned(),
            recipient: format!("the secret keys in the GnuPG home {}", home.home().display()),
        });
        self.gnupg = Some(home);
    }

    /// What this host offers, for error messages.
    pub fn offered(&self) -> &[Offered] {
        &self.offered
    }

    /// Opens an age stanza's armored file and returns its payload. A stanza
    /// for a plugin recipient (`age1NAME1...`) is offered to that plugin's
    /// identities only, so a plugin runs once per file, for its own stanza.
    fn open_age(&self, recipient: &str, armored: &str) -> Result<Zeroizing<Vec<u8>>, StanzaError> {
        let ids: Vec<&dyn age::Identity> = match plugin_name(recipient) {
            None if self.age.is_empty() => return Err(StanzaError::NoAgeIdentity),
            None => self
                .age
                .iter()
                .map(|i| i.as_ref() as &dyn age::Identity)
                .collect(),
            Some(name) => {
                let mut ids: Vec<&dyn age::Identity> = Vec::new();
                let mut why_not = None;
                for plugin in self.plugins.iter().filter(|p| p.name == name) {
                    match &plugin.runner {
                        Some(runner) => ids.push(runner),
                        None => {
                            why_not = Some(StanzaError::PluginMissing {
                                name: name.to_owned(),
                            })
                        }
                    }
                }
                if ids.is_empty() {
                    return Err(why_not.unwrap_or_else(|| StanzaError::NoPluginIdentity {
                        name: name.to_owned(),
                    }));
                }
                ids
            }
        };
        let reader = age::armor::ArmoredReader::new(armored.as_bytes());
        let decryptor = age::Decryptor::new(reader).map_err(StanzaError::CorruptAge)?;
        let mut stream = decryptor.decrypt(ids.into_iter()).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => StanzaError::NoMatchingAgeIdentity,
            other => StanzaError::Age(other),
        })?;
        let mut out = Zeroizing::new(Vec::new());
        stream
            .read_to_end(&mut out)
            .map_err(StanzaError::CorruptAgePayload)?;
        Ok(out)
    }

    /// Opens a pgp stanza: in process with a converted SSH key of that
    /// fingerprint, else with gpg and the GnuPG home.
    fn open_pgp(&self, fingerprint: &str, armored: &str) -> Result<Zeroizing<Vec<u8>>, StanzaError> {
        if let Some(key) = self.pgp_keys.iter().find(|k| k.matches(fingerprint)) {
            return Ok(key.decrypt(armored)?);
        }
        match &self.gnupg {
            Some(home) => Ok(home.decrypt(fingerprint, armored)?),
            None if self.pgp_keys.is_empty() => Err(StanzaError::NoGpgKey),
            None => Err(StanzaError::NoGpgKeyWithFingerprint),
        }
    }

    /// Opens one stanza, or says why not.
    pub fn open(&self, stanza: &Stanza) -> Result<Zeroizing<Vec<u8>>, StanzaError> {
        match stanza {
            Stanza::Age { recipient, enc } => self.open_age(recipient, enc),
            Stanza::Pgp { fingerprint, enc } => self.open_pgp(fingerprint, enc),
            #[cfg(feature = "gcp-kms")]
            Stanza::GcpKms { .. } => self.kms.open(stanza).map_err(StanzaError::Kms),
            #[cfg(feature = "vault")]
            Stanza::HcVault { .. } => self.kms.open(stanza).map_err(StanzaError::Kms),
            #[cfg(feature = "aws-kms")]
            Stanza::AwsKms { .. } => self.kms.open(stanza).map_err(StanzaError::Kms),
            #[cfg(feature = "azure-kv")]
            Stanza::AzureKv { .. } => self.kms.open(stanza).map_err(StanzaError::Kms),
            other => Err(StanzaError::Unsupported { kind: other.kind() }),
        }
    }
}

/// Why one stanza of a key group did not open. The texts name what this host
/// lacks or what was wrong with the stanza; none holds key material.
#[derive(Debug, thiserror::Error)]
pub enum StanzaError {
    /// An age stanza, and the host has no age or SSH identity at all.
    #[error("this host offers no age or SSH identity")]
    NoAgeIdentity,
    /// A plugin stanza, and no identity of that plugin was given.
    #[error("this host has no identity for the age plugin {name} (AGE-PLUGIN-{}-1...)", .name.to_uppercase())]
    NoPluginIdentity {
        /// The plugin's name.
        name: String,
    },
    /// A plugin stanza whose plugin binary is not installed.
    #[error("age-plugin-{name} is not on PATH (NixOS: add its package to sops.age.plugins)")]
    PluginMissing {
        /// The plugin's name.
        name: String,
    },
    /// The armored age file does not parse.
    #[error("corrupt age data: {0}")]
    CorruptAge(#[source] age::DecryptError),
    /// None of the host's identities is a recipient.
    #[error("no identity of this host matches")]
    NoMatchingAgeIdentity,
    /// age refused otherwise (a plugin's failure, a bad header MAC ...).
    #[error(transparent)]
    Age(age::DecryptError),
    /// The payload did not decrypt to the end.
    #[error("corrupt age payload: {0}")]
    CorruptAgePayload(#[source] std::io::Error),
    /// A pgp stanza failed in process or in gpg.
    #[error(transparent)]
    Pgp(#[from] pgp::PgpError),
    /// A pgp stanza, and the host has no GPG key at all.
    #[error("this host offers no GPG key (sops.gnupg.home or sops.gnupg.sshKeyPaths)")]
    NoGpgKey,
    /// A pgp stanza for a fingerprint the host's converted SSH keys do not have.
    #[error("no GPG key of this host has this fingerprint")]
    NoGpgKeyWithFingerprint,
    /// A cloud key service refused or could not be asked.
    #[cfg(feature = "_net")]
    #[error(transparent)]
    Kms(#[from] kms::KmsError),
    /// A key type this build was compiled without.
    #[error("{kind} keys are not supported by this build")]
    Unsupported {
        /// The stanza kind (`gcp_kms`, `hckms` ...).
        kind: &'static str,
    },
}

/// The identities of one age plugin, and the plugin binary that runs them.
struct Plugin {
    name: String,
    /// The binary resolved on `PATH`, or why it could not be.
    runner: Option<age::plugin::IdentityPluginV1<PluginUi>>,
}

/// What a plugin may ask of the user. Activation has no one at a terminal:
/// messages ("touch your key") go to the log, questions are answered "cannot".
#[derive(Clone)]
struct PluginUi(String);

impl age::Callbacks for PluginUi {
    fn display_message(&self, message: &str) {
        eprintln!("sops-install-secrets: age-plugin-{}: {message}", self.0);
    }

    fn confirm(&self, _: &str, _: &str, _: Option<&str>) -> Option<bool> {
        None
    }

    fn request_public_string(&self, _: &str) -> Option<String> {
        None
    }

    fn request_passphrase(&self, _: &str) -> Option<age::secrecy::SecretString> {
        None
    }
}

/// The plugin a recipient belongs to: `age1yubikey1...` is `yubikey`'s; native
/// X25519 (`age1...`) and SSH recipients belong to none. (Bech32 data never
/// contains `1`, so the human-readable part ends at the last one.)
fn plugin_name(recipient: &str) -> Option<&str> {
    let hrp = &recipient[..recipient.rfind('1')?];
    hrp.strip_prefix("age1").filter(|name| !name.is_empty())
}

/// One stanza that was tried, and why it did not open.
#[derive(Debug)]
pub struct Attempt {
    /// `age age1...`, `pgp FBC7...`.
    pub stanza: String,
    /// Why it failed.
    pub reason: StanzaError,
}

/// Why the data key could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum DataKeyError {
    /// Not enough key groups could be opened.
    #[error("{}", describe_groups(*.opened, *.needed, .groups))]
    NotEnoughGroups {
        /// How many groups opened.
        opened: usize,
        /// How many are needed.
        needed: usize,
        /// Per group (in file order): `None` if it opened, else every stanza tried.
        groups: Vec<Option<Vec<Attempt>>>,
    },
    /// The shares did not combine.
    #[error("the key group shares do not combine: {0}")]
    Shamir(#[from] ShamirError),
    /// The recovered key is not 32 bytes.
    #[error("the recovered data key has {0} bytes instead of 32")]
    BadLength(usize),
}

fn describe_groups(opened: usize, needed: usize, groups: &[Option<Vec<Attempt>>]) -> String {
    let mut s = if groups.len() == 1 {
        "no key of the file could be opened by this host:".to_owned()
    } else {
        format!(
            "{opened} of {} key groups could be opened, {needed} needed:",
            groups.len()
        )
    };
    for (i, g) in groups.iter().enumerate() {
        if let Some(attempts) = g {
            if groups.len() > 1 {
                s.push_str(&format!("\n  key group {}:", i + 1));
            }
            for a in attempts {
                s.push_str(&format!("\n    {}: {}", a.stanza, a.reason));
            }
        }
    }
    s
}

/// The order stanzas of a group are tried in: local identities first (they
/// need no network and are fast), then GPG, then age plugins, then network
/// sources.
fn cost(stanza: &Stanza) -> u8 {
    match stanza {
        Stanza::Age { recipient, .. } if plugin_name(recipient).is_none() => 0,
        Stanza::Pgp { .. } => 1,
        // Plugins are mostly hardware that may want a touch: after what opens unattended.
        Stanza::Age { .. } => 2,
        _ => 3,
    }
}

/// Recovers a file's data key with the identities in `keyring`.
pub fn recover_data_key(metadata: &Metadata, keyring: &Keyring) -> Result<Zeroizing<[u8; 32]>, DataKeyError> {
    let groups = &metadata.key_groups;
    let needed = metadata.groups_needed();
    let mut shares = Vec::new();
    let mut report = Vec::with_capacity(groups.len());
    for group in groups {
        if shares.len() == needed {
            // Enough shares: later groups need not be opened (and their KMS not called).
            report.push(None);
            continue;
        }
        let mut order: Vec<&Stanza> = group.stanzas.iter().collect();
        order.sort_by_key(|s| cost(s));
        let mut attempts = Vec::new();
        let mut opened = None;
        for stanza in order {
            match keyring.open(stanza) {
                Ok(share) => {
                    opened = Some(share);
                    break;
                }
                Err(reason) => attempts.push(Attempt {
                    stanza: format!("{} {}", stanza.kind(), stanza.target()),
                    reason,
                }),
            }
        }
        match opened {
            Some(share) => {
                shares.push(share);
                report.push(None);
            }
            None => report.push(Some(attempts)),
        }
    }
    if shares.len() < needed {
        return Err(DataKeyError::NotEnoughGroups {
            opened: shares.len(),
            needed,
            groups: report,
        });
    }
    combine(shares, groups.len())
}

/// The data key if this process alone can recover it, with its own age and
/// SSH identities: no gpg, no age plugin, no network service is asked. The
/// groups are walked as [`recover_data_key`] walks them (in order, each
/// opened by its first stanza that opens, local identities being tried
/// first there too), so a key found here is the one it would find. `None`
/// as soon as a group that is needed does not open that way, or anything
/// else fails: the caller then asks [`recover_data_key`], which tells why.
pub fn recover_data_key_in_process(metadata: &Metadata, keyring: &Keyring) -> Option<Zeroizing<[u8; 32]>> {
    let needed = metadata.groups_needed();
    let mut shares = Vec::with_capacity(needed);
    for group in metadata.key_groups.iter().take(needed) {
        let share = group
            .stanzas
            .iter()
            .filter(|s| cost(s) == 0)
            .find_map(|s| keyring.open(s).ok())?;
        shares.push(share);
    }
    if shares.len() < needed {
        return None;
    }
    combine(shares, metadata.key_groups.len()).ok()
}

/// The data key from the shares of a file with `groups` key groups.
fn combine(mut shares: Vec<Zeroizing<Vec<u8>>>, groups: usize) -> Result<Zeroizing<[u8; 32]>, DataKeyError> {
    let key = if groups > 1 {
        shamir::combine(&shares)?
    } else {
        shares.pop().expect("one share")
    };
    let array: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| DataKeyError::BadLength(key.len()))?;
    Ok(Zeroizing::new(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_recipients_name_their_plugin() {
        assert_eq!(plugin_name("age1yubikey1qwerty"), Some("yubikey"));
        assert_eq!(plugin_name("age1se1qgg"), Some("se"));
        assert_eq!(
            plugin_name("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"),
            None
        );
        assert_eq!(plugin_name("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH"), None);
        assert_eq!(plugin_name(""), None);
    }

    /// An armored age file of `payload` for `recipient`, as sops writes a stanza's `enc`.
    fn age_armored(recipient: &age::x25519::Recipient, payload: &[u8]) -> String {
        use std::io::Write;
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor).unwrap();
        let mut w = encryptor.wrap_output(armor).unwrap();
        w.write_all(payload).unwrap();
        w.finish().unwrap().finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    fn age_stanza(recipient: &str, enc: &str) -> Stanza {
        Stanza::Age {
            recipient: recipient.to_owned(),
            enc: enc.to_owned(),
        }
    }

    #[test]
    fn each_refusal_of_an_age_stanza_has_its_own_variant() {
        use age::secrecy::ExposeSecret;
        let ours = age::x25519::Identity::generate();
        let theirs = age::x25519::Identity::generate();
        let to_theirs = age_armored(&theirs.to_public(), &[7; 32]);
        let recipient = theirs.to_public().to_string();

        let empty = Keyring::new();
        let err = empty.open(&age_stanza(&recipient, &to_theirs)).unwrap_err();
        assert!(matches!(err, StanzaError::NoAgeIdentity), "{err:?}");
        assert_eq!(err.to_string(), "this host offers no age or SSH identity");

        let mut keyring = Keyring::new();
        keyring
            .add_age_keys_text(ours.to_string().expose_secret(), "test")
            .unwrap();
        let err = keyring.open(&age_stanza(&recipient, &to_theirs)).unwrap_err();
        assert!(matches!(err, StanzaError::NoMatchingAgeIdentity), "{err:?}");
        assert_eq!(err.to_string(), "no identity of this host matches");

        let err = keyring
            .open(&age_stanza(
                &recipient,
                "-----BEGIN AGE ENCRYPTED FILE-----\nnot age\n",
            ))
            .unwrap_err();
        assert!(matches!(err, StanzaError::CorruptAge(_)), "{err:?}");
        assert!(err.to_string().starts_with("corrupt age data: "), "{err}");

        let to_ours = age_armored(&ours.to_public(), &[9; 32]);
        let share = keyring
            .open(&age_stanza(&ours.to_public().to_string(), &to_ours))
            .unwrap();
        assert_eq!(*share, vec![9; 32]);
    }

    #[test]
    fn plugin_pgp_and_unsupported_stanzas_say_what_the_host_lacks() {
        let keyring = Keyring::new();
        let err = keyring
            .open(&age_stanza("age1yubikey1qwerty", "irrelevant"))
            .unwrap_err();
        assert!(
            matches!(&err, StanzaError::NoPluginIdentity { name } if name == "yubikey"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "this host has no identity for the age plugin yubikey (AGE-PLUGIN-YUBIKEY-1...)"
        );

        let pgp = Stanza::Pgp {
            fingerprint: "52347B17CB87CF7B724FEACF3E54A544D8560FBD".into(),
            enc: "irrelevant".into(),
        };
        let err = keyring.open(&pgp).unwrap_err();
        assert!(matches!(err, StanzaError::NoGpgKey), "{err:?}");
        assert_eq!(
            err.to_string(),
            "this host offers no GPG key (sops.gnupg.home or sops.gnupg.sshKeyPaths)"
        );

        let huawei = Stanza::HuaweiKms {
            key_id: "k".into(),
            enc: "e".into(),
        };
        let err = keyring.open(&huawei).unwrap_err();
        assert!(
            matches!(err, StanzaError::Unsupported { kind: "hckms" }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "hckms keys are not supported by this build");
    }
}
