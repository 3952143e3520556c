//! `pgp` stanzas against files real sops 3.11 encrypted with real GnuPG keys
//! (`tests/fixtures/pgp/generate.sh`). GnuPG homes are opened with the real
//! `gpg` binary; the RSA SSH host key is converted and used in process.
//!
//! These tests need `gpg` (Debian's gnupg). They fail, not skip, when `CI` is
//! set and it is missing; `.ci/run` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sops_install_secrets::keys::Keyring;
use sops_install_secrets::keys::pgp::GnupgHome;
use sops_install_secrets::sops::Format;
use sops_install_secrets::unlock::decrypt_bytes;

/// What sops-nix's own conversion derives from `tests/fixtures/keys/host_rsa`
/// (built from its source with Go; `gpg --show-keys` agrees).
const SOPS_NIX_FINGERPRINT: &str = "52347B17CB87CF7B724FEACF3E54A544D8560FBD";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn pgp_dir() -> PathBuf {
    fixtures().join("pgp")
}

fn have_gpg() -> bool {
    let ok = Command::new("gpg")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("gpg is required in CI (apt-get install gnupg)");
    }
    if !ok {
        eprintln!("skipping: gpg not installed");
    }
    ok
}

/// A GnuPG home in a short temporary path (gpg-agent's socket lives in it),
/// holding the given exported secret keys; its agent is stopped on drop.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn with_keys(keys: &[&str]) -> Home {
        let dir = tempfile::Builder::new().prefix("gpg").tempdir_in("/tmp").unwrap();
        for key in keys {
            let out = Command::new("gpg")
                .arg("--homedir")
                .arg(dir.path())
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .arg("--import")
                .arg(pgp_dir().join("keys").join(key))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "gpg --import {key}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Home { dir }
    }

    /// What real gpg encrypts `data` to, for the SSH host key's public half (imported).
    fn encrypt_to_host(&self, data: &[u8]) -> String {
        let input = self.dir.path().join("plain");
        std::fs::write(&input, data).unwrap();
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.dir.path())
            .args(["--batch", "--trust-model", "always", "--armor", "--encrypt", "-r"])
            .arg(SOPS_NIX_FINGERPRINT)
            .args(["--output", "-"])
            .arg(&input)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn gnupg(&self) -> GnupgHome {
        GnupgHome::new(self.dir.path().to_owned(), None)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.dir.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// A keyring with age key files from tests/fixtures/keys and, optionally, a GnuPG home.
fn keyring(age_keys: &[&str], gnupg: Option<GnupgHome>) -> Keyring {
    let mut keyring = Keyring::new();
    for key in age_keys {
        keyring
            .add_age_key_file(&fixtures().join("keys").join(key))
            .unwrap();
    }
    if let Some(home) = gnupg {
        keyring.set_gnupg_home(home);
    }
    keyring
}

/// A keyring holding tests/fixtures/keys/host_rsa as a GPG key, and nothing else.
fn ssh_rsa_keyring() -> Keyring {
    let mut keyring = Keyring::new();
    keyring
        .add_ssh_key_as_pgp(&fixtures().join("keys/host_rsa"))
        .unwrap();
    keyring
}

fn fingerprint(name: &str) -> String {
    std::fs::read_to_string(pgp_dir().join("keys").join(format!("{name}.fingerprint")))
        .unwrap()
        .trim()
        .to_owned()
}

fn decrypt(file: &str, keyring: &Keyring) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(pgp_dir().join("enc").join(file)).unwrap();
    let doc = decrypt_bytes(&bytes, Format::Yaml, keyring).map_err(|e| e.to_string())?;
    Ok(doc.to_plaintext(Format::Yaml).unwrap().to_vec())
}

fn expected(name: &str) -> Vec<u8> {
    std::fs::read(pgp_dir().join("expected").join(name)).unwrap()
}

#[test]
fn ssh_rsa_host_key_fingerprint_is_the_one_sops_nix_derives_and_gpg_computes() {
    // Our conversion, in process.
    let mut keyring = Keyring::new();
    let fp = keyring
        .add_ssh_key_as_pgp(&fixtures().join("keys/host_rsa"))
        .unwrap();
    assert_eq!(fp, SOPS_NIX_FINGERPRINT);
    // Real gpg, importing what our ssh-to-pgp exported, computed the same.
    assert_eq!(fingerprint("host_rsa"), SOPS_NIX_FINGERPRINT);
}

#[test]
fn a_file_encrypted_to_the_ssh_rsa_host_key_opens_in_process_without_gpg() {
    let keyring = ssh_rsa_keyring();
    // No GnuPG home at all: nothing is written, no gpg runs.
    assert_eq!(
        decrypt("ssh_rsa.yaml", &keyring).unwrap(),
        expected("ssh_rsa.out")
    );
}

#[test]
fn a_gnupg_home_opens_pgp_stanzas_with_the_gpg_binary() {
    if !have_gpg() {
        return;
    }
    let home = Home::with_keys(&["alice.sec.asc"]);
    let keyring = keyring(&[], Some(home.gnupg()));
    assert_eq!(decrypt("pgp.yaml", &keyring).unwrap(), expected("pgp.out"));
    let bytes = std::fs::read(pgp_dir().join("enc/pgp.yaml")).unwrap();
    let doc = decrypt_bytes(&bytes, Format::Yaml, &keyring).unwrap();
    let path = sops_install_secrets::sops::tree::parse_slash_path("database/password");
    assert_eq!(
        *doc.extract(&path, Format::Yaml).unwrap(),
        expected("pgp.password.out")
    );
}

