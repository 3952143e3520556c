//! The `sops-install-secrets` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sops-install-secrets"));
    cmd.args(args).current_dir(fixtures());
    // Nothing from the developer's own sops setup may leak into the test.
    for var in [
        "SOPS_AGE_KEY_FILE",
        "SOPS_AGE_KEY",
        "SOPS_AGE_SSH_PRIVATE_KEY_FILE",
        "XDG_CONFIG_HOME",
        "GNUPGHOME",
        "SOPS_GPG_EXEC",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", fixtures().join("no-such-home"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn expected(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("expected").join(name)).unwrap()
}

#[test]
fn decrypt_extracts_a_nested_secret_like_sops() {
    let out = run(
        &[
            "decrypt",
            "--age-key-file",
            "keys/age1.txt",
            "--extract",
            "database/credentials/password",
            "enc/basic.yaml",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, expected("yaml_basic.x1.out"));
}

#[test]
fn decrypt_accepts_sops_extract_syntax_and_env_identities() {
    let key = fixtures().join("keys/age1.txt");
    let out = run(
        &[
            "decrypt",
            "--extract",
            r#"["database"]["replicas"][1]["host"]"#,
            "enc/basic.yaml",
        ],
        &[("SOPS_AGE_KEY_FILE", &key)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, expected("yaml_basic.x3.out"));
}

#[test]
fn decrypt_whole_json_file_with_the_ssh_host_key() {
    let out = run(
        &[
            "decrypt",
            "--ssh-key",
            "keys/host_ed25519",
            "enc/ssh_to_age.yaml",
            "--extract",
            "host_secret",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"for-the-ssh-host");
}

#[test]
fn decrypt_binary_store_prints_the_file() {
    let out = run(
        &["decrypt", "--age-key-file", "keys/age1.txt", "enc/random.bin"],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, expected("binary_random.out"));
}

#[test]
fn wrong_key_fails_without_plaintext_and_says_what_to_do() {
    let out = run(
        &[
            "decrypt",
            "--age-key-file",
            "keys/unrelated_age.txt",
            "enc/basic.yaml",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enc/basic.yaml"), "{err}");
    assert!(err.contains("sops updatekeys"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[test]
fn missing_key_path_names_the_deepest_existing_part() {
    let out = run(
        &[
            "decrypt",
            "--age-key-file",
            "keys/age1.txt",
            "--extract",
            "database/credentials/token",
            "enc/basic.yaml",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"["database"]["credentials"] exists but has no key "token""#),
        "{err}"
    );
}

#[test]
fn ssh_to_age_prints_the_recipient_and_identity() {
    let out = run(&["ssh-to-age", "keys/host_ed25519"], &[]);
    assert!(out.status.success());
    let want = std::fs::read_to_string(fixtures().join("keys/host_ed25519.age.recipient")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);

    let out = run(&["ssh-to-age", "--private", "keys/host_ed25519"], &[]);
    let identity = String::from_utf8(out.stdout).unwrap();
    assert!(identity.starts_with("AGE-SECRET-KEY-1"), "{identity}");
}

#[test]
fn passphrase_protected_key_is_refused_clearly() {
    let out = run(&["ssh-to-age", "keys/host_ed25519_passphrase"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("passphrase"), "{err}");
}

#[test]
fn ssh_to_pgp_prints_the_fingerprint_sops_nix_derives_and_a_key_gpg_accepts() {
    let out = run(&["ssh-to-pgp", "-i", "keys/host_rsa"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "52347B17CB87CF7B724FEACF3E54A544D8560FBD"
    );
    let public = String::from_utf8(out.stdout).unwrap();
    assert!(
        public.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "{public}"
    );
    if Command::new("gpg").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "gpg is required in CI");
        return;
    }
    // Real gpg reads the exported key (self-signed, so it imports without flags).
    let home = tempfile::Builder::new().prefix("gpg").tempdir_in("/tmp").unwrap();
    let key = home.path().join("host.asc");
    std::fs::write(&key, &public).unwrap();
    let shown = Command::new("gpg")
        .arg("--homedir")
        .arg(home.path())
        .args([
            "--batch",
            "--with-colons",
            "--import-options",
            "show-only",
            "--import",
        ])
        .arg(&key)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&shown.stdout);
    assert!(
        listing.contains("fpr:::::::::52347B17CB87CF7B724FEACF3E54A544D8560FBD:"),
        "{listing}"
    );
    assert!(
        listing.contains("root (Imported from SSH) <root@localhost>"),
        "{listing}"
    );
}

#[test]
fn ssh_to_pgp_refuses_an_ed25519_key() {
    let out = run(&["ssh-to-pgp", "-i", "keys/host_ed25519"], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only ssh-rsa keys can be used as GPG keys"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn decrypt_opens_a_file_for_an_ssh_rsa_host_key_given_as_a_gpg_key() {
    let out = run(
        &[
            "decrypt",
            "--gpg-ssh-key",
            "keys/host_rsa",
            "pgp/enc/ssh_rsa.yaml",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.stdout,
        std::fs::read(fixtures().join("pgp/expected/ssh_rsa.out")).unwrap()
    );
}
