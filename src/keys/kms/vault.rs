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

use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{Body, Http, HttpError, Reply};
use super::{Ctx, Timeouts};

/// Why an `hc_vault` stanza was not opened. Never holds the token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum VaultError {
    /// Neither the stanza nor `VAULT_ADDR` names a Vault.
    #[error("the stanza names no vault_address and VAULT_ADDR is unset")]
    NoAddress,
    /// `SOPS_HC_VAULT_ALLOWLIST` has an empty entry (`a,,b`): refused rather
    /// than read as "everything".
    #[error("SOPS_HC_VAULT_ALLOWLIST's entry {index} is empty")]
    AllowlistEntryEmpty {
        /// 1-based.
        index: usize,
    },
    /// The stanza's address is not in `SOPS_HC_VAULT_ALLOWLIST`; nothing was sent.
    #[error(
        "{address} is not in SOPS_HC_VAULT_ALLOWLIST; the token was not sent (add the address to the list if this Vault is yours)"
    )]
    NotAllowed {
        /// The Vault address, as the stanza (or `VAULT_ADDR`) gives it.
        address: String,
    },
    /// The stanza's engine path or key name would change which endpoint is asked.
    #[error("engine_path {engine_path:?} or key_name {key_name:?} is not a plain Vault path")]
    NotPlainPath {
        /// As the stanza gives it.
        engine_path: String,
        /// As the stanza gives it.
        key_name: String,
    },
    /// Neither `VAULT_TOKEN` nor `~/.vault-token` holds a token.
    #[error("no Vault token: VAULT_TOKEN is unset and {0}")]
    NoToken(#[source] NoTokenFile),
    /// `VAULT_CACERT` cannot be read.
    #[error("VAULT_CACERT {path}: {source}")]
    CaCertUnreadable {
        /// The file it names.
        path: String,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// `VAULT_CACERT` names a file without a certificate.
    #[error("VAULT_CACERT {path} holds no PEM certificate")]
    CaCertEmpty {
        /// The file it names.
        path: String,
    },
    /// No answer from Vault, or its address is not a URL requests go to.
    #[error("Vault: {0}")]
    Http(#[from] HttpError),
    /// Vault answered with an error status: its own `errors`, then what to do.
    #[error("{text}")]
    Refused {
        /// The HTTP status (403: the token lacks a policy; 503: sealed or standby).
        status: u16,
        /// The whole message, with Vault's own words.
        text: String,
    },
    /// A 2xx answer without `data.plaintext`.
    #[error("Vault answered without data.plaintext")]
    NoPlaintext,
    /// A plaintext that does not decode.
    #[error("Vault answered with a plaintext that is not base64")]
    PlaintextNotBase64,
}

/// Why `~/.vault-token` gave no token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NoTokenFile {
    /// There is no home directory to look in.
    #[error("there is no HOME for ~/.vault-token")]
    NoHome,
    /// The file is empty.
    #[error("{} is empty", .path.display())]
    Empty {
        /// `~/.vault-token`.
        path: std::path::PathBuf,
    },
    /// The file cannot be read (most often: it does not exist).
    #[error("{} cannot be read: {source}", .path.display())]
    Unreadable {
        /// `~/.vault-token`.
        path: std::path::PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
}

/// Per-run state: the token (read once) and, with `VAULT_CACERT`, a client
/// that trusts that CA only.
#[derive(Default)]
pub(super) struct Vault {
    token: OnceLock<Result<(Zeroizing<String>, String), VaultError>>,
    ca_client: OnceLock<Result<Option<Http>, VaultError>>,
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
    ) -> Result<(Zeroizing<Vec<u8>>, String), VaultError> {
        let address = match address.trim_end_matches('/') {
            "" => ctx.env.var("VAULT_ADDR").ok_or(VaultError::NoAddress)?,
            a => a.to_owned(),
        };
        check_allowed(ctx, &address)?;
        let engine = engine_path.trim_matches('/');
        if !super::plain_url_path(engine) || !super::plain_url_path(key_name) || key_name.contains('/') {
            return Err(VaultError::NotPlainPath {
                engine_path: engine_path.to_owned(),
                key_name: key_name.to_owned(),
            });
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
        let reply = http.send(
            "POST",
            &url,
            &headers,
            Body::Json(&json!({ "ciphertext": enc.trim() })),
        )?;
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
        let answer: Decrypted = reply.parse().ok_or(VaultError::NoPlaintext)?;
        Ok((
            super::decode_share(&answer.data.plaintext).ok_or(VaultError::PlaintextNotBase64)?,
            format!("token from {origin}"),
        ))
    }
}

/// Refuses an address `SOPS_HC_VAULT_ALLOWLIST` does not allow, before any
/// token is read or sent.
fn check_allowed(ctx: &Ctx, address: &str) -> Result<(), VaultError> {
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
                    return Err(VaultError::AllowlistEntryEmpty { index: i + 1 });
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
        Err(VaultError::NotAllowed {
            address: address.to_owned(),
        })
    }
}

/// `VAULT_TOKEN`, else `~/.vault-token`.
fn token(ctx: &Ctx) -> Result<(Zeroizing<String>, String), VaultError> {
    if let Some(t) = ctx.env.var("VAULT_TOKEN") {
        return Ok((Zeroizing::new(t), "VAULT_TOKEN".to_owned()));
    }
    let Some(path) = ctx.env.home().map(|h| h.join(".vault-token")) else {
        return Err(VaultError::NoToken(NoTokenFile::NoHome));
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            Ok((Zeroizing::new(t.trim().to_owned()), path.display().to_string()))
        }
        Ok(_) => Err(VaultError::NoToken(NoTokenFile::Empty { path })),
        Err(e) => Err(VaultError::NoToken(NoTokenFile::Unreadable {
            path,
            source: Arc::new(e),
        })),
    }
}

