//! Where messages go: the systemd journal when stderr is connected to it,
//! stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM` to the device and inode of the stream it
//! connected to a unit's stderr. When ours matches, messages are sent with
//! the journal's native protocol, so they carry a priority and fields such as
//! `SOPS_SECRET=` and `SOPS_GENERATION=` that `journalctl -o verbose` shows
//! and `journalctl SOPS_SECRET=db/password` filters on.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;

/// syslog priorities.
#[derive(Clone, Copy, Debug)]
pub enum Priority {
    /// Something failed.
    Error = 3,
    /// Something is off but the run goes on.
    Warning = 4,
    /// Normal progress.
    Info = 6,
}

/// A message sink.
pub struct Logger {
    journal: Option<UnixDatagram>,
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Appends one field in the native protocol's form; values with a newline
/// use the length-prefixed binary form.
fn field(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// The event field a failed installation carries, whether or not stderr is
/// the journal: `journalctl SOPS_EVENT=sops-install-secrets-failed` finds
/// every failed activation, including activation-script runs whose output
/// only reached the terminal.
pub const FAILED_EVENT: &str = "sops-install-secrets-failed";

/// One journal entry in the native protocol.
fn entry(priority: Priority, message: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = Vec::new();
    field(&mut buf, "MESSAGE", message);
    field(&mut buf, "PRIORITY", &(priority as u8).to_string());
    field(&mut buf, "SYSLOG_IDENTIFIER", "sops-install-secrets");
    for (k, v) in fields {
        field(&mut buf, &format!("SOPS_{}", k.to_uppercase()), v);
    }
    buf
}

/// A datagram socket connected to the journal, if there is one.
fn connect_journal() -> Option<UnixDatagram> {
    UnixDatagram::unbound()
        .ok()
        .filter(|s| s.connect(JOURNAL_SOCKET).is_ok())
}

impl Logger {
    /// Records that the installation failed: in the journal with the
    /// `SOPS_EVENT` field even when stderr goes elsewhere (the message
    /// itself is printed by [`Logger::log`] as usual).
    pub fn mark_failure(&self, manifest: &str) {
        if self.journal.is_none()
            && let Some(sock) = connect_journal()
        {
            let _ = sock.send(&entry(
                Priority::Error,
                &format!("installing {manifest} failed"),
                &[("event", FAILED_EVENT), ("manifest", manifest)],
            ));
        }
    }

    /// The journal if stderr goes there, else stderr.
    pub fn from_env() -> Logger {
        let journal = if stderr_is_journal() {
            connect_journal()
        } else {
            None
        };
        Logger { journal }
    }

    /// Logs a message with extra fields (names without the `SOPS_` prefix).
    /// Never pass secret values: messages and fields name things, nothing more.
    pub fn log(&self, priority: Priority, message: &str, fields: &[(&str, &str)]) {
        if let Some(sock) = &self.journal
            && sock.send(&entry(priority, message, fields)).is_ok()
        {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "sops-install-secrets: {}", printable(message));
    }
}

/// A message for a terminal: control characters other than newline and tab
/// (which a server's error text or a crafted stanza field could carry, such
/// as escape sequences) are shown escaped instead of acted on.
fn printable(message: &str) -> std::borrow::Cow<'_, str> {
    if !message.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return message.into();
    }
    message
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().collect::<String>()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_control_sequences_are_escaped() {
        assert_eq!(printable("plain\nline\tok"), "plain\nline\tok");
        assert_eq!(printable("bad \u{1b}[2J here"), "bad \\u{1b}[2J here");
        assert_eq!(printable("cr\r"), "cr\\r");
    }

    #[test]
    fn fields_use_the_native_protocol() {
        let mut buf = Vec::new();
        field(&mut buf, "MESSAGE", "one line");
        field(&mut buf, "MESSAGE", "two\nlines");
        let mut want = b"MESSAGE=one line\nMESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(buf, want);
    }

    #[test]
    fn journal_is_sent_to_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let server = UnixDatagram::bind(&path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&path).unwrap();
        let logger = Logger {
            journal: Some(client),
        };
        logger.log(
            Priority::Warning,
            "secret changed",
            &[("secret", "db/password"), ("generation", "2")],
        );
        let mut got = [0u8; 512];
        let n = server.recv(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.contains("MESSAGE=secret changed\n"), "{text}");
        assert!(text.contains("PRIORITY=4\n"), "{text}");
        assert!(text.contains("SOPS_SECRET=db/password\n"), "{text}");
        assert!(text.contains("SOPS_GENERATION=2\n"), "{text}");
    }
}
