//! Templates: files whose text holds placeholders for secrets.
//!
//! The NixOS module gives every secret a unique placeholder string
//! (`config.sops.placeholder.<name>`); rendering replaces each occurrence with
//! the secret's value. Replacement is one left-to-right pass, so a secret
//! value that happens to contain another placeholder is never expanded again.

use zeroize::Zeroizing;

/// Replaces every placeholder in `text` with its value.
pub fn render(text: &[u8], placeholders: &[(&[u8], &[u8])]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() * 2));
    let mut i = 0;
    'scan: while i < text.len() {
        for (needle, value) in placeholders {
            if !needle.is_empty() && text[i..].starts_with(needle) {
                out.extend_from_slice(value);
                i += needle.len();
                continue 'scan;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_replaced_once() {
        let out = render(
            b"user=<A> pass=<B> again=<A>",
            &[(b"<A>", b"alice"), (b"<B>", b"x<A>y")],
        );
        assert_eq!(out.as_slice(), b"user=alice pass=x<A>y again=alice");
    }

    #[test]
    fn text_without_placeholders_is_unchanged() {
        assert_eq!(render(b"plain", &[(b"<A>", b"v")]).as_slice(), b"plain");
    }
}
