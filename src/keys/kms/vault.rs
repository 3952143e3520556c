//! HashiCorp Vault's transit engine (`hc_vault` stanzas): `POST
//! {vault_address}/v1/{engine_path}/decrypt/{key_name}` with the stanza's
//! `vault:v1:...` ciphertext; the answer's `data.plaintext` is the base64 of
//! the data key (transit's API carries plaintext as base64 both ways).
//!
//! As with sops and the Vault CLI: the token is `VAULT_TOKEN`, else the file
//! `~/.vault-token`; `VAULT_NAMESPACE` is sent as `X-Vault-Namespace`;
//! `VAULT_CACERT` replaces the system roots with that CA. The address is the
//! stanza's (sops ignores `VAULT_ADDR` for a stanza that names one);
//! `VAULT_ADDR` is used only when the stanza has none.
//!
//! The stanza list is outside a sops file's MAC, so whoever can edit the file
//! chooses where the token goes. `SOPS_HC_VAULT_ALLOWLIST` limits that with
//! sops's semantics: `all` (the default, as in sops), `none`, or
//! comma-separated address prefixes (`https://vault.example.org`).

use std::sync::OnceLock;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{Body, Http, Reply};
use super::{Ctx, Timeouts};

/// Per-run state: the token (read once) and, with `VAULT_CACERT`, a client
/// that trusts that CA only.
#[derive(Default)]
pub(super) struct Vault {
    token: OnceLock<Result<(Zeroizing<String>, String), String>>,
    ca_client: OnceLock<Result<Option<Http>, String>>,
}

impl Vault {
    /// Decrypts one stanza's ciphertext; `Ok` carries the share and the token's origin.
    pub fn decrypt(
        &self,
        ctx: &Ctx,
        address: &str,
        engine_path: &str,
        key_name: &str,
        enc: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, String), String> {
        let address = match address.trim_end_matches('/') {
            "" => ctx
                .env
                .var("VAULT_ADDR")
                .ok_or("the stanza names no vault_address and VAULT_ADDR is unset")?,
            a => a.to_owned(),
        };
        check_allowed(ctx, &address)?;
        let engine = engine_path.trim_matches('/');
        if !super::plain_url_path(engine) || !super::plain_url_path(key_name) || key_name.contains('/') {
            return Err(format!(
                "engine_path {engine_path:?} or key_name {key_name:?} is not a plain Vault path"
            ));
        }
        let (token, origin) = self
            .token
            .get_or_init(|| token(ctx))
            .as_ref()
            .map_err(Clone::clone)?;
        let http = match self.ca_client.get_or_init(|| ca_client(ctx)) {
            Ok(Some(h)) => h,
            Ok(None) => &ctx.http,
            Err(e) => return Err(e.clone()),
        };
        let namespace = ctx.env.var("VAULT_NAMESPACE");
        let mut headers = vec![("X-Vault-Token", token.as_str()), ("X-Vault-Request", "true")];
        if let Some(ns) = &namespace {
            headers.push(("X-Vault-Namespace", ns));
        }
        let url = format!("{address}/v1/{engine}/decrypt/{key_name}");
        let reply = http
            .send(
                "POST",
                &url,
                &headers,
                Body::Json(&json!({ "ciphertext": enc.trim() })),
            )
            .map_err(|e| format!("Vault: {e}"))?;
        if !reply.ok() {
            return Err(vault_error(http, &reply, &address, &headers, engine, key_name));
        }
        #[derive(serde::Deserialize)]
        struct Decrypted {
            data: Plaintext,
        }
        #[derive(serde::Deserialize)]
        struct Plaintext {
            plaintext: Zeroizing<String>,
        }
        let answer: Decrypted = reply.parse().ok_or("Vault answered without data.plaintext")?;
        Ok((
            super::decode_share(&answer.data.plaintext, "Vault")?,
            format!("token from {origin}"),
        ))
    }
}

