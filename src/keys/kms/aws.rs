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
use std::sync::Mutex;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::http::{Body, Reply, form_encode};
use super::{Ctx, json_str};

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
    base: Mutex<HashMap<String, Result<Creds, String>>>,
    roles: Mutex<HashMap<(String, String), Result<Creds, String>>>,
}

/// The partition and region of a KMS key ARN, checked as sops checks it.
fn parse_arn(arn: &str) -> Result<(&str, &str), String> {
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
        Err(format!(
            "{arn:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"
        ))
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
    ) -> Result<(Zeroizing<Vec<u8>>, String), String> {
        let (partition, region) = parse_arn(arn)?;
        STANDARD
            .decode(enc.trim())
            .map_err(|e| format!("the stanza's ciphertext is not base64: {e}"))?;
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
            "kms",
            region,
            &url,
            &[("x-amz-target", "TrentService.Decrypt")],
            "application/x-amz-json-1.1",
            &body,
        )
        .map_err(|e| format!("AWS KMS: {e}"))?;
        if !reply.ok() {
            return Err(kms_error(&reply, &creds, arn, context));
        }
        #[derive(serde::Deserialize)]
        struct Decrypted {
            #[serde(rename = "Plaintext")]
            plaintext: Zeroizing<String>,
        }
        let answer: Decrypted = reply.parse().ok_or("AWS KMS answered without a Plaintext")?;
        Ok((
            super::decode_share(&answer.plaintext)
                .ok_or("AWS KMS answered with a plaintext that is not base64")?,
            creds.source.clone(),
        ))
    }
}

/// A SigV4-signed POST.
#[allow(clippy::too_many_arguments)]
fn signed(
    ctx: &Ctx,
    creds: &Creds,
    service: &str,
    region: &str,
    url: &str,
    extra: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> Result<Reply, String> {
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
        .map_err(|e| format!("cannot sign the request: {e}"))?
        .into();
    let signable = SignableRequest::new("POST", url, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| format!("cannot sign the request: {e}"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("cannot sign the request: {e}"))?
        .into_parts();
    let signature: Vec<(String, Zeroizing<String>)> = instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), Zeroizing::new(v.to_owned())))
        .collect();
    let mut all: Vec<(&str, &str)> = extra.to_vec();
    all.extend(signature.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    ctx.http
        .send("POST", url, &all, Body::Raw(content_type, body))
        .map_err(|e| e.to_string())
}

