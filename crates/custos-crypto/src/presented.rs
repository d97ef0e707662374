//! A bearer token as a client presented it: operator or task token, before it is checked.

use secrecy::{ExposeSecret, SecretString};

/// A presented bearer token. Never printed (`Debug` shows no part of it), wiped from memory
/// when dropped; read only by the code that checks it.
pub struct PresentedToken(SecretString);

impl std::fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresentedToken(..)")
    }
}

impl PresentedToken {
    /// A token read from somewhere trusted to hold one (a file, the environment).
    pub fn new(token: impl Into<String>) -> Self {
        Self(SecretString::from(token.into()))
    }

    /// The token of an `Authorization` header value, `Bearer <token>` (the scheme in any
    /// case); `None` for another scheme or an empty token.
    pub fn from_authorization(value: &str) -> Option<Self> {
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Self::new(token))
    }

    /// The token text, for the check that verifies it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_values() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic abc", None),
            ("", None),
        ] {
            assert_eq!(
                PresentedToken::from_authorization(value)
                    .as_ref()
                    .map(PresentedToken::expose),
                token,
                "{value:?}"
            );
        }
    }

    #[test]
    fn debug_shows_nothing_of_the_token() {
        let t = PresentedToken::new("custos_op_secretsecret");
        assert_eq!(format!("{t:?}"), "PresentedToken(..)");
    }
}
