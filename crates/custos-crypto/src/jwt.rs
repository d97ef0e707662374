//! Task tokens (EdDSA JWTs issued by Custos) and agent assertions (EdDSA JWTs signed by agents).
//!
//! Time checks use the caller's clock, not the library's, so tests can move time and every
//! check is explicit: signature, algorithm, `kid`, issuer, audience, expiry, not-before.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::keys::{AgentKey, ServerKey};
use crate::random::new_id;

/// Clock skew tolerated on `iat`/`nbf` of assertions, in seconds.
pub const SKEW_SECS: i64 = 30;

/// The longest an agent assertion may live, in seconds.
pub const MAX_ASSERTION_SECS: i64 = 300;

/// Why a token or assertion was refused. Callers answer 401 without saying which.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not a well-formed JWT, or a claim is missing or has the wrong type.
    #[error("malformed token")]
    Malformed,
    /// Signature, algorithm or key id does not check out.
    #[error("bad signature")]
    Signature,
    /// Past `exp`, or not yet valid.
    #[error("token expired or not yet valid")]
    Expired,
    /// Wrong `aud` or `iss`.
    #[error("wrong audience or issuer")]
    Audience,
    /// An assertion that lives longer than allowed.
    #[error("assertion lifetime too long")]
    Lifetime,
    /// Signing failed.
    #[error("signing failed")]
    Signing,
}

impl TokenError {
    /// A coarse reason for metrics and audit.
    pub fn reason(&self) -> custos_core::Reason {
        use custos_core::Reason;
        match self {
            TokenError::Malformed | TokenError::Signing => Reason::Malformed,
            TokenError::Signature => Reason::BadSignature,
            TokenError::Expired => Reason::Expired,
            TokenError::Audience => Reason::WrongAudience,
            TokenError::Lifetime => Reason::Lifetime,
        }
    }
}

/// The actor of a delegated token (RFC 8693 `act`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActClaim {
    /// The agent's name.
    pub sub: String,
}

/// The claims of a task token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskClaims {
    /// This Custos.
    pub iss: String,
    /// The MCP endpoint this token is for.
    pub aud: String,
    /// The initiator: on whose behalf the agent acts.
    pub sub: String,
    /// The agent (RFC 8693 delegation).
    pub act: ActClaim,
    /// The task id.
    pub task_id: String,
    /// The task's template.
    pub template: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

/// The claims of an agent's assertion (RFC 7523 style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// The agent's name.
    pub iss: String,
    /// The agent's name.
    pub sub: String,
    /// This Custos's issuer URL.
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expiry, Unix seconds (at most five minutes after `iat`).
    pub exp: i64,
    /// Unique id; a replay is refused.
    pub jti: String,
}

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    v
}

/// Signs and verifies task tokens with the server key.
#[derive(Debug)]
pub struct TokenIssuer {
    key: ServerKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audience: String,
}

impl TokenIssuer {
    /// An issuer named `issuer` whose tokens are for `audience`.
    pub fn new(key: ServerKey, issuer: String, audience: String) -> Self {
        let encoding = EncodingKey::from_ed_der(key.key().pkcs8_der());
        let decoding = DecodingKey::from_ed_der(&key.key().public_key());
        Self {
            key,
            encoding,
            decoding,
            issuer,
            audience,
        }
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience of task tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.key.jwk()] })
    }

    /// Issues a task token valid from `now` until `exp` (Unix seconds).
    ///
    /// # Errors
    /// [`TokenError::Signing`] if signing fails.
    pub fn issue(
        &self,
        initiator: &str,
        agent: &str,
        task_id: &str,
        template: &str,
        now: i64,
        exp: i64,
    ) -> Result<(String, TaskClaims), TokenError> {
        let claims = TaskClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: initiator.to_owned(),
            act: ActClaim {
                sub: agent.to_owned(),
            },
            task_id: task_id.to_owned(),
            template: template.to_owned(),
            iat: now,
            nbf: now,
            exp,
            jti: new_id("tok_"),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid().to_owned());
        header.typ = Some("at+jwt".to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|_| TokenError::Signing)?;
        Ok((token, claims))
    }

    /// Verifies a task token: signature, `kid`, issuer, audience and time.
    ///
    /// # Errors
    /// A [`TokenError`] saying which check failed (for logs and metrics only).
    pub fn verify(&self, token: &str, now: i64) -> Result<TaskClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA || header.kid.as_deref() != Some(self.key.kid()) {
            return Err(TokenError::Signature);
        }
        let data = jsonwebtoken::decode::<TaskClaims>(token, &self.decoding, &validation())
            .map_err(map_decode_error)?;
        let c = data.claims;
        if c.iss != self.issuer || c.aud != self.audience {
            return Err(TokenError::Audience);
        }
        if now >= c.exp || now < c.nbf {
            return Err(TokenError::Expired);
        }
        Ok(c)
    }
}

fn map_decode_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidEddsaKey => {
            TokenError::Signature
        }
        _ => TokenError::Malformed,
    }
}

/// Reads who an assertion claims to come from (`iss`, equal to `sub`), before its signature is
/// checked: the agent's name or its key's JWK thumbprint.
///
/// # Errors
/// [`TokenError::Malformed`] when the text is not a JWT with `iss` = `sub`.
pub fn assertion_issuer(assertion: &str) -> Result<String, TokenError> {
    let claims: AssertionClaims = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|_| TokenError::Malformed)?;
    if claims.iss != claims.sub || claims.iss.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(claims.iss)
}

