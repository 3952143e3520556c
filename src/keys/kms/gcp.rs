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
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{Body, HttpError, OAuthError, Reply};
use super::{Ctx, json_str};

/// Why a `gcp_kms` stanza was not opened. Never holds a token, a private
/// key or the plaintext.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GcpError {
    /// The stanza's `resource_id` is not a crypto key name (or would change the request's path).
    #[error("{resource_id:?} is not a crypto key name (projects/P/locations/L/keyRings/R/cryptoKeys/K)")]
    BadResourceId {
        /// As the stanza gives it.
        resource_id: String,
    },
    /// The stanza's `enc` does not decode.
    #[error("the stanza's ciphertext is not base64: {0}")]
    CiphertextNotBase64(#[source] base64::DecodeError),
    /// No credentials anywhere: no variable, no gcloud file, no metadata server.
    #[error(
        "no Google credentials: GOOGLE_APPLICATION_CREDENTIALS is unset, {gcloud_file} does not exist, and the \
         metadata server {metadata} (not on Google Compute Engine, or no network yet?)"
    )]
    NoCredentials {
        /// gcloud's application default credentials file, or a description when there is no home.
        gcloud_file: String,
        /// What the metadata server did instead of giving a token.
        #[source]
        metadata: Box<GcpError>,
    },
    /// A credentials file named by a variable cannot be read.
    #[error("{origin}: cannot read {}: {source}", .path.display())]
    CredentialsUnreadable {
        /// Which variable (or gcloud's file) named it.
        origin: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// A credentials file (or `GOOGLE_CREDENTIALS`) that is not JSON.
    #[error("{origin} is not a JSON credentials file")]
    CredentialsNotJson {
        /// Where it came from.
        origin: String,
    },
    /// A credentials file without a field its type needs.
    #[error("{origin} has no {field:?}")]
    MissingField {
        /// Where it came from.
        origin: String,
        /// The field.
        field: &'static str,
    },
    /// A credentials file of a type this build does not handle.
    #[error(
        "{origin} is a credential of type {kind:?}, which this build does not support \
             (service_account, authorized_user and external_account are)"
    )]
    UnsupportedCredential {
        /// Where it came from.
        origin: String,
        /// Its `type`.
        kind: String,
    },
    /// A service account's private key cannot sign the token request.
    #[error("{origin}: {problem}")]
    ServiceAccountKey {
        /// Where the credentials came from.
        origin: String,
        /// What is wrong with the key.
        #[source]
        problem: KeyProblem,
    },
    /// An `external_account`'s subject token cannot be had.
    #[error("{origin}: {problem}")]
    CredentialSource {
        /// Where the credentials came from.
        origin: String,
        /// What is wrong.
        #[source]
        problem: SourceProblem,
    },
    /// No answer from a Google endpoint, or its URL is refused.
    #[error("{endpoint} {source}")]
    Http {
        /// Which endpoint.
        endpoint: GcpEndpoint,
        /// Why.
        source: HttpError,
    },
    /// A token endpoint (or the metadata server) gave no access token.
    #[error("{endpoint} refused a token for {principal}: HTTP {status} {why}")]
    TokenRefused {
        /// The token endpoint, or `the metadata server HOST`.
        endpoint: String,
        /// Whom the token was asked for.
        principal: String,
        /// The HTTP status.
        status: u16,
        /// The endpoint's OAuth error.
        #[source]
        why: OAuthError,
    },
    /// The IAM Credentials API refused to let a federated identity act as a service account.
    #[error(
        "IAM Credentials refused to let {federated} impersonate {email}: HTTP {status} {message}; \
                 it needs roles/iam.workloadIdentityUser on that service account"
    )]
    ImpersonationRefused {
        /// The federated identity.
        federated: String,
        /// The service account.
        email: String,
        /// The HTTP status.
        status: u16,
        /// Google's own message.
        message: String,
    },
    /// Cloud KMS answered with an error status: its own words, then what to do.
    #[error("{text}")]
    Refused {
        /// The HTTP status (403: a missing role; 404: no such key; 400: not this key's ciphertext).
        status: u16,
        /// The whole message.
        text: String,
    },
    /// A 2xx answer without a plaintext.
    #[error("Cloud KMS answered without a plaintext")]
    NoPlaintext,
    /// A plaintext that does not decode.
    #[error("Cloud KMS answered with a plaintext that is not base64")]
    PlaintextNotBase64,
}

