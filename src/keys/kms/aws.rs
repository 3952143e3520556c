//! AWS KMS (`kms` stanzas): `TrentService.Decrypt` (JSON 1.1 protocol,
//! SigV4-signed) in the key's region, with the stanza's encryption context;
//! first assuming the stanza's `role` through STS `AssumeRole` if it names one
//! (session name `sops@<hostname>`, as sops does).
//!
//! Credentials, as the AWS SDK's default chain finds them (the chain sops uses):
//! - a profile named by the stanza's `aws_profile` or `AWS_PROFILE`: that
//!   profile only (`~/.aws/credentials`, `~/.aws/config`, or
//!   `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`): static keys,
//!   `role_arn` with `source_profile`, or `credential_process`;
//! - otherwise: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`;
//!   web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`); the
//!   `default` profile; container credentials
//!   (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` / `_FULL_URI`); the instance
//!   role from IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides its
//!   address, `AWS_EC2_METADATA_DISABLED=true` skips it).
//!
//! `AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL_STS` and `AWS_ENDPOINT_URL`
//! override the service endpoints, as in every AWS SDK.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::http::{Body, HttpError, Reply, form_encode};
use super::{Ctx, json_str};

/// Why a `kms` stanza was not opened. Never holds a secret access key, a
/// session token or the plaintext.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AwsError {
    /// The stanza's ARN is not a KMS key ARN (or would put another host into the endpoint).
    #[error("{arn:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")]
    BadArn {
        /// As the stanza gives it.
        arn: String,
    },
    /// The stanza's `enc` does not decode.
    #[error("the stanza's ciphertext is not base64: {0}")]
    CiphertextNotBase64(#[source] base64::DecodeError),
    /// The default chain found nothing: no variables, no profile, no container
    /// credentials, and the instance metadata service is off or gave none.
    #[error("no AWS credentials: none in the environment or {files}, and {}", imds_outcome(.imds))]
    NoCredentials {
        /// The credentials and config files looked in.
        files: String,
        /// What the instance metadata service did; `None` when `AWS_EC2_METADATA_DISABLED` is set.
        #[source]
        imds: Option<Box<AwsError>>,
    },
    /// The profile the stanza or `AWS_PROFILE` names is in no file.
    #[error("AWS profile {profile:?} is not in {files}")]
    NoSuchProfile {
        /// The profile.
        profile: String,
        /// The credentials and config files looked in.
        files: String,
    },
    /// A profile that cannot give credentials.
    #[error("{profile}: {problem}")]
    Profile {
        /// `profile NAME from FILE`.
        profile: String,
        /// What is wrong.
        #[source]
        problem: ProfileProblem,
    },
    /// A profile's `credential_process` gave no credentials.
    #[error("{profile}: credential_process {problem}")]
    CredentialProcess {
        /// `profile NAME from FILE`.
        profile: String,
        /// What went wrong.
        #[source]
        problem: ProcessProblem,
    },
    /// A token file a variable names cannot be read.
    #[error("{variable} {file}: {source}")]
    TokenFile {
        /// `AWS_WEB_IDENTITY_TOKEN_FILE` or `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
        variable: &'static str,
        /// The file.
        file: String,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The container credentials URL is one the AWS SDKs would not ask.
    #[error(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https, or http on loopback or the ECS/EKS agent \
             addresses (169.254.170.2, 169.254.170.23, fd00:ec2::23), as in the AWS SDKs"
    )]
    ContainerEndpointRefused,
    /// The container credentials endpoint answered with an error status.
    #[error("container credentials endpoint answered HTTP {status}")]
    ContainerStatus {
        /// The HTTP status.
        status: u16,
    },
    /// Credentials JSON without a field.
    #[error("{from} answered without {field}")]
    CredentialsIncomplete {
        /// Who answered.
        from: String,
        /// The missing field.
        field: &'static str,
    },
    /// No answer from the instance metadata service (reads "the instance metadata service at ...").
    #[error("at {0}")]
    ImdsHttp(#[source] HttpError),
    /// The instance metadata service answered, without credentials.
    #[error("at {host} {problem}")]
    Imds {
        /// Its `host[:port]`.
        host: String,
        /// What it said.
        #[source]
        problem: ImdsProblem,
    },
    /// No answer from an AWS endpoint, or its URL is refused.
    #[error("{call}: {source}")]
    Http {
        /// Which call.
        call: AwsCall,
        /// Why.
        source: HttpError,
    },
    /// The request could not be signed.
    #[error("{call}: cannot sign the request: {detail}")]
    Signing {
        /// Which call.
        call: AwsCall,
        /// The signer's words.
        detail: String,
    },
    /// STS refused to assume a role.
    #[error("STS {action} of {role} failed: HTTP {status} {code}: {message}{}", with_base(.with))]
    StsRefused {
        /// `AssumeRole` or `AssumeRoleWithWebIdentity`.
        action: &'static str,
        /// The role's ARN.
        role: String,
        /// The HTTP status.
        status: u16,
        /// STS's error code (`AccessDenied`).
        code: String,
        /// STS's message.
        message: String,
        /// For `AssumeRole`: where the credentials that asked came from.
        with: Option<String>,
    },
    /// STS answered without a part of the credentials.
    #[error("STS {action} answered without {field}{}", with_base(.with))]
    StsIncomplete {
        /// `AssumeRole` or `AssumeRoleWithWebIdentity`.
        action: &'static str,
        /// The missing element.
        field: &'static str,
        /// For `AssumeRole`: where the credentials that asked came from.
        with: Option<String>,
    },
    /// AWS KMS answered with an error: its own words, then what to do.
    #[error("{text}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The exception (`AccessDeniedException`, `InvalidCiphertextException`, ...).
        code: String,
        /// The whole message.
        text: String,
    },
    /// A 2xx answer without a `Plaintext`.
    #[error("AWS KMS answered without a Plaintext")]
    NoPlaintext,
    /// A plaintext that does not decode.
    #[error("AWS KMS answered with a plaintext that is not base64")]
    PlaintextNotBase64,
}

