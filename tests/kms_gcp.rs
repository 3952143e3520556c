//! Google Cloud KMS against loopback peers that speak Google's wire protocol:
//! the OAuth token endpoint (JWT-bearer and refresh-token grants), the
//! Compute Engine metadata server and Cloud KMS's REST `:decrypt`. The sops
//! file is real sops output (`enc/basic.json`) whose key stanza is replaced
//! by a `gcp_kms` stanza the fake KMS wrapped; the output must equal what
//! real `sops -d` printed.
#![cfg(feature = "gcp-kms")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use sops_install_secrets::sops::Format;
use support::{Request, Response, Server};

const KEY: &str = "projects/acme-prod/locations/europe-west1/keyRings/nixos/cryptoKeys/sops";
const SA_EMAIL: &str = "deployer@acme-prod.iam.gserviceaccount.com";
const VM_EMAIL: &str = "1234-compute@developer.gserviceaccount.com";
const SA_TOKEN: &str = "ya29.sa-token-from-jwt-grant";
const USER_TOKEN: &str = "ya29.user-token-from-refresh";
const VM_TOKEN: &str = "ya29.vm-token-from-metadata";
const FEDERATED_TOKEN: &str = "ya29.federated-token-from-sts";
const OIDC_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.oidc-subject-token.sig";
const WIF_AUDIENCE: &str =
    "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/nixos/providers/oidc";

/// The fake KMS's own key: ciphertext = nonce || AES-256-GCM(plaintext, aad = key name).
const KMS_SECRET: [u8; 32] = [7; 32];

fn kms_encrypt(name: &str, plaintext: &[u8]) -> String {
    let nonce = [1u8; 12];
    let ct = Aes256Gcm::new_from_slice(&KMS_SECRET)
        .unwrap()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: name.as_bytes(),
            },
        )
        .unwrap();
    STANDARD.encode([nonce.as_slice(), &ct].concat())
}

fn kms_decrypt(name: &str, ciphertext: &[u8]) -> Option<Vec<u8>> {
    let (nonce, ct) = ciphertext.split_at_checked(12)?;
    Aes256Gcm::new_from_slice(&KMS_SECRET)
        .unwrap()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: name.as_bytes(),
            },
        )
        .ok()
}

/// Google's error envelope.
fn google_error(code: u16, status: &str, message: &str) -> Response {
    Response::json(
        code,
        json!({ "error": { "code": code, "message": message, "status": status } }),
    )
}

fn verify_jwt(assertion: &str, token_uri: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return Err("not a JWT".into());
    }
    let public = std::fs::read(support::fixtures().join("kms/gcp-sa-key.pub.der")).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| "bad signature".to_owned())?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().unwrap();
    let ok = header["alg"] == "RS256"
        && header["kid"] == "0123456789abcdef"
        && claims["iss"] == SA_EMAIL
        && claims["aud"] == token_uri
        && claims["scope"] == "https://www.googleapis.com/auth/cloudkms"
        && iat.abs_diff(now) < 60
        && claims["exp"].as_u64() == Some(iat + 3600);
    if ok {
        Ok(())
    } else {
        Err(format!("bad claims {claims} / header {header}"))
    }
}

/// Which principals Cloud KMS lets decrypt with `KEY`.
#[derive(Clone, Copy)]
struct Iam {
    allow_sa: bool,
    allow_user: bool,
    allow_vm: bool,
}

const ALLOW_ALL: Iam = Iam {
    allow_sa: true,
    allow_user: true,
    allow_vm: true,
};

/// One server playing oauth2.googleapis.com, the metadata server and cloudkms.googleapis.com.
fn fake_google(iam: Iam) -> Server {
    let token_uri = Arc::new(std::sync::OnceLock::<String>::new());
    let uri = token_uri.clone();
    let server = Server::start(move |req: &Request| handle(req, iam, uri.get().unwrap()));
    token_uri.set(format!("{}/token", server.url())).unwrap();
    server
}

fn token_reply(token: &str) -> Response {
    Response::json(
        200,
        json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }),
    )
}

