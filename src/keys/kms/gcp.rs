//! Google Cloud KMS (`gcp_kms` stanzas): `POST
//! https://cloudkms.googleapis.com/v1/{resource_id}:decrypt` with the
//! stanza's ciphertext, authorised by an OAuth access token.
//!
//! The token comes from the first credential found, in this order:
//! 1. sops's own variables: `GOOGLE_CREDENTIALS` (a credentials file's path or
//!    its JSON) and `GOOGLE_OAUTH_ACCESS_TOKEN`, so a host set up for sops works;
//! 2. Application Default Credentials in Google's documented order:
//!    `GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's user credentials file
//!    (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`, `application_default_credentials.json`),
//!    then the Compute Engine metadata server (`GCE_METADATA_HOST` overrides
//!    its address, as in Google's client libraries).
//!
//! A credentials file of type `service_account` is exchanged for a token with
//! a self-signed RS256 JWT at its `token_uri` (the `jwt-bearer` grant); one of
//! type `authorized_user` with its refresh token; one of type
//! `external_account` (workload identity federation) with a file- or
//! URL-sourced subject token at the Security Token Service, then, if it says
//! so, by impersonating a service account. AWS- and executable-sourced
//! federation and `impersonated_service_account` files are refused with a
//! message saying so.
//!
//! Google's Rust client crates (`google-cloud-kms-v1`) bring tokio, hyper,
//! reqwest, tonic and prost (about 240 crates) for one REST call; this module
//! makes that call and the token flows itself, following Google's documents.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{Body, Reply};
use super::{Ctx, json_str};

/// The scope sops's Go client asks for, narrowed to Cloud KMS.
const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";
/// Google's OAuth token endpoint, when a credentials file names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's link-local address (Google's clients use the IP,
/// not `metadata.google.internal`, so a boot-time DNS problem cannot hide it).
const METADATA_IP: &str = "169.254.169.254";
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const EMAIL_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/email";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The role that holds `cloudkms.cryptoKeyVersions.useToDecrypt`.
const DECRYPTER_ROLE: &str = "roles/cloudkms.cryptoKeyDecrypter";

/// An access token and who it speaks for.
struct Token {
    bearer: Zeroizing<String>,
    /// `serviceAccount:sa@project.iam.gserviceaccount.com`, or a description.
    principal: Principal,
    /// How it was obtained, for the log: `service account key from GOOGLE_APPLICATION_CREDENTIALS`.
    flow: String,
    /// `quota_project_id` of a user credentials file (`x-goog-user-project`).
    quota_project: Option<String>,
}

/// Who the token speaks for, as IAM names it.
enum Principal {
    Known(String),
    /// The metadata server's default service account; its email is asked for on a 403.
    MetadataDefault,
    Described(String),
}

/// Per-run state: the token, fetched once (and a failure remembered once).
#[derive(Default)]
pub(super) struct Gcp {
    token: OnceLock<Result<Token, String>>,
}

impl Gcp {
    /// Decrypts one stanza's ciphertext; `Ok` carries the share and how the token was obtained.
    pub fn decrypt(
        &self,
        ctx: &Ctx,
        resource_id: &str,
        enc: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, String), String> {
        if !valid_resource_id(resource_id) {
            return Err(format!(
                "{resource_id:?} is not a crypto key name (projects/P/locations/L/keyRings/R/cryptoKeys/K)"
            ));
        }
        let ciphertext = STANDARD
            .decode(enc.trim())
            .map_err(|e| format!("the stanza's ciphertext is not base64: {e}"))?;
        let token = self
            .token
            .get_or_init(|| token(ctx))
            .as_ref()
            .map_err(Clone::clone)?;
        let url = format!("{}/v1/{resource_id}:decrypt", kms_base(ctx));
        let auth = Zeroizing::new(format!("Bearer {}", token.bearer.as_str()));
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(p) = &token.quota_project {
            headers.push(("x-goog-user-project", p));
        }
        let body = json!({ "ciphertext": STANDARD.encode(&ciphertext) });
        let reply = ctx
            .http
            .send("POST", &url, &headers, Body::Json(&body))
            .map_err(|e| format!("Cloud KMS: {e}"))?;
        if !reply.ok() {
            return Err(kms_error(ctx, &reply, token, resource_id));
        }
        #[derive(serde::Deserialize)]
        struct Decrypted {
            plaintext: Zeroizing<String>,
        }
        let answer: Decrypted = reply.parse().ok_or("Cloud KMS answered without a plaintext")?;
        Ok((
            super::decode_share(&answer.plaintext)
                .ok_or("Cloud KMS answered with a plaintext that is not base64")?,
            token.flow.clone(),
        ))
    }
}