fn imds_outcome(imds: &Option<Box<AwsError>>) -> String {
    match imds {
        None => "AWS_EC2_METADATA_DISABLED is set".to_owned(),
        Some(e) => format!("the instance metadata service {e} (not on EC2, or no network yet?)"),
    }
}

fn with_base(with: &Option<String>) -> String {
    with.as_ref().map(|w| format!(" (with {w})")).unwrap_or_default()
}

/// An AWS call, as [`AwsError::Http`] and [`AwsError::Signing`] name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AwsCall {
    /// `TrentService.Decrypt`.
    Kms,
    /// STS `AssumeRole`.
    AssumeRole {
        /// The role's ARN.
        role: String,
    },
    /// STS `AssumeRoleWithWebIdentity`.
    AssumeRoleWithWebIdentity {
        /// The role's ARN.
        role: String,
    },
    /// The ECS/EKS container credentials endpoint.
    ContainerEndpoint,
}

impl std::fmt::Display for AwsCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AwsCall::Kms => f.write_str("AWS KMS"),
            AwsCall::AssumeRole { role } => write!(f, "STS AssumeRole of {role}"),
            AwsCall::AssumeRoleWithWebIdentity { role } => {
                write!(f, "STS AssumeRoleWithWebIdentity of {role}")
            }
            AwsCall::ContainerEndpoint => f.write_str("container credentials endpoint"),
        }
    }
}

/// Why a profile gives no credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfileProblem {
    /// `role_arn` with `credential_source` or web identity instead of `source_profile`.
    #[error("role_arn without source_profile (credential_source, web identity) is not supported")]
    RoleWithoutSourceProfile,
    /// More than a few `source_profile` hops (or a loop).
    #[error("source_profile chain too long")]
    ChainTooLong,
    /// The `source_profile` is in no file.
    #[error("its source_profile {name:?} does not exist")]
    NoSourceProfile {
        /// The profile named.
        name: String,
    },
    /// An IAM Identity Center profile.
    #[error("IAM Identity Center (SSO) profiles are not supported")]
    Sso,
}

/// Why a `credential_process` gave no credentials (its output is never quoted).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProcessProblem {
    /// It ran past the helper deadline.
    #[error("did not finish within {secs} s and was stopped")]
    TimedOut {
        /// The deadline.
        secs: u64,
    },
    /// It could not be started or waited for.
    #[error("cannot run: {0}")]
    CannotRun(#[source] Arc<std::io::Error>),
    /// It failed.
    #[error("failed ({0})")]
    Failed(ExitStatus),
    /// Its output is not JSON.
    #[error("printed no JSON")]
    NoJson,
    /// Its JSON lacks a field.
    #[error("printed no {0}")]
    NoField(&'static str),
}

/// What the instance metadata service said instead of credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImdsProblem {
    /// IMDSv2's session token was refused.
    #[error("refused an IMDSv2 session token: HTTP {status}")]
    SessionTokenRefused {
        /// The HTTP status.
        status: u16,
    },
    /// The instance has no instance profile.
    #[error("says this instance has no IAM role (instance profile)")]
    NoInstanceProfile,
    /// The role list is empty or an error.
    #[error("named no instance role (HTTP {status})")]
    RoleNotNamed {
        /// The HTTP status.
        status: u16,
    },
    /// The role's credentials were not given.
    #[error("gave no credentials for role {role}: HTTP {status}")]
    CredentialsRefused {
        /// The instance role.
        role: String,
        /// The HTTP status.
        status: u16,
    },
}

