//! Azure Key Vault (`azure_kv` stanzas): `POST
//! {vault_url}/keys/{name}/{version}/decrypt?api-version=7.4` with
//! `{"alg": "RSA-OAEP-256", "value": <base64url ciphertext>}`, the operation
//! sops's Go SDK calls; the answer's `value` is the base64url data key.
//!
//! The token's scope follows the vault's cloud (`https://vault.azure.net/.default`
//! for `*.vault.azure.net`, and so on); for any other host it is learned from
//! Key Vault's `WWW-Authenticate` challenge, as the SDKs do, and, as they do,
//! only when the challenge's resource is the vault's own domain (the vault's
//! host is that host or ends with `.` and it): a host must not be able to
//! ask for a token to another service. A bearer token only travels over
//! HTTPS (plain `http` is allowed for loopback hosts, for tests).
//!
//! Credentials, in the order of azidentity's `DefaultAzureCredential` (what
//! sops uses): a client secret (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//! `AZURE_CLIENT_SECRET`; `AZURE_AUTHORITY_HOST`), workload identity
//! (`AZURE_FEDERATED_TOKEN_FILE`), managed identity (App Service's
//! `IDENTITY_ENDPOINT`/`IDENTITY_HEADER`, else the instance metadata service,
//! whose address `AZURE_POD_IDENTITY_AUTHORITY_HOST` overrides; `AZURE_CLIENT_ID`
//! picks a user-assigned identity), then the Azure CLI (`az account get-access-token`).

use std::collections::HashMap;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{Body, HttpError, OAuthError, Reply, Target, UrlError, host_of};
use super::{Ctx, json_str};

/// Why an `azure_kv` stanza was not opened. Never holds a token, a client
/// secret or the plaintext.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AzureError {
    /// The stanza's `enc` does not decode.
    #[error("the stanza's ciphertext is not base64url: {0}")]
    CiphertextNotBase64url(#[source] base64::DecodeError),
    /// A URL a token or client credential would go to is refused (the
    /// stanza's vault URL, or `AZURE_AUTHORITY_HOST`).
    #[error("{what} {error}")]
    BadUrl {
        /// `Key Vault` or `AZURE_AUTHORITY_HOST`.
        what: &'static str,
        /// What is wrong with it.
        #[source]
        error: UrlError,
    },
    /// Plain `http` to another host than this machine: credentials only travel over TLS.
    #[error("{what} {host} is not https: credentials are only sent over TLS")]
    NotHttps {
        /// `Key Vault` or `AZURE_AUTHORITY_HOST`.
        what: &'static str,
        /// `host[:port]`.
        host: String,
    },
    /// No answer from an Azure endpoint, or its URL is refused.
    #[error("{endpoint} {source}")]
    Http {
        /// Which endpoint.
        endpoint: AzureEndpoint,
        /// Why.
        source: HttpError,
    },
    /// A vault outside Azure's known clouds named no token scope it may have.
    #[error("Key Vault {host} answered HTTP {status} without a usable token scope: {problem}")]
    UnusableChallenge {
        /// The vault's `host[:port]`.
        host: String,
        /// The HTTP status of the unauthenticated request.
        status: u16,
        /// What is wrong with its challenge.
        #[source]
        problem: ChallengeProblem,
    },
    /// `DefaultAzureCredential`'s chain found nothing.
    #[error(
        "no Azure credentials: AZURE_CLIENT_SECRET and AZURE_FEDERATED_TOKEN_FILE are unset; \
             managed identity: {managed_identity} (not on Azure, or no network yet?); Azure CLI: {cli}"
    )]
    NoCredentials {
        /// Why managed identity gave no token.
        #[source]
        managed_identity: Box<AzureError>,
        /// Why the Azure CLI gave none.
        cli: CliProblem,
    },
    /// `AZURE_FEDERATED_TOKEN_FILE` cannot be read.
    #[error("AZURE_FEDERATED_TOKEN_FILE {file}: {source}")]
    FederatedTokenFile {
        /// The file.
        file: String,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// A token endpoint or managed identity gave no access token.
    #[error("{what} gave no token: HTTP {status} {why}")]
    TokenRefused {
        /// The credential asked (`the client secret of application ...`).
        what: String,
        /// The HTTP status.
        status: u16,
        /// The endpoint's OAuth error.
        #[source]
        why: OAuthError,
    },
    /// Key Vault answered with an error: its own words, then what to do.
    #[error("{text}")]
    Refused {
        /// The HTTP status (403: no role or access policy; 404: no such key).
        status: u16,
        /// Key Vault's error code (`Forbidden`, `KeyNotFound`).
        code: String,
        /// The whole message.
        text: String,
    },
    /// A 2xx answer without a `value`.
    #[error("Key Vault answered without a value")]
    NoValue,
    /// A value that does not decode.
    #[error("Key Vault answered with a value that is not base64url")]
    ValueNotBase64url,
}

