//! The one HTTP client every key service uses: blocking (this is a oneshot
//! tool; there is nothing to do while waiting), rustls with the system's
//! trust store, bounded timeouts, and errors that say what failed in words a
//! person can act on ("timed out after 5 s", "DNS lookup failed").
//!
//! A host that did not answer (DNS failure, refused or timed-out connection)
//! is remembered and not asked again in this run: ten files wrapped by the
//! same unreachable KMS cost one timeout, not ten.
//!
//! URLs with user information (`user:pass@host`) are refused: what the
//! request goes to is always the host a message names, and a password never
//! reaches a message.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use zeroize::Zeroizing;

use super::Timeouts;

/// A response: the status and the body. The body may hold a token or key
/// material, so it is zeroized on drop.
pub(crate) struct Reply {
    pub status: u16,
    pub body: Zeroizing<String>,
    /// The `WWW-Authenticate` challenge, if any (Key Vault names its token scope there).
    pub www_authenticate: Option<String>,
}

impl Reply {
    /// The body as JSON (`Null` if it is not JSON, as error pages may be).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as a typed answer, `None` if it does not fit `T`. Fields
    /// that hold secrets (tokens, key material) should be
    /// `Zeroizing<String>`, which a [`serde_json::Value`] cannot be. serde's
    /// error is dropped on purpose: it may quote the value it choked on.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(&self.body).ok()
    }

    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// An OAuth 2.0 token endpoint's answer (RFC 6749 §5): the access token,
    /// or what the endpoint said instead (`invalid_grant: description`), for
    /// the caller to put in its message.
    pub fn oauth_token(&self) -> Result<Zeroizing<String>, OAuthError> {
        #[derive(serde::Deserialize)]
        struct Granted {
            access_token: Zeroizing<String>,
        }
        if self.ok()
            && let Some(t) = self.parse::<Granted>()
        {
            return Ok(t.access_token);
        }
        let v = self.json();
        let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
        Err(match (field("error"), field("error_description")) {
            (Some(e), d) => OAuthError::Refused {
                error: e.to_owned(),
                description: d.map(|d| d.lines().next().unwrap_or("").to_owned()),
            },
            _ if self.ok() => OAuthError::NoAccessToken,
            _ => OAuthError::Unexplained,
        })
    }
}

/// What a token endpoint said instead of an access token (RFC 6749 §5.2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// An OAuth error answer: `invalid_grant: description` (first line).
    #[error("{error}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        /// The `error` code.
        error: String,
        /// The first line of `error_description`, if any.
        description: Option<String>,
    },
    /// A 2xx answer that holds no `access_token`.
    #[error("an answer without an access_token")]
    NoAccessToken,
    /// A failure without an OAuth error in it (an error page, an empty body).
    #[error("no OAuth error in the answer")]
    Unexplained,
}

/// What is wrong with a URL that [`Target::parse`] refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Not a URL at all.
    #[error("not a valid URL")]
    Invalid,
    /// A relative URL, or one without a scheme or host part.
    #[error("not an absolute http(s) URL")]
    NotAbsolute,
    /// `user:pass@host`: the host a message names must be the one asked,
    /// and a password must never reach a message.
    #[error("a URL with user information (user@host) is refused; credentials do not go in URLs")]
    UserInformation,
    /// Another scheme than `http` or `https`.
    #[error("not an http(s) URL")]
    NotHttp,
    /// An empty host.
    #[error("a URL without a host")]
    NoHost,
}

/// A URL that is not sent to, named by its host only (never the whole URL).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{host}: {problem}")]
pub struct UrlError {
    /// `host[:port]` as [`host_of`] shows it.
    pub host: String,
    /// What is wrong.
    #[source]
    pub problem: UrlProblem,
}

