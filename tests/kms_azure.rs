//! Azure Key Vault against a loopback peer speaking Key Vault's REST API
//! (`/keys/{name}/{version}/decrypt?api-version=7.4`, the `WWW-Authenticate`
//! challenge, `{"error": {...}}`), Microsoft Entra's token endpoint (client
//! credentials) and the instance metadata service's managed identity
//! endpoint. The sops file is real sops output (`enc/basic.json`) re-keyed
//! to an `azure_kv` stanza whose `enc` the fake vault produced.
//!
//! The loopback vault's challenge names its own address as the resource (a
//! challenge naming another host, such as `https://vault.azure.net` for a
//! vault at 127.0.0.1, is refused), so the token is asked for
//! `http://127.0.0.1:<port>/.default`.
#![cfg(feature = "azure-kv")]

mod support;

use std::sync::{Arc, OnceLock};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sops_install_secrets::sops::Format;
use support::{Request, Response, Server};

const KEY: &str = "sops";
const VERSION: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const APP: &str = "0f8e2b7c-3d4a-4e5b-9c6d-7e8f9a0b1c2d";
const DENIED_APP: &str = "11111111-2222-3333-4444-555555555555";
const VAULT_SECRET: [u8; 32] = [5; 32];

/// A token shaped like Entra's (a JWT whose claims name the application).
fn jwt(appid: &str, oid: &str) -> String {
    let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        part(json!({ "typ": "JWT", "alg": "RS256" })),
        part(json!({ "aud": "https://vault.azure.net", "tid": TENANT, "appid": appid, "oid": oid }))
    )
}

fn wrap(data_key: &[u8]) -> String {
    let nonce = [3u8; 12];
    let ct = Aes256Gcm::new_from_slice(&VAULT_SECRET)
        .unwrap()
        .encrypt(Nonce::from_slice(&nonce), data_key)
        .unwrap();
    URL_SAFE_NO_PAD.encode([nonce.as_slice(), &ct].concat())
}

fn unwrap(value: &str) -> Option<Vec<u8>> {
    let blob = URL_SAFE_NO_PAD.decode(value).ok()?;
    let (nonce, ct) = blob.split_at_checked(12)?;
    Aes256Gcm::new_from_slice(&VAULT_SECRET)
        .unwrap()
        .decrypt(Nonce::from_slice(nonce), ct)
        .ok()
}

fn kv_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut e = json!({ "error": { "code": code, "message": message } });
    if let Some(i) = inner {
        e["error"]["innererror"] = json!({ "code": i });
    }
    Response::json(status, e)
}

/// What the fake answers with: its own URL, and the resource its challenge names.
struct Peer {
    base: String,
    resource: String,
}

/// Key Vault, Entra and IMDS in one loopback server whose challenge names
/// the server itself.
fn fake_azure() -> Server {
    fake_azure_with(false, None)
}

/// The same over TLS (`fixtures/kms/vault-ca.pem` signs its certificate)
/// when `tls`, and with a challenge naming `resource` when given.
fn fake_azure_with(tls: bool, resource: Option<&str>) -> Server {
    let peer = Arc::new(OnceLock::<Peer>::new());
    let p = peer.clone();
    let handler = move |req: &Request| handle(req, p.get().unwrap());
    let server = if tls {
        Server::start_tls(handler)
    } else {
        Server::start(handler)
    };
    let base = url(&server, tls);
    let resource = resource.map_or(base.clone(), str::to_owned);
    assert!(peer.set(Peer { base, resource }).is_ok());
    server
}

fn url(server: &Server, tls: bool) -> String {
    if tls {
        format!("https://{}", server.addr)
    } else {
        server.url()
    }
}

