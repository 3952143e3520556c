//! Azure Key Vault (`azure_kv` stanzas): `POST
//! {vault_url}/keys/{name}/{version}/decrypt?api-version=7.4` with
//! `{"alg": "RSA-OAEP-256", "value": <base64url ciphertext>}`, the operation
//! sops's Go SDK calls; the answer's `value` is the base64url data key.
//!
//! The token's scope follows the vault's cloud (`https://vault.azure.net/.default`
//! for `*.vault.azure.net`, and so on); for any other host it is learned from
//! Key Vault's `WWW-Authenticate` challenge, as the SDKs do.
//!
//! Credentials, in the order of azidentity's `DefaultAzureCredential` (what
//! sops uses): a client secret (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//! `AZURE_CLIENT_SECRET`; `AZURE_AUTHORITY_HOST`), workload identity
//! (`AZURE_FEDERATED_TOKEN_FILE`), managed identity (App Service's
//! `IDENTITY_ENDPOINT`/`IDENTITY_HEADER`, else the instance metadata service,
//! whose address `AZURE_POD_IDENTITY_AUTHORITY_HOST` overrides; `AZURE_CLIENT_ID`
//! picks a user-assigned identity), then the Azure CLI (`az account get-access-token`).

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{Body, Reply, host_of};
use super::{Ctx, json_str};

const API_VERSION: &str = "7.4";
const AUTHORITY: &str = "https://login.microsoftonline.com";
const IMDS: &str = "http://169.254.169.254";

/// A bearer token and a description of whom it speaks for.
#[derive(Clone)]
struct Token {
    bearer: Zeroizing<String>,
    source: String,
}

/// Per-run state: tokens per scope, scopes learned per vault host.
#[derive(Default)]
pub(super) struct Azure {
    tokens: Mutex<HashMap<String, Result<Token, String>>>,
    scopes: Mutex<HashMap<String, String>>,
}

/// The token scope of a vault in one of Azure's clouds.
fn known_scope(vault_url: &str) -> Option<String> {
    let host = host_of(vault_url).split(':').next().unwrap_or("");
    [
        "vault.azure.net",
        "vault.azure.cn",
        "vault.usgovcloudapi.net",
        "vault.microsoftazure.de",
        "managedhsm.azure.net",
        "managedhsm.azure.cn",
        "managedhsm.usgovcloudapi.net",
    ]
    .iter()
    .find(|d| host.ends_with(&format!(".{d}")))
    .map(|d| format!("https://{d}/.default"))
}

/// The scope in a `WWW-Authenticate: Bearer authorization="...", resource="..."` (or `scope="..."`) challenge.
fn challenge_scope(header: &str) -> Option<String> {
    let field = |name: &str| {
        let start = header.find(&format!("{name}=\""))? + name.len() + 2;
        let end = start + header[start..].find('"')?;
        Some(header[start..end].to_owned())
    };
    field("scope").or_else(|| field("resource").map(|r| format!("{}/.default", r.trim_end_matches('/'))))
}