/// Why no HTTP answer came back from a host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Transport {
    /// The name did not resolve within the connect timeout.
    #[error("DNS lookup timed out after {} s (is the network up?)", .after.as_secs_f64())]
    DnsTimeout {
        /// The connect timeout.
        after: Duration,
    },
    /// No connection within the connect timeout.
    #[error("connection timed out after {} s (is the network up?)", .after.as_secs_f64())]
    ConnectTimeout {
        /// The connect timeout.
        after: Duration,
    },
    /// Connected, but the exchange did not finish within the total timeout.
    #[error("no answer within {} s, gave up", .within.as_secs_f64())]
    NoAnswer {
        /// The total timeout.
        within: Duration,
    },
    /// The name does not resolve.
    #[error("DNS lookup failed: host not found")]
    HostNotFound,
    /// Nothing listens there.
    #[error("connection refused")]
    ConnectionRefused,
    /// The system's own connect timeout.
    #[error("connection timed out (is the network up?)")]
    ConnectionTimedOut,
    /// No route to the host or its network.
    #[error("{detail} (is the network up?)")]
    NoRoute {
        /// The system's words.
        detail: String,
    },
    /// The connection failed otherwise.
    #[error("connection failed")]
    ConnectionFailed,
    /// The TLS handshake failed (an untrusted certificate, a protocol mismatch).
    #[error("TLS error: {detail}")]
    Tls {
        /// rustls's words.
        detail: String,
    },
    /// Another I/O failure (an answer that is not UTF-8, a reset connection).
    #[error("I/O error: {detail}")]
    Io {
        /// The system's words.
        detail: String,
    },
    /// Anything else the HTTP client reports.
    #[error("{detail}")]
    Other {
        /// The client's words.
        detail: String,
    },
}

impl Transport {
    /// Whether the host counts as unreachable, not to be asked again in this run.
    fn unreachable(&self) -> bool {
        !matches!(
            self,
            Transport::Tls { .. } | Transport::Io { .. } | Transport::Other { .. }
        )
    }
}

/// Why [`Http::send`] has no answer: every HTTP status is an answer, so
/// this is a refused URL or a failed exchange. Names the host, never the URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL is refused before anything is sent.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The host failed earlier in this run and is not asked again.
    #[error("{host} did not answer earlier in this run ({earlier})")]
    NotAskedAgain {
        /// `host[:port]`.
        host: String,
        /// How it failed then.
        earlier: Transport,
    },
    /// The request could not be put together (a header value that is not allowed).
    #[error("cannot build a request to {host}: {detail}")]
    Request {
        /// `host[:port]`.
        host: String,
        /// The client's words.
        detail: String,
    },
    /// No answer came back.
    #[error("{host}: {failure}")]
    Transport {
        /// `host[:port]`.
        host: String,
        /// Why.
        #[source]
        failure: Transport,
    },
    /// An answer began but could not be read whole.
    #[error("{host}: reading the answer failed: {failure}")]
    Reading {
        /// `host[:port]`.
        host: String,
        /// Why.
        #[source]
        failure: Transport,
    },
}

/// What to send.
pub(crate) enum Body<'a> {
    /// No body (GET).
    Empty,
    /// `application/json`.
    Json(&'a serde_json::Value),
    /// `application/x-www-form-urlencoded`.
    Form(&'a [(&'a str, &'a str)]),
    /// Bytes with a content type (a body that was signed as it is).
    Raw(&'a str, &'a [u8]),
}

pub(crate) struct Http {
    /// For every other host; honours `HTTPS_PROXY` and the like.
    agent: ureq::Agent,
    /// For hosts that [`Target::goes_direct`]: never through a proxy.
    direct: ureq::Agent,
    timeouts: Timeouts,
    /// Hosts that did not answer, and why.
    unreachable: Mutex<HashMap<String, Transport>>,
}

/// `host[:port]` of a URL, for messages and the unreachable list; user
/// information (`user:pass@`) is left out, as [`Http::send`] refuses it.
pub(crate) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// What a URL points at, parsed the way the request will be sent
/// (`ureq::http::Uri`).
#[derive(Debug, PartialEq)]
pub(crate) struct Target {
    /// Lower-case (`https`, `http`).
    pub scheme: String,
    /// Lower-case, without IPv6 brackets or a trailing dot.
    pub host: String,
    pub port: Option<u16>,
}

impl Target {
    /// Parses an absolute `http(s)` URL; refuses one with user information.
    /// Errors name at most the host, never the URL.
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        let refused = |problem| UrlError {
            host: host_of(url).to_owned(),
            problem,
        };
        let uri: ureq::http::Uri = url.parse().map_err(|_| refused(UrlProblem::Invalid))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(refused(UrlProblem::NotAbsolute));
        };
        if authority.as_str().contains('@') {
            return Err(refused(UrlProblem::UserInformation));
        }
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(refused(UrlProblem::NotHttp));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(refused(UrlProblem::NoHost));
        }
        Ok(Target {
            scheme,
            host,
            port: authority.port_u16(),
        })
    }

    /// The host is this machine: 127.0.0.0/8, ::1 or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }

    /// The host must never be reached through a proxy: loopback, link-local
    /// (169.254.0.0/16, where the cloud metadata services, AWS's ECS
    /// credentials endpoint and Azure's IMDS live; fe80::/10), AWS's IPv6
    /// metadata address and Google's metadata host names. Their answers are
    /// credentials for this machine, and a proxy would see them.
    pub fn goes_direct(&self) -> bool {
        if self.is_loopback() || matches!(self.host.as_str(), "metadata.google.internal" | "metadata") {
            return true;
        }
        match self.host.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(IpAddr::V4(v4)) => v4.is_link_local(),
            Ok(IpAddr::V6(v6)) => {
                v6.is_unicast_link_local() || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            }
            Err(_) => false,
        }
    }
}

