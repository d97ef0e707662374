//! Operator tokens: a recognisable prefix, 190 random bits and a checksum; only the hash is stored.
//!
//! Shape: `custos_op_` + 32 base62 characters + 6 base62 characters of CRC32 over them, so a
//! leaked token is easy for secret scanners to find and a typo is caught before any lookup.

use secrecy::{ExposeSecret, SecretString};

use crate::digest::sha256_hex;
use crate::random::random_bytes;

/// The prefix every operator token starts with.
pub const PREFIX: &str = "custos_op_";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY: usize = 32;
const CHECK: usize = 6;

fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECK];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// A newly minted operator token. Shown once; only [`OperatorToken::hash`] is stored.
#[derive(Debug)]
pub struct OperatorToken(SecretString);

impl OperatorToken {
    /// Mints a new token.
    pub fn generate() -> Self {
        let bytes = random_bytes::<BODY>();
        let body: String = bytes
            .iter()
            .map(|b| char::from(BASE62[usize::from(*b) % 62]))
            .collect();
        let sum = checksum(&body);
        Self(SecretString::from(format!("{PREFIX}{body}{sum}")))
    }

    /// The token text, to show the operator once.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The stored form.
    pub fn hash(&self) -> String {
        hash(self.expose())
    }
}

/// Whether `token` has the operator token shape and a valid checksum.
pub fn well_formed(token: &str) -> bool {
    let Some(rest) = token.strip_prefix(PREFIX) else {
        return false;
    };
    if rest.len() != BODY + CHECK || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, sum) = rest.split_at(BODY);
    // INVARIANT: this only filters typos; authentication is the hash lookup that follows.
    checksum(body) == sum
}

/// The stored hash of a presented token.
pub fn hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_checksum() {
        let t = OperatorToken::generate();
        assert!(t.expose().starts_with(PREFIX));
        assert!(well_formed(t.expose()));
        let mut typo = t.expose().to_owned();
        let last = typo.pop().expect("non-empty");
        typo.push(if last == 'a' { 'b' } else { 'a' });
        assert!(!well_formed(&typo));
        assert!(!well_formed("custos_op_short"));
        assert_eq!(t.hash().len(), 64);
        assert!(!format!("{t:?}").contains(&t.expose()[PREFIX.len()..]));
    }
}