impl Azure {
    /// Decrypts one stanza's ciphertext; `Ok` carries the share and where the token came from.
    pub fn decrypt(
        &self,
        ctx: &Ctx,
        vault_url: &str,
        name: &str,
        version: &str,
        enc: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, String), String> {
        let ciphertext = URL_SAFE_NO_PAD
            .decode(enc.trim().trim_end_matches('='))
            .map_err(|e| format!("the stanza's ciphertext is not base64url: {e}"))?;
        let vault = vault_url.trim_end_matches('/');
        let url = format!("{vault}/keys/{name}/{version}/decrypt?api-version={API_VERSION}");
        let body = json!({ "alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode(&ciphertext) });
        let host = host_of(vault).to_owned();

        let scope = match known_scope(vault)
            .or_else(|| self.scopes.lock().expect("not poisoned").get(&host).cloned())
        {
            Some(s) => s,
            None => {
                // Ask without a token; Key Vault answers 401 with the scope to use.
                let reply = ctx
                    .http
                    .send("POST", &url, &[], Body::Json(&body))
                    .map_err(|e| format!("Key Vault: {e}"))?;
                let scope = reply
                    .www_authenticate
                    .as_deref()
                    .and_then(challenge_scope)
                    .ok_or_else(|| {
                        format!(
                            "Key Vault {host} answered HTTP {} without a Bearer challenge naming its token scope",
                            reply.status
                        )
                    })?;
                self.scopes
                    .lock()
                    .expect("not poisoned")
                    .insert(host.clone(), scope.clone());
                scope
            }
        };
        let token = self
            .tokens
            .lock()
            .expect("not poisoned")
            .entry(scope.clone())
            .or_insert_with(|| token(ctx, &scope))
            .clone()?;
        let auth = Zeroizing::new(format!("Bearer {}", token.bearer.as_str()));
        let reply = ctx
            .http
            .send(
                "POST",
                &url,
                &[("Authorization", auth.as_str())],
                Body::Json(&body),
            )
            .map_err(|e| format!("Key Vault: {e}"))?;
        if !reply.ok() {
            return Err(vault_error(&reply, &token, vault, name));
        }
        let key = json_str(&reply.json(), "value")
            .ok_or("Key Vault answered without a value")
            .and_then(|v| {
                URL_SAFE_NO_PAD
                    .decode(v.trim_end_matches('='))
                    .map(Zeroizing::new)
                    .map_err(|_| "Key Vault answered with a value that is not base64url")
            })?;
        Ok((key, token.source))
    }
}

/// Who a Microsoft Entra access token speaks for, from its (unverified) claims.
fn principal(token: &Token) -> String {
    let claims = token
        .bearer
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(c) = claims else {
        return token.source.clone();
    };
    let parts: Vec<String> = ["upn", "appid", "oid"]
        .iter()
        .filter_map(|k| json_str(&c, k).map(|v| format!("{k}={v}")))
        .collect();
    if parts.is_empty() {
        token.source.clone()
    } else {
        format!("{} ({})", parts.join(";"), token.source)
    }
}

/// A Key Vault error answer (`{"error": {"code", "message", "innererror"}}`) in words.
fn vault_error(reply: &Reply, token: &Token, vault: &str, name: &str) -> String {
    let v = reply.json();
    let err = v.get("error");
    let code = err.and_then(|e| json_str(e, "code")).unwrap_or("");
    let inner = err
        .and_then(|e| e.pointer("/innererror/code"))
        .and_then(Value::as_str)
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    // Key Vault's RBAC messages span lines; the first says what happened.
    let message = err
        .and_then(|e| json_str(e, "message"))
        .and_then(|m| m.lines().next())
        .unwrap_or("")
        .trim();
    let head = format!(
        "Key Vault answered HTTP {} {code}{inner}: {message}",
        reply.status
    )
    .trim_end_matches([' ', ':'])
    .to_owned();
    match reply.status {
        403 => format!(
            "{head}; {} needs the Key Vault Crypto User role (data action \
             Microsoft.KeyVault/vaults/keys/decrypt/action) on {vault}/keys/{name}, or an access policy \
             with the key permission decrypt",
            principal(token)
        ),
        401 => format!("{head}; the token of {} was not accepted", principal(token)),
        404 => format!("{head}; no such key or key version"),
        _ => head,
    }
}

/// The `access_token` of a Microsoft Entra token endpoint or managed identity answer.
fn access_token(reply: &Reply, what: &str) -> Result<Zeroizing<String>, String> {
    let v = reply.json();
    if reply.ok()
        && let Some(t) = json_str(&v, "access_token")
    {
        return Ok(Zeroizing::new(t.to_owned()));
    }
    let why = match (json_str(&v, "error"), json_str(&v, "error_description")) {
        (Some(e), Some(d)) => format!("{e}: {}", d.lines().next().unwrap_or("")),
        (Some(e), None) => e.to_owned(),
        _ => "no access_token in the answer".to_owned(),
    };
    Err(format!("{what} gave no token: HTTP {} {why}", reply.status))
}

/// The credential chain of `DefaultAzureCredential`, for one scope.
fn token(ctx: &Ctx, scope: &str) -> Result<Token, String> {
    let env = |k: &str| ctx.env.var(k);
    let authority = env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| AUTHORITY.to_owned());
    let authority = authority.trim_end_matches('/');
    if let (Some(tenant), Some(client), Some(secret)) = (
        env("AZURE_TENANT_ID"),
        env("AZURE_CLIENT_ID"),
        env("AZURE_CLIENT_SECRET"),
    ) {
        let secret = Zeroizing::new(secret);
        let url = format!("{authority}/{tenant}/oauth2/v2.0/token");
        let reply = ctx
            .http
            .send(
                "POST",
                &url,
                &[],
                Body::Form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", &client),
                    ("client_secret", &secret),
                    ("scope", scope),
                ]),
            )
            .map_err(|e| format!("Microsoft Entra token endpoint {e}"))?;
        let what = format!("the client secret of application {client} (AZURE_CLIENT_SECRET)");
        return Ok(Token {
            bearer: access_token(&reply, &what)?,
            source: what,
        });
    }
    if let (Some(tenant), Some(client), Some(file)) = (
        env("AZURE_TENANT_ID"),
        env("AZURE_CLIENT_ID"),
        env("AZURE_FEDERATED_TOKEN_FILE"),
    ) {
        let assertion = std::fs::read_to_string(&file)
            .map(Zeroizing::new)
            .map_err(|e| format!("AZURE_FEDERATED_TOKEN_FILE {file}: {e}"))?;
        let url = format!("{authority}/{tenant}/oauth2/v2.0/token");
        let reply = ctx
            .http
            .send(
                "POST",
                &url,
                &[],
                Body::Form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", &client),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.trim()),
                    ("scope", scope),
                ]),
            )
            .map_err(|e| format!("Microsoft Entra token endpoint {e}"))?;
        let what = format!("workload identity of application {client} ({file})");
        return Ok(Token {
            bearer: access_token(&reply, &what)?,
            source: what,
        });
    }
    let resource = scope.trim_end_matches("/.default");
    let managed = managed_identity(ctx, resource);
    let managed_err = match managed {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    azure_cli(ctx, resource).map_err(|cli| {
        format!(
            "no Azure credentials: AZURE_CLIENT_SECRET and AZURE_FEDERATED_TOKEN_FILE are unset; \
             managed identity: {managed_err} (not on Azure, or no network yet?); Azure CLI: {cli}"
        )
    })
}

