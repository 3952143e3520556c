//! Hostile sops files: what an attacker who can edit a file in git makes the
//! installer parse before any MAC is checked. Each runs the real binary in a
//! subprocess, because what is being ruled out (a stack overflow, an
//! allocation failure) aborts the process rather than failing a test; memory
//! is capped with RLIMIT_AS (`ulimit -v`) so that a regression fails here
//! instead of exhausting the machine.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U32;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha512};
use sops_install_secrets::sops::Format;
use support::fixtures;

const MIB: u64 = 1 << 20;

/// Runs `decrypt FILE` (with the committed age test key) under an address
/// space of `limit` bytes, giving up after `deadline`.
fn decrypt_capped(file: &Path, extra: &[&str], limit: u64, deadline: Duration) -> (Output, Duration) {
    let key = fixtures().join("keys/age1.txt");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", limit / 1024))
        .arg(env!("CARGO_BIN_EXE_sops-install-secrets"))
        .arg("decrypt")
        .arg("--age-key-file")
        .arg(&key)
        .args(extra)
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stdout on a thread: a large plaintext would fill the pipe.
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("decrypting {} took longer than {deadline:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let mut stderr = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
    let stdout = reader.join().unwrap();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        elapsed,
    )
}

/// Asserts a clean refusal: exit code 1 (not a signal), and a message that
/// names the file and contains `why`.
fn assert_refused(out: &Output, file: &Path, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a refusal, got {:?}; stderr: {stderr}",
        out.status
    );
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(&format!("cannot decrypt {}", file.display())) && stderr.contains(name),
        "the file is not named: {stderr}"
    );
    assert!(stderr.contains(why), "expected {why:?} in: {stderr}");
}

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A real sops-written file with `prefix` put before it.
fn before_real_file(prefix: &str) -> String {
    let real = std::fs::read_to_string(fixtures().join("enc/basic.yaml")).unwrap();
    format!("{prefix}{real}")
}

const CAP: u64 = 200 * MIB;
const QUICK: Duration = Duration::from_secs(20);

#[test]
fn yaml_alias_bomb_is_refused_naming_the_file_within_200_mib() {
    // Nine levels of nine aliases each: 9^9 (387 million) strings once expanded.
    let mut bomb = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        bomb.push_str(&format!(
            "l{i}: &l{i} [{}]\n",
            vec![format!("*l{}", i - 1); 9].join(", ")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bomb.yaml", before_real_file(&bomb));
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "excessive aliasing");
}

#[test]
fn yaml_aliases_copying_a_long_string_are_refused() {
    // Few nodes, so go-yaml's node ratio allows it, but each alias would copy
    // 512 KiB: 2,000 of them make a gigabyte from a file of half a megabyte.
    let mut bomb = format!("big: &big {}\n", "x".repeat(512 * 1024));
    for i in 0..2000 {
        bomb.push_str(&format!("c{i}: *big\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "copies.yaml", before_real_file(&bomb));
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "would copy more than 1048576 bytes");
}

#[test]
fn aliases_that_nest_past_the_limit_are_refused() {
    // An anchored value 60 levels deep, used 60 levels deep: 120 levels.
    let deep = format!("{}x{}", "[".repeat(60), "]".repeat(60));
    let text = format!("a: &d {deep}\nb: {}*d{}\n", "[".repeat(60), "]".repeat(60));
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "nested_alias.yaml", before_real_file(&text));
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "nest more than 100 levels deep");
}

#[test]
fn a_real_file_with_an_anchor_and_an_alias_still_decrypts() {
    // Hand-edited from real sops output; real sops 3.11 decrypts it too and
    // prints the alias expanded, the one extra line: nulls are neither
    // encrypted nor part of the MAC, so aliasing one keeps the MAC valid.
    let real = std::fs::read_to_string(fixtures().join("enc/basic.yaml")).unwrap();
    let edited = real
        .replacen("\nnothing: null\n", "\nnothing: &n null\n", 1)
        .replacen("\nsops:\n", "\nalso_nothing: *n\nsops:\n", 1);
    assert_ne!(edited, real);
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "aliased.yaml", edited);
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut expected = support::expected("yaml_basic.out");
    expected.extend_from_slice(b"also_nothing: null\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn deeply_nested_yaml_flow_is_refused_without_overflowing_the_stack() {
    let n = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let text = format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
    let file = write(dir.path(), "flow.yaml", before_real_file(&text));
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "nest more than 100 levels deep (at line 1)");
}

