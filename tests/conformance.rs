//! Conformance against real sops 3.11.
//!
//! `tests/fixtures/generate.sh` encrypted every fixture with real sops and
//! recorded what `sops -d` and `sops -d --extract` printed; `cases.json`
//! indexes them. Each positive case must decrypt to those bytes exactly, and
//! each negative case must be refused for the reason it was built to show.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use sops_install_secrets::keys::{DataKeyError, KeyError, Keyring, ssh::SshKeyError};
use sops_install_secrets::sops::cipher::CipherError;
use sops_install_secrets::sops::decrypt::TreeError;
use sops_install_secrets::sops::metadata::MetadataError;
use sops_install_secrets::sops::tree::PathStep;
use sops_install_secrets::sops::{Format, ParseError};
use sops_install_secrets::unlock::{DecryptError, decrypt_bytes};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> Json {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

fn str_list(v: &Json) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn keyring(case: &Json) -> Result<Keyring, KeyError> {
    let mut k = Keyring::new();
    for f in str_list(&case["identities"]["age_key_files"]) {
        k.add_age_key_file(&fixtures().join(f))?;
    }
    for f in str_list(&case["identities"]["ssh_keys"]) {
        k.add_ssh_key(&fixtures().join(f))?;
    }
    Ok(k)
}

fn format(case: &Json) -> Format {
    Format::from_name(case["input_type"].as_str().unwrap()).unwrap()
}

fn path(v: &Json) -> Vec<PathStep> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| match s {
            Json::String(k) => PathStep::Key(k.clone()),
            Json::Number(n) => PathStep::Index(n.as_u64().unwrap() as usize),
            other => panic!("bad path step {other}"),
        })
        .collect()
}

/// Shows where two outputs first differ, without dumping megabytes.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window =
        |b: &[u8]| String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned();
    format!(
        "lengths {} vs {}, first difference at byte {at}:\n    ours: {:?}\n    sops: {:?}",
        got.len(),
        want.len(),
        window(got),
        window(want)
    )
}

