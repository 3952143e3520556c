//! age plugins over the real age plugin protocol: files real sops 3.11 wrapped
//! by running the test plugin (`examples/age-plugin-sitest.rs`), opened by our
//! binary running the same plugin (`tests/fixtures/plugin/generate.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Where cargo put the test plugin: `cargo test` builds examples next to the binary.
fn plugin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_sops-install-secrets"))
        .parent()
        .unwrap()
        .join("examples");
    assert!(
        dir.join("age-plugin-sitest").is_file(),
        "{} has no age-plugin-sitest: run `cargo test` (it builds examples) or `cargo build --examples`",
        dir.display()
    );
    dir
}

struct Run {
    out: Output,
    /// How many identity-v1 sessions the plugin served.
    sessions: usize,
}

fn decrypt(args: &[&str], with_plugin: bool) -> Run {
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = if with_plugin {
        format!("{}:/usr/bin:/bin", plugin_dir().display())
    } else {
        "/usr/bin:/bin".to_owned()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_sops-install-secrets"))
        .arg("decrypt")
        .args(args)
        .current_dir(fixtures().join("plugin"))
        .env_clear()
        .env("PATH", path)
        .env("HOME", "/nonexistent")
        .env("SITEST_LOG", log.path())
        .output()
        .unwrap();
    let sessions = std::fs::read_to_string(log.path()).unwrap().lines().count();
    Run { out, sessions }
}

fn expected(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("plugin/expected").join(name)).unwrap()
}

fn stderr(run: &Run) -> String {
    String::from_utf8_lossy(&run.out.stderr).into_owned()
}

#[test]
fn a_plugin_identity_opens_a_file_sops_wrapped_with_the_plugin() {
    let run = decrypt(&["--age-key-file", "keys/sitest.txt", "enc/one.yaml"], true);
    assert!(run.out.status.success(), "{}", stderr(&run));
    assert_eq!(run.out.stdout, expected("one.out"));
    assert_eq!(run.sessions, 1);
    // What the plugin asks the user to do reaches the log, attributed.
    assert!(
        stderr(&run).contains("age-plugin-sitest: sitest: pretend to touch the key"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn a_native_age_key_is_tried_before_the_plugin_which_then_never_runs() {
    let run = decrypt(
        &[
            "--age-key-file",
            "keys/sitest.txt",
            "--age-key-file",
            "../keys/age1.txt",
            "enc/mixed.yaml",
        ],
        true,
    );
    assert!(run.out.status.success(), "{}", stderr(&run));
    assert_eq!(run.out.stdout, expected("mixed.out"));
    assert_eq!(
        run.sessions, 0,
        "the plugin ran although a native key opened the file"
    );

    // With the plugin identity alone the same file opens through the plugin, once.
    let run = decrypt(&["--age-key-file", "keys/sitest.txt", "enc/mixed.yaml"], true);
    assert!(run.out.status.success(), "{}", stderr(&run));
    assert_eq!(run.out.stdout, expected("mixed.out"));
    assert_eq!(run.sessions, 1);
}

#[test]
fn a_plugin_missing_from_path_is_named_with_what_to_do() {
    let run = decrypt(&["--age-key-file", "keys/sitest.txt", "enc/one.yaml"], false);
    assert!(!run.out.status.success());
    assert!(run.out.stdout.is_empty());
    let err = stderr(&run);
    assert!(err.contains("age-plugin-sitest is not on PATH"), "{err}");
    assert!(err.contains("sops.age.plugins"), "{err}");
    assert!(err.contains("age1sitest1"), "the stanza is named: {err}");
}

#[test]
fn a_plugin_stanza_without_a_plugin_identity_says_so_without_running_anything() {
    let run = decrypt(&["--age-key-file", "../keys/age2.txt", "enc/one.yaml"], true);
    assert!(!run.out.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("this host has no identity for the age plugin sitest"),
        "{err}"
    );
    assert_eq!(run.sessions, 0);
}