/// App Service's identity endpoint, else the instance metadata service.
fn managed_identity(ctx: &Ctx, resource: &str) -> Result<Token, String> {
    let client = ctx.env.var("AZURE_CLIENT_ID");
    let mut query = format!("resource={}", super::http::percent_encode(resource));
    if let Some(c) = &client {
        query.push_str(&format!("&client_id={}", super::http::percent_encode(c)));
    }
    let who = client
        .as_ref()
        .map_or("system-assigned managed identity".to_owned(), |c| {
            format!("managed identity {c}")
        });
    if let (Some(endpoint), Some(header)) = (ctx.env.var("IDENTITY_ENDPOINT"), ctx.env.var("IDENTITY_HEADER"))
    {
        let header = Zeroizing::new(header);
        let url = format!("{endpoint}?api-version=2019-08-01&{query}");
        let reply = ctx
            .http
            .send(
                "GET",
                &url,
                &[("X-IDENTITY-HEADER", header.as_str())],
                Body::Empty,
            )
            .map_err(|e| format!("IDENTITY_ENDPOINT {e}"))?;
        let what = format!("{who} from IDENTITY_ENDPOINT");
        return Ok(Token {
            bearer: access_token(&reply, &what)?,
            source: what,
        });
    }
    let host = ctx
        .env
        .var("AZURE_POD_IDENTITY_AUTHORITY_HOST")
        .unwrap_or_else(|| IMDS.to_owned());
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&{query}",
        host.trim_end_matches('/')
    );
    let reply = ctx
        .http
        .send("GET", &url, &[("Metadata", "true")], Body::Empty)
        .map_err(|e| format!("the instance metadata service {e}"))?;
    let what = format!("{who} from the instance metadata service {}", host_of(&host));
    Ok(Token {
        bearer: access_token(&reply, &what)?,
        source: what,
    })
}

/// `az account get-access-token`, bounded in time like the HTTP sources.
fn azure_cli(ctx: &Ctx, resource: &str) -> Result<Token, String> {
    let mut cmd = Command::new("az");
    cmd.args([
        "account",
        "get-access-token",
        "--output",
        "json",
        "--resource",
        resource,
    ]);
    if let Some(t) = ctx.env.var("AZURE_TENANT_ID") {
        cmd.args(["--tenant", &t]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("az cannot run ({e})"))?;
    let limit = Duration::from_secs(10);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| format!("az: {e}"))? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("az did not finish within {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = Zeroizing::new(String::new());
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!(
            "az account get-access-token failed ({status}; run `az login`?)"
        ));
    }
    let v: Value = serde_json::from_str(&out).map_err(|_| "az printed no JSON".to_owned())?;
    let token = json_str(&v, "accessToken").ok_or("az printed no accessToken")?;
    Ok(Token {
        bearer: Zeroizing::new(token.to_owned()),
        source: "the Azure CLI's signed-in account".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_vaults_cloud() {
        assert_eq!(
            known_scope("https://acme.vault.azure.net").as_deref(),
            Some("https://vault.azure.net/.default")
        );
        assert_eq!(
            known_scope("https://acme.vault.azure.cn/").as_deref(),
            Some("https://vault.azure.cn/.default")
        );
        assert_eq!(known_scope("http://127.0.0.1:8443"), None);
    }

    #[test]
    fn challenges_name_the_scope() {
        let h = r#"Bearer authorization="https://login.microsoftonline.com/72f988bf", resource="https://vault.azure.net""#;
        assert_eq!(
            challenge_scope(h).as_deref(),
            Some("https://vault.azure.net/.default")
        );
        let h = r#"Bearer authorization="https://login.microsoftonline.com/t", scope="https://vault.azure.net/.default""#;
        assert_eq!(
            challenge_scope(h).as_deref(),
            Some("https://vault.azure.net/.default")
        );
    }
}