/// `projects/P/locations/L/keyRings/R/cryptoKeys/K`, as sops checks it.
fn valid_resource_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    super::plain_url_path(id)
        && parts.len() == 8
        && ["projects", "locations", "keyRings", "cryptoKeys"]
            .iter()
            .enumerate()
            .all(|(i, k)| parts[2 * i] == *k && !parts[2 * i + 1].is_empty())
}

/// The Cloud KMS API base: `SOPS_GCP_KMS_ENDPOINT` (sops's variable for
/// sovereign clouds; a host or a URL), `SOPS_GCP_KMS_UNIVERSE_DOMAIN`, or Google's.
fn kms_base(ctx: &Ctx) -> String {
    if let Some(e) = ctx.env.var("SOPS_GCP_KMS_ENDPOINT") {
        let e = e.trim_end_matches('/');
        return if e.contains("://") {
            e.to_owned()
        } else {
            format!("https://{}", e.trim_end_matches(":443"))
        };
    }
    let domain = ctx
        .env
        .var("SOPS_GCP_KMS_UNIVERSE_DOMAIN")
        .unwrap_or_else(|| "googleapis.com".to_owned());
    format!("https://cloudkms.{domain}")
}

/// Finds credentials and turns them into an access token.
fn token(ctx: &Ctx) -> Result<Token, String> {
    if let Some(v) = ctx.env.var("GOOGLE_CREDENTIALS") {
        // sops: a path if such a file exists, else the JSON itself.
        let path = PathBuf::from(&v);
        return if path.is_file() {
            from_file(ctx, &path, "GOOGLE_CREDENTIALS")
        } else {
            from_json(ctx, &Zeroizing::new(v), "GOOGLE_CREDENTIALS")
        };
    }
    if let Some(t) = ctx.env.var("GOOGLE_OAUTH_ACCESS_TOKEN") {
        return Ok(Token {
            bearer: Zeroizing::new(t),
            principal: Principal::Described("the holder of GOOGLE_OAUTH_ACCESS_TOKEN".into()),
            flow: "access token from GOOGLE_OAUTH_ACCESS_TOKEN".into(),
            quota_project: None,
        });
    }
    if let Some(p) = ctx.env.var("GOOGLE_APPLICATION_CREDENTIALS") {
        return from_file(ctx, &PathBuf::from(p), "GOOGLE_APPLICATION_CREDENTIALS");
    }
    let well_known = gcloud_file(ctx);
    if let Some(f) = well_known.as_ref().filter(|f| f.is_file()) {
        return from_file(ctx, f, "gcloud's application default credentials");
    }
    metadata_token(ctx).map_err(|e| {
        format!(
            "no Google credentials: GOOGLE_APPLICATION_CREDENTIALS is unset, {} does not exist, and the \
             metadata server {e} (not on Google Compute Engine, or no network yet?)",
            well_known.map_or("gcloud's credentials file".to_owned(), |f| f
                .display()
                .to_string())
        )
    })
}

/// `$CLOUDSDK_CONFIG/application_default_credentials.json`, else under `~/.config/gcloud`.
fn gcloud_file(ctx: &Ctx) -> Option<PathBuf> {
    let dir = match ctx.env.var("CLOUDSDK_CONFIG") {
        Some(d) => PathBuf::from(d),
        None => ctx.env.home()?.join(".config/gcloud"),
    };
    Some(dir.join("application_default_credentials.json"))
}

fn from_file(ctx: &Ctx, path: &std::path::Path, origin: &str) -> Result<Token, String> {
    let text = std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| format!("{origin}: cannot read {}: {e}", path.display()))?;
    from_json(ctx, &text, &format!("{origin} ({})", path.display()))
}