impl Http {
    /// A client trusting the system's certificate authorities (see
    /// [`system_roots`]), else the bundled Mozilla roots.
    pub fn new(timeouts: Timeouts) -> Http {
        let roots = system_roots(std::env::var_os("SSL_CERT_FILE"));
        Http::build(timeouts, roots.as_deref(), ureq::Proxy::try_from_env())
    }

    /// A client trusting only `roots` (a private CA, as `VAULT_CACERT` names).
    pub fn with_roots(timeouts: Timeouts, roots: &[ureq::tls::Certificate<'static>]) -> Http {
        Http::build(timeouts, Some(roots), ureq::Proxy::try_from_env())
    }

    /// `proxy` (what ALL_PROXY, HTTPS_PROXY, HTTP_PROXY and NO_PROXY say) is
    /// used for every host but those that [`Target::goes_direct`].
    fn build(
        timeouts: Timeouts,
        roots: Option<&[ureq::tls::Certificate<'static>]>,
        proxy: Option<ureq::Proxy>,
    ) -> Http {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(roots) = roots {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(roots));
        }
        let tls = tls.build();
        let agent = |proxy: Option<ureq::Proxy>| {
            ureq::Agent::config_builder()
                .proxy(proxy)
                .tls_config(tls.clone())
                .timeout_global(Some(timeouts.total))
                .timeout_connect(Some(timeouts.connect))
                .timeout_resolve(Some(timeouts.connect))
                // Status codes are answers to interpret (403 names a missing role), not errors.
                .http_status_as_error(false)
                // A key service never redirects; following one could send a token elsewhere.
                .max_redirects(0)
                .user_agent(concat!("sops-install-secrets/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        Http {
            agent: agent(proxy),
            direct: agent(None),
            timeouts,
            unreachable: Mutex::new(HashMap::new()),
        }
    }

    /// Sends one request. `Err` only when no HTTP answer came back (or the
    /// URL is refused: not http(s), or with user information); every status
    /// code is a [`Reply`].
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Reply, HttpError> {
        let target = Target::parse(url)?;
        let host = host_of(url).to_owned();
        if let Some(earlier) = self.unreachable.lock().expect("not poisoned").get(&host) {
            return Err(HttpError::NotAskedAgain {
                host,
                earlier: earlier.clone(),
            });
        }
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        // Bodies may hold client secrets, refresh tokens or signed
        // assertions: encoded ones are built at their final size in a
        // buffer zeroized on drop, and given to ureq borrowed, not copied.
        let encoded: Zeroizing<Vec<u8>>;
        let (content_type, bytes): (Option<&str>, &[u8]) = match body {
            Body::Empty => (None, &[]),
            Body::Json(v) => {
                encoded = json_zeroizing(v);
                (Some("application/json"), &encoded)
            }
            Body::Form(pairs) => {
                encoded = form_zeroizing(pairs);
                (Some("application/x-www-form-urlencoded"), &encoded)
            }
            Body::Raw(ct, b) => (Some(ct), b),
        };
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let req = req.body(bytes).map_err(|e| HttpError::Request {
            host: host.clone(),
            detail: e.to_string(),
        })?;
        let agent = if target.goes_direct() {
            &self.direct
        } else {
            &self.agent
        };
        let result = agent.run(req);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                let failure = self.describe(&e);
                if failure.unreachable() {
                    self.unreachable
                        .lock()
                        .expect("not poisoned")
                        .insert(host.clone(), failure.clone());
                }
                return Err(HttpError::Transport { host, failure });
            }
        };
        let status = resp.status().as_u16();
        let www_authenticate = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_zeroizing(resp.body_mut()).map_err(|e| HttpError::Reading {
            failure: self.describe(&e),
            host,
        })?;
        Ok(Reply {
            status,
            body,
            www_authenticate,
        })
    }

    /// What a transport error means, in words a person can act on.
    fn describe(&self, e: &ureq::Error) -> Transport {
        match e {
            ureq::Error::Timeout(ureq::Timeout::Resolve) => Transport::DnsTimeout {
                after: self.timeouts.connect,
            },
            ureq::Error::Timeout(ureq::Timeout::Connect) => Transport::ConnectTimeout {
                after: self.timeouts.connect,
            },
            ureq::Error::Timeout(_) => Transport::NoAnswer {
                within: self.timeouts.total,
            },
            ureq::Error::HostNotFound => Transport::HostNotFound,
            ureq::Error::Io(io) => match io.kind() {
                ErrorKind::ConnectionRefused => Transport::ConnectionRefused,
                ErrorKind::TimedOut => Transport::ConnectionTimedOut,
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Transport::NoRoute {
                    detail: io.to_string(),
                },
                // rustls reports handshake failures (an untrusted certificate) as I/O errors.
                _ if io.to_string().contains("certificate") || io.kind() == ErrorKind::InvalidData => {
                    Transport::Tls {
                        detail: io.to_string(),
                    }
                }
                _ => Transport::Io {
                    detail: io.to_string(),
                },
            },
            ureq::Error::ConnectionFailed => Transport::ConnectionFailed,
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) => Transport::Tls {
                detail: e.to_string(),
            },
            other => Transport::Other {
                detail: other.to_string(),
            },
        }
    }
}