fn handle(req: &Request, iam: Iam, token_uri: &str) -> Response {
    let md = "/computeMetadata/v1/instance/service-accounts/default";
    match (req.method.as_str(), req.path()) {
        ("POST", "/token") => match req.form_value("grant_type").as_deref() {
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                match verify_jwt(&req.form_value("assertion").unwrap_or_default(), token_uri) {
                    Ok(()) => token_reply(SA_TOKEN),
                    Err(e) => {
                        Response::json(400, json!({ "error": "invalid_grant", "error_description": e }))
                    }
                }
            }
            Some("refresh_token")
                if req.form_value("client_id").as_deref()
                    == Some("764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com")
                    && req.form_value("client_secret").as_deref() == Some("d-FL95Q19q7MQmFpd7hHD0Ty")
                    && req.form_value("refresh_token").as_deref() == Some("1//test-refresh-token") =>
            {
                token_reply(USER_TOKEN)
            }
            _ => Response::json(
                400,
                json!({ "error": "invalid_grant", "error_description": "Bad Request" }),
            ),
        },
        ("POST", "/sts/v1/token") => {
            // Google's Security Token Service (RFC 8693 token exchange).
            let f = |k: &str| req.form_value(k).unwrap_or_default();
            if f("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange"
                || f("audience") != WIF_AUDIENCE
                || f("subject_token") != OIDC_TOKEN
                || f("subject_token_type") != "urn:ietf:params:oauth:token-type:id_token"
                || f("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token"
                || f("scope") != "https://www.googleapis.com/auth/cloud-platform"
            {
                return Response::json(
                    400,
                    json!({ "error": "invalid_grant", "error_description": "bad exchange" }),
                );
            }
            Response::json(
                200,
                json!({ "access_token": FEDERATED_TOKEN, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3599 }),
            )
        }
        ("POST", path)
            if path == format!("/v1/projects/-/serviceAccounts/{SA_EMAIL}:generateAccessToken") =>
        {
            if req.header("authorization") != Some(format!("Bearer {FEDERATED_TOKEN}").as_str())
                || req.json()["scope"] != json!(["https://www.googleapis.com/auth/cloud-platform"])
            {
                return google_error(
                    403,
                    "PERMISSION_DENIED",
                    "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
                );
            }
            Response::json(
                200,
                json!({ "accessToken": SA_TOKEN, "expireTime": "2099-01-01T00:00:00Z" }),
            )
        }
        ("GET", path) if path.starts_with(md) => {
            // The real metadata server refuses requests without the header.
            if req.header("metadata-flavor") != Some("Google") {
                return Response::text(403, "Missing Metadata-Flavor:Google header.");
            }
            match &path[md.len()..] {
                "/token" => token_reply(VM_TOKEN),
                "/email" => Response::text(200, VM_EMAIL),
                _ => Response::text(404, "Not Found"),
            }
        }
        ("POST", path) if path.starts_with("/v1/") && path.ends_with(":decrypt") => {
            let name = &path[4..path.len() - 8];
            let allowed = match req.header("authorization") {
                Some(a) if a == format!("Bearer {SA_TOKEN}") => iam.allow_sa,
                Some(a) if a == format!("Bearer {USER_TOKEN}") => iam.allow_user,
                Some(a) if a == format!("Bearer {VM_TOKEN}") => iam.allow_vm,
                _ => {
                    return google_error(
                        401,
                        "UNAUTHENTICATED",
                        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                    );
                }
            };
            if !allowed || name != KEY {
                return google_error(
                    403,
                    "PERMISSION_DENIED",
                    &format!(
                        "Permission 'cloudkms.cryptoKeyVersions.useToDecrypt' denied on resource '{name}' (or it may not exist)."
                    ),
                );
            }
            let ct = STANDARD
                .decode(req.json()["ciphertext"].as_str().unwrap())
                .unwrap();
            match kms_decrypt(name, &ct) {
                Some(pt) => Response::json(
                    200,
                    json!({ "plaintext": STANDARD.encode(pt), "usedPrimary": true, "protectionLevel": "SOFTWARE" }),
                ),
                None => google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "Decryption failed: verify that 'name' refers to the correct CryptoKey.",
                ),
            }
        }
        _ => Response::text(404, "Not Found"),
    }
}

/// A real sops file whose only stanza is a `gcp_kms` one wrapping its data key.
fn gcp_file(dir: &std::path::Path) -> std::path::PathBuf {
    let key = support::data_key("enc/basic.json", Format::Json);
    support::with_only_stanza(
        dir,
        "gcp_kms",
        json!({ "resource_id": KEY, "created_at": "2026-01-01T00:00:00Z", "enc": kms_encrypt(KEY, &key) }),
    )
}

