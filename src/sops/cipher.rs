//! sops's value cipher: AES-256-GCM with a 32-byte IV, one ciphertext per leaf.
//!
//! A leaf is stored as `ENC[AES256_GCM,data:<b64>,iv:<b64>,tag:<b64>,type:<t>]`.
//! The additional data is the leaf's key path joined by `:` with a trailing
//! `:` (`a:b:c:`), so a ciphertext moved to another key fails its tag. The
//! `type` says how the plaintext bytes become a value again.

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U32;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::tree::Value;

/// AES-256-GCM with sops's 32-byte nonce.
type SopsGcm = AesGcm<Aes256, U32>;

/// A file's data key, expanded once for all of its values (a file of many
/// values would otherwise expand it, and derive the GHASH key, per value).
pub struct ValueCipher(SopsGcm);

impl ValueCipher {
    /// The cipher of `key`.
    pub fn new(key: &[u8; 32]) -> ValueCipher {
        ValueCipher(SopsGcm::new(GenericArray::from_slice(key)))
    }
}

/// Why a stored value could not be decrypted. Never carries plaintext or ciphertext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    /// The text is not `ENC[AES256_GCM,...]`.
    #[error("the value is not in sops's ENC[AES256_GCM,...] format")]
    Malformed,
    /// A field is not valid base64, or the IV/tag has the wrong length.
    #[error("the {0} of the encrypted value is not valid")]
    BadField(&'static str),
    /// AES-GCM authentication failed: wrong data key, altered ciphertext, or moved value.
    #[error("authentication failed: the value was altered, moved to another key, or the data key is wrong")]
    Authentication,
    /// The `type:` field names a type sops does not know.
    #[error("unknown value type `{0}`")]
    UnknownType(String),
    /// The plaintext does not parse as the type it claims.
    #[error("the decrypted value is not a valid {0}")]
    BadPlaintext(&'static str),
}

/// The parts of an `ENC[...]` string.
struct Encrypted<'a> {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    kind: &'a str,
}

fn parse(text: &str) -> Result<Encrypted<'_>, CipherError> {
    let body = text
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or(CipherError::Malformed)?;
    let mut fields = [("data:", ""), ("iv:", ""), ("tag:", ""), ("type:", "")];
    let mut parts = body.splitn(4, ',');
    for (prefix, slot) in &mut fields {
        *slot = parts
            .next()
            .and_then(|p| p.strip_prefix(*prefix))
            .ok_or(CipherError::Malformed)?;
    }
    let decode = |name: &'static str, s: &str| B64.decode(s).map_err(|_| CipherError::BadField(name));
    Ok(Encrypted {
        data: decode("data", fields[0].1)?,
        iv: decode("iv", fields[1].1)?,
        tag: decode("tag", fields[2].1)?,
        kind: fields[3].1,
    })
}

/// Decrypts one stored string into raw plaintext bytes and the stored type name.
///
/// An empty string is sops's encoding of an empty value and decrypts to itself.
pub fn decrypt_raw<'a>(
    text: &'a str,
    key: &[u8; 32],
    additional_data: &str,
) -> Result<(Zeroizing<Vec<u8>>, &'a str), CipherError> {
    decrypt_raw_with(text, &ValueCipher::new(key), additional_data)
}

/// [`decrypt_raw`] with a file's [`ValueCipher`].
pub fn decrypt_raw_with<'a>(
    text: &'a str,
    cipher: &ValueCipher,
    additional_data: &str,
) -> Result<(Zeroizing<Vec<u8>>, &'a str), CipherError> {
    if text.is_empty() {
        return Ok((Zeroizing::new(Vec::new()), "str"));
    }
    let enc = parse(text)?;
    if enc.iv.len() != 32 {
        return Err(CipherError::BadField("iv"));
    }
    if enc.tag.len() != 16 {
        return Err(CipherError::BadField("tag"));
    }
    let mut buf = Zeroizing::new(enc.data);
    cipher
        .0
        .decrypt_in_place_detached(
            GenericArray::from_slice(&enc.iv),
            additional_data.as_bytes(),
            &mut buf,
            GenericArray::from_slice(&enc.tag),
        )
        .map_err(|_| CipherError::Authentication)?;
    Ok((buf, enc.kind))
}