/// Verifies an agent's assertion against its registered public key.
///
/// # Errors
/// A [`TokenError`] saying which check failed.
pub fn verify_assertion(
    assertion: &str,
    public_key: &[u8; 32],
    audience: &str,
    now: i64,
) -> Result<AssertionClaims, TokenError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| TokenError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Signature);
    }
    let key = DecodingKey::from_ed_der(public_key);
    let c = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation())
        .map_err(map_decode_error)?
        .claims;
    if c.aud != audience {
        return Err(TokenError::Audience);
    }
    if now >= c.exp || c.iat > now + SKEW_SECS {
        return Err(TokenError::Expired);
    }
    if c.exp - c.iat > MAX_ASSERTION_SECS || c.jti.is_empty() || c.jti.len() > 128 {
        return Err(TokenError::Lifetime);
    }
    Ok(c)
}

/// Signs an assertion for `agent` with its private key, valid for `ttl_secs` from `now`.
///
/// # Errors
/// [`TokenError::Signing`] if signing fails.
pub fn sign_assertion(
    key: &AgentKey,
    agent: &str,
    audience: &str,
    now: i64,
    ttl_secs: i64,
) -> Result<String, TokenError> {
    let claims = AssertionClaims {
        iss: agent.to_owned(),
        sub: agent.to_owned(),
        aud: audience.to_owned(),
        iat: now,
        exp: now + ttl_secs,
        jti: new_id("jti_"),
    };
    let header = Header::new(Algorithm::EdDSA);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(key.pkcs8_der()))
        .map_err(|_| TokenError::Signing)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn issuer() -> TokenIssuer {
        let key = ServerKey::new(AgentKey::generate().expect("key"));
        TokenIssuer::new(
            key,
            "http://127.0.0.1:8470".into(),
            "http://127.0.0.1:8470/mcp".into(),
        )
    }

    #[test]
    fn task_token_round_trip_and_expiry() {
        let iss = issuer();
        let (tok, claims) = iss
            .issue("alice", "agent-a", "task_1", "docs", 1000, 1900)
            .expect("issue");
        assert_eq!(iss.verify(&tok, 1000).expect("valid"), claims);
        assert_eq!(claims.act.sub, "agent-a");
        assert_eq!(iss.verify(&tok, 1900), Err(TokenError::Expired));
        assert_eq!(iss.verify(&tok, 999), Err(TokenError::Expired));
    }

    #[test]
    fn forged_tokens_refused() {
        let iss = issuer();
        let other = issuer();
        let (tok, _) = other
            .issue("alice", "a", "t", "x", 1000, 1900)
            .expect("issue");
        assert!(iss.verify(&tok, 1000).is_err(), "other key");
        let (tok, _) = iss
            .issue("alice", "a", "t", "x", 1000, 1900)
            .expect("issue");
        // alg none: header swapped, signature dropped.
        let parts: Vec<&str> = tok.split('.').collect();
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(iss.verify(&format!("{none}.{}.", parts[1]), 1000).is_err());
        // Claims edited, signature kept.
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        claims["act"]["sub"] = "agent-b".into();
        let edited = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
        assert_eq!(
            iss.verify(&format!("{}.{edited}.{}", parts[0], parts[2]), 1000),
            Err(TokenError::Signature)
        );
        assert_eq!(iss.verify("garbage", 1000), Err(TokenError::Malformed));
        // Wrong audience.
        let key =
            ServerKey::new(AgentKey::from_pkcs8_pem(&iss.key.key().to_pkcs8_pem()).expect("key"));
        let wrong = TokenIssuer::new(key, iss.issuer.clone(), "http://elsewhere/mcp".into());
        let (tok, _) = wrong
            .issue("alice", "a", "t", "x", 1000, 1900)
            .expect("issue");
        assert_eq!(iss.verify(&tok, 1000), Err(TokenError::Audience));
    }

    #[test]
    fn assertions() {
        let agent = AgentKey::generate().expect("key");
        let other = AgentKey::generate().expect("key");
        let aud = "http://127.0.0.1:8470";
        let a = sign_assertion(&agent, "agent-a", aud, 1000, 60).expect("sign");
        assert_eq!(assertion_issuer(&a).expect("agent"), "agent-a");
        let c = verify_assertion(&a, &agent.public_key(), aud, 1010).expect("valid");
        assert_eq!(c.sub, "agent-a");
        assert_eq!(
            verify_assertion(&a, &other.public_key(), aud, 1010),
            Err(TokenError::Signature)
        );
        assert_eq!(
            verify_assertion(&a, &agent.public_key(), "http://x", 1010),
            Err(TokenError::Audience)
        );
        assert_eq!(
            verify_assertion(&a, &agent.public_key(), aud, 1060),
            Err(TokenError::Expired)
        );
        let long = sign_assertion(&agent, "agent-a", aud, 1000, 3600).expect("sign");
        assert_eq!(
            verify_assertion(&long, &agent.public_key(), aud, 1010),
            Err(TokenError::Lifetime)
        );
    }
}