const IMDS: &str = "http://169.254.169.254";
const ECS_HOST: &str = "http://169.254.170.2";

/// Credentials and where they came from (for the log and errors).
#[derive(Clone)]
struct Creds {
    key_id: String,
    secret: Zeroizing<String>,
    session: Option<Zeroizing<String>>,
    source: String,
}

/// Per-run state: credentials per profile (`""`: the default chain) and per
/// assumed role, each fetched once.
#[derive(Default)]
pub(super) struct Aws {
    base: Mutex<HashMap<String, Result<Creds, AwsError>>>,
    roles: Mutex<HashMap<(String, String), Result<Creds, AwsError>>>,
}

/// The partition and region of a KMS key ARN, checked as sops checks it.
fn parse_arn(arn: &str) -> Result<(&str, &str), AwsError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    // The partition and region become the endpoint's host name: only what
    // AWS uses, so a crafted ARN cannot point the signed request elsewhere.
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && ["aws", "aws-cn", "aws-us-gov"].contains(&parts[1])
        && parts[2] == "kms"
        && !parts[3].is_empty()
        && parts[3].len() <= 63
        && parts[3]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !parts[4].is_empty()
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && (parts[5].starts_with("key/") || parts[5].starts_with("alias/"));
    if ok {
        Ok((parts[1], parts[3]))
    } else {
        Err(AwsError::BadArn { arn: arn.to_owned() })
    }
}

/// `https://{service}.{region}.amazonaws.com`, unless the SDK's endpoint variables say otherwise.
fn endpoint(ctx: &Ctx, service: &str, region: &str, partition: &str) -> String {
    let specific = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
    if let Some(url) = ctx.env.var(&specific).or_else(|| ctx.env.var("AWS_ENDPOINT_URL")) {
        return url.trim_end_matches('/').to_owned();
    }
    let suffix = if partition == "aws-cn" {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://{service}.{region}.{suffix}")
}

impl Aws {
    /// Decrypts one stanza's ciphertext; `Ok` carries the share and where the credentials came from.
    pub fn decrypt(
        &self,
        ctx: &Ctx,
        arn: &str,
        role: &str,
        context: &[(String, String)],
        aws_profile: &str,
        enc: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, String), AwsError> {
        let (partition, region) = parse_arn(arn)?;
        STANDARD
            .decode(enc.trim())
            .map_err(AwsError::CiphertextNotBase64)?;
        let profile = if aws_profile.is_empty() {
            ctx.env.var("AWS_PROFILE").unwrap_or_default()
        } else {
            aws_profile.to_owned()
        };
        let base = self
            .base
            .lock()
            .expect("not poisoned")
            .entry(profile.clone())
            .or_insert_with(|| base_credentials(ctx, &profile, region, partition))
            .clone()?;
        let creds = if role.is_empty() {
            base
        } else {
            self.roles
                .lock()
                .expect("not poisoned")
                .entry((profile, role.to_owned()))
                .or_insert_with(|| assume_role(ctx, &base, role, region, partition))
                .clone()?
        };
        let mut body = json!({ "CiphertextBlob": enc.trim(), "KeyId": arn });
        if !context.is_empty() {
            let map: Map<String, Value> = context.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            body["EncryptionContext"] = Value::Object(map);
        }
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        let url = format!("{}/", endpoint(ctx, "kms", region, partition));
        let reply = signed(
            ctx,
            &creds,
            AwsCall::Kms,
            region,
            &url,
            &[("x-amz-target", "TrentService.Decrypt")],
            "application/x-amz-json-1.1",
            &body,
        )?;
        if !reply.ok() {
            return Err(kms_error(&reply, &creds, arn, context));
        }
        #[derive(serde::Deserialize)]
        struct Decrypted {
            #[serde(rename = "Plaintext")]
            plaintext: Zeroizing<String>,
        }
        let answer: Decrypted = reply.parse().ok_or(AwsError::NoPlaintext)?;
        Ok((
            super::decode_share(&answer.plaintext).ok_or(AwsError::PlaintextNotBase64)?,
            creds.source.clone(),
        ))
    }
}

/// A SigV4-signed POST; `call` says which service signs (`kms`, `sts`) and names it in errors.
#[allow(clippy::too_many_arguments)]
fn signed(
    ctx: &Ctx,
    creds: &Creds,
    call: AwsCall,
    region: &str,
    url: &str,
    extra: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> Result<Reply, AwsError> {
    let service = match call {
        AwsCall::Kms => "kms",
        _ => "sts",
    };
    let unsigned = |e: &dyn std::fmt::Display| AwsError::Signing {
        call: call.clone(),
        detail: e.to_string(),
    };
    let mut headers: Vec<(&str, &str)> = vec![("content-type", content_type)];
    headers.extend_from_slice(extra);
    let identity: Identity = Credentials::new(
        &creds.key_id,
        creds.secret.as_str(),
        creds.session.as_ref().map(|s| s.to_string()),
        None,
        "sops-install-secrets",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| unsigned(&e))?
        .into();
    let signable = SignableRequest::new("POST", url, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| unsigned(&e))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| unsigned(&e))?.into_parts();
    let signature: Vec<(String, Zeroizing<String>)> = instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), Zeroizing::new(v.to_owned())))
        .collect();
    let mut all: Vec<(&str, &str)> = extra.to_vec();
    all.extend(signature.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    ctx.http
        .send("POST", url, &all, Body::Raw(content_type, body))
        .map_err(|source| AwsError::Http { call, source })
}

