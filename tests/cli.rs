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
