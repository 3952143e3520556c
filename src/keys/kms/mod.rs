//! Cloud key services: data-key shares wrapped by a key that lives in a
//! network service (Google Cloud KMS, HashiCorp Vault transit, AWS KMS,
//! Azure Key Vault) and unwrapped by asking that service at activation.
//!
//! [`Kms`] is what [`Keyring`](super::Keyring) asks for such stanzas. It finds
//! credentials the way each vendor's own SDKs do (Application Default
//! Credentials, the AWS credential chain, `VAULT_TOKEN`, managed identity ...),
//! reading the process environment only when the first network stanza is met,
//! so runs with local keys alone never pay for it.
//!
//! Every request has bounded timeouts (a host without network must not hang
//! the boot), a host that did not answer is not asked again in the same run,
//! and credentials are fetched once per run. Every attempt is logged with
//! journal fields `SOPS_KEY_SOURCE`, `SOPS_KEY_RESOURCE` and
//! `SOPS_KEY_OUTCOME`; tokens, keys and plaintext never reach a message.

#[cfg(feature = "aws-kms")]
mod aws;
#[cfg(feature = "azure-kv")]
mod azure;
#[cfg(feature = "gcp-kms")]
mod gcp;
// Builds with only some sources leave parts of the shared client unused.
#[cfg_attr(not(feature = "kms"), allow(dead_code))]
mod http;
#[cfg(feature = "vault")]
mod vault;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::log::{Logger, Priority};
use crate::sops::metadata::Stanza;

#[cfg(feature = "aws-kms")]
pub use aws::{AwsCall, AwsError, ImdsProblem, ProcessProblem, ProfileProblem};
#[cfg(feature = "azure-kv")]
pub use azure::{AzureEndpoint, AzureError, ChallengeProblem, CliProblem};
#[cfg(feature = "gcp-kms")]
pub use gcp::{GcpEndpoint, GcpError, KeyProblem, SourceProblem};
pub use http::{HttpError, OAuthError, Transport, UrlError, UrlProblem};
#[cfg(feature = "vault")]
pub use vault::{NoTokenFile, VaultError};

/// Why a network stanza was not opened: one variant per key service (each
/// with its own enum, so a caller can tell a missing credential from a
/// refusal, an unreachable service or a refused stanza field), shown as the
/// service's message. Never holds a token, a key or plaintext.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KmsError {
    /// A stanza of a key service this build was compiled without.
    #[error("{kind} keys are not supported by this build")]
    Unsupported {
        /// The stanza's kind (`gcp_kms`, `hc_vault`, `kms`, `azure_kv`, `hckms`).
        kind: &'static str,
    },
    /// Google Cloud KMS.
    #[cfg(feature = "gcp-kms")]
    #[error(transparent)]
    Gcp(#[from] GcpError),
    /// HashiCorp Vault transit.
    #[cfg(feature = "vault")]
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// AWS KMS.
    #[cfg(feature = "aws-kms")]
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Azure Key Vault.
    #[cfg(feature = "azure-kv")]
    #[error(transparent)]
    Azure(#[from] AzureError),
}

/// Where credentials and endpoints come from: the process environment, or a
/// fixed set of variables (tests, embedding).
#[derive(Clone, Default)]
pub struct Env {
    fixed: Option<HashMap<String, String>>,
}

/// Names only: a fixed environment may hold tokens and secret keys.
impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fixed {
            None => f.write_str("Env(process)"),
            Some(map) => {
                let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
                names.sort_unstable();
                write!(f, "Env(fixed: {})", names.join(", "))
            }
        }
    }
}

impl Env {
    /// The process environment, read when asked.
    pub fn process() -> Env {
        Env { fixed: None }
    }

    /// Exactly these variables and no others.
    pub fn fixed<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Env {
        Env {
            fixed: Some(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect()),
        }
    }

    /// A variable's value; unset and empty are the same, as in the vendors' SDKs.
    pub(crate) fn var(&self, name: &str) -> Option<String> {
        let v = match &self.fixed {
            None => std::env::var(name).ok(),
            Some(map) => map.get(name).cloned(),
        };
        v.filter(|v| !v.is_empty())
    }

    #[cfg_attr(not(feature = "kms"), allow(dead_code))]
    /// The home directory: `$HOME`, else (in the process environment) the
    /// user's passwd entry, since systemd units run without `HOME` unless they set `User=`.
    pub(crate) fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from).or_else(|| {
            self.fixed.is_none().then(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.dir)
            })?
        })
    }
}