/// An AWS JSON-protocol error (`{"__type": "...#AccessDeniedException", "message": ...}`) in words.
fn kms_error(reply: &Reply, creds: &Creds, arn: &str, context: &[(String, String)]) -> AwsError {
    let v = reply.json();
    // AWS KMS answers in JSON; a front end that refuses the request before
    // KMS sees it may answer in the query protocol's XML (moto does).
    let xml = |t: &str| xml_tag(&reply.body, t).unwrap_or_default();
    let kind = json_str(&v, "__type")
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
        .unwrap_or_else(|| xml("Code"));
    let message = json_str(&v, "message")
        .or_else(|| json_str(&v, "Message"))
        .map_or_else(|| xml("Message"), str::to_owned);
    let head = format!("AWS KMS answered HTTP {} {kind}: {message}", reply.status)
        .trim_end_matches([' ', ':'])
        .to_owned();
    let text = match kind.as_str() {
        "AccessDeniedException" | "AccessDenied" => format!(
            "{head}; the principal of the credentials ({}) needs kms:Decrypt on {arn} (IAM policy and key policy)",
            creds.source
        ),
        "InvalidCiphertextException" if !context.is_empty() => {
            format!("{head}; the ciphertext or its encryption context does not match this key")
        }
        "UnrecognizedClientException" | "InvalidSignatureException" | "ExpiredTokenException" => {
            format!("{head}; the credentials ({}) were not accepted", creds.source)
        }
        "NotFoundException" => format!("{head}; no such key"),
        "DisabledException" => format!("{head}; the key is disabled"),
        _ => head,
    };
    AwsError::Refused {
        status: reply.status,
        code: kind,
        text,
    }
}

/// The first `<tag>...</tag>` of an XML answer (STS's query protocol), unescaped.
fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    Some(
        body[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Credentials from an STS answer's `<Credentials>`.
fn sts_credentials(
    reply: &Reply,
    action: &'static str,
    role: &str,
    source: String,
) -> Result<Creds, AwsError> {
    if !reply.ok() {
        let code = xml_tag(&reply.body, "Code").unwrap_or_default();
        let message = xml_tag(&reply.body, "Message").unwrap_or_default();
        return Err(AwsError::StsRefused {
            action,
            role: role.to_owned(),
            status: reply.status,
            code,
            message,
            with: None,
        });
    }
    let get = |field: &'static str| {
        xml_tag(&reply.body, field).ok_or(AwsError::StsIncomplete {
            action,
            field,
            with: None,
        })
    };
    Ok(Creds {
        key_id: get("AccessKeyId")?,
        secret: Zeroizing::new(get("SecretAccessKey")?),
        session: Some(Zeroizing::new(get("SessionToken")?)),
        source,
    })
}

/// `sops@<hostname>`, limited to what STS accepts, at most 64 characters.
fn session_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut name: String = format!("sops@{host}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "=,.@_-".contains(*c))
        .collect();
    name.truncate(64);
    name
}

fn assume_role(
    ctx: &Ctx,
    base: &Creds,
    role: &str,
    region: &str,
    partition: &str,
) -> Result<Creds, AwsError> {
    let session = session_name();
    let body = form_encode(&[
        ("Action", "AssumeRole"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", &session),
    ]);
    let url = format!("{}/", endpoint(ctx, "sts", region, partition));
    let reply = signed(
        ctx,
        base,
        AwsCall::AssumeRole {
            role: role.to_owned(),
        },
        region,
        &url,
        &[],
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    )?;
    sts_credentials(
        &reply,
        "AssumeRole",
        role,
        format!("role {role} assumed with {}", base.source),
    )
    .map_err(|mut e| {
        if let AwsError::StsRefused { with, .. } | AwsError::StsIncomplete { with, .. } = &mut e {
            *with = Some(base.source.clone());
        }
        e
    })
}

/// The credential chain, for a named profile or (empty) the default chain.
fn base_credentials(ctx: &Ctx, profile: &str, region: &str, partition: &str) -> Result<Creds, AwsError> {
    if !profile.is_empty() {
        return from_profile(ctx, profile, region, partition, 0)?.ok_or_else(|| AwsError::NoSuchProfile {
            profile: profile.to_owned(),
            files: files_described(ctx),
        });
    }
    if let (Some(id), Some(secret)) = (
        ctx.env.var("AWS_ACCESS_KEY_ID"),
        ctx.env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Creds {
            key_id: id,
            secret: Zeroizing::new(secret),
            session: ctx.env.var("AWS_SESSION_TOKEN").map(Zeroizing::new),
            source: "AWS_ACCESS_KEY_ID from the environment".into(),
        });
    }
    if let (Some(file), Some(role)) = (
        ctx.env.var("AWS_WEB_IDENTITY_TOKEN_FILE"),
        ctx.env.var("AWS_ROLE_ARN"),
    ) {
        return web_identity(ctx, &file, &role, region, partition);
    }
    if let Some(c) = from_profile(ctx, "default", region, partition, 0)? {
        return Ok(c);
    }
    if ctx.env.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || ctx.env.var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
    {
        return container(ctx);
    }
    if ctx
        .env
        .var("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(AwsError::NoCredentials {
            files: files_described(ctx),
            imds: None,
        });
    }
    imds(ctx).map_err(|e| AwsError::NoCredentials {
        files: files_described(ctx),
        imds: Some(Box::new(e)),
    })
}

