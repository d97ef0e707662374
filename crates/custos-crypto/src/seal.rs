//! Opaque state handed to a client and taken back: sealed so it comes back unaltered, and
//! only for what it was issued for.

use base64::Engine as _;

/// The prefix of a sealed value (its format version).
const PREFIX: &str = "custos1.";

/// Seals state under a key of this process's own (HMAC-SHA-256 over a context and the
/// state): a value that was altered, or is presented for another context, does not open.
/// State sealed before a restart does not open after it.
pub struct StateSeal {
    key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for StateSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSeal")
    }
}

impl Default for StateSeal {
    fn default() -> Self {
        Self::new()
    }
}

impl StateSeal {
    /// A seal with a fresh random key.
    pub fn new() -> Self {
        let bytes = crate::random::random_bytes::<32>();
        Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &bytes),
        }
    }

    fn message(context: &str, state: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(context.len() + state.len() + 1);
        m.extend_from_slice(context.as_bytes());
        m.push(0);
        m.extend_from_slice(state.as_bytes());
        m
    }

    /// `state`, sealed for `context`.
    pub fn seal(&self, context: &str, state: &str) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.key, &Self::message(context, state));
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        format!("{PREFIX}{tag}.{state}")
    }

    /// The state `sealed` holds, when it was sealed by this seal for `context` and not
    /// altered since (the tag compared in constant time).
    pub fn open<'a>(&self, context: &str, sealed: &'a str) -> Option<&'a str> {
        let (tag, state) = sealed.strip_prefix(PREFIX)?.split_once('.')?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        aws_lc_rs::hmac::verify(&self.key, &Self::message(context, state), &tag)
            .ok()
            .map(|()| state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_state_opens_only_unaltered_and_for_its_context() {
        let seal = StateSeal::new();
        let sealed = seal.seal("task_a\u{0}tool", "opaque.state");
        assert_eq!(seal.open("task_a\u{0}tool", &sealed), Some("opaque.state"));
        assert_eq!(seal.open("task_b\u{0}tool", &sealed), None, "another task");
        let tampered = sealed.replace("opaque", "opaquE");
        assert_eq!(seal.open("task_a\u{0}tool", &tampered), None);
        assert_eq!(
            seal.open("task_a\u{0}tool", "opaque.state"),
            None,
            "never sealed"
        );
        assert_eq!(
            StateSeal::new().open("task_a\u{0}tool", &sealed),
            None,
            "another key"
        );
    }
}