fn service_account_json(dir: &std::path::Path, token_uri: &str) -> String {
    let pem = std::fs::read_to_string(support::fixtures().join("kms/gcp-sa-key.pem")).unwrap();
    let path = dir.join("sa.json");
    let sa = json!({
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": SA_EMAIL,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    });
    std::fs::write(&path, sa.to_string()).unwrap();
    path.display().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_token_leaks(text: &str) {
    assert!(!text.contains("ya29."), "a token reached the output: {text}");
}

#[test]
fn service_account_key_jwt_grant_decrypts_a_real_sops_file() {
    let server = fake_google(ALLOW_ALL);
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let sa = service_account_json(dir.path(), &format!("{}/token", server.url()));
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", sa),
            ("SOPS_GCP_KMS_ENDPOINT", server.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].path(), "/token");
    assert_eq!(
        reqs[0].form_value("grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(reqs[1].path(), format!("/v1/{KEY}:decrypt"));
    assert_eq!(
        reqs[1].header("authorization"),
        Some(format!("Bearer {SA_TOKEN}").as_str())
    );
    assert_eq!(reqs[1].header("content-type"), Some("application/json"));
    // Each attempt is logged, without the token.
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "gcp_kms {KEY}: data key unwrapped (service account {SA_EMAIL}"
        )),
        "{err}"
    );
    assert_no_token_leaks(&err);
}

#[test]
fn metadata_server_token_decrypts_a_real_sops_file() {
    let server = fake_google(ALLOW_ALL);
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GCE_METADATA_HOST", server.addr.to_string()),
            ("SOPS_GCP_KMS_ENDPOINT", server.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(
        reqs[0].path(),
        "/computeMetadata/v1/instance/service-accounts/default/token"
    );
    assert_eq!(reqs[0].header("metadata-flavor"), Some("Google"));
    assert_eq!(reqs[1].path(), format!("/v1/{KEY}:decrypt"));
    assert_eq!(
        reqs[1].header("authorization"),
        Some(format!("Bearer {VM_TOKEN}").as_str())
    );
}

#[test]
fn gcloud_user_credentials_use_the_refresh_token_grant() {
    let server = fake_google(ALLOW_ALL);
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let gcloud = dir.path().join(".config/gcloud");
    std::fs::create_dir_all(&gcloud).unwrap();
    std::fs::write(
        gcloud.join("application_default_credentials.json"),
        json!({
            "account": "",
            "client_id": "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com",
            "client_secret": "d-FL95Q19q7MQmFpd7hHD0Ty",
            "quota_project_id": "acme-prod",
            "refresh_token": "1//test-refresh-token",
            "type": "authorized_user",
            "universe_domain": "googleapis.com",
            "token_uri": format!("{}/token", server.url()),
        })
        .to_string(),
    )
    .unwrap();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("SOPS_GCP_KMS_ENDPOINT", server.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let reqs = server.requests();
    assert_eq!(reqs[0].form_value("grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(
        reqs[1].header("authorization"),
        Some(format!("Bearer {USER_TOKEN}").as_str())
    );
    assert_eq!(reqs[1].header("x-goog-user-project"), Some("acme-prod"));
}

#[test]
fn permission_denied_names_the_key_the_principal_and_the_role() {
    let server = fake_google(Iam {
        allow_sa: false,
        allow_user: true,
        allow_vm: false,
    });
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let sa = service_account_json(dir.path(), &format!("{}/token", server.url()));
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", sa),
            ("SOPS_GCP_KMS_ENDPOINT", server.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "gcp_kms {KEY}: Cloud KMS answered HTTP 403 PERMISSION_DENIED"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "serviceAccount:{SA_EMAIL} needs roles/cloudkms.cryptoKeyDecrypter"
        )),
        "{err}"
    );
    assert_no_token_leaks(&err);

    // On Compute Engine the principal is the instance's service account, asked of the metadata server.
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GCE_METADATA_HOST", server.addr.to_string()),
            ("SOPS_GCP_KMS_ENDPOINT", server.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "serviceAccount:{VM_EMAIL} needs roles/cloudkms.cryptoKeyDecrypter"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("cryptoKeyVersions.useToDecrypt) on {KEY}")),
        "{err}"
    );
}

#[test]
fn workload_identity_federation_exchanges_a_file_token_and_impersonates() {
    let server = fake_google(ALLOW_ALL);
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let subject = dir.path().join("oidc.json");
    std::fs::write(&subject, json!({ "id_token": OIDC_TOKEN }).to_string()).unwrap();
    let creds = dir.path().join("wif.json");
    std::fs::write(
        &creds,
        json!({
            "type": "external_account",
            "audience": WIF_AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "token_url": format!("{}/sts/v1/token", server.url()),
            "service_account_impersonation_url":
                format!("{}/v1/projects/-/serviceAccounts/{SA_EMAIL}:generateAccessToken", server.url()),
            "credential_source": {
                "file": subject,
                "format": { "type": "json", "subject_token_field_name": "id_token" }
            }
        })
        .to_string(),
    )
    .unwrap();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", creds.display().to_string()),
            ("SOPS_GCP_KMS_ENDPOINT", server.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let paths: Vec<String> = server.requests().iter().map(|r| r.path().to_owned()).collect();
    assert_eq!(
        paths,
        [
            "/sts/v1/token".to_owned(),
            format!("/v1/projects/-/serviceAccounts/{SA_EMAIL}:generateAccessToken"),
            format!("/v1/{KEY}:decrypt"),
        ]
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "service account {SA_EMAIL} impersonated by the federated identity of {WIF_AUDIENCE}"
        )),
        "{err}"
    );
    assert_no_token_leaks(&err);
    assert!(!err.contains(OIDC_TOKEN), "{err}");
}

