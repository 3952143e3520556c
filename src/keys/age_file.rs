//! age key files: `AGE-SECRET-KEY-1...` and `AGE-PLUGIN-NAME-1...` lines, with
//! `#` comments and blank lines.

use std::path::Path;

use crate::safe_path::{self, OpenError, Trust};

/// Why an age key file could not be used. Never quotes key material.
#[derive(Debug, thiserror::Error)]
pub enum AgeFileError {
    /// The file could not be read.
    #[error("cannot read age key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path leads through another user's symlink, or is not a regular file.
    #[error("age key file {path}: {source}")]
    Unsafe {
        /// The file.
        path: String,
        /// Why it was not opened.
        source: OpenError,
    },
    /// A line is not a valid identity.
    #[error("age key file {path}, line {line}: not a valid age identity ({reason})")]
    BadLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
}

/// The identities of an age key file.
#[derive(Default)]
pub struct AgeKeys {
    /// Native X25519 identities.
    pub native: Vec<age::x25519::Identity>,
    /// Identities run through an `age-plugin-NAME` binary.
    pub plugins: Vec<age::plugin::Identity>,
}

/// Reads an age key file, by [`safe_path`]'s rule: through no symlink of
/// another user, and only if it is a regular file.
pub fn load(path: &Path) -> Result<AgeKeys, AgeFileError> {
    let shown = path.display().to_string();
    let text = safe_path::read_secret_text(path, Trust::invoker()).map_err(|e| match e.into_io() {
        Ok(source) => AgeFileError::Read {
            path: shown.clone(),
            source,
        },
        Err(source) => AgeFileError::Unsafe {
            path: shown.clone(),
            source,
        },
    })?;
    parse(&text, &shown)
}

/// Parses the text of an age key file.
pub fn parse(text: &str, shown: &str) -> Result<AgeKeys, AgeFileError> {
    let mut keys = AgeKeys::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| AgeFileError::BadLine {
            path: shown.to_owned(),
            line: i + 1,
            reason: reason.to_owned(),
        };
        if line.starts_with("AGE-PLUGIN-") {
            let key = line.parse::<age::plugin::Identity>().map_err(&bad)?;
            keys.plugins.push(key);
        } else {
            let key = line.parse::<age::x25519::Identity>().map_err(&bad)?;
            keys.native.push(key);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_lines_and_several_keys() {
        let a = age::x25519::Identity::generate();
        let b = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let text = format!(
            "# created: today\n# public key: {}\n{}\n\n  {}  \n",
            a.to_public(),
            a.to_string().expose_secret(),
            b.to_string().expose_secret()
        );
        let keys = parse(&text, "t").unwrap().native;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].to_public().to_string(), b.to_public().to_string());
    }

    #[test]
    fn plugin_identities_are_kept_apart_by_plugin_name() {
        // An identity of the `yubikey` plugin: bech32 of any payload under its HRP.
        let hrp = bech32::Hrp::parse("age-plugin-yubikey-").unwrap();
        let id = bech32::encode::<bech32::Bech32>(hrp, &[7u8; 20])
            .unwrap()
            .to_uppercase();
        let keys = parse(&format!("# hardware\n{id}\n"), "t").unwrap();
        assert!(keys.native.is_empty());
        assert_eq!(keys.plugins.len(), 1);
        assert_eq!(keys.plugins[0].plugin(), "yubikey");
    }

    #[test]
    fn bad_line_names_the_line_not_the_content() {
        let Err(err) = parse("# c\nAGE-SECRET-KEY-1NOPE\n", "keys.txt") else {
            panic!("accepted")
        };
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("NOPE"), "{msg}");
    }
}