/// Refuses an address `SOPS_HC_VAULT_ALLOWLIST` does not allow, before any
/// token is read or sent.
fn check_allowed(ctx: &Ctx, address: &str) -> Result<(), String> {
    let Some(list) = ctx.env.var("SOPS_HC_VAULT_ALLOWLIST") else {
        return Ok(());
    };
    let with_slash = |s: &str| {
        if s.ends_with('/') {
            s.to_owned()
        } else {
            format!("{s}/")
        }
    };
    let allowed = match list.as_str() {
        "all" => true,
        "none" => false,
        _ => {
            let mut prefixes = Vec::new();
            for (i, entry) in list.split(',').enumerate() {
                let entry = entry.trim();
                if entry.is_empty() {
                    return Err(format!("SOPS_HC_VAULT_ALLOWLIST's entry {} is empty", i + 1));
                }
                prefixes.push(with_slash(entry));
            }
            let address = with_slash(address);
            prefixes.iter().any(|p| address.starts_with(p.as_str()))
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "{address} is not in SOPS_HC_VAULT_ALLOWLIST; the token was not sent (add the address to the list if this Vault is yours)"
        ))
    }
}

/// `VAULT_TOKEN`, else `~/.vault-token`.
fn token(ctx: &Ctx) -> Result<(Zeroizing<String>, String), String> {
    if let Some(t) = ctx.env.var("VAULT_TOKEN") {
        return Ok((Zeroizing::new(t), "VAULT_TOKEN".to_owned()));
    }
    let Some(path) = ctx.env.home().map(|h| h.join(".vault-token")) else {
        return Err("no Vault token: VAULT_TOKEN is unset and there is no HOME for ~/.vault-token".into());
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            Ok((Zeroizing::new(t.trim().to_owned()), path.display().to_string()))
        }
        Ok(_) => Err(format!(
            "no Vault token: VAULT_TOKEN is unset and {} is empty",
            path.display()
        )),
        Err(e) => Err(format!(
            "no Vault token: VAULT_TOKEN is unset and {} cannot be read: {e}",
            path.display()
        )),
    }
}

/// A client trusting only `VAULT_CACERT`'s certificates, if it is set.
fn ca_client(ctx: &Ctx) -> Result<Option<Http>, String> {
    let Some(path) = ctx.env.var("VAULT_CACERT") else {
        return Ok(None);
    };
    let pem = std::fs::read(&path).map_err(|e| format!("VAULT_CACERT {path}: {e}"))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("VAULT_CACERT {path} holds no PEM certificate"));
    }
    Ok(Some(Http::with_roots(Timeouts::from_env(&ctx.env), &certs)))
}

/// A Vault error answer (`{"errors": [...]}`) in words; on 403 the token's
/// name and policies, if Vault will say (`auth/token/lookup-self`).
fn vault_error(
    http: &Http,
    reply: &Reply,
    address: &str,
    headers: &[(&str, &str)],
    engine: &str,
    key_name: &str,
) -> String {
    let v = reply.json();
    let errors = v
        .get("errors")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .unwrap_or_default();
    let head = format!("Vault answered HTTP {}: {errors}", reply.status)
        .trim_end_matches([' ', ':'])
        .to_owned();
    match reply.status {
        403 => {
            let who = http
                .send(
                    "GET",
                    &format!("{address}/v1/auth/token/lookup-self"),
                    headers,
                    Body::Empty,
                )
                .ok()
                .filter(Reply::ok)
                .map(|r| {
                    let d = r.json();
                    let name = d
                        .pointer("/data/display_name")
                        .and_then(Value::as_str)
                        .unwrap_or("?");
                    let policies = d
                        .pointer("/data/policies")
                        .and_then(Value::as_array)
                        .map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default();
                    format!("the token {name:?} (policies: {policies})")
                });
            match who {
                Some(who) => {
                    format!("{head}; {who} needs a policy granting \"update\" on {engine}/decrypt/{key_name}")
                }
                None => format!(
                    "{head}; the token is invalid or expired, or lacks \"update\" on {engine}/decrypt/{key_name}"
                ),
            }
        }
        503 => format!("{head} (sealed or on standby?)"),
        _ => head,
    }
}