/// The largest answer read (key services answer in a few kilobytes).
const MAX_ANSWER: usize = 1 << 20;

/// Reads an answer into a buffer that is zeroized on drop, and whenever it
/// has to grow (a `String` grown by `read_to_string` leaves copies of a
/// token behind in freed memory).
fn read_zeroizing(body: &mut ureq::Body) -> Result<Zeroizing<String>, ureq::Error> {
    use std::io::Read;
    let hint = body.content_length().map_or(8 << 10, |n| {
        usize::try_from(n).unwrap_or(MAX_ANSWER).min(MAX_ANSWER)
    });
    let mut reader = body.with_config().limit(MAX_ANSWER as u64).reader();
    let mut buf = Zeroizing::new(Vec::with_capacity(hint));
    let mut chunk = Zeroizing::new([0u8; 8 << 10]);
    loop {
        let n = reader.read(&mut chunk[..])?;
        if n == 0 {
            break;
        }
        if buf.capacity() - buf.len() < n {
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.len() + n).max(buf.capacity() * 2)));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // `String::from_utf8` keeps the allocation: no copy.
    let bytes = std::mem::take(&mut *buf);
    String::from_utf8(bytes).map(Zeroizing::new).map_err(|e| {
        // Not UTF-8: wipe what was read before reporting.
        drop(Zeroizing::new(e.into_bytes()));
        ureq::Error::Io(std::io::Error::other("the answer is not UTF-8"))
    })
}

/// Counts bytes, to size a buffer before writing into it.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A JSON body, in a buffer of its exact size that is zeroized on drop.
fn json_zeroizing(v: &serde_json::Value) -> Zeroizing<Vec<u8>> {
    let mut count = Count(0);
    serde_json::to_writer(&mut count, v).expect("JSON values serialize");
    let mut out = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *out, v).expect("JSON values serialize");
    out
}

