//! AWS KMS against moto (`pip install 'moto[server]'`), AWS's API emulator,
//! on 127.0.0.1 with IAM enforcement on: moto checks each request's SigV4
//! signature and evaluates the IAM policies of its principal. The data key
//! of the real sops-written `enc/basic.json` is encrypted through moto's KMS
//! (with and without an encryption context) and the file re-keyed to that
//! `kms` stanza; the output must equal what real `sops -d` printed.
//!
//! Without moto these tests are skipped, unless `CI` is set: then they fail.
#![cfg(feature = "aws-kms")]

mod support;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sops_install_secrets::sops::Format;
use support::{Request, Response, Server};

/// A moto server with KMS, IAM and STS set up by `fixtures/kms/moto_setup.py`.
struct Moto {
    child: Child,
    url: String,
    setup: Value,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Option<Moto> {
    let have = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "moto is missing (pip install 'moto[server]'); .ci/run installs it"
        );
        eprintln!("skipped: moto is not installed (pip install 'moto[server]')");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "40")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut moto = Moto {
        child,
        url,
        setup: Value::Null,
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let key = support::data_key("enc/basic.json", Format::Json);
    let out = Command::new("python3")
        .arg(support::fixtures().join("kms/moto_setup.py"))
        .arg(&moto.url)
        .arg(STANDARD.encode(key))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    moto.setup = serde_json::from_slice(&out.stdout).unwrap();
    Some(moto)
}

impl Moto {
    fn arn(&self) -> &str {
        self.setup["key_arn"].as_str().unwrap()
    }