/// How long one request may take before the source is given up: connecting
/// (including DNS) and the whole exchange. `SOPS_INSTALL_SECRETS_KMS_TIMEOUT`
/// (seconds) overrides the total for slow links.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub total: Duration,
}

impl Timeouts {
    fn from_env(env: &Env) -> Timeouts {
        let total = env
            .var("SOPS_INSTALL_SECRETS_KMS_TIMEOUT")
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            // At most five minutes: a boot must not wait longer on one request.
            .map_or(Duration::from_secs(5), |s| Duration::from_secs_f64(s.min(300.0)));
        Timeouts {
            connect: total.min(Duration::from_secs(3)),
            total,
        }
    }
}

/// How long a credential helper program (an AWS `credential_process`, the
/// Azure CLI) may run: it may itself ask a service, but must not hang a boot.
#[cfg_attr(not(feature = "kms"), allow(dead_code))]
pub(crate) const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the sources share: the environment and one HTTP client.
pub(crate) struct Ctx {
    pub env: Env,
    pub http: http::Http,
}

#[cfg(test)]
impl Ctx {
    /// A context whose environment holds only `vars`, for unit tests.
    pub(crate) fn with_vars(vars: &[(&str, &str)]) -> Ctx {
        let env = Env::fixed(vars.iter().copied());
        Ctx {
            http: http::Http::new(Timeouts::from_env(&env)),
            env,
        }
    }
}

/// Opens stanzas of network key services. Cheap to create: nothing is read
/// or connected before the first network stanza.
#[derive(Default)]
pub struct Kms {
    env: Env,
    ctx: OnceLock<Ctx>,
    logger: OnceLock<Logger>,
    #[cfg(feature = "gcp-kms")]
    gcp: gcp::Gcp,
    #[cfg(feature = "vault")]
    vault: vault::Vault,
    #[cfg(feature = "aws-kms")]
    aws: aws::Aws,
    #[cfg(feature = "azure-kv")]
    azure: azure::Azure,
}

impl Kms {
    /// Credentials and endpoints from the process environment.
    pub fn from_env() -> Kms {
        Kms::with_env(Env::process())
    }

    /// Credentials and endpoints from `env` only.
    pub fn with_env(env: Env) -> Kms {
        Kms {
            env,
            ..Kms::default()
        }
    }

    fn ctx(&self) -> &Ctx {
        self.ctx.get_or_init(|| Ctx {
            http: http::Http::new(Timeouts::from_env(&self.env)),
            env: self.env.clone(),
        })
    }

    /// Opens one network stanza: the unwrapped data-key share, or why not
    /// (one line that names what failed and never holds a secret).
    pub fn open(&self, stanza: &Stanza) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let result: Result<_, KmsError> = match stanza {
            #[cfg(feature = "gcp-kms")]
            Stanza::GcpKms { resource_id, enc } => {
                self.gcp.decrypt(self.ctx(), resource_id, enc).map_err(Into::into)
            }
            #[cfg(feature = "vault")]
            Stanza::HcVault {
                address,
                engine_path,
                key_name,
                enc,
            } => self
                .vault
                .decrypt(self.ctx(), address, engine_path, key_name, enc)
                .map_err(Into::into),
            #[cfg(feature = "aws-kms")]
            Stanza::AwsKms {
                arn,
                role,
                context,
                aws_profile,
                enc,
            } => self
                .aws
                .decrypt(self.ctx(), arn, role, context, aws_profile, enc)
                .map_err(Into::into),
            #[cfg(feature = "azure-kv")]
            Stanza::AzureKv {
                vault_url,
                name,
                version,
                enc,
            } => self
                .azure
                .decrypt(self.ctx(), vault_url, name, version, enc)
                .map_err(Into::into),
            other => return Err(KmsError::Unsupported { kind: other.kind() }),
        };
        self.log(stanza, &result);
        result.map(|(share, _)| share)
    }

    fn log(&self, stanza: &Stanza, result: &Result<(Zeroizing<Vec<u8>>, String), KmsError>) {
        let logger = self.logger.get_or_init(Logger::from_env);
        let (source, resource) = (stanza.kind(), stanza.target());
        let (priority, message, outcome) = match result {
            Ok((_, how)) => (
                Priority::Info,
                format!("{source} {resource}: data key unwrapped ({how})"),
                "unwrapped",
            ),
            Err(why) => (Priority::Warning, format!("{source} {resource}: {why}"), "failed"),
        };
        logger.log(
            priority,
            &message,
            &[
                ("key_source", source),
                ("key_resource", &resource),
                ("key_outcome", outcome),
            ],
        );
    }
}