fn handle(req: &Request, peer: &Peer) -> Response {
    let (base, resource) = (peer.base.as_str(), peer.resource.as_str());
    let good = jwt(APP, "aaaaaaaa-0000-0000-0000-000000000001");
    let denied = jwt(DENIED_APP, "bbbbbbbb-0000-0000-0000-000000000002");
    match (req.method.as_str(), req.path()) {
        ("POST", p) if p == format!("/{TENANT}/oauth2/v2.0/token") => {
            let f = |k: &str| req.form_value(k).unwrap_or_default();
            if f("grant_type") != "client_credentials" || f("scope") != format!("{resource}/.default") {
                return Response::json(
                    400,
                    json!({ "error": "invalid_request", "error_description": "AADSTS900144: bad request" }),
                );
            }
            let token = match (f("client_id").as_str(), f("client_secret").as_str()) {
                (APP, "app-secret") => good,
                (DENIED_APP, "denied-secret") => denied,
                _ => {
                    return Response::json(
                        401,
                        json!({ "error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided." }),
                    );
                }
            };
            Response::json(
                200,
                json!({ "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token }),
            )
        }
        ("GET", "/msi/token") => {
            // App Service's identity endpoint (api-version 2019-08-01).
            if req.header("x-identity-header") != Some("app-service-header")
                || req.query("api-version").as_deref() != Some("2019-08-01")
                || req.query("client_id").as_deref() != Some(APP)
            {
                return Response::json(400, json!({ "statusCode": 400, "message": "bad request" }));
            }
            Response::json(
                200,
                json!({
                    "access_token": good, "expires_on": "1999999999", "resource": req.query("resource"),
                    "token_type": "Bearer", "client_id": APP
                }),
            )
        }
        ("GET", "/metadata/identity/oauth2/token") => {
            if req.header("metadata") != Some("true") {
                return Response::json(
                    400,
                    json!({ "error": "invalid_request", "error_description": "Required metadata header not specified" }),
                );
            }
            if req.query("resource").as_deref() != Some(resource) {
                return Response::json(
                    400,
                    json!({ "error": "invalid_resource", "error_description": "bad resource" }),
                );
            }
            Response::json(
                200,
                json!({
                    "access_token": good, "client_id": APP, "expires_in": "86399", "expires_on": "1999999999",
                    "ext_expires_in": "86399", "not_before": "1700000000", "resource": resource,
                    "token_type": "Bearer"
                }),
            )
        }
        ("POST", p) if p == format!("/keys/{KEY}/{VERSION}/decrypt") => {
            let Some(auth) = req.header("authorization") else {
                let mut r = kv_error(
                    401,
                    "Unauthorized",
                    "AKV10000: Request is missing a Bearer or PoP token.",
                    None,
                );
                r.headers.push((
                    "WWW-Authenticate".into(),
                    format!(r#"Bearer authorization="{base}/{TENANT}", resource="{resource}""#),
                ));
                return r;
            };
            if req.query("api-version").as_deref() != Some("7.4") {
                return kv_error(
                    400,
                    "BadParameter",
                    "The specified version is not supported",
                    None,
                );
            }
            if auth == format!("Bearer {denied}") {
                return kv_error(
                    403,
                    "Forbidden",
                    &format!(
                        "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={DENIED_APP};oid=bbbbbbbb-0000-0000-0000-000000000002;iss=https://sts.windows.net/{TENANT}/\r\nAction: 'Microsoft.KeyVault/vaults/keys/decrypt/action'\r\n"
                    ),
                    Some("ForbiddenByRbac"),
                );
            }
            if auth != format!("Bearer {good}") {
                return kv_error(401, "Unauthorized", "AKV10032: Invalid issuer.", None);
            }
            let body = req.json();
            if body["alg"] != "RSA-OAEP-256" {
                return kv_error(400, "BadParameter", "Invalid algorithm", None);
            }
            match unwrap(body["value"].as_str().unwrap_or("")) {
                Some(pt) => Response::json(
                    200,
                    json!({ "kid": format!("{base}/keys/{KEY}/{VERSION}"), "value": URL_SAFE_NO_PAD.encode(pt) }),
                ),
                None => kv_error(400, "BadParameter", "Bad Request", None),
            }
        }
        _ => kv_error(404, "NotFound", "Not found", None),
    }
}

fn azure_file(dir: &std::path::Path, server: &Server) -> std::path::PathBuf {
    azure_file_at(dir, &server.url())
}

fn azure_file_at(dir: &std::path::Path, vault_url: &str) -> std::path::PathBuf {
    let key = support::data_key("enc/basic.json", Format::Json);
    support::with_only_stanza(
        dir,
        "azure_kv",
        json!({
            "vault_url": vault_url,
            "name": KEY,
            "version": VERSION,
            "created_at": "2026-01-01T00:00:00Z",
            "enc": wrap(&key),
        }),
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A PATH without `az`.
fn no_az() -> String {
    "/nonexistent".into()
}

#[test]
fn client_secret_credentials_decrypt_a_real_sops_file() {
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    let out = support::decrypt_with_env(
        &file,
        &[
            ("AZURE_TENANT_ID", TENANT.into()),
            ("AZURE_CLIENT_ID", APP.into()),
            ("AZURE_CLIENT_SECRET", "app-secret".into()),
            ("AZURE_AUTHORITY_HOST", server.url()),
            ("HOME", dir.path().display().to_string()),
            ("PATH", no_az()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    // The challenge, the token, the decryption.
    assert_eq!(reqs[0].header("authorization"), None);
    assert_eq!(reqs[1].path(), format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(reqs[1].form_value("client_secret").as_deref(), Some("app-secret"));
    assert_eq!(reqs[2].path(), format!("/keys/{KEY}/{VERSION}/decrypt"));
    assert_eq!(reqs[2].query("api-version").as_deref(), Some("7.4"));
    let token = jwt(APP, "aaaaaaaa-0000-0000-0000-000000000001");
    assert_eq!(
        reqs[2].header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "data key unwrapped (the client secret of application {APP}"
        )),
        "{err}"
    );
    assert_no_secrets(&err, &["app-secret", &token]);
}

/// Neither the credentials nor the data key (hex, base64, base64url) are in `text`.
fn assert_no_secrets(text: &str, secrets: &[&str]) {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let key = support::data_key("enc/basic.json", Format::Json);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let forms = [
        hex.clone(),
        hex.to_uppercase(),
        STANDARD.encode(key),
        URL_SAFE.encode(key),
        URL_SAFE_NO_PAD.encode(key),
    ];
    for s in secrets.iter().copied().chain(forms.iter().map(String::as_str)) {
        // The unpadded prefix catches the value cut short or re-padded too.
        let needle = s.trim_end_matches('=');
        assert!(!text.contains(needle), "{needle} in: {text}");
    }
}

#[test]
fn managed_identity_from_the_instance_metadata_service() {
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    let out = support::decrypt_with_env(
        &file,
        &[
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.url()),
            ("HOME", dir.path().display().to_string()),
            ("PATH", no_az()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let imds = server
        .requests()
        .into_iter()
        .find(|r| r.path() == "/metadata/identity/oauth2/token")
        .unwrap();
    assert_eq!(imds.header("metadata"), Some("true"));
    assert_eq!(imds.query("api-version").as_deref(), Some("2018-02-01"));
    assert_eq!(imds.query("client_id"), None);
    assert!(stderr(&out).contains("system-assigned managed identity from the instance metadata service"));
}

#[test]
fn forbidden_names_the_application_and_the_role() {
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    let out = support::decrypt_with_env(
        &file,
        &[
            ("AZURE_TENANT_ID", TENANT.into()),
            ("AZURE_CLIENT_ID", DENIED_APP.into()),
            ("AZURE_CLIENT_SECRET", "denied-secret".into()),
            ("AZURE_AUTHORITY_HOST", server.url()),
            ("HOME", dir.path().display().to_string()),
            ("PATH", no_az()),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Key Vault answered HTTP 403 Forbidden (ForbiddenByRbac): Caller is not authorized"),
        "{err}"
    );
    assert!(err.contains(&format!("appid={DENIED_APP};oid=bbbbbbbb")), "{err}");
    assert!(err.contains("needs the Key Vault Crypto User role"), "{err}");
}

#[test]
fn the_azure_cli_is_the_last_resort() {
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    // A stand-in for `az` that prints what `az account get-access-token` prints.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let az = bin.join("az");
    std::fs::write(
        &az,
        format!(
            "#!/bin/sh\n[ \"$*\" = \"account get-access-token --output json --resource {}\" ] || exit 2\n\
             echo '{{\"accessToken\": \"{}\", \"expiresOn\": \"2099-01-01 00:00:00.000000\", \"subscription\": \"s\", \"tenant\": \"{TENANT}\", \"tokenType\": \"Bearer\"}}'\n",
            server.url(),
            jwt(APP, "aaaaaaaa-0000-0000-0000-000000000001")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&az, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // No managed identity: the metadata service's port is closed (the
    // listener is a temporary, dropped at the end of the statement).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = support::decrypt_with_env(
        &file,
        &[
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", format!("http://{closed}")),
            ("HOME", dir.path().display().to_string()),
            ("PATH", format!("{}:/usr/bin:/bin", bin.display())),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    assert!(
        stderr(&out).contains("the Azure CLI's signed-in account"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_user_assigned_identity_from_app_services_identity_endpoint() {
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    let out = support::decrypt_with_env(
        &file,
        &[
            ("IDENTITY_ENDPOINT", format!("{}/msi/token", server.url())),
            ("IDENTITY_HEADER", "app-service-header".into()),
            ("AZURE_CLIENT_ID", APP.into()),
            ("HOME", dir.path().display().to_string()),
            ("PATH", no_az()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    assert!(
        stderr(&out).contains(&format!("managed identity {APP} from IDENTITY_ENDPOINT")),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("app-service-header"));
}

/// Credentials for every source, all pointing at `server`.
fn every_credential(server: &Server, dir: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_TENANT_ID", TENANT.into()),
        ("AZURE_CLIENT_ID", APP.into()),
        ("AZURE_CLIENT_SECRET", "app-secret".into()),
        ("AZURE_AUTHORITY_HOST", server.url()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.url()),
        ("HOME", dir.display().to_string()),
        ("PATH", no_az()),
    ]
}

#[test]
fn a_challenge_for_another_service_gets_no_token() {
    // The review's proof of concept: the host's challenge names Azure
    // Resource Manager; no token is fetched, none is sent.
    let server = fake_azure_with(false, Some("https://management.azure.com"));
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    let mut env = every_credential(&server, dir.path());
    env.retain(|(k, _)| !k.starts_with("AZURE_CLIENT") && *k != "AZURE_TENANT_ID");
    let out = support::decrypt_with_env(&file, &env);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("asks for a token to management.azure.com, which is not the vault's domain; refused"),
        "{err}"
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "only the unauthenticated challenge: {reqs:?}");
    assert_eq!(reqs[0].header("authorization"), None);
}

#[test]
fn a_challenge_for_azures_vault_domain_from_another_host_is_refused() {
    // The loopback vault claims to be vault.azure.net's.
    let server = fake_azure_with(false, Some("https://vault.azure.net"));
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    let out = support::decrypt_with_env(&file, &every_credential(&server, dir.path()));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("asks for a token to vault.azure.net, which is not the vault's domain"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn a_vault_over_plain_http_gets_nothing() {
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    for vault in ["http://acme.vault.azure.net", "http://192.0.2.1:8080"] {
        let file = azure_file_at(dir.path(), vault);
        let out = support::decrypt_with_env(&file, &every_credential(&server, dir.path()));
        assert!(!out.status.success());
        let host = vault.trim_start_matches("http://");
        assert!(
            stderr(&out).contains(&format!(
                "Key Vault {host} is not https: credentials are only sent over TLS"
            )),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(server.requests().len(), 0, "no token was fetched");
}

#[test]
fn user_information_in_the_vault_url_is_refused() {
    // The review's proof of concept: the part before '@' looks like a
    // vault.azure.net host, the request would go to the loopback server.
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    let vault = format!("http://acme.vault.azure.net:1@{}", server.addr);
    let file = azure_file_at(dir.path(), &vault);
    let out = support::decrypt_with_env(&file, &every_credential(&server, dir.path()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "Key Vault {}: a URL with user information (user@host) is refused",
            server.addr
        )),
        "{err}"
    );
    assert_eq!(server.requests().len(), 0);
}

#[test]
fn a_client_secret_is_not_sent_to_a_plain_http_authority() {
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    let mut env = every_credential(&server, dir.path());
    env.retain(|(k, _)| *k != "AZURE_AUTHORITY_HOST");
    env.push(("AZURE_AUTHORITY_HOST", "http://login.example.com".into()));
    let out = support::decrypt_with_env(&file, &env);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("AZURE_AUTHORITY_HOST login.example.com is not https"),
        "{}",
        stderr(&out)
    );
    // The challenge only; no token request anywhere.
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn proxies_are_not_used_for_loopback_and_the_metadata_service() {
    // Every proxy variable points at a closed port: a request through a
    // proxy would fail with "connection refused".
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = format!("http://{dead}");
    let server = fake_azure();
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file(dir.path(), &server);
    let mut env = vec![
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.url()),
        ("HOME", dir.path().display().to_string()),
        ("PATH", no_az()),
    ];
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        env.push((var, proxy.clone()));
    }
    let out = support::decrypt_with_env(&file, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn an_https_vault_is_trusted_through_ssl_cert_file() {
    let server = fake_azure_with(true, None);
    let base = url(&server, true);
    let dir = tempfile::tempdir().unwrap();
    let file = azure_file_at(dir.path(), &base);
    let env = vec![
        ("AZURE_TENANT_ID", TENANT.into()),
        ("AZURE_CLIENT_ID", APP.into()),
        ("AZURE_CLIENT_SECRET", "app-secret".into()),
        ("AZURE_AUTHORITY_HOST", base.clone()),
        ("HOME", dir.path().display().to_string()),
        ("PATH", no_az()),
    ];
    // Without it, the system's (or the bundled) roots do not know the
    // test CA: a TLS error, and no token sent.
    let out = support::decrypt_with_env(&file, &env);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TLS error"), "{}", stderr(&out));
    assert!(server.requests().is_empty());

    let ca = support::fixtures().join("kms/vault-ca.pem");
    let mut trusted = env.clone();
    trusted.push(("SSL_CERT_FILE", ca.display().to_string()));
    let out = support::decrypt_with_env(&file, &trusted);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, support::expected_basic_json());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(
        reqs[1].form_value("scope").as_deref(),
        Some(format!("{base}/.default").as_str())
    );
}