#[test]
fn a_group_with_pgp_and_age_opens_with_either() {
    if !have_gpg() {
        return;
    }
    let home = Home::with_keys(&["alice.sec.asc"]);
    let gpg_only = keyring(&[], Some(home.gnupg()));
    assert_eq!(
        decrypt("pgp_and_age.yaml", &gpg_only).unwrap(),
        expected("pgp_and_age.out")
    );

    // With the age key, age is tried first and gpg never runs: a broken gpg
    // does not matter.
    let broken_gpg = GnupgHome::new(home.dir.path().to_owned(), Some("/nonexistent/gpg".into()));
    let age_first = keyring(&["age1.txt"], Some(broken_gpg));
    assert_eq!(
        decrypt("pgp_and_age.yaml", &age_first).unwrap(),
        expected("pgp_and_age.out")
    );
}

#[test]
fn shamir_groups_of_pgp_and_age_need_both() {
    if !have_gpg() {
        return;
    }
    let home = Home::with_keys(&["alice.sec.asc"]);
    let both = keyring(&["age1.txt"], Some(home.gnupg()));
    assert_eq!(decrypt("shamir.yaml", &both).unwrap(), expected("shamir.out"));

    let age_only = keyring(&["age1.txt"], None);
    let err = decrypt("shamir.yaml", &age_only).unwrap_err();
    assert!(
        err.contains("1 of 2 key groups could be opened, 2 needed"),
        "{err}"
    );
    assert!(err.contains(&format!("pgp {}", fingerprint("alice"))), "{err}");
    assert!(err.contains("this host offers no GPG key"), "{err}");
}

#[test]
fn a_home_without_the_key_names_the_fingerprint_and_the_home() {
    if !have_gpg() {
        return;
    }
    let home = Home::with_keys(&[]);
    let keyring = keyring(&[], Some(home.gnupg()));
    let err = decrypt("pgp.yaml", &keyring).unwrap_err();
    let want = format!(
        "no secret key for {} in the GnuPG home {}",
        fingerprint("alice"),
        home.dir.path().display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_passphrase_protected_key_fails_at_once_instead_of_prompting() {
    if !have_gpg() {
        return;
    }
    let home = Home::with_keys(&["locked.sec.asc"]);
    let keyring = keyring(&[], Some(home.gnupg()));
    let start = Instant::now();
    let err = decrypt("locked.yaml", &keyring).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.contains("protected by a passphrase"), "{err}");
    assert!(err.contains(&fingerprint("locked")), "{err}");
}

#[test]
fn a_missing_gpg_binary_is_named() {
    let home = tempfile::tempdir().unwrap();
    let keyring = keyring(
        &[],
        Some(GnupgHome::new(
            home.path().to_owned(),
            Some("/nonexistent/gpg".into()),
        )),
    );
    let err = decrypt("pgp.yaml", &keyring).unwrap_err();
    assert!(err.contains("/nonexistent/gpg not found"), "{err}");
    assert!(err.contains("SOPS_GPG_EXEC"), "{err}");
}

#[test]
fn an_ssh_rsa_key_of_another_fingerprint_does_not_open_and_says_so() {
    let keyring = ssh_rsa_keyring();
    let err = decrypt("pgp.yaml", &keyring).unwrap_err();
    assert!(
        err.contains("no GPG key of this host has this fingerprint"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pgp {SOPS_NIX_FINGERPRINT} (from ")),
        "the host's offer is listed: {err}"
    );
}

#[test]
fn an_ed25519_key_listed_as_a_gpg_key_is_refused_with_what_to_do() {
    let mut keyring = Keyring::new();
    let err = keyring
        .add_ssh_key_as_pgp(&fixtures().join("keys/host_ed25519"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("only ssh-rsa keys can be used as GPG keys"), "{err}");
    assert!(err.contains("sops.age.sshKeyPaths"), "{err}");
}

#[test]
fn a_pgp_stanza_that_decrypts_to_more_than_a_data_key_is_refused() {
    if !have_gpg() {
        return;
    }
    // Real gpg encrypts 64 KiB (compressible, so also a small compression bomb)
    // to the host key's public half.
    let home = Home::with_keys(&["host_rsa.pgp.asc"]);
    let key = sops_install_secrets::keys::pgp::SshPgpKey::load(&fixtures().join("keys/host_rsa")).unwrap();
    let err = key
        .decrypt(&home.encrypt_to_host(&vec![b'A'; 64 * 1024]))
        .unwrap_err();
    assert!(
        matches!(err, sops_install_secrets::keys::pgp::PgpError::TooLarge),
        "{err:?}"
    );
    assert!(err.to_string().contains("more than 4096 bytes"), "{err}");

    // The same path opens a message of data-key size.
    assert_eq!(
        *key.decrypt(&home.encrypt_to_host(&[7u8; 32])).unwrap(),
        [7u8; 32]
    );
}
