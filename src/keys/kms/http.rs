//! The one HTTP client every key service uses: blocking (this is a oneshot
//! tool; there is nothing to do while waiting), rustls with the Mozilla
//! roots, bounded timeouts, and errors that say what failed in words a
//! person can act on ("timed out after 5 s", "DNS lookup failed").
//!
//! A host that did not answer (DNS failure, refused or timed-out connection)
//! is remembered and not asked again in this run: ten files wrapped by the
//! same unreachable KMS cost one timeout, not ten.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::Mutex;

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

    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
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
    agent: ureq::Agent,
    timeouts: Timeouts,
    /// Hosts that did not answer, and why.
    unreachable: Mutex<HashMap<String, String>>,
}

/// `host[:port]` of a URL, for messages and the unreachable list.
pub(crate) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

impl Http {
    /// A client trusting the Mozilla roots.
    pub fn new(timeouts: Timeouts) -> Http {
        Http::build(timeouts, None)
    }

    /// A client trusting only `roots` (a private CA, as `VAULT_CACERT` names).
    pub fn with_roots(timeouts: Timeouts, roots: &[ureq::tls::Certificate<'static>]) -> Http {
        Http::build(timeouts, Some(roots))
    }

    fn build(timeouts: Timeouts, roots: Option<&[ureq::tls::Certificate<'static>]>) -> Http {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(roots) = roots {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(roots));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(timeouts.total))
            .timeout_connect(Some(timeouts.connect))
            .timeout_resolve(Some(timeouts.connect))
            // Status codes are answers to interpret (403 names a missing role), not errors.
            .http_status_as_error(false)
            // A key service never redirects; following one could send a token elsewhere.
            .max_redirects(0)
            .user_agent(concat!("sops-install-secrets/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Http {
            agent,
            timeouts,
            unreachable: Mutex::new(HashMap::new()),
        }
    }

    /// Sends one request. `Err` only when no HTTP answer came back; every
    /// status code is a [`Reply`].
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Reply, String> {
        let host = host_of(url).to_owned();
        if let Some(why) = self.unreachable.lock().expect("not poisoned").get(&host) {
            return Err(format!("{host} did not answer earlier in this run ({why})"));
        }
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (content_type, bytes): (Option<&str>, Zeroizing<Vec<u8>>) = match body {
            Body::Empty => (None, Zeroizing::new(Vec::new())),
            Body::Json(v) => (
                Some("application/json"),
                Zeroizing::new(serde_json::to_vec(v).expect("JSON values serialize")),
            ),
            Body::Form(pairs) => (
                Some("application/x-www-form-urlencoded"),
                Zeroizing::new(form_encode(pairs).into_bytes()),
            ),
            Body::Raw(ct, b) => (Some(ct), Zeroizing::new(b.to_vec())),
        };
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let req = req
            .body(bytes.to_vec())
            .map_err(|e| format!("cannot build a request to {host}: {e}"))?;
        let result = self.agent.run(req);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                let (why, remember) = self.describe(&e);
                if remember {
                    self.unreachable
                        .lock()
                        .expect("not poisoned")
                        .insert(host.clone(), why.clone());
                }
                return Err(format!("{host}: {why}"));
            }
        };
        let status = resp.status().as_u16();
        let www_authenticate = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map(Zeroizing::new)
            .map_err(|e| format!("{host}: reading the answer failed: {}", self.describe(&e).0))?;
        Ok(Reply {
            status,
            body,
            www_authenticate,
        })
    }

    /// Words for a transport error, and whether the host counts as unreachable.
    fn describe(&self, e: &ureq::Error) -> (String, bool) {
        let secs = |d: std::time::Duration| format!("{} s", d.as_secs_f64());
        match e {
            ureq::Error::Timeout(ureq::Timeout::Resolve) => (
                format!(
                    "DNS lookup timed out after {} (is the network up?)",
                    secs(self.timeouts.connect)
                ),
                true,
            ),
            ureq::Error::Timeout(ureq::Timeout::Connect) => (
                format!(
                    "connection timed out after {} (is the network up?)",
                    secs(self.timeouts.connect)
                ),
                true,
            ),
            ureq::Error::Timeout(_) => (
                format!("no answer within {}, gave up", secs(self.timeouts.total)),
                true,
            ),
            ureq::Error::HostNotFound => ("DNS lookup failed: host not found".to_owned(), true),
            ureq::Error::Io(io) => match io.kind() {
                ErrorKind::ConnectionRefused => ("connection refused".to_owned(), true),
                ErrorKind::TimedOut => ("connection timed out (is the network up?)".to_owned(), true),
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    (format!("{io} (is the network up?)"), true)
                }
                // rustls reports handshake failures (an untrusted certificate) as I/O errors.
                _ if io.to_string().contains("certificate") || io.kind() == ErrorKind::InvalidData => {
                    (format!("TLS error: {io}"), false)
                }
                _ => (format!("I/O error: {io}"), false),
            },
            ureq::Error::ConnectionFailed => ("connection failed".to_owned(), true),
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) => (format!("TLS error: {e}"), false),
            other => (other.to_string(), false),
        }
    }
}

/// `application/x-www-form-urlencoded` of key/value pairs.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        let err = http.send("GET", &url, &[], Body::Empty).err().unwrap();
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert!(err.contains("no answer within 0.8 s"), "{err}");
        let again = http.send("GET", &url, &[], Body::Empty).err().unwrap();
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
            .unwrap();
        assert!(err.contains("connection refused"), "{err}");
    }
}
