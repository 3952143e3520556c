//! The native age X25519 identity, holding its public key.
//!
//! Opening an X25519 stanza takes a Diffie-Hellman with the stanza's
//! ephemeral share and an HKDF salted with that share and the identity's own
//! public key. age's `x25519::Identity` derives the public key again for every
//! stanza it opens, a fixed-base scalar multiplication that costs about a
//! third of the Diffie-Hellman; an install opens one stanza per sops file with
//! the same identity. This one derives it once. The stanza rules are age's
//! (<https://c2sp.org/age#x25519-recipient-stanza>): one argument, the
//! canonical unpadded base64 of 32 bytes; a body of the 16-byte file key and
//! its 16-byte tag; an all-zero shared secret refused; a tag that fails means
//! "not ours", so that other identities may try. The primitives are age's
//! own (`age_core::primitives`), and the tests hold every outcome to what
//! age's identity gives for the same stanza.

use age::DecryptError;
use age_core::format::{FILE_KEY_BYTES, FileKey, Stanza};
use age_core::primitives::{aead_decrypt, hkdf};
use age_core::secrecy::ExposeSecret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

const TAG: &str = "X25519";
const LABEL: &[u8] = b"age-encryption.org/v1/X25519";
const SHARE_BYTES: usize = 32;
const BODY_BYTES: usize = FILE_KEY_BYTES + 16;

/// An age X25519 identity and its public key.
pub(crate) struct X25519Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl X25519Identity {
    /// The same identity as `identity`, with its public key derived now.
    pub(crate) fn new(identity: &age::x25519::Identity) -> X25519Identity {
        let text = identity.to_string();
        // The error is dropped unseen: its text could quote the key.
        let Ok((_, bytes)) = bech32::decode(text.expose_secret()) else {
            unreachable!("age writes its identities in valid Bech32");
        };
        let bytes = Zeroizing::new(bytes);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes[..]);
        let secret = StaticSecret::from(*key);
        let public = PublicKey::from(&secret);
        X25519Identity { secret, public }
    }

    /// Its age recipient, `age1...`.
    pub(crate) fn recipient(&self) -> String {
        let hrp = bech32::Hrp::parse("age").expect("a valid prefix");
        bech32::encode::<bech32::Bech32>(hrp, self.public.as_bytes()).expect("32 bytes fit")
    }
}

impl age::Identity for X25519Identity {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        if stanza.tag != TAG {
            return None;
        }
        let [arg] = &stanza.args[..] else {
            return Some(Err(DecryptError::InvalidHeader));
        };
        // One byte of room: a longer argument fails to fit instead of being cut.
        let mut share = [0u8; SHARE_BYTES + 1];
        match STANDARD_NO_PAD.decode_slice(arg, &mut share) {
            Ok(SHARE_BYTES) => {}
            _ => return Some(Err(DecryptError::InvalidHeader)),
        }
        if stanza.body.len() != BODY_BYTES {
            return Some(Err(DecryptError::InvalidHeader));
        }
        let mut epk = [0u8; SHARE_BYTES];
        epk.copy_from_slice(&share[..SHARE_BYTES]);
        let shared = self.secret.diffie_hellman(&PublicKey::from(epk));
        if bool::from(shared.as_bytes()[..].ct_eq(&[0u8; 32][..])) {
            return Some(Err(DecryptError::InvalidHeader));
        }
        let mut salt = [0u8; 2 * SHARE_BYTES];
        salt[..SHARE_BYTES].copy_from_slice(&epk);
        salt[SHARE_BYTES..].copy_from_slice(self.public.as_bytes());
        let wrapping = Zeroizing::new(hkdf(&salt, LABEL, shared.as_bytes()));
        let file_key = Zeroizing::new(aead_decrypt(&wrapping, FILE_KEY_BYTES, &stanza.body).ok()?);
        Some(Ok(FileKey::init_with_mut(|k| k.copy_from_slice(&file_key))))
    }
}

#[cfg(test)]
mod tests {
    use age::{Identity, Recipient};

    use super::*;