#[test]
fn aws_sourced_federation_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let creds = dir.path().join("wif.json");
    std::fs::write(
        &creds,
        json!({
            "type": "external_account",
            "audience": WIF_AUDIENCE,
            "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": {
                "environment_id": "aws1",
                "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
            }
        })
        .to_string(),
    )
    .unwrap();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", creds.display().to_string()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("AWS-sourced external_account credentials are not supported by this build"),
        "{err}"
    );
}

#[test]
fn a_silent_metadata_server_is_given_up_within_the_timeout() {
    // Accepts connections and never answers, like a black-holed network.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let start = Instant::now();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GCE_METADATA_HOST", addr.to_string()),
            ("SOPS_INSTALL_SECRETS_KMS_TIMEOUT", "1".into()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no answer within 1 s, gave up"), "{err}");
    assert!(err.contains("GOOGLE_APPLICATION_CREDENTIALS is unset"), "{err}");
}

#[test]
fn no_metadata_server_is_reported_as_such() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GCE_METADATA_HOST", format!("127.0.0.1:{port}")),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("gcp_kms {KEY}: no Google credentials")),
        "{err}"
    );
    assert!(err.contains("connection refused"), "{err}");
}

#[test]
fn age_is_tried_before_cloud_kms() {
    let server = fake_google(ALLOW_ALL);
    let dir = tempfile::tempdir().unwrap();
    let key = support::data_key("enc/basic.json", Format::Json);
    let file = support::with_stanza(
        dir.path(),
        true,
        "gcp_kms",
        json!({ "resource_id": KEY, "created_at": "2026-01-01T00:00:00Z", "enc": kms_encrypt(KEY, &key) }),
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sops-install-secrets"));
    let out = cmd
        .env_clear()
        .env("GCE_METADATA_HOST", server.addr.to_string())
        .env("SOPS_GCP_KMS_ENDPOINT", server.url())
        .env("HOME", dir.path())
        .arg("decrypt")
        .arg("--age-key-file")
        .arg(support::fixtures().join("keys/age1.txt"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[test]
fn sops_google_credentials_and_access_token_variables_come_first() {
    let server = fake_google(ALLOW_ALL);
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    // GOOGLE_CREDENTIALS holding the JSON itself (sops also accepts a path).
    let sa = std::fs::read_to_string(service_account_json(
        dir.path(),
        &format!("{}/token", server.url()),
    ))
    .unwrap();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GOOGLE_CREDENTIALS", sa),
            ("GCE_METADATA_HOST", "127.0.0.1:1".into()),
            ("SOPS_GCP_KMS_ENDPOINT", server.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    assert!(
        stderr(&out).contains("from GOOGLE_CREDENTIALS"),
        "{}",
        stderr(&out)
    );

    let before = server.requests().len();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("GOOGLE_OAUTH_ACCESS_TOKEN", VM_TOKEN.into()),
            ("SOPS_GCP_KMS_ENDPOINT", server.url()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let reqs = server.requests();
    assert_eq!(reqs.len(), before + 1, "only the decryption: {reqs:?}");
    assert_eq!(
        reqs[before].header("authorization"),
        Some(format!("Bearer {VM_TOKEN}").as_str())
    );
}

#[test]
fn the_installer_opens_a_gcp_kms_file_with_the_instances_service_account() {
    let server = fake_google(ALLOW_ALL);
    let dir = tempfile::tempdir().unwrap();
    let file = gcp_file(dir.path());
    let d = dir.path().display();
    let manifest = dir.path().join("manifest.json");
    std::fs::write(
        &manifest,
        format!(
            r#"{{
  "secrets": [
    {{"name": "db_password", "key": "database/credentials/password", "sopsFile": "{}",
      "format": "json", "mode": "0400", "restartUnits": [], "reloadUnits": []}}
  ],
  "templates": [],
  "placeholderBySecretName": {{}},
  "secretsMountPoint": "{d}/secrets.d",
  "symlinkPath": "{d}/secrets",
  "keepGenerations": 1,
  "userMode": true,
  "logging": {{"keyImport": false, "secretChanges": false}}
}}"#,
            file.display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sops-install-secrets"));
    let out = cmd
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GCE_METADATA_HOST", server.addr.to_string())
        .env("SOPS_GCP_KMS_ENDPOINT", server.url())
        .env("HOME", dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let installed = std::fs::read(dir.path().join("secrets/db_password")).unwrap();
    assert_eq!(installed, support::expected("json_basic.x1.out"));
    assert!(
        stderr(&out).contains(&format!(
            "gcp_kms {KEY}: data key unwrapped (the default service account"
        )),
        "{}",
        stderr(&out)
    );
}