fn credentials_file(ctx: &Ctx) -> Option<PathBuf> {
    ctx.env
        .var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| ctx.env.home().map(|h| h.join(".aws/credentials")))
}

fn config_file(ctx: &Ctx) -> Option<PathBuf> {
    ctx.env
        .var("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| ctx.env.home().map(|h| h.join(".aws/config")))
}

fn files_described(ctx: &Ctx) -> String {
    let show = |p: Option<PathBuf>| p.map_or("?".into(), |p| p.display().to_string());
    format!("{} / {}", show(credentials_file(ctx)), show(config_file(ctx)))
}

/// The `key = value` pairs of one section of an AWS INI file.
fn ini_section(text: &str, section: &str) -> Option<HashMap<String, String>> {
    let mut found = None;
    let mut current = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.split_whitespace().collect::<Vec<_>>().join(" ") == section;
            if current {
                found.get_or_insert_with(HashMap::new);
            }
            continue;
        }
        if current && let Some((k, v)) = line.split_once('=') {
            found
                .get_or_insert_with(HashMap::new)
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    found
}

/// One profile's settings: `[name]` of the credentials file over
/// `[profile name]` (or `[default]`) of the config file.
fn profile_settings(ctx: &Ctx, profile: &str) -> Option<(HashMap<String, String>, String)> {
    let mut settings = None;
    let mut origin = Vec::new();
    if let Some(path) = config_file(ctx)
        && let Ok(text) = std::fs::read_to_string(&path)
    {
        let section = if profile == "default" {
            "default".to_owned()
        } else {
            format!("profile {profile}")
        };
        if let Some(s) = ini_section(&text, &section) {
            settings = Some(s);
            origin.push(path.display().to_string());
        }
    }
    if let Some(path) = credentials_file(ctx)
        && let Ok(text) = std::fs::read_to_string(&path)
        && let Some(s) = ini_section(&text, profile)
    {
        settings.get_or_insert_with(HashMap::new).extend(s);
        origin.push(path.display().to_string());
    }
    settings.map(|s| (s, origin.join(" and ")))
}

/// Credentials of a profile, `None` if no file has it.
fn from_profile(
    ctx: &Ctx,
    profile: &str,
    region: &str,
    partition: &str,
    depth: usize,
) -> Result<Option<Creds>, AwsError> {
    let Some((s, origin)) = profile_settings(ctx, profile) else {
        return Ok(None);
    };
    let source = format!("profile {profile} from {origin}");
    if let (Some(id), Some(secret)) = (s.get("aws_access_key_id"), s.get("aws_secret_access_key")) {
        return Ok(Some(Creds {
            key_id: id.clone(),
            secret: Zeroizing::new(secret.clone()),
            session: s.get("aws_session_token").cloned().map(Zeroizing::new),
            source,
        }));
    }
    let refused = |problem| AwsError::Profile {
        profile: source.clone(),
        problem,
    };
    if let Some(role) = s.get("role_arn") {
        let Some(src) = s.get("source_profile") else {
            return Err(refused(ProfileProblem::RoleWithoutSourceProfile));
        };
        if depth > 4 {
            return Err(refused(ProfileProblem::ChainTooLong));
        }
        let base = from_profile(ctx, src, region, partition, depth + 1)?
            .ok_or_else(|| refused(ProfileProblem::NoSourceProfile { name: src.clone() }))?;
        return assume_role(ctx, &base, role, region, partition).map(Some);
    }
    if let Some(cmd) = s.get("credential_process") {
        return credential_process(cmd, &source).map(Some);
    }
    if s.keys().any(|k| k.starts_with("sso_")) {
        return Err(refused(ProfileProblem::Sso));
    }
    // A profile with only settings (region, output) holds no credentials.
    Ok(None)
}

/// `credential_process`: a command printing `{"Version": 1, "AccessKeyId", ...}`.
fn credential_process(cmd: &str, source: &str) -> Result<Creds, AwsError> {
    let failed = |problem| AwsError::CredentialProcess {
        profile: source.to_owned(),
        problem,
    };
    let out = crate::process::run(
        std::process::Command::new("/bin/sh").arg("-c").arg(cmd),
        b"",
        super::HELPER_TIMEOUT,
    )
    .map_err(|e| {
        failed(match e {
            crate::process::RunError::TimedOut(t) => ProcessProblem::TimedOut { secs: t.as_secs() },
            crate::process::RunError::Spawn(e) | crate::process::RunError::Wait(e) => {
                ProcessProblem::CannotRun(Arc::new(e))
            }
        })
    })?;
    let text = Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
    if !out.status.success() {
        return Err(failed(ProcessProblem::Failed(out.status)));
    }
    let v: Value = serde_json::from_str(&text).map_err(|_| failed(ProcessProblem::NoJson))?;
    let get = |field: &'static str| json_str(&v, field).ok_or_else(|| failed(ProcessProblem::NoField(field)));
    Ok(Creds {
        key_id: get("AccessKeyId")?.to_owned(),
        secret: Zeroizing::new(get("SecretAccessKey")?.to_owned()),
        session: json_str(&v, "SessionToken").map(|t| Zeroizing::new(t.to_owned())),
        source: format!("{source} (credential_process)"),
    })
}

/// `AssumeRoleWithWebIdentity` (unsigned) with the token file's JWT.
fn web_identity(ctx: &Ctx, file: &str, role: &str, region: &str, partition: &str) -> Result<Creds, AwsError> {
    let token = std::fs::read_to_string(file)
        .map(Zeroizing::new)
        .map_err(|e| AwsError::TokenFile {
            variable: "AWS_WEB_IDENTITY_TOKEN_FILE",
            file: file.to_owned(),
            source: Arc::new(e),
        })?;
    let session = ctx.env.var("AWS_ROLE_SESSION_NAME").unwrap_or_else(session_name);
    let body = Zeroizing::new(form_encode(&[
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", &session),
        ("WebIdentityToken", token.trim()),
    ]));
    let url = format!("{}/", endpoint(ctx, "sts", region, partition));
    let reply = ctx
        .http
        .send(
            "POST",
            &url,
            &[],
            Body::Raw("application/x-www-form-urlencoded", body.as_bytes()),
        )
        .map_err(|source| AwsError::Http {
            call: AwsCall::AssumeRoleWithWebIdentity {
                role: role.to_owned(),
            },
            source,
        })?;
    sts_credentials(
        &reply,
        "AssumeRoleWithWebIdentity",
        role,
        format!("role {role} assumed with the web identity token {file}"),
    )
}

/// The JSON credentials of the container endpoint or the instance metadata service.
fn json_credentials(reply: &Reply, source: String) -> Result<Creds, AwsError> {
    let v = reply.json();
    let get = |field: &'static str| {
        json_str(&v, field).ok_or_else(|| AwsError::CredentialsIncomplete {
            from: source.clone(),
            field,
        })
    };
    Ok(Creds {
        key_id: get("AccessKeyId")?.to_owned(),
        secret: Zeroizing::new(get("SecretAccessKey")?.to_owned()),
        session: json_str(&v, "Token").map(|t| Zeroizing::new(t.to_owned())),
        source,
    })
}