    /// What an identity made of a stanza, comparable across identities.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        NotOurs,
        Invalid,
        Other(String),
        Opened([u8; FILE_KEY_BYTES]),
    }

    fn outcome(identity: &dyn Identity, stanza: &Stanza) -> Outcome {
        match identity.unwrap_stanza(stanza) {
            None => Outcome::NotOurs,
            Some(Err(DecryptError::InvalidHeader)) => Outcome::Invalid,
            Some(Err(e)) => Outcome::Other(e.to_string()),
            Some(Ok(key)) => Outcome::Opened(*key.expose_secret()),
        }
    }

    fn stanza_to(recipient: &age::x25519::Recipient, file_key: [u8; FILE_KEY_BYTES]) -> Stanza {
        let key = FileKey::new(Box::new(file_key));
        let (mut stanzas, _) = recipient.wrap_file_key(&key).unwrap();
        assert_eq!(stanzas.len(), 1);
        stanzas.pop().unwrap()
    }

    #[test]
    fn every_stanza_gives_what_ages_own_identity_gives() {
        let ours_age = age::x25519::Identity::generate();
        let ours = X25519Identity::new(&ours_age);
        assert_eq!(ours.public.as_bytes(), &PublicKey::from(&ours.secret).to_bytes());
        assert_eq!(ours.recipient(), ours_age.to_public().to_string());
        let theirs = age::x25519::Identity::generate();
        let to_ours = stanza_to(&ours_age.to_public(), [7; FILE_KEY_BYTES]);
        let to_theirs = stanza_to(&theirs.to_public(), [9; FILE_KEY_BYTES]);

        let copy = |s: &Stanza| Stanza {
            tag: s.tag.clone(),
            args: s.args.clone(),
            body: s.body.clone(),
        };
        let mut cases: Vec<(&str, Stanza)> = vec![("to us", copy(&to_ours)), ("to another", to_theirs)];
        let with = |f: &dyn Fn(&mut Stanza)| {
            let mut s = copy(&to_ours);
            f(&mut s);
            s
        };
        cases.push(("another tag", with(&|s| s.tag = "scrypt".into())));
        cases.push(("tag in lower case", with(&|s| s.tag = "x25519".into())));
        cases.push(("no argument", with(&|s| s.args.clear())));
        cases.push(("two arguments", with(&|s| s.args.push(s.args[0].clone()))));
        cases.push(("padded share", with(&|s| s.args[0].push('='))));
        cases.push((
            "share one character short",
            with(&|s| {
                s.args[0].pop();
            }),
        ));
        cases.push(("share one character long", with(&|s| s.args[0].push('A'))));
        cases.push((
            "share of 33 bytes",
            with(&|s| s.args[0] = STANDARD_NO_PAD.encode([1u8; 33])),
        ));
        cases.push((
            "share of 31 bytes",
            with(&|s| s.args[0] = STANDARD_NO_PAD.encode([1u8; 31])),
        ));
        cases.push((
            "share with trailing bits set",
            with(&|s| {
                let last = s.args[0].pop().unwrap();
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let i = alphabet.iter().position(|&c| c == last as u8).unwrap();
                s.args[0].push(alphabet[i ^ 1] as char);
            }),
        ));
        cases.push(("not base64", with(&|s| s.args[0].replace_range(0..1, "*"))));
        cases.push((
            "all-zero share",
            with(&|s| s.args[0] = STANDARD_NO_PAD.encode([0u8; 32])),
        ));
        cases.push((
            "low-order share",
            with(&|s| {
                let mut p = [0u8; 32];
                p[0] = 1;
                s.args[0] = STANDARD_NO_PAD.encode(p)
            }),
        ));
        cases.push((
            "another share",
            with(&|s| s.args[0] = STANDARD_NO_PAD.encode([5u8; 32])),
        ));
        cases.push((
            "body short",
            with(&|s| {
                s.body.pop();
            }),
        ));
        cases.push(("body long", with(&|s| s.body.push(0))));
        cases.push(("body empty", with(&|s| s.body.clear())));
        for i in [0, 15, 16, 31] {
            cases.push(("body byte flipped", with(&|s| s.body[i] ^= 1)));
        }

        let mut seen = std::collections::HashSet::new();
        for (what, stanza) in &cases {
            let theirs = outcome(&ours_age, stanza);
            assert_eq!(outcome(&ours, stanza), theirs, "{what}");
            seen.insert(std::mem::discriminant(&theirs));
        }
        assert_eq!(outcome(&ours, &cases[0].1), Outcome::Opened([7; FILE_KEY_BYTES]));
        // The cases reach not-ours, invalid and opened alike.
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn a_whole_age_file_opens_through_the_decryptor_with_it() {
        use std::io::{Read, Write};
        let ours_age = age::x25519::Identity::generate();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&ours_age.to_public() as &dyn Recipient))
                .unwrap();
        let mut file = Vec::new();
        let mut writer = encryptor.wrap_output(&mut file).unwrap();
        writer.write_all(b"payload of the file").unwrap();
        writer.finish().unwrap();
        let open = |identity: &dyn Identity| {
            let decryptor = age::Decryptor::new(&file[..]).unwrap();
            let mut out = Vec::new();
            let mut reader = decryptor.decrypt(std::iter::once(identity))?;
            reader.read_to_end(&mut out).unwrap();
            Ok::<_, DecryptError>(out)
        };
        assert_eq!(
            open(&X25519Identity::new(&ours_age)).unwrap(),
            b"payload of the file"
        );
        let other = X25519Identity::new(&age::x25519::Identity::generate());
        assert!(matches!(open(&other), Err(DecryptError::NoMatchingKeys)));
    }
}
