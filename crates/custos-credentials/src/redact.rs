//! Cuts injected credentials out of text an upstream sends back: each value as it is, URL
//! (percent-) encoded, and base64-encoded (standard and URL-safe alphabets) at each of the three
//! byte alignments it can have inside a longer encoded text.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::connection_url::percent_encoded;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The shortest needle searched for: shorter encodings of a fragment would match ordinary
/// text by chance (every value Custos mints is at least 32 characters).
const MIN_NEEDLE: usize = 8;

/// A set of secret values to cut out of text, with their encodings. `Debug` names only how
/// many needles it holds.
#[derive(Default)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    needles: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} needles)", self.needles)
    }
}

impl Redactor {
    /// A redactor for `secrets` and their encodings. Values shorter than 8 characters are left
    /// out (they would match ordinary text).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a SecretString>) -> Self {
        let mut needles: Vec<Zeroizing<String>> = Vec::new();
        for secret in secrets {
            let raw = secret.expose_secret();
            needles.push(Zeroizing::new(raw.to_owned()));
            needles.push(Zeroizing::new(percent_encoded(raw)));
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                for shift in 0..3 {
                    needles.push(aligned_base64(engine, raw.as_bytes(), shift));
                }
            }
        }
        needles.retain(|n| n.len() >= MIN_NEEDLE);
        needles.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        needles.dedup_by(|a, b| a.as_str() == b.as_str());
        let matcher = (!needles.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(needles.iter().map(|n| n.as_bytes()))
                    .ok()
            })
            .flatten();
        Self {
            matcher,
            needles: needles.len(),
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `text` with every occurrence of a secret (or an encoding of it) replaced by
    /// [`REDACTED`]; borrowed when there was none.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match &self.matcher {
            Some(m) if m.is_match(text) => {
                let mut out = String::with_capacity(text.len());
                m.replace_all_with(text, &mut out, |_, _, dst| {
                    dst.push_str(REDACTED);
                    true
                });
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(text),
        }
    }
}

/// The characters of `engine`'s encoding of `secret` that depend on `secret` alone when it
/// starts `shift` bytes into a 3-byte group: the same characters appear in the encoding of any
/// text that holds `secret` at such an offset.
fn aligned_base64(
    engine: &base64::engine::GeneralPurpose,
    secret: &[u8],
    shift: usize,
) -> Zeroizing<String> {
    let mut padded = Zeroizing::new(vec![0_u8; shift]);
    padded.extend_from_slice(secret);
    let encoded = Zeroizing::new(engine.encode(padded.as_slice()));
    let start = (shift * 8).div_ceil(6);
    let end = (padded.len() * 8) / 6;
    Zeroizing::new(encoded.get(start..end).unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    const SECRET: &str = "Zx9_k-Q2pW8rT1vB7nM4cL6hJ3gF5dS0";

    fn redactor() -> Redactor {
        Redactor::new([&SecretString::from(SECRET)])
    }

    #[test]
    fn the_value_and_its_url_encoding_are_cut_out() {
        let r = redactor();
        assert_eq!(
            r.redact(&format!("password={SECRET}; again {SECRET}")),
            "password=[REDACTED]; again [REDACTED]"
        );
        let with_reserved = SecretString::from("p@ss/w:rd+long enough");
        let r2 = Redactor::new([&with_reserved]);
        assert_eq!(
            r2.redact("postgresql://u:p%40ss%2Fw%3Ard%2Blong%20enough@h/db"),
            "postgresql://u:[REDACTED]@h/db"
        );
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn base64_of_any_text_holding_the_value_loses_it_at_every_offset() {
        let r = redactor();
        for prefix in ["", "a", "ab", "abc", "user:", "Authorization: Basic x"] {
            for suffix in ["", "!", "!!", "!!!"] {
                let text = format!("{prefix}{SECRET}{suffix}");
                for encoded in [
                    STANDARD.encode(&text),
                    URL_SAFE.encode(&text),
                    STANDARD_NO_PAD.encode(&text),
                ] {
                    let out = r.redact(&encoded);
                    assert!(out.contains(REDACTED), "{prefix:?}+{suffix:?}: {out}");
                    // What is left cannot be decoded back to the secret.
                    let left = out.replace(REDACTED, "");
                    assert!(
                        STANDARD
                            .decode(&left)
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                            .is_none_or(|s| !s.contains(SECRET)),
                        "{out}"
                    );
                }
            }
        }
    }

    #[test]
    fn short_values_are_not_searched_for_and_debug_shows_no_secret() {
        let r = Redactor::new([&SecretString::from("abc")]);
        assert!(r.is_empty());
        assert_eq!(r.redact("abcabc"), "abcabc");
        assert!(!format!("{:?}", redactor()).contains(SECRET));
    }
}
