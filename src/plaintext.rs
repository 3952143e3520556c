//! Decrypted bytes on their way from the sops file to the secrets mount.
//!
//! A [`Plaintext`] is wiped when dropped, prints as its length only, and has
//! no `Clone`: a copy of a secret value can only be made on purpose
//! ([`Plaintext::as_bytes`]), never by a `derive` or a log line.

use zeroize::Zeroizing;

/// A decrypted value or a rendered template.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// The bytes, for writing them (or comparing them) where they belong.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Zeroizing<Vec<u8>>> for Plaintext {
    fn from(bytes: Zeroizing<Vec<u8>>) -> Plaintext {
        Plaintext(bytes)
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_length_only() {
        let p = Plaintext::from(Zeroizing::new(b"hunter2".to_vec()));
        assert_eq!(format!("{p:?}"), "Plaintext(7 bytes)");
        assert_eq!(p.as_bytes(), b"hunter2");
    }
}