#[test]
fn every_positive_fixture_decrypts_byte_identical_to_sops() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases["positive"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(case["file"].as_str().unwrap())).unwrap();
        let keyring = keyring(case).unwrap_or_else(|e| panic!("{name}: {e}"));
        let doc = match decrypt_bytes(&bytes, format(case), &keyring) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{name}: decryption failed: {e}"));
                continue;
            }
        };
        let want = std::fs::read(fixtures().join(case["expected"].as_str().unwrap())).unwrap();
        let got = doc.to_plaintext(format(case)).unwrap();
        checked += 1;
        if *got != want {
            failures.push(format!(
                "{name}: whole file differs: {}",
                first_difference(&got, &want)
            ));
        }
        for x in case["extracts"].as_array().into_iter().flatten() {
            let p = path(&x["path"]);
            let want = std::fs::read(fixtures().join(x["expected"].as_str().unwrap())).unwrap();
            checked += 1;
            match doc.extract(&p, format(case)) {
                Ok(got) if *got == want => {}
                Ok(got) => failures.push(format!("{name} {p:?}: {}", first_difference(&got, &want))),
                Err(e) => failures.push(format!("{name} {p:?}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} outputs differ from sops:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked > 100,
        "only {checked} outputs checked; cases.json lost its cases?"
    );
}

/// What each negative fixture's cause must look like.
fn matches_cause(cause: &str, err: &DecryptError) -> bool {
    use DecryptError as D;
    match cause {
        "mac_mismatch" => matches!(
            err,
            D::Tree(TreeError::MacMismatch | TreeError::MacUndecryptable(CipherError::Authentication))
        ),
        "value_tampered" | "values_swapped" => {
            matches!(
                err,
                D::Tree(TreeError::Value {
                    source: CipherError::Authentication,
                    ..
                })
            )
        }
        "no_identity" => matches!(
            err,
            D::DataKey {
                source: DataKeyError::NotEnoughGroups { needed: 1, .. },
                ..
            }
        ),
        "shamir_insufficient" => {
            matches!(err, D::DataKey { source: DataKeyError::NotEnoughGroups { opened, needed, .. }, .. } if opened < needed && *needed > 1)
        }
        "truncated" => matches!(
            err,
            D::Parse(
                ParseError::Yaml(_) | ParseError::Json(_) | ParseError::Metadata(MetadataError::Missing)
            )
        ),
        "not_sops" => matches!(err, D::Parse(ParseError::Metadata(MetadataError::Missing))),
        "no_mac" => matches!(err, D::Tree(TreeError::MacMissing)),
        "unknown_type" => {
            matches!(err, D::Tree(TreeError::Value { source: CipherError::UnknownType(t), .. }) if t == "blob")
        }
        other => panic!("unknown cause {other}"),
    }
}

#[test]
fn every_negative_fixture_is_refused_for_its_cause() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases["negative"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let cause = case["cause"].as_str().unwrap();
        checked += 1;
        let keyring = match keyring(case) {
            Ok(k) => k,
            Err(KeyError::Ssh(SshKeyError::Passphrase { path })) if cause == "passphrase_key" => {
                assert!(path.ends_with("host_ed25519_passphrase"), "{path}");
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: identities failed to load: {e}"));
                continue;
            }
        };
        let bytes = std::fs::read(fixtures().join(case["file"].as_str().unwrap())).unwrap();
        match decrypt_bytes(&bytes, format(case), &keyring) {
            Ok(_) => failures.push(format!("{name}: decrypted, but real sops refuses it ({cause})")),
            Err(e) if matches_cause(cause, &e) => {
                let msg = e.to_string();
                // Plaintext of the fixtures that negative cases derive from.
                for secret in ["s3cr3t", "db.example.com", "admin"] {
                    assert!(
                        !msg.contains(secret),
                        "{name}: error message leaks plaintext: {msg}"
                    );
                }
            }
            Err(e) => failures.push(format!("{name}: refused, but not for {cause}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 20, "only {checked} negative cases");
}

#[test]
fn no_identity_error_names_recipients_and_what_this_host_offers() {
    let case = cases()["negative"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "no_identity")
        .cloned()
        .unwrap();
    let bytes = std::fs::read(fixtures().join(case["file"].as_str().unwrap())).unwrap();
    let err = decrypt_bytes(&bytes, format(&case), &keyring(&case).unwrap())
        .err()
        .unwrap();
    let msg = err.to_string();
    let file_recipient = std::fs::read_to_string(fixtures().join("keys/age1.txt")).unwrap();
    let file_recipient = file_recipient
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap();
    let offered = std::fs::read_to_string(fixtures().join("keys/unrelated_age.txt")).unwrap();
    let offered = offered
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap();
    assert!(msg.contains(file_recipient), "{msg}");
    assert!(msg.contains(offered), "{msg}");
    assert!(msg.contains("sops updatekeys"), "{msg}");
}

#[test]
fn ssh_to_age_recipient_matches_the_independent_derivation() {
    // keys/host_ed25519.age.recipient was computed by generate.sh with libsodium
    // (PyNaCl) and checked there with Debian's age.
    let want = std::fs::read_to_string(fixtures().join("keys/host_ed25519.age.recipient")).unwrap();
    let ids = sops_install_secrets::keys::ssh::load(&fixtures().join("keys/host_ed25519")).unwrap();
    assert_eq!(ids.derived.unwrap().recipient, want.trim());
}

#[test]
fn what_real_age_encrypted_to_the_derived_recipient_opens_with_our_derived_identity() {
    use std::io::Read;
    let ids = sops_install_secrets::keys::ssh::load(&fixtures().join("keys/host_ed25519")).unwrap();
    let identity: age::x25519::Identity = ids.derived.unwrap().identity.parse().unwrap();
    let armored = std::fs::read(fixtures().join("keys/host_ed25519.age-check.age")).unwrap();
    let decryptor = age::Decryptor::new(age::armor::ArmoredReader::new(&armored[..])).unwrap();
    let mut plain = Vec::new();
    decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    let want = std::fs::read(fixtures().join("keys/host_ed25519.age-check.txt")).unwrap();
    assert_eq!(plain, want);
}

#[test]
fn host_public_key_converts_to_the_independently_derived_recipient() {
    let public = std::fs::read_to_string(fixtures().join("keys/host_ed25519.pub")).unwrap();
    let want = std::fs::read_to_string(fixtures().join("keys/host_ed25519.age.recipient")).unwrap();
    let key = sops_install_secrets::keys::host_keys::parse_host_key(&public).unwrap();
    assert_eq!(key.age.as_deref(), Some(want.trim()));
    assert!(key.ssh.unwrap().starts_with("ssh-ed25519 AAAA"));
}

/// Runs our `decrypt` subcommand as a class run of `classes.json` says and
/// tells how its result differs from what sops did.
fn class_run_differs(case: &Json, run: &Json, args: &[String]) -> Option<String> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sops-install-secrets"));
    cmd.arg("decrypt");
    for k in str_list(&case["identities"]["age_key_files"]) {
        cmd.arg("--age-key-file").arg(fixtures().join(k));
    }
    let out = cmd
        .args(args)
        .arg(case["file"].as_str().unwrap())
        .current_dir(fixtures())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match run["expected"].as_str() {
        Some(expected) => {
            let want = std::fs::read(fixtures().join(expected)).unwrap();
            if !out.status.success() {
                Some(format!("we refused, sops did not: {stderr}"))
            } else if out.stdout != want {
                Some(first_difference(&out.stdout, &want))
            } else {
                None
            }
        }
        None => {
            let sops_said = run["sops_stderr"].as_str().unwrap();
            // Where sops's output store refused, ours gives the same reason.
            let reason = ["Error dumping file: ", "Error dumping tree: "]
                .iter()
                .find_map(|p| sops_said.strip_prefix(p))
                .map(|r| r.trim_start_matches("Error marshaling to ini: "));
            if out.status.success() {
                Some(format!("sops refused ({sops_said}), we did not"))
            } else if let Some(reason) = reason
                && !stderr.contains(reason)
            {
                Some(format!("refused without sops's reason {reason:?}: {stderr}"))
            } else {
                None
            }
        }
    }
}

/// The classes of `tests/fixtures/classes.py`: each run of real `sops -d`
/// (whole file, `--extract`, `--output-type`) repeated with our `decrypt`
/// subcommand, which must print the same bytes or refuse where sops refused.
#[test]
fn every_class_fixture_decrypts_through_the_cli_as_sops_does() {
    let text = std::fs::read_to_string(fixtures().join("classes/classes.json")).expect("classes.json");
    let index: Json = serde_json::from_str(&text).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in index["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        for run in case["runs"].as_array().unwrap() {
            // The run as sops was given it, and our slash spelling of the same path.
            let also_as = run.get("also_as").map(str_list);
            for args in std::iter::once(str_list(&run["args"])).chain(also_as) {
                checked += 1;
                if let Some(failure) = class_run_differs(case, run, &args) {
                    failures.push(format!("{name} {args:?}: {failure}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} runs differ from sops:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 60, "only {checked} runs; classes.json lost its cases?");
}