/// A credentials file's JSON, by its `type`.
fn from_json(ctx: &Ctx, text: &str, origin: &str) -> Result<Token, String> {
    let creds: Value =
        serde_json::from_str(text).map_err(|_| format!("{origin} is not a JSON credentials file"))?;
    let field = |k: &str| {
        json_str(&creds, k)
            .map(str::to_owned)
            .ok_or_else(|| format!("{origin} has no {k:?}"))
    };
    match json_str(&creds, "type").unwrap_or_default() {
        "service_account" => service_account(ctx, &creds, origin, &field("client_email")?),
        "authorized_user" => authorized_user(ctx, &creds, origin),
        "external_account" => external_account(ctx, &creds, origin),
        other => Err(format!(
            "{origin} is a credential of type {other:?}, which this build does not support \
             (service_account, authorized_user and external_account are)"
        )),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The JWT-bearer grant (RFC 7523) Google documents for service accounts:
/// an RS256-signed assertion with `iss` = the account, `aud` = `token_uri`.
fn service_account(ctx: &Ctx, creds: &Value, origin: &str, email: &str) -> Result<Token, String> {
    let pem = Zeroizing::new(
        json_str(creds, "private_key")
            .ok_or_else(|| format!("{origin} has no \"private_key\""))?
            .to_owned(),
    );
    let token_uri = json_str(creds, "token_uri").unwrap_or(DEFAULT_TOKEN_URI);
    let iat = now();
    let mut header = json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(kid) = json_str(creds, "private_key_id") {
        header["kid"] = json!(kid);
    }
    let claims = json!({
        "iss": email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": iat,
        "exp": iat + 3600,
    });
    let assertion = sign_jwt(&header, &claims, &pem).map_err(|e| format!("{origin}: {e}"))?;
    let reply = ctx
        .http
        .send(
            "POST",
            token_uri,
            &[],
            Body::Form(&[("grant_type", JWT_BEARER), ("assertion", &assertion)]),
        )
        .map_err(|e| format!("token endpoint {e}"))?;
    let principal = format!("serviceAccount:{email}");
    Ok(Token {
        bearer: access_token(&reply, token_uri, &principal)?,
        principal: Principal::Known(principal),
        flow: format!("service account {email} from {origin}"),
        quota_project: None,
    })
}

/// `header.claims.signature`, RS256 with the account's PKCS#8 key.
fn sign_jwt(header: &Value, claims: &Value, pem: &str) -> Result<String, String> {
    let key = ureq::tls::PrivateKey::from_pem(pem.as_bytes())
        .map_err(|_| "its private_key is not a PEM private key".to_owned())?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(key.der())
        .map_err(|e| format!("its private_key is not a PKCS#8 RSA key: {e}"))?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "signing the token request failed".to_owned())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The refresh-token grant of a gcloud user credentials file.
fn authorized_user(ctx: &Ctx, creds: &Value, origin: &str) -> Result<Token, String> {
    let get = |k: &str| json_str(creds, k).ok_or_else(|| format!("{origin} has no {k:?}"));
    let (client_id, client_secret, refresh) =
        (get("client_id")?, get("client_secret")?, get("refresh_token")?);
    let token_uri = json_str(creds, "token_uri").unwrap_or(DEFAULT_TOKEN_URI);
    let reply = ctx
        .http
        .send(
            "POST",
            token_uri,
            &[],
            Body::Form(&[
                ("grant_type", "refresh_token"),
                ("client_id", client_id),
                ("client_secret", client_secret),
                ("refresh_token", refresh),
            ]),
        )
        .map_err(|e| format!("token endpoint {e}"))?;
    let principal = format!("the gcloud user of {origin}");
    Ok(Token {
        bearer: access_token(&reply, token_uri, &principal)?,
        principal: Principal::Described(principal),
        flow: format!("user credentials from {origin}"),
        quota_project: json_str(creds, "quota_project_id").map(str::to_owned),
    })
}

/// Workload identity federation (Google's AIP-4117): a subject token from
/// the `credential_source` (a file or a URL; text or JSON), exchanged at the
/// Security Token Service (`token_url`, RFC 8693), then, if
/// `service_account_impersonation_url` is set, traded for the service
/// account's token at the IAM Credentials API.
fn external_account(ctx: &Ctx, creds: &Value, origin: &str) -> Result<Token, String> {
    let get = |k: &str| json_str(creds, k).ok_or_else(|| format!("{origin} has no {k:?}"));
    let (audience, token_type, token_url) = (get("audience")?, get("subject_token_type")?, get("token_url")?);
    let source = creds
        .get("credential_source")
        .ok_or_else(|| format!("{origin} has no \"credential_source\""))?;
    let subject = subject_token(ctx, source, origin)?;
    let impersonate = json_str(creds, "service_account_impersonation_url");
    let scope = if impersonate.is_some() {
        "https://www.googleapis.com/auth/cloud-platform"
    } else {
        SCOPE
    };
    let options =
        json_str(creds, "workforce_pool_user_project").map(|p| json!({ "userProject": p }).to_string());
    let mut form = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("audience", audience),
        ("scope", scope),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("subject_token", subject.as_str()),
        ("subject_token_type", token_type),
    ];
    if let Some(o) = &options {
        form.push(("options", o));
    }
    let reply = ctx
        .http
        .send("POST", token_url, &[], Body::Form(&form))
        .map_err(|e| format!("Security Token Service {e}"))?;
    let federated = format!("the federated identity of {audience}");
    let sts_token = access_token(&reply, token_url, &federated)?;
    let Some(url) = impersonate else {
        return Ok(Token {
            bearer: sts_token,
            principal: Principal::Described(federated.clone()),
            flow: format!("{federated} from {origin}"),
            quota_project: None,
        });
    };
    // .../serviceAccounts/{email}:generateAccessToken
    let email = url
        .rsplit('/')
        .next()
        .and_then(|t| t.split(':').next())
        .unwrap_or("?")
        .to_owned();
    let auth = Zeroizing::new(format!("Bearer {}", sts_token.as_str()));
    let body = json!({ "scope": [scope], "lifetime": "3600s" });
    let reply = ctx
        .http
        .send(
            "POST",
            url,
            &[("Authorization", auth.as_str())],
            Body::Json(&body),
        )
        .map_err(|e| format!("IAM Credentials {e}"))?;
    let v = reply.json();
    let token = match json_str(&v, "accessToken") {
        Some(t) if reply.ok() => Zeroizing::new(t.to_owned()),
        _ => {
            let message = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
            return Err(format!(
                "IAM Credentials refused to let {federated} impersonate {email}: HTTP {} {message}; \
                 it needs roles/iam.workloadIdentityUser on that service account",
                reply.status
            ));
        }
    };
    Ok(Token {
        bearer: token,
        principal: Principal::Known(format!("serviceAccount:{email}")),
        flow: format!("service account {email} impersonated by {federated} from {origin}"),
        quota_project: None,
    })
}

/// The subject token of a file- or URL-sourced `credential_source`.
fn subject_token(ctx: &Ctx, source: &Value, origin: &str) -> Result<Zeroizing<String>, String> {
    let raw = if let Some(file) = json_str(source, "file") {
        std::fs::read_to_string(file)
            .map(Zeroizing::new)
            .map_err(|e| format!("{origin}: credential_source file {file}: {e}"))?
    } else if let Some(url) = json_str(source, "url") {
        let headers: Vec<(&str, &str)> = source
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                    .collect()
            })
            .unwrap_or_default();
        let reply = ctx
            .http
            .send("GET", url, &headers, Body::Empty)
            .map_err(|e| format!("{origin}: credential_source url {e}"))?;
        if !reply.ok() {
            return Err(format!(
                "{origin}: credential_source url answered HTTP {}",
                reply.status
            ));
        }
        Zeroizing::new(reply.body.to_string())
    } else if source.get("environment_id").is_some() {
        return Err(format!(
            "{origin}: AWS-sourced external_account credentials are not supported by this build \
             (file- and URL-sourced ones are)"
        ));
    } else {
        return Err(format!(
            "{origin}: its credential_source is neither a file nor a url (executable-sourced \
             credentials are not supported by this build)"
        ));
    };
    let format = source.get("format");
    match format.and_then(|f| json_str(f, "type")).unwrap_or("text") {
        "text" => Ok(Zeroizing::new(raw.trim().to_owned())),
        "json" => {
            let field = format
                .and_then(|f| json_str(f, "subject_token_field_name"))
                .ok_or_else(|| {
                    format!("{origin}: credential_source format json names no subject_token_field_name")
                })?;
            let v: Value = serde_json::from_str(&raw)
                .map_err(|_| format!("{origin}: the credential_source does not hold JSON"))?;
            json_str(&v, field)
                .map(|t| Zeroizing::new(t.to_owned()))
                .ok_or_else(|| format!("{origin}: the credential_source's JSON has no {field:?}"))
        }
        other => Err(format!(
            "{origin}: credential_source format {other:?} is not text or json"
        )),
    }
}