/// Where the SDKs let container credentials (and the authorization token)
/// come from: any https URL; plain http only from loopback or the agents'
/// link-local addresses. URLs with user info are refused.
fn container_endpoint_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return false;
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => {
            host == "localhost"
                || ["169.254.170.2", "169.254.170.23", "fd00:ec2::23"].contains(&host)
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// ECS/EKS container credentials.
fn container(ctx: &Ctx) -> Result<Creds, AwsError> {
    let url = match ctx.env.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        Some(rel) => format!("{ECS_HOST}{rel}"),
        None => ctx
            .env
            .var("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .unwrap_or_default(),
    };
    let auth = match ctx.env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        Some(f) => Some(Zeroizing::new(
            std::fs::read_to_string(&f)
                .map_err(|e| AwsError::TokenFile {
                    variable: "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                    file: f.clone(),
                    source: Arc::new(e),
                })?
                .trim()
                .to_owned(),
        )),
        None => ctx
            .env
            .var("AWS_CONTAINER_AUTHORIZATION_TOKEN")
            .map(Zeroizing::new),
    };
    if !container_endpoint_allowed(&url) {
        return Err(AwsError::ContainerEndpointRefused);
    }
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let reply = ctx
        .http
        .send("GET", &url, &headers, Body::Empty)
        .map_err(|source| AwsError::Http {
            call: AwsCall::ContainerEndpoint,
            source,
        })?;
    if !reply.ok() {
        return Err(AwsError::ContainerStatus { status: reply.status });
    }
    json_credentials(&reply, "container credentials".into())
}