/// An Azure endpoint, as [`AzureError::Http`] names it before the failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureEndpoint {
    /// The vault itself.
    KeyVault,
    /// Microsoft Entra's token endpoint (client secret, workload identity).
    Entra,
    /// App Service's `IDENTITY_ENDPOINT`.
    IdentityEndpoint,
    /// The instance metadata service (managed identity).
    InstanceMetadata,
}

impl std::fmt::Display for AzureEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AzureEndpoint::KeyVault => "Key Vault:",
            AzureEndpoint::Entra => "Microsoft Entra token endpoint",
            AzureEndpoint::IdentityEndpoint => "IDENTITY_ENDPOINT",
            AzureEndpoint::InstanceMetadata => "the instance metadata service",
        })
    }
}

/// Why a vault's `WWW-Authenticate` challenge gives no token scope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeProblem {
    /// No `WWW-Authenticate` header.
    #[error("it sent no WWW-Authenticate challenge")]
    NoChallenge,
    /// No Bearer challenge, or a malformed or ambiguous one.
    #[error("its WWW-Authenticate header holds no (well-formed) Bearer challenge")]
    NoBearer,
    /// A Bearer challenge without `scope` or `resource`.
    #[error("its Bearer challenge names no scope or resource")]
    NoScope,
    /// A scope that is not exactly one URL.
    #[error("its Bearer challenge names a scope that is not one URL")]
    NotOneUrl,
    /// A token to another service than the vault's: refused.
    #[error("its challenge asks for a token to {host}, which is not the vault's domain; refused")]
    ForeignDomain {
        /// The host the scope names.
        host: String,
    },
}

/// Why the Azure CLI gave no token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CliProblem {
    /// It ran past the helper deadline.
    #[error("az did not finish within {secs} s")]
    TimedOut {
        /// The deadline.
        secs: u64,
    },
    /// It could not be started (not installed) or waited for.
    #[error("az cannot run ({0})")]
    CannotRun(#[source] Arc<std::io::Error>),
    /// It failed (most often: nobody is signed in).
    #[error("az account get-access-token failed ({0}; run `az login`?)")]
    Failed(ExitStatus),
    /// Its output holds no token.
    #[error("az printed no JSON with an accessToken")]
    NoToken,
}

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
    tokens: Mutex<HashMap<String, Result<Token, AzureError>>>,
    scopes: Mutex<HashMap<String, String>>,
}

