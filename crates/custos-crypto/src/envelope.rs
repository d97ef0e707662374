//! Envelope encryption for secrets at rest: each value is sealed under its own data key
//! (AES-256-GCM), and the data key is sealed under the key-encryption key (AES-256-GCM too).
//! Both seals are bound to the record's id as associated data, so a sealed value copied onto
//! another record does not open there.
//!
//! Text form: `v1.<kek id>.<wrapped data key>.<sealed value>`, the last two base64url
//! (nonce ‖ ciphertext ‖ tag). The key-encryption key's id (the first 8 bytes of its SHA-256,
//! hex) names which key sealed a value, so a wrong key is refused by name before any
//! decryption is tried.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;
use zeroize::{Zeroize as _, Zeroizing};

use crate::digest::sha256;
use crate::random::random_bytes;

const KEY_LEN: usize = 32;
const VERSION: &str = "v1";

/// Why a sealed value did not open. Never carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// Not the text form this version writes.
    #[error("not a sealed value")]
    Malformed,
    /// Sealed under another key-encryption key.
    #[error("sealed under key `{0}`, not the configured key")]
    OtherKey(String),
    /// Authentication failed: altered, or sealed for another record.
    #[error("the sealed value does not authenticate (altered, or sealed for another record)")]
    Tampered,
    /// A key-encryption key of the wrong size.
    #[error("a key-encryption key is 32 bytes")]
    KeySize,
}

/// The key-encryption key. Never printed; wiped when dropped.
pub struct Kek {
    key: Zeroizing<[u8; KEY_LEN]>,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// A new random key (dev mode; production keys come from a file or the environment).
    pub fn generate() -> Self {
        Self::from_array(random_bytes::<KEY_LEN>())
    }

    /// A key from its 32 bytes.
    ///
    /// # Errors
    /// [`EnvelopeError::KeySize`] for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let mut key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| EnvelopeError::KeySize)?;
        let kek = Self::from_array(key);
        key.zeroize();
        Ok(kek)
    }

    /// A key from its base64 text (standard or URL-safe, padded or not), as a key file or an
    /// environment variable holds it.
    ///
    /// # Errors
    /// [`EnvelopeError::KeySize`] when it does not decode to 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, EnvelopeError> {
        let text = text.trim().trim_end_matches('=');
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(text.replace('+', "-").replace('/', "_"))
                .map_err(|_| EnvelopeError::KeySize)?,
        );
        Self::from_bytes(&bytes)
    }

    /// The key as base64url text, to write a new key file once.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(URL_SAFE_NO_PAD.encode(self.key.as_slice()))
    }

    fn from_array(key: [u8; KEY_LEN]) -> Self {
        let id = hex::encode(&sha256(&key)[..8]);
        Self {
            key: Zeroizing::new(key),
            id,
        }
    }

    /// Its id: which key sealed a value.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` for the record `record_id` under a fresh data key.
    pub fn seal(&self, record_id: &str, plaintext: &[u8]) -> String {
        let dek = Zeroizing::new(random_bytes::<KEY_LEN>());
        let wrapped = seal_with(&self.key, &aad("dek", &self.id, record_id), dek.as_slice());
        let sealed = seal_with(&dek, &aad("value", &self.id, record_id), plaintext);
        format!(
            "{VERSION}.{}.{}.{}",
            self.id,
            URL_SAFE_NO_PAD.encode(wrapped),
            URL_SAFE_NO_PAD.encode(sealed)
        )
    }

    /// Opens what [`Kek::seal`] sealed for the same record.
    ///
    /// # Errors
    /// [`EnvelopeError`]: malformed, another key's, altered, or another record's.
    pub fn open(&self, record_id: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let mut parts = sealed.split('.');
        let (Some(VERSION), Some(kid), Some(wrapped), Some(value), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(EnvelopeError::Malformed);
        };
        if kid != self.id {
            return Err(EnvelopeError::OtherKey(
                kid.chars().take(16).collect::<String>(),
            ));
        }
        let wrapped = URL_SAFE_NO_PAD
            .decode(wrapped)
            .map_err(|_| EnvelopeError::Malformed)?;
        let value = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| EnvelopeError::Malformed)?;
        let dek = open_with(&self.key, &aad("dek", &self.id, record_id), wrapped)?;
        let dek: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(
            dek.as_slice()
                .try_into()
                .map_err(|_| EnvelopeError::Tampered)?,
        );
        open_with(&dek, &aad("value", &self.id, record_id), value)
    }
}

