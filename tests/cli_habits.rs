//! The command line meets the habits of sops and ssh-to-age users (issue 16, item 3): `--version`,
//! `--help` for every subcommand without running it, ssh-to-age on public keys and standard input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sops-install-secrets"))
        .args(args)
        .current_dir(fixtures())
        .env("HOME", fixtures().join("no-such-home"))
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_with_input(args, b"")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn recipient() -> String {
    std::fs::read_to_string(fixtures().join("keys/host_ed25519.age.recipient")).unwrap()
}

#[test]
fn version_is_printed_in_go_and_gnu_spelling() {
    for flag in ["--version", "-version"] {
        let out = run(&[flag]);
        assert!(out.status.success(), "{flag}");
        assert_eq!(
            stdout(&out),
            format!("sops-install-secrets {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn every_subcommand_answers_help_without_running() {
    for args in [
        &["--help"][..],
        &["decrypt", "--help"],
        &["ssh-to-age", "--help"],
        &["ssh-to-pgp", "--help"],
        &["demo", "--help"],
        &["-check-mode=manifest", "--help"],
    ] {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        assert!(text.starts_with("usage:"), "{args:?} printed:\n{text}");
        // The demo, had it run, would print the files it installed.
        assert!(
            !text.contains("installed"),
            "{args:?} ran instead of helping:\n{text}"
        );
    }
}

#[test]
fn ssh_to_age_converts_a_public_key_file_like_mic92s_tool() {
    let out = run(&["ssh-to-age", "-i", "keys/host_ed25519.pub"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), recipient());
}

#[test]
fn ssh_to_age_reads_public_keys_from_standard_input_and_skips_other_types() {
    let ed = std::fs::read(fixtures().join("keys/host_ed25519.pub")).unwrap();
    let rsa = std::fs::read(fixtures().join("keys/host_rsa.pub")).unwrap();
    let mut input = rsa;
    input.extend_from_slice(b"\n# a comment\n");
    input.extend_from_slice(&ed);
    let out = run_with_input(&["ssh-to-age"], &input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), recipient());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipped a ssh-rsa key"), "{err}");
}

#[test]
fn ssh_to_age_private_key_prints_the_identity_from_stdin() {
    let key = std::fs::read(fixtures().join("keys/host_ed25519")).unwrap();
    let out = run_with_input(&["ssh-to-age", "-private-key"], &key);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = stdout(&out);
    // ssh-to-age prints the unclamped SHA-512 half of the seed (PyNaCl's fixture is clamped,
    // the same X25519 key); what matters is that it opens files sent to the recipient.
    let identity: age::x25519::Identity = printed.trim().parse().expect("an age identity");
    assert_eq!(format!("{}\n", identity.to_public()), recipient());
    // The same as the older spelling, given the file.
    let old = run(&["ssh-to-age", "--private", "keys/host_ed25519"]);
    assert_eq!(stdout(&old), printed);
}

#[test]
fn ssh_to_age_private_key_refuses_a_public_key() {
    let out = run(&["ssh-to-age", "-private-key", "-i", "keys/host_ed25519.pub"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an OpenSSH private key"));
}

#[test]
fn the_demo_shows_that_values_were_decrypted_and_each_files_group() {
    let out = run(&["demo"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    // The demo's db_password comes from enc/basic.json; json_basic.x1.out is what real
    // `sops -d --extract '["database"]["credentials"]["password"]'` printed for it.
    let value = std::fs::read_to_string(fixtures().join("expected/json_basic.x1.out")).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("secrets.d/1/db_password  ("))
        .unwrap_or_else(|| panic!("no db_password line in:\n{text}"));
    assert!(
        line.ends_with(&format!("({} bytes: {value:?})", value.len())),
        "{line}"
    );
    assert!(text.contains("1 template"), "{text}");
    // owner:group beside each entry.
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
        .unwrap()
        .unwrap()
        .name;
    assert!(line.contains(&format!(" {user}:{group} ")), "{line}");
    if let Some(rest) = text.lines().find_map(|l| l.strip_prefix("Everything is under ")) {
        let _ = std::fs::remove_dir_all(rest.split(';').next().unwrap());
    }
}

#[test]
fn a_missing_manifest_cannot_be_read_rather_than_being_invalid() {
    for args in [
        &["/nonexistent/manifest.json"][..],
        &["-check-mode=manifest", "/nonexistent/manifest.json"],
    ] {
        let out = run(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot read the manifest"), "{args:?}: {err}");
        assert!(!err.contains("not valid"), "{args:?}: {err}");
    }
}