#[test]
fn deeply_nested_yaml_block_lists_are_refused_without_overflowing_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("a:\n  {}x\n", "- ".repeat(100_000));
    let file = write(dir.path(), "block.yaml", before_real_file(&text));
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "nest more than 100 levels deep");
}

#[test]
fn yaml_nesting_at_the_limit_is_read() {
    // 99 lists under the top-level map: 100 levels, the most accepted. The
    // file then fails for its MAC, after parsing and decrypting everything.
    let dir = tempfile::tempdir().unwrap();
    let text = format!("a: {}1{}\n", "[".repeat(99), "]".repeat(99));
    let file = write(dir.path(), "at_limit.yaml", before_real_file(&text));
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "should be encrypted but is a plain int");
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    let n = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read_to_string(fixtures().join("enc/basic.json")).unwrap();
    let text = real.replacen(
        '{',
        &format!("{{\"deep\": {}{},", "[".repeat(n), "]".repeat(n)),
        1,
    );
    let file = write(dir.path(), "deep.json", text);
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "nest more than 100 levels deep (at line 1)");
}

#[test]
fn deeply_nested_binary_store_envelope_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{{\"data\": \"x\", \"sops\": {}1{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let file = write(dir.path(), "deep.bin", text);
    let (out, _) = decrypt_capped(&file, &["--input-type", "binary"], CAP, QUICK);
    assert_refused(&out, &file, "nest more than 100 levels deep");
}

#[test]
fn deeply_nested_dotenv_metadata_key_is_refused_without_overflowing_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("A=1\nsops_{}b=1\n", "a__map_".repeat(100_000));
    let file = write(dir.path(), "deep.env", text);
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "nests more than 100 levels deep");
}

#[test]
fn many_dotenv_metadata_keys_are_read_in_linear_time() {
    // 200,000 keys (4.5 MB): a linear search per key took minutes.
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("A=1\n");
    for i in 0..200_000 {
        text.push_str(&format!("sops_k{i}=v\n"));
    }
    let file = write(dir.path(), "many.env", text);
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "no keys");
}

#[test]
fn long_runs_of_ini_comments_are_read_in_linear_time() {
    // 200,000 comment lines (4.6 MB): joining them anew per line took minutes.
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[s]\n{}a = 1\n", "; xxxxxxxxxxxxxxxxxxxx\n".repeat(200_000));
    let file = write(dir.path(), "comments.ini", text);
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "no `sops` metadata");
}