/// Like [`decrypt_raw`], but consumes the stored string and decrypts inside
/// its buffer: the base64 is decoded in place, the buffer shrunk to the
/// ciphertext, and AES-GCM run in place. A value of N bytes stored as ~4N/3
/// bytes of base64 then never needs more than those 4N/3 bytes at once (the
/// binary store keeps a whole file in one value).
pub fn decrypt_owned(
    text: String,
    cipher: &ValueCipher,
    additional_data: &str,
) -> Result<(Zeroizing<Vec<u8>>, String), CipherError> {
    if text.is_empty() {
        return Ok((Zeroizing::new(Vec::new()), "str".to_owned()));
    }
    let (data, iv, tag, kind) = {
        let body = text
            .strip_prefix("ENC[AES256_GCM,")
            .and_then(|rest| rest.strip_suffix(']'))
            .ok_or(CipherError::Malformed)?;
        let mut parts = body.splitn(4, ',');
        let mut field = |prefix: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(prefix))
                .ok_or(CipherError::Malformed)
        };
        let (data, iv, tag, kind) = (field("data:")?, field("iv:")?, field("tag:")?, field("type:")?);
        let start = data.as_ptr() as usize - text.as_ptr() as usize;
        let decode = |name: &'static str, s: &str| B64.decode(s).map_err(|_| CipherError::BadField(name));
        (
            start..start + data.len(),
            decode("iv", iv)?,
            decode("tag", tag)?,
            kind.to_owned(),
        )
    };
    if iv.len() != 32 {
        return Err(CipherError::BadField("iv"));
    }
    if tag.len() != 16 {
        return Err(CipherError::BadField("tag"));
    }
    let mut buf = text.into_bytes();
    let len = decode_in_place(&mut buf, data).ok_or(CipherError::BadField("data"))?;
    buf.truncate(len);
    // Shrunk while it holds ciphertext: a reallocation may leave a copy behind.
    buf.shrink_to_fit();
    let mut buf = Zeroizing::new(buf);
    cipher
        .0
        .decrypt_in_place_detached(
            GenericArray::from_slice(&iv),
            additional_data.as_bytes(),
            &mut buf,
            GenericArray::from_slice(&tag),
        )
        .map_err(|_| CipherError::Authentication)?;
    Ok((buf, kind))
}

/// Decodes the base64 at `range` of `buf` into the start of `buf`; returns the
/// decoded length. Output never overtakes input: each 4 characters read make
/// at most 3 bytes, written behind them.
fn decode_in_place(buf: &mut [u8], range: std::ops::Range<usize>) -> Option<usize> {
    // Most values are short: decoded through a small buffer in one go, they
    // spare zeroing the chunk buffer below for each of them.
    const SMALL: usize = 192;
    if range.len() <= SMALL / 3 * 4 {
        let mut out = [0u8; SMALL];
        let n = B64.decode_slice(&buf[range], &mut out).ok()?;
        buf[..n].copy_from_slice(&out[..n]);
        return Some(n);
    }
    // Whole quads per chunk, so padding can only occur in the last one.
    const CHUNK: usize = 4 * 1024;
    let mut chunk_out = [0u8; CHUNK / 4 * 3];
    let (mut read, mut written) = (range.start, 0);
    while read < range.end {
        let end = (read + CHUNK).min(range.end);
        let n = B64.decode_slice(&buf[read..end], &mut chunk_out).ok()?;
        if end < range.end && n != (end - read) / 4 * 3 {
            return None; // padding before the end
        }
        buf[written..written + n].copy_from_slice(&chunk_out[..n]);
        written += n;
        read = end;
    }
    Some(written)
}

/// Decrypts one stored string into a typed value.
pub fn decrypt_value(text: &str, key: &[u8; 32], additional_data: &str) -> Result<Value, CipherError> {
    let (plain, kind) = decrypt_raw(text, key, additional_data)?;
    typed(plain, kind)
}

/// Decrypts a stored comment. Comments written by old sops versions are not
/// encrypted; like sops, anything that does not decrypt is kept as it is.
pub fn decrypt_comment(text: &str, cipher: &ValueCipher, additional_data: &str) -> String {
    match decrypt_raw_with(text, cipher, additional_data) {
        Ok((plain, _)) => String::from_utf8_lossy(&plain).into_owned(),
        Err(_) => text.to_owned(),
    }
}

fn utf8(plain: Zeroizing<Vec<u8>>, kind: &'static str) -> Result<String, CipherError> {
    String::from_utf8(plain.to_vec()).map_err(|_| CipherError::BadPlaintext(kind))
}