    fn user(&self, name: &str) -> (String, String) {
        let u = &self.setup["users"][name];
        (
            u["id"].as_str().unwrap().to_owned(),
            u["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// A kms stanza as sops writes it.
    fn stanza(&self, with_context: bool, role: &str, profile: &str) -> Value {
        let mut s = json!({
            "arn": self.arn(),
            "role": role,
            "created_at": "2026-01-01T00:00:00Z",
            "enc": self.setup[if with_context { "enc_ctx" } else { "enc_plain" }],
            "aws_profile": profile,
        });
        if with_context {
            s["context"] = self.setup["context"].clone();
        }
        s
    }

    /// Environment with a user's keys, talking to moto.
    fn env(&self, user: &str, home: &std::path::Path) -> Vec<(&'static str, String)> {
        let (id, secret) = self.user(user);
        vec![
            ("AWS_ACCESS_KEY_ID", id),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("HOME", home.display().to_string()),
        ]
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn env_credentials_decrypt_a_real_sops_file_with_and_without_context() {
    let Some(moto) = moto() else { return };
    for with_context in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let file = support::with_only_stanza(dir.path(), "kms", moto.stanza(with_context, "", ""));
        let out = support::decrypt_with_env(&file, &moto.env("allowed", dir.path()));
        assert!(out.status.success(), "context {with_context}: {}", stderr(&out));
        assert_eq!(out.stdout, support::expected_basic_json());
        let err = stderr(&out);
        assert!(
            err.contains("data key unwrapped (AWS_ACCESS_KEY_ID from the environment)"),
            "{err}"
        );
        let (_, secret) = moto.user("allowed");
        assert!(!err.contains(&secret), "{err}");
    }
}

#[test]
fn a_wrong_encryption_context_is_refused_by_kms() {
    let Some(moto) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut stanza = moto.stanza(true, "", "");
    stanza["context"]["host"] = json!("web-2");
    let file = support::with_only_stanza(dir.path(), "kms", stanza);
    let out = support::decrypt_with_env(&file, &moto.env("allowed", dir.path()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("InvalidCiphertextException"), "{err}");
    assert!(err.contains("encryption context does not match"), "{err}");
}

#[test]
fn access_denied_names_the_principal_and_the_permission() {
    let Some(moto) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = support::with_only_stanza(dir.path(), "kms", moto.stanza(false, "", ""));
    let out = support::decrypt_with_env(&file, &moto.env("denied", dir.path()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("HTTP 403 AccessDenied"), "{err}");
    assert!(err.contains("user/denied"), "{err}");
    assert!(
        err.contains(&format!("needs kms:Decrypt on {}", moto.arn())),
        "{err}"
    );
}

#[test]
fn the_stanza_role_is_assumed_through_sts() {
    let Some(moto) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let role = moto.setup["role_arn"].as_str().unwrap().to_owned();
    let file = support::with_only_stanza(dir.path(), "kms", moto.stanza(true, &role, ""));
    let out = support::decrypt_with_env(&file, &moto.env("assumer", dir.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    assert!(
        stderr(&out).contains(&format!("role {role} assumed with AWS_ACCESS_KEY_ID")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_stanza_profile_reads_the_shared_credentials_file() {
    let Some(moto) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = moto.user("allowed");
    std::fs::create_dir(dir.path().join(".aws")).unwrap();
    std::fs::write(
        dir.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = AKIANOTTHISONE000000\naws_secret_access_key = x\n\n[prod]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let file = support::with_only_stanza(dir.path(), "kms", moto.stanza(false, "", "prod"));
    let out = support::decrypt_with_env(
        &file,
        &[
            ("AWS_ENDPOINT_URL", moto.url.clone()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    assert!(stderr(&out).contains("(profile prod from "), "{}", stderr(&out));
}

#[test]
fn the_instance_role_comes_from_imdsv2() {
    let Some(moto) = moto() else { return };
    let (id, secret) = moto.user("allowed");
    const TOKEN: &str = "AQAEAImdsSessionToken==";
    // The instance metadata service's IMDSv2 protocol: a PUT for a session
    // token, then GETs that carry it.
    let imds = Server::start(move |req: &Request| {
        let creds = "/latest/meta-data/iam/security-credentials/";
        match (req.method.as_str(), req.path()) {
            ("PUT", "/latest/api/token") if req.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() => {
                Response::text(200, TOKEN)
            }
            _ if req.header("x-aws-ec2-metadata-token") != Some(TOKEN) => Response::text(401, ""),
            ("GET", p) if p == creds => Response::text(200, "nixos-web"),
            ("GET", p) if p == format!("{creds}nixos-web") => Response::json(
                200,
                json!({
                    "Code": "Success",
                    "LastUpdated": "2026-01-01T00:00:00Z",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": id,
                    "SecretAccessKey": secret,
                    "Token": null,
                    "Expiration": "2099-01-01T00:00:00Z"
                }),
            ),
            _ => Response::text(404, ""),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = support::with_only_stanza(dir.path(), "kms", moto.stanza(true, "", ""));
    let out = support::decrypt_with_env(
        &file,
        &[
            ("AWS_ENDPOINT_URL", moto.url.clone()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let reqs = imds.requests();
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(
        reqs[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    assert!(
        reqs[1..]
            .iter()
            .all(|r| r.header("x-aws-ec2-metadata-token") == Some(TOKEN))
    );
    assert!(
        stderr(&out).contains("instance role nixos-web from the instance metadata service"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn profiles_with_a_source_profile_role_or_a_credential_process() {
    let Some(moto) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = moto.user("assumer");
    let (allowed_id, allowed_secret) = moto.user("allowed");
    let role = moto.setup["role_arn"].as_str().unwrap().to_owned();
    std::fs::create_dir(dir.path().join(".aws")).unwrap();
    std::fs::write(
        dir.path().join(".aws/credentials"),
        format!("[base]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".aws/config"),
        format!(
            "[profile deploy]\nrole_arn = {role}\nsource_profile = base\nregion = eu-west-1\n\n\
             [profile process]\ncredential_process = printf '{{\"Version\": 1, \"AccessKeyId\": \"{allowed_id}\", \"SecretAccessKey\": \"{allowed_secret}\"}}'\n"
        ),
    )
    .unwrap();
    for (profile, says) in [
        ("deploy", format!("role {role} assumed with profile base from ")),
        ("process", "(credential_process)".to_owned()),
    ] {
        let file = support::with_only_stanza(dir.path(), "kms", moto.stanza(false, "", ""));
        let out = support::decrypt_with_env(
            &file,
            &[
                ("AWS_PROFILE", profile.into()),
                ("AWS_ENDPOINT_URL", moto.url.clone()),
                ("HOME", dir.path().display().to_string()),
            ],
        );
        assert!(out.status.success(), "{profile}: {}", stderr(&out));
        assert_eq!(out.stdout, support::expected_basic_json());
        assert!(stderr(&out).contains(&says), "{profile}: {}", stderr(&out));
    }
}