/// A binary-store file holding `plain`, made from the real `enc/random.bin`:
/// its key stanzas and data key, with `data` and the MAC sealed anew (with a
/// fixed IV: this file checks memory use, not conformance).
fn binary_store_file(path: &Path, plain: &[u8]) {
    let key = support::data_key("enc/random.bin", Format::Binary);
    let seal = |plain: &[u8], ad: &str| {
        let cipher = AesGcm::<Aes256, U32>::new(GenericArray::from_slice(&key));
        let iv = [7u8; 32];
        let mut buf = plain.to_vec();
        let tag = cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&iv), ad.as_bytes(), &mut buf)
            .unwrap();
        format!(
            "ENC[AES256_GCM,data:{},iv:{},tag:{},type:str]",
            B64.encode(&buf),
            B64.encode(iv),
            B64.encode(tag)
        )
    };
    let text = std::fs::read_to_string(fixtures().join("enc/random.bin")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mac: String = Sha512::digest(plain).iter().map(|b| format!("{b:02X}")).collect();
    let last_modified = doc["sops"]["lastmodified"].as_str().unwrap().to_owned();
    doc["sops"]["mac"] = seal(mac.as_bytes(), &last_modified).into();
    doc["data"] = seal(plain, "data:").into();
    std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

#[test]
fn a_binary_store_file_decrypts_within_twice_its_size() {
    // The file (N bytes) is nearly all base64 of the ciphertext. Reading it,
    // decoding, decrypting and printing once needed about 2.75 N; now the
    // file's buffer becomes the plaintext and the peak is the plaintext twice
    // (the document and the printed copy), about 1.5 N. The cap is 2 N over
    // the address space the binary needs for a small file (about 27 MiB for
    // a debug build, so 32 MiB).
    let dir = tempfile::tempdir().unwrap();
    let plain: Vec<u8> = (0..10 * MIB as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let file = dir.path().join("big.bin");
    binary_store_file(&file, &plain);
    let size = std::fs::metadata(&file).unwrap().len();
    let (out, took) = decrypt_capped(&file, &[], 2 * size + 32 * MIB, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == plain, "the plaintext differs");
    eprintln!("decrypted {size} bytes in {took:?}");
}

#[test]
fn a_long_line_of_hashes_is_read_as_one_comment_within_200_mib() {
    // Each `#` used to start a comment holding the rest of the line: 200,000
    // copies of up to 400 KB from a 400 KB line. Comments are outside the
    // MAC, so the file still decrypts, with the comment in front.
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "hashes.yaml",
        before_real_file(&format!("#{}\n", " #".repeat(200_000))),
    );
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut expected = format!("#{}\n", " #".repeat(200_000)).into_bytes();
    expected.extend(support::expected("yaml_basic.out"));
    assert!(out.stdout == expected, "the output differs");
}

#[test]
fn the_build_time_check_reads_a_binary_store_file_within_one_and_a_half_times_its_size() {
    // `--check-mode=sopsfile` parses every file without decrypting it: the
    // file's buffer becomes the tree (about N), where the bytes and their
    // parsed copy used to be alive at once (about 2 N).
    // Nothing is decrypted, so the value need not be real ciphertext.
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read_to_string(fixtures().join("enc/random.bin")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&real).unwrap();
    doc["data"] = format!(
        "ENC[AES256_GCM,data:{},iv:AA==,tag:AA==,type:str]",
        "A".repeat(16 << 20)
    )
    .into();
    let file = write(dir.path(), "big.bin", serde_json::to_vec(&doc).unwrap());
    let size = std::fs::metadata(&file).unwrap().len();
    let at = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
    let manifest = serde_json::json!({
        "secrets": [{
            "name": "big", "key": "", "path": at("secrets/big"), "owner": null, "uid": 0,
            "group": null, "gid": 0, "sopsFile": file.to_str().unwrap(), "format": "binary",
            "mode": "0400", "restartUnits": [], "reloadUnits": [],
        }],
        "templates": [], "placeholderBySecretName": {},
        "secretsMountPoint": at("secrets.d"), "symlinkPath": at("secrets"), "keepGenerations": 1,
        "sshKeyPaths": [], "gnupgHome": null, "ageKeyFile": null, "ageSshKeyPaths": [],
        "useTmpfs": false, "userMode": false,
        "logging": { "keyImport": false, "secretChanges": true },
    });
    let manifest_path = write(dir.path(), "manifest.json", manifest.to_string());
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {} && exec \"$0\" \"$@\"",
            (size + size / 2 + 32 * MIB) / 1024
        ))
        .arg(env!("CARGO_BIN_EXE_sops-install-secrets"))
        .arg("--check-mode=sopsfile")
        .arg(&manifest_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_long_line_of_hashes_inside_a_value_is_read_in_linear_time() {
    // `x#x#...` is one plain scalar; each `#` was checked for a comment by
    // searching back to the start of its line: minutes for a 1.6 MB line.
    let dir = tempfile::tempdir().unwrap();
    let text = format!("a: {}\n", "x#".repeat(800_000));
    let file = write(dir.path(), "xhash.yaml", before_real_file(&text));
    let (out, _) = decrypt_capped(&file, &[], CAP, QUICK);
    assert_refused(&out, &file, "the value at key path `a:` could not be decrypted");
}