/// An AWS JSON-protocol error (`{"__type": "...#AccessDeniedException", "message": ...}`) in words.
fn kms_error(reply: &Reply, creds: &Creds, arn: &str, context: &[(String, String)]) -> String {
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
    match kind.as_str() {
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
fn sts_credentials(reply: &Reply, action: &str, role: &str, source: String) -> Result<Creds, String> {
    if !reply.ok() {
        let code = xml_tag(&reply.body, "Code").unwrap_or_default();
        let message = xml_tag(&reply.body, "Message").unwrap_or_default();
        return Err(format!(
            "STS {action} of {role} failed: HTTP {} {code}: {message}",
            reply.status
        ));
    }
    let get = |t: &str| xml_tag(&reply.body, t).ok_or_else(|| format!("STS {action} answered without {t}"));
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

fn assume_role(ctx: &Ctx, base: &Creds, role: &str, region: &str, partition: &str) -> Result<Creds, String> {
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
        "sts",
        region,
        &url,
        &[],
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    )
    .map_err(|e| format!("STS AssumeRole of {role}: {e}"))?;
    sts_credentials(
        &reply,
        "AssumeRole",
        role,
        format!("role {role} assumed with {}", base.source),
    )
    .map_err(|e| format!("{e} (with {})", base.source))
}

/// The credential chain, for a named profile or (empty) the default chain.
fn base_credentials(ctx: &Ctx, profile: &str, region: &str, partition: &str) -> Result<Creds, String> {
    if !profile.is_empty() {
        return from_profile(ctx, profile, region, partition, 0)?
            .ok_or_else(|| format!("AWS profile {profile:?} is not in {}", files_described(ctx)));
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
        return Err(format!(
            "no AWS credentials: none in the environment or {}, and AWS_EC2_METADATA_DISABLED is set",
            files_described(ctx)
        ));
    }
    imds(ctx).map_err(|e| {
        format!(
            "no AWS credentials: none in the environment or {}, and the instance metadata service {e} \
             (not on EC2, or no network yet?)",
            files_described(ctx)
        )
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
) -> Result<Option<Creds>, String> {
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
    if let Some(role) = s.get("role_arn") {
        let Some(src) = s.get("source_profile") else {
            return Err(format!(
                "{source}: role_arn without source_profile (credential_source, web identity) is not supported"
            ));
        };
        if depth > 4 {
            return Err(format!("{source}: source_profile chain too long"));
        }
        let base = from_profile(ctx, src, region, partition, depth + 1)?
            .ok_or_else(|| format!("{source}: its source_profile {src:?} does not exist"))?;
        return assume_role(ctx, &base, role, region, partition).map(Some);
    }
    if let Some(cmd) = s.get("credential_process") {
        return credential_process(cmd, &source).map(Some);
    }
    if s.keys().any(|k| k.starts_with("sso_")) {
        return Err(format!(
            "{source}: IAM Identity Center (SSO) profiles are not supported"
        ));
    }
    // A profile with only settings (region, output) holds no credentials.
    Ok(None)
}

/// `credential_process`: a command printing `{"Version": 1, "AccessKeyId", ...}`.
fn credential_process(cmd: &str, source: &str) -> Result<Creds, String> {
    let out = crate::process::run(
        std::process::Command::new("/bin/sh").arg("-c").arg(cmd),
        b"",
        super::HELPER_TIMEOUT,
    )
    .map_err(|e| match e {
        crate::process::RunError::TimedOut(t) => format!(
            "{source}: credential_process did not finish within {} s and was stopped",
            t.as_secs()
        ),
        crate::process::RunError::Spawn(e) | crate::process::RunError::Wait(e) => {
            format!("{source}: credential_process cannot run: {e}")
        }
    })?;
    let text = Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
    if !out.status.success() {
        return Err(format!("{source}: credential_process failed ({})", out.status));
    }
    let v: Value =
        serde_json::from_str(&text).map_err(|_| format!("{source}: credential_process printed no JSON"))?;
    Ok(Creds {
        key_id: json_str(&v, "AccessKeyId")
            .ok_or_else(|| format!("{source}: credential_process printed no AccessKeyId"))?
            .to_owned(),
        secret: Zeroizing::new(
            json_str(&v, "SecretAccessKey")
                .ok_or_else(|| format!("{source}: credential_process printed no SecretAccessKey"))?
                .to_owned(),
        ),
        session: json_str(&v, "SessionToken").map(|t| Zeroizing::new(t.to_owned())),
        source: format!("{source} (credential_process)"),
    })
}

/// `AssumeRoleWithWebIdentity` (unsigned) with the token file's JWT.
fn web_identity(ctx: &Ctx, file: &str, role: &str, region: &str, partition: &str) -> Result<Creds, String> {
    let token = std::fs::read_to_string(file)
        .map(Zeroizing::new)
        .map_err(|e| format!("AWS_WEB_IDENTITY_TOKEN_FILE {file}: {e}"))?;
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
        .map_err(|e| format!("STS AssumeRoleWithWebIdentity of {role}: {e}"))?;
    sts_credentials(
        &reply,
        "AssumeRoleWithWebIdentity",
        role,
        format!("role {role} assumed with the web identity token {file}"),
    )
}

/// The JSON credentials of the container endpoint or the instance metadata service.
fn json_credentials(reply: &Reply, source: String) -> Result<Creds, String> {
    let v = reply.json();
    let get = |k: &str| json_str(&v, k).ok_or_else(|| format!("{source} answered without {k}"));
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
fn container(ctx: &Ctx) -> Result<Creds, String> {
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
                .map_err(|e| format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {f}: {e}"))?
                .trim()
                .to_owned(),
        )),
        None => ctx
            .env
            .var("AWS_CONTAINER_AUTHORIZATION_TOKEN")
            .map(Zeroizing::new),
    };
    if !container_endpoint_allowed(&url) {
        return Err(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https, or http on loopback or the ECS/EKS agent \
             addresses (169.254.170.2, 169.254.170.23, fd00:ec2::23), as in the AWS SDKs"
                .into(),
        );
    }
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let reply = ctx
        .http
        .send("GET", &url, &headers, Body::Empty)
        .map_err(|e| format!("container credentials endpoint: {e}"))?;
    if !reply.ok() {
        return Err(format!(
            "container credentials endpoint answered HTTP {}",
            reply.status
        ));
    }
    json_credentials(&reply, "container credentials".into())
}

/// The instance role's credentials through IMDSv2 (session token first).
fn imds(ctx: &Ctx) -> Result<Creds, String> {
    let base = ctx
        .env
        .var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|| IMDS.to_owned());
    let base = base.trim_end_matches('/');
    let host = super::http::host_of(base).to_owned();
    let token = ctx
        .http
        .send(
            "PUT",
            &format!("{base}/latest/api/token"),
            &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
            Body::Empty,
        )
        .map_err(|e| format!("at {e}"))?;
    if !token.ok() {
        return Err(format!(
            "at {host} refused an IMDSv2 session token: HTTP {}",
            token.status
        ));
    }
    let header = [("X-aws-ec2-metadata-token", token.body.trim())];
    let roles_url = format!("{base}/latest/meta-data/iam/security-credentials/");
    let roles = ctx
        .http
        .send("GET", &roles_url, &header, Body::Empty)
        .map_err(|e| format!("at {e}"))?;
    if roles.status == 404 {
        return Err(format!(
            "at {host} says this instance has no IAM role (instance profile)"
        ));
    }
    let role = roles.body.lines().next().unwrap_or("").trim().to_owned();
    if !roles.ok() || role.is_empty() {
        return Err(format!(
            "at {host} named no instance role (HTTP {})",
            roles.status
        ));
    }
    let reply = ctx
        .http
        .send("GET", &format!("{roles_url}{role}"), &header, Body::Empty)
        .map_err(|e| format!("at {e}"))?;
    if !reply.ok() {
        return Err(format!(
            "at {host} gave no credentials for role {role}: HTTP {}",
            reply.status
        ));
    }
    json_credentials(
        &reply,
        format!("instance role {role} from the instance metadata service {host}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
