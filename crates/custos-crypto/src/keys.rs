//! Ed25519 keys: the server's token-signing key and agents' identity keys.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::digest::sha256;

/// A key that could not be generated, read or used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The PEM text is not a key of the expected type.
    #[error("invalid key: {0}")]
    Invalid(String),
    /// The crypto provider refused.
    #[error("key operation failed")]
    Crypto,
}

// An Ed25519 SubjectPublicKeyInfo is this fixed prefix followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn spki_pem(public: &[u8]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    pem::encode(&pem::Pem::new("PUBLIC KEY", der))
}

/// Reads an Ed25519 public key from PEM (`-----BEGIN PUBLIC KEY-----`), returning its 32 bytes.
///
/// # Errors
/// [`KeyError::Invalid`] when the text is not one PEM block holding an Ed25519 key.
pub fn parse_public_key_pem(text: &str) -> Result<[u8; 32], KeyError> {
    let block = pem::parse(text.trim()).map_err(|e| KeyError::Invalid(e.to_string()))?;
    if block.tag() != "PUBLIC KEY" {
        return Err(KeyError::Invalid(format!(
            "expected a PUBLIC KEY block, found `{}`",
            block.tag()
        )));
    }
    let der = block.contents();
    if der.len() != 44 || der[..12] != ED25519_SPKI_PREFIX {
        return Err(KeyError::Invalid("not an Ed25519 public key".into()));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&der[12..]);
    Ok(out)
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key (base64url SHA-256 of the canonical JWK).
pub fn jwk_thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes()))
}

/// An Ed25519 key pair whose PKCS#8 form is held in zeroized memory.
pub struct AgentKey {
    pkcs8: Zeroizing<Vec<u8>>,
    public: [u8; 32],
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl AgentKey {
    /// Generates a new key pair.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the provider fails.
    pub fn generate() -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::generate().map_err(|_| KeyError::Crypto)?;
        Self::from_pair(&pair)
    }

    fn from_pair(pair: &Ed25519KeyPair) -> Result<Self, KeyError> {
        // PKCS#8 v1: what JWK export and most tools expect.
        let der: Pkcs8V1Der<'_> = pair.as_der().map_err(|_| KeyError::Crypto)?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(Self {
            pkcs8: Zeroizing::new(der.as_ref().to_vec()),
            public,
        })
    }

    /// Reads a private key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// # Errors
    /// [`KeyError::Invalid`] when the text is not an Ed25519 PKCS#8 private key.
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, KeyError> {
        let block = pem::parse(text.trim()).map_err(|e| KeyError::Invalid(e.to_string()))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(KeyError::Invalid(format!(
                "expected a PRIVATE KEY block, found `{}`",
                block.tag()
            )));
        }
        let der = Zeroizing::new(block.into_contents());
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| KeyError::Invalid("not an Ed25519 PKCS#8 private key".into()))?;
        Self::from_pair(&pair)
    }

    /// The private key as PKCS#8 PEM, in zeroized memory.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.pkcs8.to_vec(),
        )))
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> String {
        spki_pem(&self.public)
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The PKCS#8 DER bytes, for signing.
    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }
}

/// The server's token-signing key, with its key id.
#[derive(Debug)]
pub struct ServerKey {
    key: AgentKey,
    kid: String,
}

impl ServerKey {
    /// Wraps a key pair; its `kid` is derived from the public key.
    pub fn new(key: AgentKey) -> Self {
        let kid = URL_SAFE_NO_PAD.encode(&sha256(&key.public_key())[..12]);
        Self { key, kid }
    }

    /// The key id published in the JWKS and set in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The underlying key pair.
    pub fn key(&self) -> &AgentKey {
        &self.key
    }

    /// The public key as a JWK (OKP, Ed25519).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.key.public_key()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let k = AgentKey::generate().expect("generate");
        let again = AgentKey::from_pkcs8_pem(&k.to_pkcs8_pem()).expect("reads back");
        assert_eq!(k.public_key(), again.public_key());
        assert_eq!(
            parse_public_key_pem(&k.public_key_pem()).expect("public"),
            k.public_key()
        );
        assert!(
            format!("{k:?}").len() < 120,
            "Debug must not print the private key"
        );
    }

    #[test]
    fn rejects_wrong_blocks() {
        let k = AgentKey::generate().expect("generate");
        assert!(parse_public_key_pem(&k.to_pkcs8_pem()).is_err());
        assert!(AgentKey::from_pkcs8_pem(&k.public_key_pem()).is_err());
        assert!(parse_public_key_pem("garbage").is_err());
    }
}