/// [`form_encode`] into a buffer of its exact size that is zeroized on drop
/// (no intermediate strings holding a client secret).
fn form_zeroizing(pairs: &[(&str, &str)]) -> Zeroizing<Vec<u8>> {
    let encoded_len = |s: &str| {
        s.bytes()
            .map(|b| if unreserved(b) { 1 } else { 3 })
            .sum::<usize>()
    };
    let len = pairs
        .iter()
        .map(|(k, v)| encoded_len(k) + 1 + encoded_len(v))
        .sum::<usize>()
        + pairs.len().saturating_sub(1);
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        percent_encode_into(k, &mut out);
        out.push(b'=');
        percent_encode_into(v, &mut out);
    }
    debug_assert_eq!(out.len(), len);
    out
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn percent_encode_into(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if unreserved(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// `application/x-www-form-urlencoded` of key/value pairs.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    String::from_utf8(form_zeroizing(pairs).to_vec()).expect("percent-encoding is ASCII")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() * 3);
    percent_encode_into(s, &mut out);
    String::from_utf8(out).expect("percent-encoding is ASCII")
}

/// The system's certificate authorities, as Go's `crypto/x509` (what sops
/// uses) finds them on Linux: the file `SSL_CERT_FILE` names, else the
/// first bundle found among the distributions' usual places (NixOS writes
/// `security.pki.certificates` into `/etc/ssl/certs/ca-certificates.crt`).
/// `None` when there is none with a certificate in it: then the bundled
/// Mozilla roots are used.
fn system_roots(ssl_cert_file: Option<std::ffi::OsString>) -> Option<Vec<ureq::tls::Certificate<'static>>> {
    const BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt", // NixOS, Debian, Ubuntu, Arch, Gentoo
        "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL 6
        "/etc/ssl/ca-bundle.pem",             // openSUSE
        "/etc/pki/tls/cacert.pem",            // OpenELEC
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
        "/etc/ssl/cert.pem",                  // Alpine
    ];
    let candidates: Vec<std::path::PathBuf> = match ssl_cert_file.filter(|f| !f.is_empty()) {
        Some(f) => vec![f.into()],
        None => BUNDLES.iter().map(Into::into).collect(),
    };
    candidates.iter().find_map(|path| {
        let pem = std::fs::read(path).ok()?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        (!certs.is_empty()).then_some(certs)
    })
}