/// `http://{GCE_METADATA_HOST or 169.254.169.254}` + path.
fn metadata_url(ctx: &Ctx, path: &str) -> String {
    let host = ctx
        .env
        .var("GCE_METADATA_HOST")
        .unwrap_or_else(|| METADATA_IP.to_owned());
    format!("http://{host}{path}")
}

/// The instance's default service account's token from the metadata server.
fn metadata_token(ctx: &Ctx) -> Result<Token, String> {
    let url = metadata_url(ctx, TOKEN_PATH);
    let reply = ctx
        .http
        .send("GET", &url, &[("Metadata-Flavor", "Google")], Body::Empty)
        .map_err(|e| format!("at {e}"))?;
    let host = super::http::host_of(&url).to_owned();
    let principal = "the instance's default service account".to_owned();
    Ok(Token {
        bearer: access_token(&reply, &format!("the metadata server {host}"), &principal)?,
        principal: Principal::MetadataDefault,
        flow: format!("the default service account from the metadata server {host}"),
        quota_project: None,
    })
}

/// The `access_token` of a token endpoint's JSON answer, or an OAuth error in words.
fn access_token(reply: &Reply, endpoint: &str, principal: &str) -> Result<Zeroizing<String>, String> {
    reply.oauth_token().map_err(|what| {
        format!(
            "{endpoint} refused a token for {principal}: HTTP {} {what}",
            reply.status
        )
    })
}