/// A Google endpoint, as [`GcpError::Http`] names it before the failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcpEndpoint {
    /// Cloud KMS itself.
    CloudKms,
    /// An OAuth token endpoint (a credentials file's `token_uri`).
    TokenEndpoint,
    /// The Security Token Service of workload identity federation.
    SecurityTokenService,
    /// The IAM Credentials API (service account impersonation).
    IamCredentials,
    /// The URL of an `external_account`'s `credential_source`.
    CredentialSourceUrl {
        /// Where the credentials came from.
        origin: String,
    },
    /// The Compute Engine metadata server (the message reads "the metadata server at ...").
    MetadataServer,
}

impl std::fmt::Display for GcpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GcpEndpoint::CloudKms => f.write_str("Cloud KMS:"),
            GcpEndpoint::TokenEndpoint => f.write_str("token endpoint"),
            GcpEndpoint::SecurityTokenService => f.write_str("Security Token Service"),
            GcpEndpoint::IamCredentials => f.write_str("IAM Credentials"),
            GcpEndpoint::CredentialSourceUrl { origin } => write!(f, "{origin}: credential_source url"),
            GcpEndpoint::MetadataServer => f.write_str("at"),
        }
    }
}

/// Why a service account's `private_key` cannot sign.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// Not PEM.
    #[error("its private_key is not a PEM private key")]
    NotPem,
    /// PEM, but not a PKCS#8 RSA key.
    #[error("its private_key is not a PKCS#8 RSA key: {detail}")]
    NotRsa {
        /// ring's words (no key material).
        detail: String,
    },
    /// The signature failed.
    #[error("signing the token request failed")]
    SigningFailed,
}

/// Why an `external_account`'s `credential_source` gave no subject token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SourceProblem {
    /// The file it names cannot be read.
    #[error("credential_source file {file}: {source}")]
    FileUnreadable {
        /// The file.
        file: String,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The URL it names answered with an error status.
    #[error("credential_source url answered HTTP {status}")]
    UrlStatus {
        /// The HTTP status.
        status: u16,
    },
    /// AWS-sourced federation, which this build does not do.
    #[error(
        "AWS-sourced external_account credentials are not supported by this build \
             (file- and URL-sourced ones are)"
    )]
    AwsSourced,
    /// Executable-sourced (or unknown) federation, which this build does not do.
    #[error(
        "its credential_source is neither a file nor a url (executable-sourced \
             credentials are not supported by this build)"
    )]
    NeitherFileNorUrl,
    /// `format.type` is `json` without a field name.
    #[error("credential_source format json names no subject_token_field_name")]
    NoFieldName,
    /// `format.type` is `json`, the token is not.
    #[error("the credential_source does not hold JSON")]
    NotJson,
    /// The JSON lacks the named field.
    #[error("the credential_source's JSON has no {field:?}")]
    NoField {
        /// `subject_token_field_name`.
        field: String,
    },
    /// `format.type` is neither `text` nor `json`.
    #[error("credential_source format {format:?} is not text or json")]
    UnknownFormat {
        /// As the file gives it.
        format: String,
    },
}

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
    token: OnceLock<Result<Token, GcpError>>,
}