/// The associated data of one seal: what it is, under which key, for which record.
fn aad(what: &str, kek_id: &str, record_id: &str) -> Vec<u8> {
    format!("custos-envelope-v1\0{what}\0{kek_id}\0{record_id}").into_bytes()
}

fn key_of(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    #[expect(clippy::expect_used, reason = "AES-256-GCM accepts every 32-byte key")]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

/// nonce ‖ ciphertext ‖ tag.
fn seal_with(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = random_bytes::<NONCE_LEN>();
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    #[expect(
        clippy::expect_used,
        reason = "sealing fails only for inputs past AES-GCM's 64 GiB limit"
    )]
    key_of(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .expect("AES-GCM seal");
    out.extend_from_slice(&body);
    body.zeroize();
    out
}

fn open_with(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: Vec<u8>,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(EnvelopeError::Malformed);
    }
    let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN]
        .try_into()
        .map_err(|_| EnvelopeError::Malformed)?;
    let mut body = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
    let len = key_of(key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            body.as_mut_slice(),
        )
        .map_err(|_| EnvelopeError::Tampered)?
        .len();
    body.truncate(len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_for_its_record_only() {
        let kek = Kek::generate();
        let sealed = kek.seal("secret_1", b"hunter2-but-longer");
        assert!(sealed.starts_with(&format!("v1.{}.", kek.id())));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            kek.open("secret_1", &sealed).expect("opens").as_slice(),
            b"hunter2-but-longer"
        );
        assert_eq!(kek.open("secret_2", &sealed), Err(EnvelopeError::Tampered));
        // Sealing twice gives different text (fresh data key and nonces).
        assert_ne!(kek.seal("secret_1", b"x"), kek.seal("secret_1", b"x"));
    }

    #[test]
    fn altered_foreign_and_malformed_values_are_refused() {
        let kek = Kek::generate();
        let sealed = kek.seal("r", b"value");
        let parts: Vec<&str> = sealed.split('.').collect();
        // Flip one byte of the sealed value, then of the wrapped key.
        for i in [3, 2] {
            let mut bytes = URL_SAFE_NO_PAD.decode(parts[i]).expect("b64");
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            let mut p = parts.clone();
            let altered = URL_SAFE_NO_PAD.encode(bytes);
            p[i] = &altered;
            assert_eq!(kek.open("r", &p.join(".")), Err(EnvelopeError::Tampered));
        }
        let other = Kek::generate();
        assert!(matches!(
            other.open("r", &sealed),
            Err(EnvelopeError::OtherKey(_))
        ));
        for bad in [
            "",
            "v1",
            "v2.a.b.c",
            "v1.x.y",
            "v1.a.b.c.d",
            &format!("v1.{}.!!.??", kek.id()),
        ] {
            assert!(kek.open("r", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_load_from_base64_and_never_print() {
        let kek = Kek::generate();
        let text = kek.to_base64();
        let again = Kek::from_base64(&text).expect("loads");
        assert_eq!(again.id(), kek.id());
        let sealed = kek.seal("r", b"v");
        assert_eq!(again.open("r", &sealed).expect("opens").as_slice(), b"v");
        // Standard alphabet with padding loads too.
        let std = base64::engine::general_purpose::STANDARD
            .encode(URL_SAFE_NO_PAD.decode(text.as_str()).expect("b64"));
        assert_eq!(Kek::from_base64(&std).expect("std").id(), kek.id());
        assert_eq!(
            Kek::from_base64("c2hvcnQ").map(|_| ()),
            Err(EnvelopeError::KeySize)
        );
        let shown = format!("{kek:?}");
        assert!(!shown.contains(text.as_str()), "{shown}");
        assert!(shown.contains(kek.id()));
    }
}