/// A client trusting only `VAULT_CACERT`'s certificates, if it is set.
fn ca_client(ctx: &Ctx) -> Result<Option<Http>, VaultError> {
    let Some(path) = ctx.env.var("VAULT_CACERT") else {
        return Ok(None);
    };
    let pem = std::fs::read(&path).map_err(|e| VaultError::CaCertUnreadable {
        path: path.clone(),
        source: Arc::new(e),
    })?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(VaultError::CaCertEmpty { path });
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
) -> VaultError {
    let v = reply.json();
    let errors = v
        .get("errors")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .unwrap_or_default();
    let head = format!("Vault answered HTTP {}: {errors}", reply.status)
        .trim_end_matches([' ', ':'])
        .to_owned();
    let text = match reply.status {
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
    };
    VaultError::Refused {
        status: reply.status,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::kms::http::{Transport, UrlError, UrlProblem};

    fn ctx(vars: &[(&str, &str)]) -> Ctx {
        Ctx::with_vars(vars)
    }

    fn open(ctx: &Ctx, address: &str, engine: &str, key: &str) -> VaultError {
        Vault::default()
            .decrypt(ctx, address, engine, key, "vault:v1:AAAA")
            .expect_err("refused")
    }

    #[test]
    fn an_address_outside_the_allowlist_is_refused_before_the_token_is_read() {
        let ctx = ctx(&[
            ("SOPS_HC_VAULT_ALLOWLIST", "https://vault.example.org"),
            ("VAULT_TOKEN", "hvs.secret-token"),
        ]);
        let err = open(&ctx, "http://127.0.0.1:1/", "transit", "k");
        assert!(
            matches!(&err, VaultError::NotAllowed { address } if address == "http://127.0.0.1:1"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "http://127.0.0.1:1 is not in SOPS_HC_VAULT_ALLOWLIST; the token was not sent \
             (add the address to the list if this Vault is yours)"
        );
        let ctx = self::ctx(&[("SOPS_HC_VAULT_ALLOWLIST", "https://a,,https://b")]);
        let err = open(&ctx, "https://a", "transit", "k");
        assert!(
            matches!(err, VaultError::AllowlistEntryEmpty { index: 2 }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "SOPS_HC_VAULT_ALLOWLIST's entry 2 is empty");
    }

    #[test]
    fn stanza_fields_that_would_change_the_endpoint_are_refused() {
        let ctx = ctx(&[("VAULT_TOKEN", "hvs.secret-token")]);
        let err = open(&ctx, "http://127.0.0.1:1", "transit", "../sys/k");
        assert!(matches!(err, VaultError::NotPlainPath { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            r#"engine_path "transit" or key_name "../sys/k" is not a plain Vault path"#
        );
        let err = open(&ctx, "", "transit", "k");
        assert!(matches!(err, VaultError::NoAddress), "{err:?}");
    }

    #[test]
    fn a_missing_token_and_an_unreachable_vault_are_told_apart() {
        let err = open(&ctx(&[]), "http://127.0.0.1:1", "transit", "k");
        assert!(matches!(err, VaultError::NoToken(NoTokenFile::NoHome)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "no Vault token: VAULT_TOKEN is unset and there is no HOME for ~/.vault-token"
        );
        let home = tempfile::tempdir().unwrap();
        let ctx = ctx(&[("HOME", home.path().to_str().unwrap())]);
        let err = open(&ctx, "http://127.0.0.1:1", "transit", "k");
        assert!(
            matches!(&err, VaultError::NoToken(NoTokenFile::Unreadable { path, .. }) if path.ends_with(".vault-token")),
            "{err:?}"
        );
        assert!(err.to_string().contains("cannot be read"), "{err}");

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ctx = self::ctx(&[("VAULT_TOKEN", "hvs.secret-token")]);
        let err = open(&ctx, &format!("http://127.0.0.1:{port}"), "transit", "k");
        assert!(
            matches!(
                &err,
                VaultError::Http(HttpError::Transport {
                    failure: Transport::ConnectionRefused,
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("Vault: 127.0.0.1:{port}: connection refused")
        );
        assert!(!err.to_string().contains("secret-token"));
        let err = open(&ctx, "http://user:pw@127.0.0.1:1", "transit", "k");
        assert!(
            matches!(
                &err,
                VaultError::Http(HttpError::Url(UrlError {
                    problem: UrlProblem::UserInformation,
                    ..
                }))
            ),
            "{err:?}"
        );
    }
}
