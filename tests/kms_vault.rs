//! HashiCorp Vault transit against a loopback peer speaking Vault's HTTP API
//! (`/v1/{mount}/decrypt/{key}`, `X-Vault-Token`, `X-Vault-Namespace`,
//! `{"errors": [...]}`, `auth/token/lookup-self`). The sops file is real sops
//! output (`enc/basic.json`) re-keyed to an `hc_vault` stanza the fake
//! transit engine wrapped the way Vault does (`vault:v1:` + base64).
#![cfg(feature = "vault")]

mod support;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use sops_install_secrets::sops::Format;
use support::{Request, Response, Server};

const MOUNT: &str = "sops/transit";
const KEY: &str = "nixos";
const GOOD_TOKEN: &str = "hvs.CAESgoodtoken";
const WEAK_TOKEN: &str = "hvs.CAESweaktoken";
const TRANSIT_SECRET: [u8; 32] = [9; 32];

/// What transit's encrypt endpoint would return for `plaintext_b64`.
fn transit_encrypt(plaintext_b64: &str) -> String {
    let raw = STANDARD.decode(plaintext_b64).unwrap();
    let nonce = [2u8; 12];
    let ct = Aes256Gcm::new_from_slice(&TRANSIT_SECRET)
        .unwrap()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &raw,
                aad: KEY.as_bytes(),
            },
        )
        .unwrap();
    format!("vault:v1:{}", STANDARD.encode([nonce.as_slice(), &ct].concat()))
}

fn transit_decrypt(ciphertext: &str) -> Option<String> {
    let blob = STANDARD.decode(ciphertext.strip_prefix("vault:v1:")?).ok()?;
    let (nonce, ct) = blob.split_at_checked(12)?;
    let raw = Aes256Gcm::new_from_slice(&TRANSIT_SECRET)
        .unwrap()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: KEY.as_bytes(),
            },
        )
        .ok()?;
    Some(STANDARD.encode(raw))
}

fn errors(status: u16, msg: &str) -> Response {
    Response::json(status, json!({ "errors": [msg] }))
}

fn fake_vault(sealed: bool) -> Server {
    Server::start(move |req: &Request| vault_api(req, sealed))
}

fn vault_api(req: &Request, sealed: bool) -> Response {
    {
        if sealed {
            return errors(503, "Vault is sealed");
        }
        let token = req.header("x-vault-token").unwrap_or("");
        let known = token == GOOD_TOKEN || token == WEAK_TOKEN;
        match (req.method.as_str(), req.path()) {
            ("GET", "/v1/auth/token/lookup-self") if known => Response::json(
                200,
                json!({
                    "request_id": "8a1c", "lease_id": "", "renewable": false, "lease_duration": 0,
                    "data": {
                        "display_name": if token == GOOD_TOKEN { "token-deployer" } else { "token-nixos-host" },
                        "policies": ["default", "nixos-host"],
                        "ttl": 3600
                    },
                    "wrap_info": null, "warnings": null, "auth": null
                }),
            ),
            ("POST", path) if path == format!("/v1/{MOUNT}/decrypt/{KEY}") => {
                if token != GOOD_TOKEN {
                    return errors(403, "permission denied");
                }
                match transit_decrypt(req.json()["ciphertext"].as_str().unwrap_or("")) {
                    Some(pt) => Response::json(
                        200,
                        json!({
                            "request_id": "b2f0", "lease_id": "", "renewable": false, "lease_duration": 0,
                            "data": { "plaintext": pt },
                            "wrap_info": null, "warnings": null, "auth": null
                        }),
                    ),
                    None => errors(400, "invalid ciphertext: unable to decrypt"),
                }
            }
            _ => errors(403, "permission denied"),
        }
    }
}

fn vault_file(dir: &std::path::Path, server: &Server) -> std::path::PathBuf {
    vault_file_at(dir, &server.url())
}