/// The token scope of a vault in one of Azure's clouds, by its host.
fn known_scope(host: &str) -> Option<String> {
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

/// A URL a bearer token or a client credential goes to: HTTPS, or plain
/// HTTP to this machine (127.0.0.0/8, ::1, localhost; tests).
fn credential_target(url: &str, what: &'static str) -> Result<Target, AzureError> {
    let target = Target::parse(url).map_err(|error| AzureError::BadUrl { what, error })?;
    if target.scheme != "https" && !target.is_loopback() {
        return Err(AzureError::NotHttps {
            what,
            host: host_of(url).to_owned(),
        });
    }
    Ok(target)
}

/// The parameters of the `Bearer` challenge in a `WWW-Authenticate` value
/// (RFC 9110 11.6.1: `Scheme name=token, name="quoted \"string\"", ...`,
/// several challenges separated by commas), with lower-case names. `None`
/// when there is no Bearer challenge, or the value is malformed or
/// ambiguous (two Bearer challenges, a parameter given twice).
fn bearer_params(header: &str) -> Option<HashMap<String, String>> {
    let b = header.as_bytes();
    let mut i = 0;
    let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
    let skip = |i: &mut usize, set: &[u8]| {
        while *i < b.len() && set.contains(&b[*i]) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && tchar(b[*i]) {
            *i += 1;
        }
        &header[start..*i]
    };
    let mut bearer: Option<HashMap<String, String>> = None;
    let mut in_bearer = false;
    loop {
        skip(&mut i, b" \t,");
        if i >= b.len() {
            break;
        }
        let name = token(&mut i);
        if name.is_empty() {
            return None;
        }
        skip(&mut i, b" \t");
        if i < b.len() && b[i] == b'=' {
            i += 1;
            skip(&mut i, b" \t");
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                loop {
                    let (&c, rest) = b.get(i..)?.split_first()?;
                    i += 1;
                    match c {
                        b'"' => break,
                        b'\\' => {
                            let escaped = *rest.first().filter(|e| e.is_ascii())?;
                            v.push(char::from(escaped));
                            i += 1;
                        }
                        _ => {
                            // Multi-byte UTF-8 is copied as it is.
                            let len = header[i - 1..].chars().next()?.len_utf8();
                            v.push_str(&header[i - 1..i - 1 + len]);
                            i += len - 1;
                        }
                    }
                }
                v
            } else {
                // A token, or the `=` padding of a token68 (`Negotiate abc==`).
                let v = token(&mut i).to_owned();
                skip(&mut i, b"=");
                v
            };
            if in_bearer {
                let params = bearer.as_mut().expect("in a Bearer challenge");
                if params.insert(name.to_ascii_lowercase(), value).is_some() {
                    return None;
                }
            }
        } else {
            // A new challenge's scheme (perhaps followed by a token68, which
            // the next round reads as a name without `=`: harmless).
            in_bearer = name.eq_ignore_ascii_case("bearer");
            if in_bearer {
                if bearer.is_some() {
                    return None;
                }
                bearer = Some(HashMap::new());
            }
        }
    }
    bearer
}

/// The token scope a Key Vault challenge names (`scope="..."`, else
/// `resource="..."` + `/.default`), accepted only when it belongs to the
/// vault's own domain: `vault_host` is the scope's host or ends with `.`
/// and it, as the Azure SDKs' challenge policies check.
fn challenge_scope(header: &str, vault_host: &str) -> Result<String, ChallengeProblem> {
    let params = bearer_params(header).ok_or(ChallengeProblem::NoBearer)?;
    let scope = match (params.get("scope"), params.get("resource")) {
        (Some(scope), _) => scope.clone(),
        (None, Some(resource)) => format!("{}/.default", resource.trim_end_matches('/')),
        (None, None) => return Err(ChallengeProblem::NoScope),
    };
    let host = match Target::parse(&scope) {
        Ok(t) if !scope.contains(char::is_whitespace) => t.host,
        _ => return Err(ChallengeProblem::NotOneUrl),
    };
    if vault_host == host || vault_host.ends_with(&format!(".{host}")) {
        Ok(scope)
    } else {
        Err(ChallengeProblem::ForeignDomain { host })
    }
}

/// Key Vault's answer to a decryption.
#[derive(Deserialize)]
struct Decrypted {
    /// The data key, base64url.
    value: Zeroizing<String>,
}