/// Whether a stanza field can go into a URL path as it is: a non-empty path of
/// `[A-Za-z0-9._~@:=+-]` segments (no `?`, `#`, `%`, spaces, empty, `.` or
/// `..` segments), so a crafted stanza cannot change which endpoint is asked.
#[cfg_attr(not(feature = "kms"), allow(dead_code))]
pub(crate) fn plain_url_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._~@:=+-".contains(c))
        })
}

/// An unwrapped data-key share as a service answers it, base64 (standard
/// alphabet) in a zeroized string; decoded straight into a zeroized buffer.
#[cfg_attr(not(feature = "kms"), allow(dead_code))]
/// `None` when it is not base64; base64's error is dropped on purpose, as it
/// may quote a byte of the key.
pub(crate) fn decode_share(b64: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .map(Zeroizing::new)
}

/// A JSON field as text, for reading responses.
#[cfg_attr(not(feature = "kms"), allow(dead_code))]
pub(crate) fn json_str<'a>(v: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(serde_json::Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_environment_hides_the_process_one() {
        let env = Env::fixed([("VAULT_ADDR", "http://127.0.0.1:8200"), ("EMPTY", "")]);
        assert_eq!(env.var("VAULT_ADDR").as_deref(), Some("http://127.0.0.1:8200"));
        assert_eq!(env.var("EMPTY"), None);
        assert_eq!(env.var("PATH"), None);
        assert_eq!(env.home(), None);
    }

    #[test]
    fn local_and_unsupported_stanzas_are_not_sent_anywhere() {
        let kms = Kms::with_env(Env::fixed::<&str, &str>([]));
        let huawei = Stanza::HuaweiKms {
            key_id: "k".into(),
            enc: "e".into(),
        };
        assert_eq!(
            kms.open(&huawei).err().map(|e| e.to_string()).as_deref(),
            Some("hckms keys are not supported by this build")
        );
        assert!(kms.ctx.get().is_none(), "no HTTP client was built");
    }

    #[test]
    fn an_unsupported_stanza_is_its_own_variant() {
        let kms = Kms::with_env(Env::fixed::<&str, &str>([]));
        let huawei = Stanza::HuaweiKms {
            key_id: "k".into(),
            enc: "e".into(),
        };
        let err = kms.open(&huawei).unwrap_err();
        assert!(matches!(err, KmsError::Unsupported { kind: "hckms" }), "{err:?}");
    }

    #[cfg(feature = "kms")]
    use super::http::closed_port;

    #[cfg(feature = "kms")]
    #[test]
    fn each_service_says_which_refusal_happened() {
        let home = tempfile::tempdir().unwrap();
        let home = home.path().to_str().unwrap();
        let gce = format!("127.0.0.1:{}", closed_port());
        let azure_imds = format!("http://127.0.0.1:{}", closed_port());
        let kms = Kms::with_env(Env::fixed([
            ("HOME", home),
            ("GCE_METADATA_HOST", &gce),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &azure_imds),
            ("SOPS_HC_VAULT_ALLOWLIST", "http://127.0.0.1:1"),
        ]));
        let open = |stanza: Stanza| kms.open(&stanza).unwrap_err();

        // Missing credentials.
        let err = open(Stanza::GcpKms {
            resource_id: "projects/p/locations/global/keyRings/r/cryptoKeys/k".into(),
            enc: "AAAA".into(),
        });
        assert!(
            matches!(err, KmsError::Gcp(GcpError::NoCredentials { .. })),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("no Google credentials: "), "{err}");
        let err = open(Stanza::HcVault {
            address: "http://127.0.0.1:1".into(),
            engine_path: "transit".into(),
            key_name: "k".into(),
            enc: "vault:v1:AAAA".into(),
        });
        assert!(
            matches!(
                err,
                KmsError::Vault(VaultError::NoToken(NoTokenFile::Unreadable { .. }))
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "no Vault token: VAULT_TOKEN is unset and {home}/.vault-token cannot be read: "
            )),
            "{err}"
        );
        let err = open(Stanza::AwsKms {
            arn: "arn:aws:kms:eu-west-1:111122223333:key/k".into(),
            role: String::new(),
            context: Vec::new(),
            aws_profile: String::new(),
            enc: "AAAA".into(),
        });
        assert!(
            matches!(err, KmsError::Aws(AwsError::NoCredentials { imds: None, .. })),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "no AWS credentials: none in the environment or {home}/.aws/credentials / \
                 {home}/.aws/config, and AWS_EC2_METADATA_DISABLED is set"
            )
        );
        let err = open(Stanza::AzureKv {
            vault_url: "https://acme.vault.azure.net".into(),
            name: "k".into(),
            version: "v".into(),
            enc: "AAEC".into(),
        });
        assert!(
            matches!(err, KmsError::Azure(AzureError::NoCredentials { .. })),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("no Azure credentials: "), "{err}");

        // Refused stanza fields: nothing is asked.
        let err = open(Stanza::GcpKms {
            resource_id: "projects/p/../k".into(),
            enc: "AAAA".into(),
        });
        assert!(
            matches!(err, KmsError::Gcp(GcpError::BadResourceId { .. })),
            "{err:?}"
        );
        let err = open(Stanza::HcVault {
            address: "https://vault.elsewhere.example".into(),
            engine_path: "transit".into(),
            key_name: "k".into(),
            enc: "vault:v1:AAAA".into(),
        });
        assert!(
            matches!(err, KmsError::Vault(VaultError::NotAllowed { .. })),
            "{err:?}"
        );
        let err = open(Stanza::AwsKms {
            arn: "arn:aws:kms:eu-west-1.evil.example:1:key/k".into(),
            role: String::new(),
            context: Vec::new(),
            aws_profile: String::new(),
            enc: "AAAA".into(),
        });
        assert!(matches!(err, KmsError::Aws(AwsError::BadArn { .. })), "{err:?}");
        let err = open(Stanza::AzureKv {
            vault_url: "http://acme.vault.azure.net".into(),
            name: "k".into(),
            version: "v".into(),
            enc: "AAEC".into(),
        });
        assert!(
            matches!(
                err,
                KmsError::Azure(AzureError::NotHttps {
                    what: "Key Vault",
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "Key Vault acme.vault.azure.net is not https: credentials are only sent over TLS"
        );
    }

    #[test]
    fn timeouts_are_bounded_and_adjustable() {
        let t = Timeouts::from_env(&Env::fixed::<&str, &str>([]));
        assert_eq!(
            (t.connect, t.total),
            (Duration::from_secs(3), Duration::from_secs(5))
        );
        let t = Timeouts::from_env(&Env::fixed([("SOPS_INSTALL_SECRETS_KMS_TIMEOUT", "1.5")]));
        assert_eq!(
            (t.connect, t.total),
            (Duration::from_secs_f64(1.5), Duration::from_secs_f64(1.5))
        );
        let t = Timeouts::from_env(&Env::fixed([("SOPS_INSTALL_SECRETS_KMS_TIMEOUT", "-1")]));
        assert_eq!(t.total, Duration::from_secs(5));
        let t = Timeouts::from_env(&Env::fixed([("SOPS_INSTALL_SECRETS_KMS_TIMEOUT", "1e30")]));
        assert_eq!(t.total, Duration::from_secs(300));
    }

    #[test]
    fn debug_output_names_variables_but_never_shows_their_values() {
        let env = Env::fixed([("VAULT_TOKEN", "hvs.very-secret"), ("AWS_REGION", "eu-west-1")]);
        let shown = format!("{env:?}");
        assert_eq!(shown, "Env(fixed: AWS_REGION, VAULT_TOKEN)");
    }

    #[test]
    fn only_plain_paths_go_into_urls() {
        assert!(plain_url_path(
            "projects/p-1/locations/global/keyRings/r/cryptoKeys/k"
        ));
        assert!(plain_url_path("transit"));
        assert!(plain_url_path("sops.key-1"));
        for bad in [
            "", "a//b", "../sys", "a/./b", "k?x=1", "k#f", "k%2F", "a b", "/abs", "k/",
        ] {
            assert!(!plain_url_path(bad), "{bad:?} was accepted");
        }
    }
}
