//! sops-install-secrets: decrypt sops files with the keys a NixOS host has,
//! and install them as a RAM-only generation of `/run/secrets`.
//!
//! The crate is a drop-in successor to sops-nix's Go installer:
//! - [`sops`] reads every file real sops 3.x writes; its output is
//!   byte-identical to `sops -d`;
//! - [`keys`] holds the host's identities and recovers data keys;
//! - [`manifest`] reads the JSON sops-nix's NixOS module writes;
//! - [`install`] is the activation-time pipeline, readable top to bottom in
//!   [`install::install`];
//! - [`safe_path`] opens every path the manifest names without following
//!   another user's symlinks, and reads regular files only.
//!
//! ```no_run
//! use sops_install_secrets::keys::Keyring;
//! use sops_install_secrets::sops::{Format, tree::parse_slash_path};
//! use sops_install_secrets::unlock::decrypt_bytes;
//!
//! let mut keyring = Keyring::new();
//! // The host's SSH key opens files encrypted to its ssh-to-age recipient.
//! keyring.add_ssh_key("/etc/ssh/ssh_host_ed25519_key".as_ref())?;
//! let bytes = std::fs::read("secrets.yaml")?;
//! let doc = decrypt_bytes(&bytes, Format::Yaml, &keyring)?;
//! let private_key = doc.extract(&parse_slash_path("ssh_keys/private_key"), Format::Yaml)?;
//! # let _ = private_key;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod hardening;
pub(crate) mod helper;
pub mod install;
pub mod keys;
pub mod log;
pub mod manifest;
pub(crate) mod plaintext;
pub(crate) mod process;
pub mod safe_path;
pub mod sops;
pub(crate) mod templates;
pub(crate) mod units;
pub mod unlock;