/// What `az account get-access-token --output json` prints.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CliToken {
    access_token: Zeroizing<String>,
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
    ) -> Result<(Zeroizing<Vec<u8>>, String), AzureError> {
        let ciphertext = URL_SAFE_NO_PAD
            .decode(enc.trim().trim_end_matches('='))
            .map_err(AzureError::CiphertextNotBase64url)?;
        let vault = vault_url.trim_end_matches('/');
        let url = format!("{vault}/keys/{name}/{version}/decrypt?api-version={API_VERSION}");
        // The host the request really goes to, parsed from the URL as sent.
        let target = credential_target(&url, "Key Vault")?;
        let body = json!({ "alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode(&ciphertext) });
        let host = host_of(&url).to_owned();

        let scope = match known_scope(&target.host)
            .or_else(|| self.scopes.lock().expect("not poisoned").get(&host).cloned())
        {
            Some(s) => s,
            None => {
                // Ask without a token; Key Vault answers 401 with the scope to use.
                let reply = ctx
                    .http
                    .send("POST", &url, &[], Body::Json(&body))
                    .map_err(|source| AzureError::Http {
                        endpoint: AzureEndpoint::KeyVault,
                        source,
                    })?;
                let scope = reply
                    .www_authenticate
                    .as_deref()
                    .ok_or(ChallengeProblem::NoChallenge)
                    .and_then(|h| challenge_scope(h, &target.host))
                    .map_err(|problem| AzureError::UnusableChallenge {
                        host: host.clone(),
                        status: reply.status,
                        problem,
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
            .map_err(|source| AzureError::Http {
                endpoint: AzureEndpoint::KeyVault,
                source,
            })?;
        if !reply.ok() {
            return Err(vault_error(&reply, &token, vault, name));
        }
        let answer = reply.parse::<Decrypted>().ok_or(AzureError::NoValue)?;
        let key = URL_SAFE_NO_PAD
            .decode(answer.value.trim_end_matches('='))
            .map(Zeroizing::new)
            .map_err(|_| AzureError::ValueNotBase64url)?;
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
fn vault_error(reply: &Reply, token: &Token, vault: &str, name: &str) -> AzureError {
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
    let text = match reply.status {
        403 => format!(
            "{head}; {} needs the Key Vault Crypto User role (data action \
             Microsoft.KeyVault/vaults/keys/decrypt/action) on {vault}/keys/{name}, or an access policy \
             with the key permission decrypt",
            principal(token)
        ),
        401 => format!("{head}; the token of {} was not accepted", principal(token)),
        404 => format!("{head}; no such key or key version"),
        _ => head,
    };
    AzureError::Refused {
        status: reply.status,
        code: code.to_owned(),
        text,
    }
}

/// The `access_token` of a Microsoft Entra token endpoint or managed identity answer.
fn access_token(reply: &Reply, what: &str) -> Result<Zeroizing<String>, AzureError> {
    reply.oauth_token().map_err(|why| AzureError::TokenRefused {
        what: what.to_owned(),
        status: reply.status,
        why,
    })
}

/// Entra's client-credentials grant, the application proving itself with
/// `proof` (a client secret or a federated assertion).
fn client_credentials(
    ctx: &Ctx,
    authority: &str,
    tenant: &str,
    client: &str,
    proof: &[(&str, &str)],
    scope: &str,
    what: String,
) -> Result<Token, AzureError> {
    let mut form = vec![("grant_type", "client_credentials"), ("client_id", client)];
    form.extend_from_slice(proof);
    form.push(("scope", scope));
    let reply = ctx
        .http
        .send(
            "POST",
            &format!("{authority}/{tenant}/oauth2/v2.0/token"),
            &[],
            Body::Form(&form),
        )
        .map_err(|source| AzureError::Http {
            endpoint: AzureEndpoint::Entra,
            source,
        })?;
    Ok(Token {
        bearer: access_token(&reply, &what)?,
        source: what,
    })
}

/// The credential chain of `DefaultAzureCredential`, for one scope.
fn token(ctx: &Ctx, scope: &str) -> Result<Token, AzureError> {
    let env = |k: &str| ctx.env.var(k);
    let authority = env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| AUTHORITY.to_owned());
    let authority = authority.trim_end_matches('/');
    // The client secret or assertion goes there: TLS only (as azidentity).
    let authority_ok = || credential_target(authority, "AZURE_AUTHORITY_HOST").map(drop);
    if let (Some(tenant), Some(client), Some(secret)) = (
        env("AZURE_TENANT_ID"),
        env("AZURE_CLIENT_ID"),
        env("AZURE_CLIENT_SECRET"),
    ) {
        let secret = Zeroizing::new(secret);
        authority_ok()?;
        let what = format!("the client secret of application {client} (AZURE_CLIENT_SECRET)");
        return client_credentials(
            ctx,
            authority,
            &tenant,
            &client,
            &[("client_secret", &secret)],
            scope,
            what,
        );
    }
    if let (Some(tenant), Some(client), Some(file)) = (
        env("AZURE_TENANT_ID"),
        env("AZURE_CLIENT_ID"),
        env("AZURE_FEDERATED_TOKEN_FILE"),
    ) {
        authority_ok()?;
        let assertion = std::fs::read_to_string(&file).map(Zeroizing::new).map_err(|e| {
            AzureError::FederatedTokenFile {
                file: file.clone(),
                source: Arc::new(e),
            }
        })?;
        let what = format!("workload identity of application {client} ({file})");
        let proof = [
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.trim()),
        ];
        return client_credentials(ctx, authority, &tenant, &client, &proof, scope, what);
    }
    let resource = scope.trim_end_matches("/.default");
    let managed = managed_identity(ctx, resource);
    let managed_err = match managed {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    azure_cli(ctx, resource).map_err(|cli| AzureError::NoCredentials {
        managed_identity: Box::new(managed_err),
        cli,
    })
}

/// App Service's identity endpoint, else the instance metadata service.
fn managed_identity(ctx: &Ctx, resource: &str) -> Result<Token, AzureError> {
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
            .map_err(|source| AzureError::Http {
                endpoint: AzureEndpoint::IdentityEndpoint,
                source,
            })?;
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
        .map_err(|source| AzureError::Http {
            endpoint: AzureEndpoint::InstanceMetadata,
            source,
        })?;
    let what = format!("{who} from the instance metadata service {}", host_of(&host));
    Ok(Token {
        bearer: access_token(&reply, &what)?,
        source: what,
    })
}

/// `az account get-access-token`, bounded in time like the HTTP sources.
fn azure_cli(ctx: &Ctx, resource: &str) -> Result<Token, CliProblem> {
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
    let out = crate::process::run(&mut cmd, b"", super::HELPER_TIMEOUT).map_err(|e| match e {
        crate::process::RunError::TimedOut(t) => CliProblem::TimedOut { secs: t.as_secs() },
        crate::process::RunError::Spawn(e) | crate::process::RunError::Wait(e) => {
            CliProblem::CannotRun(Arc::new(e))
        }
    })?;
    if !out.status.success() {
        return Err(CliProblem::Failed(out.status));
    }
    let token: CliToken = serde_json::from_slice(&out.stdout).map_err(|_| CliProblem::NoToken)?;
    Ok(Token {
        bearer: token.access_token,
        source: "the Azure CLI's signed-in account".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::kms::http::{Transport, UrlProblem, closed_port};

    fn ctx(vars: &[(&str, &str)]) -> Ctx {
        Ctx::with_vars(vars)
    }

    fn refused(ctx: &Ctx, vault_url: &str) -> AzureError {
        Azure::default()
            .decrypt(ctx, vault_url, "k", "v1", "AAEC")
            .expect_err("refused")
    }

    #[test]
    fn no_credentials_anywhere_is_its_own_refusal() {
        let port = closed_port();
        let imds = format!("http://127.0.0.1:{port}");
        let err = refused(
            &ctx(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds)]),
            "https://acme.vault.azure.net",
        );
        let AzureError::NoCredentials { managed_identity, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(
            matches!(
                &**managed_identity,
                AzureError::Http {
                    endpoint: AzureEndpoint::InstanceMetadata,
                    source: HttpError::Transport {
                        failure: Transport::ConnectionRefused,
                        ..
                    }
                }
            ),
            "{managed_identity:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "no Azure credentials: AZURE_CLIENT_SECRET and AZURE_FEDERATED_TOKEN_FILE are unset; \
                 managed identity: the instance metadata service 127.0.0.1:{port}: connection refused \
                 (not on Azure, or no network yet?); Azure CLI: "
            )),
            "{text}"
        );
    }

    #[test]
    fn credentials_are_not_sent_to_plain_http_or_user_information() {
        let err = refused(&ctx(&[]), "http://acme.vault.azure.net");
        assert!(
            matches!(&err, AzureError::NotHttps { what: "Key Vault", host } if host == "acme.vault.azure.net"),
            "{err:?}"
        );
        let err = refused(&ctx(&[]), "http://acme.vault.azure.net:1@127.0.0.1:1");
        assert!(
            matches!(
                err,
                AzureError::BadUrl {
                    what: "Key Vault",
                    error: UrlError {
                        problem: UrlProblem::UserInformation,
                        ..
                    }
                }
            ),
            "{err:?}"
        );
        let err = refused(
            &ctx(&[
                ("AZURE_TENANT_ID", "t"),
                ("AZURE_CLIENT_ID", "c"),
                ("AZURE_CLIENT_SECRET", "very-secret-value"),
                ("AZURE_AUTHORITY_HOST", "http://login.example.com"),
            ]),
            "https://acme.vault.azure.net",
        );
        assert!(
            matches!(
                err,
                AzureError::NotHttps {
                    what: "AZURE_AUTHORITY_HOST",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "AZURE_AUTHORITY_HOST login.example.com is not https: credentials are only sent over TLS"
        );
        assert!(!format!("{err:?}").contains("very-secret-value"));
    }

    #[test]
    fn a_vault_asking_for_another_services_token_is_refused_by_variant() {
        let addr = super::super::http::serve(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\
              WWW-Authenticate: Bearer resource=\"https://management.azure.com\"\r\n\r\n"
                .to_vec(),
        );
        let err = refused(&ctx(&[]), &format!("http://{addr}"));
        assert!(
            matches!(
                &err,
                AzureError::UnusableChallenge {
                    status: 401,
                    problem: ChallengeProblem::ForeignDomain { host },
                    ..
                } if host == "management.azure.com"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "Key Vault {addr} answered HTTP 401 without a usable token scope: its challenge asks for a \
                 token to management.azure.com, which is not the vault's domain; refused"
            )
        );
    }

    #[test]
    fn scopes_follow_the_vaults_cloud() {
        assert_eq!(
            known_scope("acme.vault.azure.net").as_deref(),
            Some("https://vault.azure.net/.default")
        );
        assert_eq!(
            known_scope("acme.vault.azure.cn").as_deref(),
            Some("https://vault.azure.cn/.default")
        );
        assert_eq!(
            known_scope("acme.managedhsm.azure.net").as_deref(),
            Some("https://managedhsm.azure.net/.default")
        );
        assert_eq!(known_scope("127.0.0.1"), None);
        assert_eq!(known_scope("vault.azure.net.evil.com"), None);
        assert_eq!(known_scope("evilvault.azure.net"), None);
    }

    #[test]
    fn the_known_scope_is_that_of_the_host_the_request_goes_to() {
        // The PoC: user information that looks like a vault host.
        let err = credential_target(
            "http://acme.vault.azure.net:1@127.0.0.1:18091/keys/k/v",
            "Key Vault",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("user information"), "{err}");
        let t = credential_target("https://acme.vault.azure.net/keys/k/v", "Key Vault").unwrap();
        assert_eq!(
            known_scope(&t.host).as_deref(),
            Some("https://vault.azure.net/.default")
        );
    }

    #[test]
    fn credentials_go_over_https_or_to_loopback_only() {
        for ok in [
            "https://acme.vault.azure.net",
            "https://vault.example.com:8443/x",
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            assert!(credential_target(ok, "Key Vault").is_ok(), "{ok}");
        }
        for bad in [
            "http://acme.vault.azure.net",
            "http://10.0.0.1",
            "http://169.254.169.254",
            "http://localhost.evil.com",
            "ftp://acme.vault.azure.net",
        ] {
            let err = credential_target(bad, "Key Vault").err().unwrap().to_string();
            assert!(err.starts_with("Key Vault "), "{err}");
        }
        let err = credential_target("http://acme.vault.azure.net/keys", "Key Vault")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not https"), "{err}");
    }

    #[test]
    fn challenges_name_the_scope() {
        let h = r#"Bearer authorization="https://login.microsoftonline.com/72f988bf", resource="https://vault.azure.net""#;
        assert_eq!(
            challenge_scope(h, "acme.vault.azure.net").as_deref(),
            Ok("https://vault.azure.net/.default")
        );
        let h = r#"Bearer authorization="https://login.microsoftonline.com/t", scope="https://vault.azure.net/.default""#;
        assert_eq!(
            challenge_scope(h, "acme.vault.azure.net").as_deref(),
            Ok("https://vault.azure.net/.default")
        );
        // The vault's own host, as a loopback test vault names itself.
        let h = r#"Bearer resource="http://127.0.0.1:8443""#;
        assert_eq!(
            challenge_scope(h, "127.0.0.1").as_deref(),
            Ok("http://127.0.0.1:8443/.default")
        );
        // Scheme and names in any case; other challenges around it.
        let h = r#"Basic realm="x", BEARER Authorization="https://login/t",Resource="https://vault.azure.net/" , Negotiate abc=="#;
        assert_eq!(
            challenge_scope(h, "a.vault.azure.net").as_deref(),
            Ok("https://vault.azure.net/.default")
        );
    }

    #[test]
    fn a_challenge_for_another_service_is_refused() {
        // The PoC: a host asks for an Azure Resource Manager token.
        let h = r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://management.azure.com""#;
        let err = challenge_scope(h, "127.0.0.1").unwrap_err().to_string();
        assert!(
            err.contains("management.azure.com, which is not the vault's domain"),
            "{err}"
        );
        for (header, vault) in [
            (r#"Bearer resource="https://vault.azure.net""#, "127.0.0.1"),
            (
                r#"Bearer resource="https://vault.azure.net""#,
                "evilvault.azure.net",
            ),
            (
                r#"Bearer resource="https://vault.azure.net""#,
                "vault.azure.net.evil.com",
            ),
            (
                r#"Bearer scope="https://management.azure.com/.default""#,
                "a.vault.azure.net",
            ),
            // scope wins over resource, as in the SDKs.
            (
                r#"Bearer scope="https://graph.microsoft.com/.default", resource="https://vault.azure.net""#,
                "a.vault.azure.net",
            ),
        ] {
            assert!(challenge_scope(header, vault).is_err(), "{header} for {vault}");
        }
    }

    #[test]
    fn challenges_are_parsed_not_searched() {
        // `find("scope=\"")` matched inside another parameter's name or value.
        let h =
            r#"Bearer xyz_scope="https://vault.azure.net/.default", resource="https://management.azure.com""#;
        assert!(challenge_scope(h, "a.vault.azure.net").is_err());
        let h = r#"Bearer authorization="https://login/t?scope=\"https://vault.azure.net\"""#;
        assert_eq!(
            challenge_scope(h, "a.vault.azure.net").unwrap_err().to_string(),
            "its Bearer challenge names no scope or resource"
        );
        // Only the Bearer challenge's parameters count.
        let h = r#"PoP resource="https://vault.azure.net", Bearer resource="https://management.azure.com""#;
        assert!(challenge_scope(h, "a.vault.azure.net").is_err());
        let h = r#"PoP resource="https://vault.azure.net""#;
        assert!(challenge_scope(h, "a.vault.azure.net").is_err());
        // Ambiguous or malformed: refused.
        for h in [
            r#"Bearer resource="https://vault.azure.net", resource="https://management.azure.com""#,
            r#"Bearer resource="https://vault.azure.net", Bearer resource="https://vault.azure.net""#,
            r#"Bearer resource="https://vault.azure.net"#,
            r#"Bearer resource=https://vault.azure.net"#,
            r#"Bearer scope="https://vault.azure.net/.default https://management.azure.com/.default""#,
            r#"Bearer resource="vault.azure.net""#,
            "",
        ] {
            assert!(challenge_scope(h, "a.vault.azure.net").is_err(), "{h}");
        }
        // Escapes in quoted strings.
        let params = bearer_params(r#"Bearer error_description="say \"hi\" \\ é", resource="x""#).unwrap();
        assert_eq!(params["error_description"], r#"say "hi" \ é"#);
        assert_eq!(params["resource"], "x");
    }

    #[test]
    fn answers_are_read_into_zeroizing_strings() {
        let reply = Reply {
            status: 200,
            body: Zeroizing::new(r#"{"kid": "k", "value": "AAEC"}"#.to_owned()),
            www_authenticate: None,
        };
        assert_eq!(reply.parse::<Decrypted>().unwrap().value.as_str(), "AAEC");
        let reply = Reply {
            status: 200,
            body: Zeroizing::new(r#"{"token_type": "Bearer", "access_token": "ey.x.y"}"#.to_owned()),
            www_authenticate: None,
        };
        assert_eq!(access_token(&reply, "t").unwrap().as_str(), "ey.x.y");
        let reply = Reply {
            status: 200,
            body: Zeroizing::new(r#"{"access_token": 5}"#.to_owned()),
            www_authenticate: None,
        };
        assert!(access_token(&reply, "t").is_err());
    }
}
