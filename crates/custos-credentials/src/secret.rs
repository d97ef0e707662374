//! Fresh credential secrets: 192 random bits from aws-lc-rs, URL-safe base64.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::error::CredentialError;

/// Random bytes per password: 192 bits.
const PASSWORD_BYTES: usize = 24;

/// A new password of 32 characters from `[A-Za-z0-9_-]`, none of which needs quoting in a
/// connection URL, a SQL literal or a Redis ACL rule.
pub(crate) fn generate_password() -> Result<SecretString, CredentialError> {
    let mut bytes = Zeroizing::new([0_u8; PASSWORD_BYTES]);
    aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| CredentialError::Random)?;
    Ok(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

/// `N` random bytes (salts).
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], CredentialError> {
    let mut bytes = [0_u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CredentialError::Random)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn passwords_are_32_url_safe_characters_and_differ() {
        let a = generate_password().expect("rng");
        let b = generate_password().expect("rng");
        assert_eq!(a.expose_secret().len(), 32);
        assert!(
            a.expose_secret()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(!format!("{a:?}").contains(a.expose_secret()));
    }
}