/// Turns plaintext bytes into the value its type names, as Go's strconv would.
pub(crate) fn typed(mut plain: Zeroizing<Vec<u8>>, kind: &str) -> Result<Value, CipherError> {
    Ok(match kind {
        // The buffer moves into the value (which wipes itself) instead of being copied.
        // Go strings are bytes: a binary file stored whole is a `str` that need not be UTF-8.
        "str" => match String::from_utf8(std::mem::take(&mut *plain)) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        },
        "bytes" => Value::Bytes(std::mem::take(&mut *plain)),
        "comment" => Value::Str(utf8(plain, "comment")?),
        "time" => Value::Time(utf8(plain, "timestamp")?),
        "int" => {
            let s = Zeroizing::new(utf8(plain, "int")?);
            Value::Int(s.parse().map_err(|_| CipherError::BadPlaintext("int"))?)
        }
        "float" => {
            let s = Zeroizing::new(utf8(plain, "float")?);
            Value::Float(s.parse().map_err(|_| CipherError::BadPlaintext("float"))?)
        }
        "bool" => match plain.as_slice() {
            // Go's strconv.ParseBool accepts exactly these spellings.
            b"1" | b"t" | b"T" | b"TRUE" | b"true" | b"True" => Value::Bool(true),
            b"0" | b"f" | b"F" | b"FALSE" | b"false" | b"False" => Value::Bool(false),
            _ => return Err(CipherError::BadPlaintext("bool")),
        },
        other => return Err(CipherError::UnknownType(other.to_owned())),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aes_gcm::aead::Aead;
    use aes_gcm::aead::Payload;

    /// Builds a ciphertext the way sops does, for unit tests only.
    pub(crate) fn seal(plain: &[u8], key: &[u8; 32], ad: &str, kind: &str) -> String {
        let cipher = SopsGcm::new(GenericArray::from_slice(key));
        let iv = [7u8; 32];
        let out = cipher
            .encrypt(
                GenericArray::from_slice(&iv),
                Payload {
                    msg: plain,
                    aad: ad.as_bytes(),
                },
            )
            .unwrap();
        let (data, tag) = out.split_at(out.len() - 16);
        format!(
            "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
            B64.encode(data),
            B64.encode(iv),
            B64.encode(tag)
        )
    }

    #[test]
    fn value_round_trips_with_its_path_as_additional_data() {
        let key = [1u8; 32];
        let enc = seal(b"42", &key, "a:b:", "int");
        assert_eq!(decrypt_value(&enc, &key, "a:b:"), Ok(Value::Int(42)));
    }

    #[test]
    fn value_moved_to_another_key_fails_authentication() {
        let key = [1u8; 32];
        let enc = seal(b"secret", &key, "a:b:", "str");
        assert_eq!(
            decrypt_value(&enc, &key, "a:c:"),
            Err(CipherError::Authentication)
        );
    }

    #[test]
    fn unknown_type_is_refused_after_authentication() {
        let key = [1u8; 32];
        let enc = seal(b"x", &key, "k:", "blob");
        assert_eq!(
            decrypt_value(&enc, &key, "k:"),
            Err(CipherError::UnknownType("blob".into()))
        );
    }

    #[test]
    fn bools_accept_go_spellings_only() {
        let key = [1u8; 32];
        assert_eq!(
            decrypt_value(&seal(b"True", &key, "k:", "bool"), &key, "k:"),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            decrypt_value(&seal(b"yes", &key, "k:", "bool"), &key, "k:"),
            Err(CipherError::BadPlaintext("bool"))
        );
    }

    #[test]
    fn the_aes_under_a_files_cipher_wipes_its_round_keys_on_drop() {
        // Holds only if aes is built with its `zeroize` feature (Cargo.toml):
        // the round keys are the expanded data key.
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wipes_on_drop::<Aes256>();
    }

    #[test]
    fn in_place_decryption_equals_the_copying_one() {
        let key = [3u8; 32];
        // One cipher for every value, as a file's values share it.
        let cipher = ValueCipher::new(&key);
        let zero = ValueCipher::new(&[0; 32]);
        // Sizes around the decoding chunk, with and without base64 padding.
        for len in [0usize, 1, 2, 3, 191, 192, 193, 3071, 3072, 3073, 10_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let enc = seal(&plain, &key, "a:", "bytes");
            let (copied, kind) = decrypt_raw(&enc, &key, "a:").unwrap();
            let (owned, owned_kind) = decrypt_owned(enc.clone(), &cipher, "a:").unwrap();
            assert_eq!((&*owned, owned_kind.as_str()), (&*copied, kind), "{len}");
            assert_eq!(&*owned, &plain);
            assert_eq!(
                decrypt_owned(enc.clone(), &cipher, "b:").unwrap_err(),
                CipherError::Authentication
            );
        }
        assert_eq!(
            decrypt_owned(
                "ENC[AES256_GCM,data:AA=A,iv:AA==,tag:AA==,type:str]".into(),
                &zero,
                "k:"
            )
            .unwrap_err(),
            CipherError::BadField("iv")
        );
        let iv = B64.encode([0u8; 32]);
        let tag = B64.encode([0u8; 16]);
        let (short_bad, long_bad) = (
            format!("{}AA==AAAA", "A".repeat(200)),
            format!("{}AA==AAAA", "A".repeat(4092)),
        );
        for data in ["AA=A", "!!!!", "AAA", &short_bad, &long_bad] {
            assert_eq!(
                decrypt_owned(
                    format!("ENC[AES256_GCM,data:{data},iv:{iv},tag:{tag},type:str]"),
                    &zero,
                    "k:"
                )
                .unwrap_err(),
                CipherError::BadField("data"),
                "{data}"
            );
        }
        assert_eq!(
            decrypt_owned("nope".into(), &zero, "k:").unwrap_err(),
            CipherError::Malformed
        );
    }

    #[test]
    fn empty_string_is_an_empty_value() {
        assert_eq!(decrypt_value("", &[0; 32], "k:"), Ok(Value::Str(String::new())));
    }

    #[test]
    fn malformed_values_are_refused() {
        assert_eq!(
            decrypt_value("hello", &[0; 32], "k:"),
            Err(CipherError::Malformed)
        );
        assert_eq!(
            decrypt_value(
                "ENC[AES256_GCM,data:!!,iv:AA==,tag:AA==,type:str]",
                &[0; 32],
                "k:"
            ),
            Err(CipherError::BadField("data"))
        );
    }
}
