//! Random bytes and identifiers from the system CSPRNG.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// `n` random bytes.
///
/// # Panics
/// Never in practice: the system random source failing is unrecoverable and aborts the process.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[expect(
        clippy::expect_used,
        reason = "a broken system RNG must stop the process"
    )]
    SystemRandom::new()
        .fill(&mut buf)
        .expect("system random source failed");
    buf
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A new identifier: `prefix` followed by 26 lowercase base32 characters (130 random bits).
pub fn new_id(prefix: &str) -> String {
    let bytes = random_bytes::<17>();
    let mut out = String::with_capacity(prefix.len() + 26);
    out.push_str(prefix);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < prefix.len() + 26 {
            bits -= 5;
            out.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_distinct_and_shaped() {
        let a = super::new_id("task_");
        let b = super::new_id("task_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 26);
        assert!(
            a[5..]
                .bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
        );
    }
}