/// The instance role's credentials through IMDSv2 (session token first).
fn imds(ctx: &Ctx) -> Result<Creds, AwsError> {
    let base = ctx
        .env
        .var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|| IMDS.to_owned());
    let base = base.trim_end_matches('/');
    let host = super::http::host_of(base).to_owned();
    let said = |problem| AwsError::Imds {
        host: host.clone(),
        problem,
    };
    let token = ctx
        .http
        .send(
            "PUT",
            &format!("{base}/latest/api/token"),
            &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
            Body::Empty,
        )
        .map_err(AwsError::ImdsHttp)?;
    if !token.ok() {
        return Err(said(ImdsProblem::SessionTokenRefused { status: token.status }));
    }
    let header = [("X-aws-ec2-metadata-token", token.body.trim())];
    let roles_url = format!("{base}/latest/meta-data/iam/security-credentials/");
    let roles = ctx
        .http
        .send("GET", &roles_url, &header, Body::Empty)
        .map_err(AwsError::ImdsHttp)?;
    if roles.status == 404 {
        return Err(said(ImdsProblem::NoInstanceProfile));
    }
    let role = roles.body.lines().next().unwrap_or("").trim().to_owned();
    if !roles.ok() || role.is_empty() {
        return Err(said(ImdsProblem::RoleNotNamed { status: roles.status }));
    }
    let reply = ctx
        .http
        .send("GET", &format!("{roles_url}{role}"), &header, Body::Empty)
        .map_err(AwsError::ImdsHttp)?;
    if !reply.ok() {
        return Err(said(ImdsProblem::CredentialsRefused {
            role,
            status: reply.status,
        }));
    }
    json_credentials(
        &reply,
        format!("instance role {role} from the instance metadata service {host}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::kms::http::Transport;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/k";

    fn ctx(vars: &[(&str, &str)]) -> Ctx {
        Ctx::with_vars(vars)
    }

    fn refused(ctx: &Ctx, arn: &str, profile: &str) -> AwsError {
        Aws::default()
            .decrypt(ctx, arn, "", &[], profile, "AAAA")
            .expect_err("refused")
    }

    #[test]
    fn no_credentials_anywhere_is_its_own_refusal() {
        let home = tempfile::tempdir().unwrap();
        let home_s = home.path().to_str().unwrap();
        let files = format!("{home_s}/.aws/credentials / {home_s}/.aws/config");
        let err = refused(
            &ctx(&[("HOME", home_s), ("AWS_EC2_METADATA_DISABLED", "true")]),
            ARN,
            "",
        );
        assert!(
            matches!(err, AwsError::NoCredentials { imds: None, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "no AWS credentials: none in the environment or {files}, and AWS_EC2_METADATA_DISABLED is set"
            )
        );

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let err = refused(
            &ctx(&[("HOME", home_s), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)]),
            ARN,
            "",
        );
        let AwsError::NoCredentials { imds: Some(why), .. } = &err else {
            panic!("{err:?}");
        };
        assert!(
            matches!(
                &**why,
                AwsError::ImdsHttp(HttpError::Transport {
                    failure: Transport::ConnectionRefused,
                    ..
                })
            ),
            "{why:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "no AWS credentials: none in the environment or {files}, and the instance metadata service \
                 at 127.0.0.1:{port}: connection refused (not on EC2, or no network yet?)"
            )
        );
    }

    #[test]
    fn refused_stanza_fields_and_profiles_are_told_apart() {
        let err = refused(&ctx(&[]), "arn:aws:kms:eu-west-1.evil.com:1:key/k", "");
        assert!(matches!(err, AwsError::BadArn { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            r#""arn:aws:kms:eu-west-1.evil.com:1:key/k" is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"#
        );

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[profile sso]\nsso_start_url = https://x\n\n[profile broken]\ncredential_process = exit 3\n\n\
             [profile leaky]\ncredential_process = echo '{\"SecretAccessKey\": \"s3cr3t-value\"}'\n",
        )
        .unwrap();
        let config_s = config.to_str().unwrap();
        let missing = dir.path().join("credentials");
        let ctx = ctx(&[
            ("AWS_CONFIG_FILE", config_s),
            ("AWS_SHARED_CREDENTIALS_FILE", missing.to_str().unwrap()),
        ]);
        let err = refused(&ctx, ARN, "sso");
        assert!(
            matches!(
                err,
                AwsError::Profile {
                    problem: ProfileProblem::Sso,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("profile sso from {config_s}: IAM Identity Center (SSO) profiles are not supported")
        );
        let err = refused(&ctx, ARN, "broken");
        assert!(
            matches!(
                &err,
                AwsError::CredentialProcess {
                    problem: ProcessProblem::Failed(status),
                    ..
                } if status.code() == Some(3)
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("profile broken from {config_s}: credential_process failed (exit status: 3)")
        );
        let err = refused(&ctx, ARN, "leaky");
        assert!(
            matches!(
                err,
                AwsError::CredentialProcess {
                    problem: ProcessProblem::NoField("AccessKeyId"),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains("s3cr3t"), "{err:?}");
        let err = refused(&ctx, ARN, "absent");
        assert!(
            matches!(&err, AwsError::NoSuchProfile { profile, .. } if profile == "absent"),
            "{err:?}"
        );
    }

    #[test]
    fn container_credentials_from_elsewhere_are_refused_before_asking() {
        let home = tempfile::tempdir().unwrap();
        let err = refused(
            &ctx(&[
                ("HOME", home.path().to_str().unwrap()),
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://creds.example.org/x"),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "secret-auth-token"),
            ]),
            ARN,
            "",
        );
        assert!(matches!(err, AwsError::ContainerEndpointRefused), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("AWS_CONTAINER_CREDENTIALS_FULL_URI must be https")
        );
    }

    #[test]
    fn container_credentials_come_only_from_where_the_sdks_allow() {
        assert!(container_endpoint_allowed(
            "http://169.254.170.2/v2/credentials/x"
        ));
        assert!(container_endpoint_allowed("http://127.0.0.1:8080/creds"));
        assert!(container_endpoint_allowed("http://[fd00:ec2::23]/creds"));
        assert!(container_endpoint_allowed("https://creds.example.org/x"));
        assert!(!container_endpoint_allowed("http://creds.example.org/x"));
        assert!(!container_endpoint_allowed(
            "http://169.254.170.2@evil.example.org/x"
        ));
        assert!(!container_endpoint_allowed("ftp://127.0.0.1/x"));
        assert!(!container_endpoint_allowed(""));
    }

    #[test]
    fn arns_are_checked_like_sops() {
        assert_eq!(
            parse_arn("arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab").unwrap(),
            ("aws", "eu-west-1")
        );
        assert_eq!(
            parse_arn("arn:aws-cn:kms:cn-north-1:123456789012:alias/sops").unwrap(),
            ("aws-cn", "cn-north-1")
        );
        assert!(parse_arn("arn:aws:s3:::bucket").is_err());
        assert!(parse_arn("1234abcd-12ab").is_err());
        // A region or partition that would put another host into the endpoint.
        assert!(parse_arn("arn:aws:kms:eu-west-1.amazonaws.com@127.0.0.1/#:111122223333:key/k").is_err());
        assert!(parse_arn("arn:aws.evil:kms:eu-west-1:111122223333:key/k").is_err());
        assert!(parse_arn("arn:aws:kms:EU-WEST-1:111122223333:key/k").is_err());
    }

    #[test]
    fn ini_sections_of_config_and_credentials_files() {
        let text = "[default]\nregion = eu-west-1\n\n[profile prod]\nrole_arn = arn:aws:iam::1:role/r\n\
                    source_profile = base\n# comment\n[base]\naws_access_key_id=AKIA\n";
        assert_eq!(ini_section(text, "default").unwrap()["region"], "eu-west-1");
        assert_eq!(
            ini_section(text, "profile prod").unwrap()["source_profile"],
            "base"
        );
        assert_eq!(ini_section(text, "base").unwrap()["aws_access_key_id"], "AKIA");
        assert!(ini_section(text, "prod").is_none());
    }

    #[test]
    fn sts_xml_fields_are_found_and_unescaped() {
        let xml = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>\
                   <SecretAccessKey>a&amp;b</SecretAccessKey></Credentials></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(xml_tag(xml, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_tag(xml, "SecretAccessKey").as_deref(), Some("a&b"));
        assert_eq!(xml_tag(xml, "SessionToken"), None);
    }
}