impl Gcp {
    /// Decrypts one stanza's ciphertext; `Ok` carries the share and how the token was obtained.
    pub fn decrypt(
        &self,
        ctx: &Ctx,
        resource_id: &str,
        enc: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, String), GcpError> {
        if !valid_resource_id(resource_id) {
            return Err(GcpError::BadResourceId {
                resource_id: resource_id.to_owned(),
            });
        }
        let ciphertext = STANDARD
            .decode(enc.trim())
            .map_err(GcpError::CiphertextNotBase64)?;
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
            .map_err(|source| GcpError::Http {
                endpoint: GcpEndpoint::CloudKms,
                source,
            })?;
        if !reply.ok() {
            return Err(kms_error(ctx, &reply, token, resource_id));
        }
        #[derive(serde::Deserialize)]
        struct Decrypted {
            plaintext: Zeroizing<String>,
        }
        let answer: Decrypted = reply.parse().ok_or(GcpError::NoPlaintext)?;
        Ok((
            super::decode_share(&answer.plaintext).ok_or(GcpError::PlaintextNotBase64)?,
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
fn token(ctx: &Ctx) -> Result<Token, GcpError> {
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
    metadata_token(ctx).map_err(|e| GcpError::NoCredentials {
        gcloud_file: well_known.map_or("gcloud's credentials file".to_owned(), |f| {
            f.display().to_string()
        }),
        metadata: Box::new(e),
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

fn from_file(ctx: &Ctx, path: &std::path::Path, origin: &str) -> Result<Token, GcpError> {
    let text =
        std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|e| GcpError::CredentialsUnreadable {
                origin: origin.to_owned(),
                path: path.to_owned(),
                source: Arc::new(e),
            })?;
    from_json(ctx, &text, &format!("{origin} ({})", path.display()))
}

/// A credentials file's JSON, by its `type`.
fn from_json(ctx: &Ctx, text: &str, origin: &str) -> Result<Token, GcpError> {
    let creds: Value = serde_json::from_str(text).map_err(|_| GcpError::CredentialsNotJson {
        origin: origin.to_owned(),
    })?;
    let field = |k: &'static str| {
        json_str(&creds, k)
            .map(str::to_owned)
            .ok_or_else(|| missing(origin, k))
    };
    match json_str(&creds, "type").unwrap_or_default() {
        "service_account" => service_account(ctx, &creds, origin, &field("client_email")?),
        "authorized_user" => authorized_user(ctx, &creds, origin),
        "external_account" => external_account(ctx, &creds, origin),
        other => Err(GcpError::UnsupportedCredential {
            origin: origin.to_owned(),
            kind: other.to_owned(),
        }),
    }
}

fn missing(origin: &str, field: &'static str) -> GcpError {
    GcpError::MissingField {
        origin: origin.to_owned(),
        field,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The JWT-bearer grant (RFC 7523) Google documents for service accounts:
/// an RS256-signed assertion with `iss` = the account, `aud` = `token_uri`.
fn service_account(ctx: &Ctx, creds: &Value, origin: &str, email: &str) -> Result<Token, GcpError> {
    let pem = Zeroizing::new(
        json_str(creds, "private_key")
            .ok_or_else(|| missing(origin, "private_key"))?
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
    let assertion = sign_jwt(&header, &claims, &pem).map_err(|problem| GcpError::ServiceAccountKey {
        origin: origin.to_owned(),
        problem,
    })?;
    let reply = ctx
        .http
        .send(
            "POST",
            token_uri,
            &[],
            Body::Form(&[("grant_type", JWT_BEARER), ("assertion", &assertion)]),
        )
        .map_err(|source| GcpError::Http {
            endpoint: GcpEndpoint::TokenEndpoint,
            source,
        })?;
    let principal = format!("serviceAccount:{email}");
    Ok(Token {
        bearer: access_token(&reply, token_uri, &principal)?,
        principal: Principal::Known(principal),
        flow: format!("service account {email} from {origin}"),
        quota_project: None,
    })
}

/// `header.claims.signature`, RS256 with the account's PKCS#8 key.
fn sign_jwt(header: &Value, claims: &Value, pem: &str) -> Result<String, KeyProblem> {
    let key = ureq::tls::PrivateKey::from_pem(pem.as_bytes()).map_err(|_| KeyProblem::NotPem)?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(key.der()).map_err(|e| KeyProblem::NotRsa {
        detail: e.to_string(),
    })?;
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
    .map_err(|_| KeyProblem::SigningFailed)?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The refresh-token grant of a gcloud user credentials file.
fn authorized_user(ctx: &Ctx, creds: &Value, origin: &str) -> Result<Token, GcpError> {
    let get = |k: &'static str| json_str(creds, k).ok_or_else(|| missing(origin, k));
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
        .map_err(|source| GcpError::Http {
            endpoint: GcpEndpoint::TokenEndpoint,
            source,
        })?;
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
fn external_account(ctx: &Ctx, creds: &Value, origin: &str) -> Result<Token, GcpError> {
    let get = |k: &'static str| json_str(creds, k).ok_or_else(|| missing(origin, k));
    let (audience, token_type, token_url) = (get("audience")?, get("subject_token_type")?, get("token_url")?);
    let source = creds
        .get("credential_source")
        .ok_or_else(|| missing(origin, "credential_source"))?;
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
        .map_err(|source| GcpError::Http {
            endpoint: GcpEndpoint::SecurityTokenService,
            source,
        })?;
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
        .map_err(|source| GcpError::Http {
            endpoint: GcpEndpoint::IamCredentials,
            source,
        })?;
    let v = reply.json();
    let token = match json_str(&v, "accessToken") {
        Some(t) if reply.ok() => Zeroizing::new(t.to_owned()),
        _ => {
            let message = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
            return Err(GcpError::ImpersonationRefused {
                federated,
                email,
                status: reply.status,
                message: message.to_owned(),
            });
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
fn subject_token(ctx: &Ctx, source: &Value, origin: &str) -> Result<Zeroizing<String>, GcpError> {
    let refused = |problem| GcpError::CredentialSource {
        origin: origin.to_owned(),
        problem,
    };
    let raw = if let Some(file) = json_str(source, "file") {
        std::fs::read_to_string(file).map(Zeroizing::new).map_err(|e| {
            refused(SourceProblem::FileUnreadable {
                file: file.to_owned(),
                source: Arc::new(e),
            })
        })?
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
            .map_err(|source| GcpError::Http {
                endpoint: GcpEndpoint::CredentialSourceUrl {
                    origin: origin.to_owned(),
                },
                source,
            })?;
        if !reply.ok() {
            return Err(refused(SourceProblem::UrlStatus { status: reply.status }));
        }
        Zeroizing::new(reply.body.to_string())
    } else if source.get("environment_id").is_some() {
        return Err(refused(SourceProblem::AwsSourced));
    } else {
        return Err(refused(SourceProblem::NeitherFileNorUrl));
    };
    let format = source.get("format");
    match format.and_then(|f| json_str(f, "type")).unwrap_or("text") {
        "text" => Ok(Zeroizing::new(raw.trim().to_owned())),
        "json" => {
            let field = format
                .and_then(|f| json_str(f, "subject_token_field_name"))
                .ok_or_else(|| refused(SourceProblem::NoFieldName))?;
            let v: Value = serde_json::from_str(&raw).map_err(|_| refused(SourceProblem::NotJson))?;
            json_str(&v, field)
                .map(|t| Zeroizing::new(t.to_owned()))
                .ok_or_else(|| {
                    refused(SourceProblem::NoField {
                        field: field.to_owned(),
                    })
                })
        }
        other => Err(refused(SourceProblem::UnknownFormat {
            format: other.to_owned(),
        })),
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
fn metadata_token(ctx: &Ctx) -> Result<Token, GcpError> {
    let url = metadata_url(ctx, TOKEN_PATH);
    let reply = ctx
        .http
        .send("GET", &url, &[("Metadata-Flavor", "Google")], Body::Empty)
        .map_err(|source| GcpError::Http {
            endpoint: GcpEndpoint::MetadataServer,
            source,
        })?;
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
fn access_token(reply: &Reply, endpoint: &str, principal: &str) -> Result<Zeroizing<String>, GcpError> {
    reply.oauth_token().map_err(|why| GcpError::TokenRefused {
        endpoint: endpoint.to_owned(),
        principal: principal.to_owned(),
        status: reply.status,
        why,
    })
}

/// A Cloud KMS error answer (`{"error": {"code", "message", "status"}}`) in words.
fn kms_error(ctx: &Ctx, reply: &Reply, token: &Token, resource_id: &str) -> GcpError {
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
    let text = match reply.status {
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
    };
    GcpError::Refused {
        status: reply.status,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::kms::http::Transport;

    const KEY: &str = "projects/p/locations/global/keyRings/r/cryptoKeys/k";

    fn ctx(vars: &[(&str, &str)]) -> Ctx {
        Ctx::with_vars(vars)
    }

    fn refused(gcp: &Gcp, ctx: &Ctx, resource_id: &str) -> GcpError {
        gcp.decrypt(ctx, resource_id, "AAAA").expect_err("refused")
    }

    #[test]
    fn no_credentials_anywhere_is_its_own_refusal() {
        let home = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metadata = format!("127.0.0.1:{port}");
        let ctx = ctx(&[
            ("HOME", home.path().to_str().unwrap()),
            ("GCE_METADATA_HOST", &metadata),
        ]);
        let gcp = Gcp::default();
        let err = refused(&gcp, &ctx, KEY);
        let GcpError::NoCredentials { metadata: why, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(
            matches!(
                &**why,
                GcpError::Http {
                    endpoint: GcpEndpoint::MetadataServer,
                    source: HttpError::Transport {
                        failure: Transport::ConnectionRefused,
                        ..
                    }
                }
            ),
            "{why:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "no Google credentials: GOOGLE_APPLICATION_CREDENTIALS is unset, {}/.config/gcloud/\
                 application_default_credentials.json does not exist, and the metadata server at \
                 {metadata}: connection refused (not on Google Compute Engine, or no network yet?)",
                home.path().display()
            )
        );
        // The failure is remembered: the next stanza gets the same answer.
        let again = refused(&gcp, &ctx, KEY);
        assert!(matches!(again, GcpError::NoCredentials { .. }), "{again:?}");
    }

    #[test]
    fn refused_stanza_fields_and_credentials_are_told_apart() {
        let err = refused(&Gcp::default(), &ctx(&[]), "projects/p/../k");
        assert!(matches!(err, GcpError::BadResourceId { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            r#""projects/p/../k" is not a crypto key name (projects/P/locations/L/keyRings/R/cryptoKeys/K)"#
        );

        let creds = |json: &str| ctx(&[("GOOGLE_CREDENTIALS", json)]);
        let err = refused(
            &Gcp::default(),
            &creds(r#"{"type": "impersonated_service_account"}"#),
            KEY,
        );
        assert!(
            matches!(&err, GcpError::UnsupportedCredential { kind, .. } if kind == "impersonated_service_account"),
            "{err:?}"
        );
        let sa = r#"{"type": "service_account", "client_email": "sa@p.iam.gserviceaccount.com",
                     "private_key": "not a key", "token_uri": "http://127.0.0.1:1/token"}"#;
        let err = refused(&Gcp::default(), &creds(sa), KEY);
        assert!(
            matches!(
                err,
                GcpError::ServiceAccountKey {
                    problem: KeyProblem::NotPem,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "GOOGLE_CREDENTIALS: its private_key is not a PEM private key"
        );
        let aws = r#"{"type": "external_account", "audience": "a", "subject_token_type": "t",
                      "token_url": "http://127.0.0.1:1/", "credential_source": {"environment_id": "aws1"}}"#;
        let err = refused(&Gcp::default(), &creds(aws), KEY);
        assert!(
            matches!(
                err,
                GcpError::CredentialSource {
                    problem: SourceProblem::AwsSourced,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = refused(&Gcp::default(), &creds(r#"{"type": "authorized_user"}"#), KEY);
        assert!(
            matches!(
                err,
                GcpError::MissingField {
                    field: "client_id",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), r#"GOOGLE_CREDENTIALS has no "client_id""#);
    }

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