/// A Cloud KMS error answer (`{"error": {"code", "message", "status"}}`) in words.
fn kms_error(ctx: &Ctx, reply: &Reply, token: &Token, resource_id: &str) -> String {
    let v = reply.json();
    let err = v.get("error");
    let status = err.and_then(|e| json_str(e, "status")).unwrap_or("");
    let message = err
        .and_then(|e| json_str(e, "message"))
        .unwrap_or("")
        .trim_end_matches('.');
    let head = format!("Cloud KMS answered HTTP {} {status}: {message}", reply.status)
        .trim_end_matches([' ', ':'])
        .to_owned();
    let principal = || match &token.principal {
        Principal::Known(p) | Principal::Described(p) => p.clone(),
        Principal::MetadataDefault => ctx
            .http
            .send(
                "GET",
                &metadata_url(ctx, EMAIL_PATH),
                &[("Metadata-Flavor", "Google")],
                Body::Empty,
            )
            .ok()
            .filter(Reply::ok)
            .map_or("the instance's default service account".to_owned(), |r| {
                format!("serviceAccount:{}", r.body.trim())
            }),
    };
    match reply.status {
        403 => format!(
            "{head}; {} needs {DECRYPTER_ROLE} (permission cloudkms.cryptoKeyVersions.useToDecrypt) on {resource_id}",
            principal()
        ),
        401 => format!("{head}; the access token of {} was not accepted", principal()),
        404 => format!("{head}; no such crypto key"),
        400 => {
            format!("{head}; the ciphertext was not made with this key, or the key is not ENCRYPT_DECRYPT")
        }
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_are_checked_like_sops() {
        assert!(valid_resource_id(
            "projects/p/locations/global/keyRings/r/cryptoKeys/k"
        ));
        assert!(!valid_resource_id("projects/p/locations/global/keyRings/r"));
        assert!(!valid_resource_id(
            "projects//locations/global/keyRings/r/cryptoKeys/k"
        ));
        assert!(!valid_resource_id(
            "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"
        ));
        // Nothing that would change the request's path or query.
        assert!(!valid_resource_id(
            "projects/p/locations/global/keyRings/r/cryptoKeys/k?alt=x"
        ));
        assert!(!valid_resource_id(
            "projects/p/locations/global/keyRings/r/cryptoKeys/%2e%2e"
        ));
    }
}