/// A loopback port nothing listens on, for the key services' unit tests.
#[cfg(test)]
pub(crate) fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback HTTP server for the key services' unit tests.
#[cfg(test)]
pub(crate) fn serve(response: Vec<u8>) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut reader = BufReader::new(conn);
            // The request's head, up to the empty line; its body is not read.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = reader.get_mut().write_all(&response);
        }
    });
    addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn short() -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(500),
            total: Duration::from_millis(800),
        }
    }

    #[test]
    fn host_of_drops_scheme_and_path() {
        assert_eq!(
            host_of("https://cloudkms.googleapis.com/v1/x:decrypt"),
            "cloudkms.googleapis.com"
        );
        assert_eq!(host_of("http://127.0.0.1:8200/v1/transit"), "127.0.0.1:8200");
    }

    #[test]
    fn host_of_leaves_out_user_information() {
        assert_eq!(
            host_of("http://acme.vault.azure.net:1@127.0.0.1:18091/keys"),
            "127.0.0.1:18091"
        );
        assert_eq!(
            host_of("https://user:pass@vault.example.com/v1"),
            "vault.example.com"
        );
    }

    #[test]
    fn targets_are_parsed_as_the_request_is_sent() {
        let t = Target::parse("HTTPS://Acme.Vault.Azure.NET./keys/k?x=1").unwrap();
        assert_eq!(
            t,
            Target {
                scheme: "https".into(),
                host: "acme.vault.azure.net".into(),
                port: None
            }
        );
        let t = Target::parse("http://[::1]:8200/v1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(8200)));
        // The PoC: the part before '@' is user information, not the host.
        let err = Target::parse("http://acme.vault.azure.net:1@127.0.0.1:18091/keys")
            .unwrap_err()
            .to_string();
        assert!(err.contains("user information"), "{err}");
        assert!(err.starts_with("127.0.0.1:18091:"), "{err}");
        let err = Target::parse("https://user:s3cret@vault.example.com/v1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret") && !err.contains("user:"), "{err}");
        assert!(Target::parse("ftp://example.com/").is_err());
        assert!(Target::parse("/relative/path").is_err());
        assert!(Target::parse("vault.example.com:8200").is_err());
    }

    #[test]
    fn loopback_and_metadata_hosts_go_direct() {
        let direct = |url: &str| Target::parse(url).unwrap().goes_direct();
        let loopback = |url: &str| Target::parse(url).unwrap().is_loopback();
        for url in [
            "http://127.0.0.1:8080/",
            "http://127.255.0.9/",
            "http://localhost:1/",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(loopback(url) && direct(url), "{url}");
        }
        for url in [
            "http://169.254.169.254/latest/api/token",
            "http://169.254.170.2/v2/credentials",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://metadata/computeMetadata/v1/",
            "http://[fd00:ec2::254]/latest/api/token",
            "http://[fe80::1]/",
        ] {
            assert!(direct(url) && !loopback(url), "{url}");
        }
        for url in [
            "https://cloudkms.googleapis.com/",
            "https://acme.vault.azure.net/",
            "https://10.0.0.1/",
            "https://[fd00::1]/",
            "https://metadata.google.internal.evil.com/",
            "https://localhost.evil.com/",
        ] {
            assert!(!direct(url) && !loopback(url), "{url}");
        }
    }

    #[test]
    fn zeroizing_encoders_match_the_plain_ones() {
        let pairs = [("client_secret", "a b/+é~"), ("scope", "https://x/.default")];
        let form = form_zeroizing(&pairs);
        assert_eq!(form.len(), form.capacity());
        assert_eq!(std::str::from_utf8(&form).unwrap(), form_encode(&pairs));
        let v = serde_json::json!({ "alg": "RSA-OAEP-256", "value": "abc\"\n" });
        let json = json_zeroizing(&v);
        assert_eq!(json.len(), json.capacity());
        assert_eq!(*json, serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn system_roots_come_from_ssl_cert_file() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kms/vault-ca.pem");
        assert_eq!(system_roots(Some(ca.into())).map(|c| c.len()), Some(1));
        // A named file without certificates: the bundled roots.
        assert!(system_roots(Some("/nonexistent/ca.pem".into())).is_none());
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kms/vault-server.key");
        assert!(system_roots(Some(key.into())).is_none());
    }

    /// A loopback server answering every request with `body`.
    fn answering(body: &'static [u8]) -> std::net::SocketAddr {
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        serve(response)
    }

    #[test]
    fn a_proxy_is_never_used_for_loopback_but_is_for_other_hosts() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let proxy = ureq::Proxy::new(&format!("http://{dead}")).unwrap();
        let http = Http::build(short(), None, Some(proxy));
        let addr = answering(b"ok");
        let reply = http
            .send("GET", &format!("http://{addr}/token"), &[], Body::Empty)
            .unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
        // 192.0.2.0/24 is TEST-NET-1: only the (dead) proxy is asked.
        let err = http
            .send("GET", "http://192.0.2.1/", &[], Body::Empty)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("connection refused"), "{err}");
    }

    #[test]
    fn user_information_is_refused_before_connecting() {
        let http = Http::new(short());
        let addr = answering(b"captured");
        let err = http
            .send(
                "POST",
                &format!("http://acme.vault.azure.net:pw@{addr}/keys"),
                &[],
                Body::Form(&[("client_secret", "s")]),
            )
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("user information"), "{err}");
        assert!(!err.contains("pw@") && !err.contains("acme"), "{err}");
    }

    #[test]
    fn long_answers_are_read_whole() {
        static BIG: [u8; 50_000] = [b'x'; 50_000];
        let http = Http::new(short());
        let addr = answering(&BIG);
        let reply = http
            .send("GET", &format!("http://{addr}/"), &[], Body::Empty)
            .unwrap();
        assert_eq!(reply.body.len(), BIG.len());
    }

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            form_encode(&[("grant_type", "urn:ietf:params"), ("a", "b c/+")]),
            "grant_type=urn%3Aietf%3Aparams&a=b%20c%2F%2B"
        );
    }

    #[test]
    fn a_silent_server_times_out_within_the_bound_and_is_not_asked_twice() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = std::thread::spawn(move || {
            // Accept and read, never answer.
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            std::thread::sleep(Duration::from_secs(2));
        });
        let http = Http::new(short());
        let url = format!("http://{addr}/token");
        let start = Instant::now();
        let err = http
            .send("GET", &url, &[], Body::Empty)
            .err()
            .unwrap()
            .to_string();
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert!(err.contains("no answer within 0.8 s"), "{err}");
        let again = http
            .send("GET", &url, &[], Body::Empty)
            .err()
            .unwrap()
            .to_string();
        assert!(again.contains("did not answer earlier in this run"), "{again}");
        hold.join().unwrap();
    }

    #[test]
    fn a_closed_port_is_connection_refused() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = Http::new(short());
        let err = http
            .send("GET", &format!("http://127.0.0.1:{port}/"), &[], Body::Empty)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("connection refused"), "{err}");
    }

    #[test]
    fn refusals_and_failures_are_told_apart_by_variant() {
        let err = Target::parse("http://user:pw@127.0.0.1:1/").unwrap_err();
        assert_eq!(
            err,
            UrlError {
                host: "127.0.0.1:1".into(),
                problem: UrlProblem::UserInformation
            }
        );
        assert_eq!(
            err.to_string(),
            "127.0.0.1:1: a URL with user information (user@host) is refused; credentials do not go in URLs"
        );
        let http = Http::new(short());
        let err = http
            .send("GET", "ftp://example.com/x", &[], Body::Empty)
            .err()
            .unwrap();
        assert!(
            matches!(
                &err,
                HttpError::Url(UrlError {
                    problem: UrlProblem::NotHttp,
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "example.com: not an http(s) URL");

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let url = format!("http://{host}/");
        let err = http.send("GET", &url, &[], Body::Empty).err().unwrap();
        assert_eq!(
            err,
            HttpError::Transport {
                host: host.clone(),
                failure: Transport::ConnectionRefused
            }
        );
        assert_eq!(err.to_string(), format!("{host}: connection refused"));
        let again = http.send("GET", &url, &[], Body::Empty).err().unwrap();
        assert_eq!(
            again,
            HttpError::NotAskedAgain {
                host: host.clone(),
                earlier: Transport::ConnectionRefused
            }
        );
        assert_eq!(
            again.to_string(),
            format!("{host} did not answer earlier in this run (connection refused)")
        );
    }

    #[test]
    fn oauth_refusals_keep_the_endpoints_words() {
        let reply = |status, body: &str| Reply {
            status,
            body: Zeroizing::new(body.to_owned()),
            www_authenticate: None,
        };
        let err = reply(
            400,
            r#"{"error": "invalid_grant", "error_description": "Invalid JWT.\nSecond line"}"#,
        )
        .oauth_token()
        .unwrap_err();
        assert_eq!(
            err,
            OAuthError::Refused {
                error: "invalid_grant".into(),
                description: Some("Invalid JWT.".into())
            }
        );
        assert_eq!(err.to_string(), "invalid_grant: Invalid JWT.");
        let err = reply(401, r#"{"error": "invalid_client"}"#)
            .oauth_token()
            .unwrap_err();
        assert_eq!(err.to_string(), "invalid_client");
        let err = reply(200, r#"{"token_type": "Bearer"}"#)
            .oauth_token()
            .unwrap_err();
        assert_eq!(
            (err.clone(), err.to_string()),
            (
                OAuthError::NoAccessToken,
                "an answer without an access_token".into()
            )
        );
        let err = reply(502, "<html>bad gateway</html>").oauth_token().unwrap_err();
        assert_eq!(
            (err.clone(), err.to_string()),
            (OAuthError::Unexplained, "no OAuth error in the answer".into())
        );
    }
}
