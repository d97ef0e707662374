//! Keys, tokens and digests: everything in Custos that signs, verifies or hashes.
//!
//! One crypto provider (`aws-lc-rs`) backs all of it; JWTs go through `jsonwebtoken` with that
//! provider only.

pub mod digest;
pub mod envelope;
pub mod jwt;
pub mod keys;
pub mod operator_token;
pub mod presented;
pub mod random;
pub mod seal;

pub use digest::{argument_digest, sha256_hex, tool_definition_digest};
pub use envelope::{EnvelopeError, Kek};
pub use jwt::{ActClaim, AssertionClaims, TaskClaims, TokenError, TokenIssuer};
pub use keys::{AgentKey, KeyError, ServerKey, jwk_thumbprint, parse_public_key_pem};
pub use operator_token::OperatorToken;
pub use presented::PresentedToken;
pub use random::new_id;
pub use seal::StateSeal;
