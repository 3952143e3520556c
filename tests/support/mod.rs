//! Test doubles for network key services: a tiny HTTP/1.1 server on
//! 127.0.0.1 that records every request and answers with a handler, and
//! helpers to turn a real sops-written fixture into one whose only key
//! stanza is a network one.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sops_install_secrets::keys::{Keyring, recover_data_key};
use sops_install_secrets::sops::{EncryptedFile, Format};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap()
    }

    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        form(q.as_bytes())
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn form(&self) -> Vec<(String, String)> {
        form(&self.body)
    }

    pub fn form_value(&self, key: &str) -> Option<String> {
        self.form().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Decodes `application/x-www-form-urlencoded`.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// An answer: status, extra headers, body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    pub fn text(status: u16, t: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: t.as_bytes().to_vec(),
        }
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A loopback HTTP server; stops when dropped (its thread is detached).
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Server {
        Server::spawn(None, handler)
    }

    /// The same over TLS, with a certificate for 127.0.0.1 signed by
    /// `fixtures/kms/vault-ca.pem` (an HTTPS Vault with a private CA).
    pub fn start_tls(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Server {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = fixtures().join("kms");
        let certs = CertificateDer::pem_file_iter(dir.join("vault-server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("vault-server.key")).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        Server::spawn(Some(Arc::new(config)), handler)
    }

    fn spawn(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (seen, handler, tls) = (seen.clone(), handler.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(conn, &seen, handler.as_ref()),
                    Some(cfg) => {
                        let tls = rustls::ServerConnection::new(cfg).unwrap();
                        serve(rustls::StreamOwned::new(tls, conn), &seen, handler.as_ref())
                    }
                });
            }
        });
        Server { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve<S: Read + Write>(conn: S, seen: &Mutex<Vec<Request>>, handler: &Handler) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req = Request {
            method,
            target,
            headers,
            body,
        };
        let resp = handler(&req);
        seen.lock().unwrap().push(req);
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            resp.status,
            resp.body.len()
        );
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let w = reader.get_mut();
        if w.write_all(out.as_bytes())
            .and_then(|()| w.write_all(&resp.body))
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The data key of a real sops-written fixture, recovered through the
/// library with the committed age test key.
pub fn data_key(file: &str, format: Format) -> [u8; 32] {
    let bytes = std::fs::read(fixtures().join(file)).unwrap();
    let parsed = EncryptedFile::parse(&bytes, format).unwrap();
    let mut keyring = Keyring::new();
    keyring
        .add_age_key_file(&fixtures().join("keys/age1.txt"))
        .unwrap();
    *recover_data_key(&parsed.metadata, &keyring).unwrap()
}

/// A copy of the real sops-written `enc/basic.json` whose key stanzas are
/// replaced by `kind: [stanza]` (the stanza list is outside the MAC, so the
/// values and the MAC stay sops's own). Returns its path in `dir`.
pub fn with_only_stanza(dir: &Path, kind: &str, stanza: serde_json::Value) -> PathBuf {
    with_stanza(dir, false, kind, stanza)
}

/// Like [`with_only_stanza`], keeping the file's age stanzas when `keep_age`.
pub fn with_stanza(dir: &Path, keep_age: bool, kind: &str, stanza: serde_json::Value) -> PathBuf {
    let text = std::fs::read_to_string(fixtures().join("enc/basic.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sops = doc["sops"].as_object_mut().unwrap();
    if !keep_age {
        sops.remove("age");
    }
    sops.insert(kind.to_owned(), serde_json::json!([stanza]));
    let path = dir.join("basic.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// What real `sops -d` printed, by file name under `expected/`.
pub fn expected(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("expected").join(name)).unwrap()
}

/// The bytes real `sops -d` printed for `enc/basic.json`.
pub fn expected_basic_json() -> Vec<u8> {
    std::fs::read(fixtures().join("expected/json_basic.out")).unwrap()
}

/// Runs the binary's `decrypt` with exactly `env` (plus PATH), no identities.
pub fn decrypt_with_env(file: &Path, env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sops-install-secrets"));
    cmd.env_clear();
    if let Some(p) = std::env::var_os("PATH") {
        cmd.env("PATH", p);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.arg("decrypt").arg(file).output().unwrap()
}