fn vault_file_at(dir: &std::path::Path, address: &str) -> std::path::PathBuf {
    let key = support::data_key("enc/basic.json", Format::Json);
    // sops sends the data key to transit as base64, as the API requires.
    let enc = transit_encrypt(&STANDARD.encode(key));
    support::with_only_stanza(
        dir,
        "hc_vault",
        json!({
            "vault_address": address,
            "engine_path": MOUNT,
            "key_name": KEY,
            "created_at": "2026-01-01T00:00:00Z",
            "enc": enc,
        }),
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn vault_token_and_namespace_decrypt_a_real_sops_file() {
    let server = fake_vault(false);
    let dir = tempfile::tempdir().unwrap();
    let file = vault_file(dir.path(), &server);
    let out = support::decrypt_with_env(
        &file,
        &[
            ("VAULT_TOKEN", GOOD_TOKEN.into()),
            ("VAULT_NAMESPACE", "admin/nixos".into()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path(), format!("/v1/{MOUNT}/decrypt/{KEY}"));
    assert_eq!(reqs[0].header("x-vault-token"), Some(GOOD_TOKEN));
    assert_eq!(reqs[0].header("x-vault-namespace"), Some("admin/nixos"));
    let err = stderr(&out);
    assert!(
        err.contains("hc_vault") && err.contains("data key unwrapped (token from VAULT_TOKEN)"),
        "{err}"
    );
    assert!(!err.contains("hvs."), "{err}");
}

#[test]
fn the_vault_token_file_is_used_when_vault_token_is_unset() {
    let server = fake_vault(false);
    let dir = tempfile::tempdir().unwrap();
    let file = vault_file(dir.path(), &server);
    std::fs::write(dir.path().join(".vault-token"), format!("{GOOD_TOKEN}\n")).unwrap();
    let out = support::decrypt_with_env(&file, &[("HOME", dir.path().display().to_string())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    assert_eq!(server.requests()[0].header("x-vault-token"), Some(GOOD_TOKEN));
}

#[test]
fn permission_denied_names_the_token_its_policies_and_the_path() {
    let server = fake_vault(false);
    let dir = tempfile::tempdir().unwrap();
    let file = vault_file(dir.path(), &server);
    let out = support::decrypt_with_env(
        &file,
        &[
            ("VAULT_TOKEN", WEAK_TOKEN.into()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Vault answered HTTP 403: permission denied"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "the token \"token-nixos-host\" (policies: default, nixos-host) needs a policy granting \"update\" on {MOUNT}/decrypt/{KEY}"
        )),
        "{err}"
    );
    assert!(!err.contains("hvs."), "{err}");
}

#[test]
fn a_missing_token_and_a_sealed_vault_are_explained() {
    let server = fake_vault(true);
    let dir = tempfile::tempdir().unwrap();
    let file = vault_file(dir.path(), &server);
    let out = support::decrypt_with_env(&file, &[("HOME", dir.path().display().to_string())]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no Vault token: VAULT_TOKEN is unset and"), "{err}");
    assert!(server.requests().is_empty());

    let out = support::decrypt_with_env(
        &file,
        &[
            ("VAULT_TOKEN", GOOD_TOKEN.into()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    let err = stderr(&out);
    assert!(
        err.contains("Vault answered HTTP 503: Vault is sealed (sealed or on standby?)"),
        "{err}"
    );
}

#[test]
fn https_vault_with_a_private_ca_from_vault_cacert() {
    let server = Server::start_tls(|req: &Request| vault_api(req, false));
    let dir = tempfile::tempdir().unwrap();
    let file = vault_file_at(dir.path(), &format!("https://{}", server.addr));
    let ca = support::fixtures().join("kms/vault-ca.pem").display().to_string();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("VAULT_TOKEN", GOOD_TOKEN.into()),
            ("VAULT_CACERT", ca),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());

    // Without the CA, the public roots do not trust the server: a TLS error, and no token sent.
    let before = server.requests().len();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("VAULT_TOKEN", GOOD_TOKEN.into()),
            ("HOME", dir.path().display().to_string()),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TLS error"), "{}", stderr(&out));
    assert_eq!(server.requests().len(), before);
}

#[test]
fn sops_hc_vault_allowlist_keeps_the_token_from_addresses_not_on_it() {
    let server = fake_vault(false);
    let dir = tempfile::tempdir().unwrap();
    let file = vault_file(dir.path(), &server);
    let run = |list: &str| {
        support::decrypt_with_env(
            &file,
            &[
                ("VAULT_TOKEN", GOOD_TOKEN.into()),
                ("SOPS_HC_VAULT_ALLOWLIST", list.into()),
                ("HOME", dir.path().display().to_string()),
            ],
        )
    };
    for refused in [
        "none",
        "https://vault.example.org",
        "https://vault.example.org, http://127.0.0.2",
    ] {
        let out = run(refused);
        assert!(!out.status.success(), "{refused}");
        let err = stderr(&out);
        assert!(
            err.contains("is not in SOPS_HC_VAULT_ALLOWLIST; the token was not sent"),
            "{err}"
        );
        assert!(
            server.requests().is_empty(),
            "a request went out with {refused:?}"
        );
    }
    let out = run(",");
    assert!(
        stderr(&out).contains("SOPS_HC_VAULT_ALLOWLIST's entry 1 is empty"),
        "{}",
        stderr(&out)
    );

    // Listed (with or without a trailing slash), or `all`: the token goes out.
    for allowed in [
        server.url(),
        format!("https://vault.example.org,{}/", server.url()),
        "all".into(),
    ] {
        let out = run(&allowed);
        assert!(out.status.success(), "{allowed}: {}", stderr(&out));
        assert_eq!(out.stdout, support::expected_basic_json());
    }
}

#[test]
fn a_stanza_path_that_would_change_the_request_is_refused_before_anything_is_sent() {
    let server = fake_vault(false);
    let dir = tempfile::tempdir().unwrap();
    let key = support::data_key("enc/basic.json", Format::Json);
    for (engine, key_name) in [
        ("sops/transit", "nixos?x=1"),
        ("../sys", "nixos"),
        ("sops/transit", "a/b"),
    ] {
        let file = support::with_only_stanza(
            dir.path(),
            "hc_vault",
            json!({
                "vault_address": server.url(),
                "engine_path": engine,
                "key_name": key_name,
                "created_at": "2026-01-01T00:00:00Z",
                "enc": transit_encrypt(&STANDARD.encode(key)),
            }),
        );
        let out = support::decrypt_with_env(
            &file,
            &[
                ("VAULT_TOKEN", GOOD_TOKEN.into()),
                ("HOME", dir.path().display().to_string()),
            ],
        );
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("is not a plain Vault path"),
            "{}",
            stderr(&out)
        );
    }
    assert!(server.requests().is_empty());
}
