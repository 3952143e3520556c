//! A test age plugin, `age-plugin-sitest`, speaking the real age plugin
//! protocol (recipient-v1 and identity-v1) through the `age-plugin` crate.
//!
//! It stands in for hardware plugins (YubiKey, TPM) in tests: real sops runs it
//! to wrap data keys to an `age1sitest1...` recipient, and sops-install-secrets
//! runs it to unwrap them. Its "hardware" is a 32-byte key carried in both the
//! recipient and the identity, wrapped with age's own ChaCha20-Poly1305; it is
//! for tests only and protects nothing.
//!
//! - `age-plugin-sitest --generate` prints a new identity and its recipient.
//! - With `SITEST_LOG=FILE`, every identity-v1 session appends one line to FILE,
//!   so tests can count how often a plugin was asked to unwrap.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use age_core::format::{FILE_KEY_BYTES, FileKey, Stanza};
use age_core::primitives::{aead_decrypt, aead_encrypt};
use age_core::secrecy::ExposeSecret;
use age_plugin::identity::{self, IdentityPluginV1};
use age_plugin::recipient::{self, RecipientPluginV1};
use age_plugin::{Callbacks, PluginHandler, run_state_machine};
use bech32::{Bech32, Hrp};

const NAME: &str = "sitest";
const TAG: &str = "sitest";

/// The short key label put in each stanza, so an identity knows its own.
fn label(key: &[u8; 32]) -> String {
    key[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn key_from(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

struct Handler;

impl PluginHandler for Handler {
    type RecipientV1 = Wrapper;
    type IdentityV1 = Unwrapper;

    fn recipient_v1(self) -> io::Result<Wrapper> {
        Ok(Wrapper::default())
    }

    fn identity_v1(self) -> io::Result<Unwrapper> {
        if let Some(log) = std::env::var_os("SITEST_LOG") {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
            writeln!(f, "identity-v1")?;
        }
        Ok(Unwrapper::default())
    }
}

#[derive(Default)]
struct Wrapper {
    keys: Vec<[u8; 32]>,
}

impl RecipientPluginV1 for Wrapper {
    fn add_recipient(
        &mut self,
        index: usize,
        plugin_name: &str,
        bytes: &[u8],
    ) -> Result<(), recipient::Error> {
        match (plugin_name, key_from(bytes)) {
            (NAME, Some(k)) => {
                self.keys.push(k);
                Ok(())
            }
            _ => Err(recipient::Error::Recipient {
                index,
                message: "not a sitest recipient".into(),
            }),
        }
    }

    fn add_identity(&mut self, index: usize, _: &str, _: &[u8]) -> Result<(), recipient::Error> {
        Err(recipient::Error::Identity {
            index,
            message: "sitest encrypts to recipients only".into(),
        })
    }

    fn labels(&mut self) -> HashSet<String> {
        HashSet::new()
    }

    fn wrap_file_keys(
        &mut self,
        file_keys: Vec<FileKey>,
        _: impl Callbacks<recipient::Error>,
    ) -> io::Result<Result<Vec<Vec<Stanza>>, Vec<recipient::Error>>> {
        Ok(Ok(file_keys
            .iter()
            .map(|fk| {
                self.keys
                    .iter()
                    .map(|k| Stanza {
                        tag: TAG.into(),
                        args: vec![label(k)],
                        body: aead_encrypt(k, fk.expose_secret()),
                    })
                    .collect()
            })
            .collect()))
    }
}

#[derive(Default)]
struct Unwrapper {
    keys: Vec<[u8; 32]>,
}

impl IdentityPluginV1 for Unwrapper {
    fn add_identity(&mut self, index: usize, plugin_name: &str, bytes: &[u8]) -> Result<(), identity::Error> {
        match (plugin_name, key_from(bytes)) {
            (NAME, Some(k)) => {
                self.keys.push(k);
                Ok(())
            }
            _ => Err(identity::Error::Identity {
                index,
                message: "not a sitest identity".into(),
            }),
        }
    }

    fn unwrap_file_keys(
        &mut self,
        files: Vec<Vec<Stanza>>,
        mut callbacks: impl Callbacks<identity::Error>,
    ) -> io::Result<HashMap<usize, Result<FileKey, Vec<identity::Error>>>> {
        let _ = callbacks.message("sitest: pretend to touch the key");
        let mut out = HashMap::new();
        for (file, stanzas) in files.iter().enumerate() {
            for (i, stanza) in stanzas.iter().enumerate() {
                if stanza.tag != TAG {
                    continue;
                }
                let Some(key) = self.keys.iter().find(|k| stanza.args == [label(k)]) else {
                    continue;
                };
                let result = aead_decrypt(key, FILE_KEY_BYTES, &stanza.body)
                    .map_err(|_| {
                        vec![identity::Error::Stanza {
                            file_index: file,
                            stanza_index: i,
                            message: "the stanza does not open".into(),
                        }]
                    })
                    .and_then(|plain| {
                        FileKey::try_init_with_mut(|fk| {
                            fk.copy_from_slice(&plain);
                            Ok(())
                        })
                    });
                out.insert(file, result);
                break;
            }
        }
        Ok(out)
    }
}

fn generate() -> io::Result<()> {
    let mut key = [0u8; 32];
    getrandom(&mut key)?;
    let id = bech32::encode::<Bech32>(Hrp::parse("age-plugin-sitest-").expect("valid"), &key)
        .expect("fits")
        .to_uppercase();
    let recipient = bech32::encode::<Bech32>(Hrp::parse("age1sitest").expect("valid"), &key).expect("fits");
    println!("# recipient: {recipient}\n{id}");
    Ok(())
}

/// Randomness from the kernel, without another dependency.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--generate") => generate(),
        Some(arg) if arg.starts_with("--age-plugin=") => {
            run_state_machine(&arg["--age-plugin=".len()..], Handler)
        }
        _ => {
            eprintln!("usage: age-plugin-sitest --generate | --age-plugin=STATE_MACHINE");
            std::process::exit(2);
        }
    }
}
