//! age key files: `AGE-SECRET-KEY-1...` lines, with `#` comments and blank lines.

use std::path::Path;

use zeroize::Zeroizing;

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
    /// A plugin identity, which this build cannot run yet.
    #[error(
        "age key file {path}, line {line}: age plugin identities (AGE-PLUGIN-...) are not supported by this build"
    )]
    Plugin {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
}

/// Reads an age key file.
pub fn load(path: &Path) -> Result<Vec<age::x25519::Identity>, AgeFileError> {
    let shown = path.display().to_string();
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| AgeFileError::Read {
            path: shown.clone(),
            source,
        })?,
    );
    parse(&text, &shown)
}

/// Parses the text of an age key file.
pub fn parse(text: &str, shown: &str) -> Result<Vec<age::x25519::Identity>, AgeFileError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("AGE-PLUGIN-") {
            return Err(AgeFileError::Plugin {
                path: shown.to_owned(),
                line: i + 1,
            });
        }
        let key = line
            .parse::<age::x25519::Identity>()
            .map_err(|reason| AgeFileError::BadLine {
                path: shown.to_owned(),
                line: i + 1,
                reason: reason.to_owned(),
            })?;
        keys.push(key);
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
        let keys = parse(&text, "t").unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].to_public().to_string(), b.to_public().to_string());
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
