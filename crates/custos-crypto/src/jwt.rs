//! Task tokens (EdDSA JWTs issued by Custos) and agent assertions (EdDSA JWTs signed by agents).
//!
//! Time checks use the caller's clock, not the library's, so tests can move time and every
//! check is explicit: signature, algorithm, `kid`, issuer, audience, expiry, not-before.

use custos_core::Task;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::keys::{AgentKey, ServerKey};
use crate::random::new_id;

/// Clock skew tolerated on `iat`/`nbf` of assertions, in seconds.
pub const SKEW_SECS: i64 = 30;

/// The longest an agent assertion may live, in seconds.
pub const MAX_ASSERTION_SECS: i64 = 300;

/// The latest time a claim may name, in Unix seconds (the start of the year 3000). Claims are
/// checked against `0..=MAX_CLAIM_SECS` before any arithmetic, so a signed token with an
/// extreme `iat`, `nbf` or `exp` is refused instead of overflowing.
pub const MAX_CLAIM_SECS: i64 = 32_503_680_000;

/// Whether `t` is a time a claim may name (see [`MAX_CLAIM_SECS`]).
fn claim_in_range(t: i64) -> bool {
    (0..=MAX_CLAIM_SECS).contains(&t)
}

/// Why a token or assertion was refused. Callers answer 401 without saying which.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not a well-formed JWT, or a claim is missing, has the wrong type or names a time out of
    /// range.
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
    /// The agent's immutable id: a token never outlives the registration it was issued to.
    pub agent_id: String,
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

    /// Issues a token for `task`, valid from `now` until `exp` (Unix seconds): on behalf of
    /// the task's initiator, acted by its agent, under its template.
    ///
    /// # Errors
    /// [`TokenError::Signing`] if signing fails.
    pub fn issue(
        &self,
        task: &Task,
        now: i64,
        exp: i64,
    ) -> Result<(String, TaskClaims), TokenError> {
        let claims = TaskClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: task.on_behalf_of.clone(),
            act: ActClaim {
                sub: task.agent.clone(),
                agent_id: task.agent_id.to_string(),
            },
            task_id: task.id.to_string(),
            template: task.template.clone(),
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

    /// Signs the claims of a credential token for a downstream service (`typ: JWT`) with the
    /// key the JWKS serves. Such a token is never a task token: its `typ` is not `at+jwt`
    /// and its audience is not this Custos's (the caller checks the latter).
    ///
    /// # Errors
    /// [`TokenError::Signing`] if signing fails.
    pub fn sign_claims(&self, claims: &serde_json::Value) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid().to_owned());
        header.typ = Some("JWT".to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|_| TokenError::Signing)
    }

    /// Verifies a task token: type, signature, `kid`, issuer, audience and time.
    ///
    /// # Errors
    /// A [`TokenError`] saying which check failed (for logs and metrics only).
    pub fn verify(&self, token: &str, now: i64) -> Result<TaskClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA || header.kid.as_deref() != Some(self.key.kid()) {
            return Err(TokenError::Signature);
        }
        // Credential tokens for downstream services are signed with the same key.
        if header.typ.as_deref() != Some("at+jwt") {
            return Err(TokenError::Malformed);
        }
        let data = jsonwebtoken::decode::<TaskClaims>(token, &self.decoding, &validation())
            .map_err(map_decode_error)?;
        let c = data.claims;
        if c.iss != self.issuer || c.aud != self.audience {
            return Err(TokenError::Audience);
        }
        if ![c.iat, c.nbf, c.exp].into_iter().all(claim_in_range) {
            return Err(TokenError::Malformed);
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
    if !claim_in_range(c.iat) || !claim_in_range(c.exp) {
        return Err(TokenError::Malformed);
    }
    if now >= c.exp || c.iat > now.saturating_add(SKEW_SECS) {
        return Err(TokenError::Expired);
    }
    // Both claims are in range, so the difference cannot overflow.
    let lifetime = c.exp - c.iat;
    if !(1..=MAX_ASSERTION_SECS).contains(&lifetime) || c.jti.is_empty() || c.jti.len() > 128 {
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
        exp: now.saturating_add(ttl_secs),
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
    use proptest::prelude::*;

    use super::*;

    fn issuer() -> TokenIssuer {
        let key = ServerKey::new(AgentKey::generate().expect("key"));
        TokenIssuer::new(
            key,
            "http://127.0.0.1:8470".into(),
            "http://127.0.0.1:8470/mcp".into(),
        )
    }

    fn task(agent: &str) -> Task {
        Task {
            id: custos_core::TaskId::parse("task_1").expect("id"),
            agent: agent.into(),
            agent_id: custos_core::AgentId::parse("agent_1").expect("id"),
            template: "docs".into(),
            template_version: 1,
            started_by: "op".into(),
            on_behalf_of: "alice".into(),
            purpose: None,
            created_at: 0,
            expires_at: 1_900_000,
            state: custos_core::TaskState::Active,
            ended_at: None,
            ended_by: None,
            tainted_at: None,
            tainted_by: None,
        }
    }

    #[test]
    fn task_token_round_trip_and_expiry() {
        let iss = issuer();
        let (tok, claims) = iss.issue(&task("agent-a"), 1000, 1900).expect("issue");
        assert_eq!(iss.verify(&tok, 1000).expect("valid"), claims);
        assert_eq!(claims.act.sub, "agent-a");
        assert_eq!(claims.act.agent_id, "agent_1");
        assert_eq!(claims.sub, "alice");
        assert_eq!(iss.verify(&tok, 1900), Err(TokenError::Expired));
        assert_eq!(iss.verify(&tok, 999), Err(TokenError::Expired));
    }

    #[test]
    fn forged_tokens_refused() {
        let iss = issuer();
        let other = issuer();
        let (tok, _) = other.issue(&task("a"), 1000, 1900).expect("issue");
        assert!(iss.verify(&tok, 1000).is_err(), "other key");
        let (tok, _) = iss.issue(&task("a"), 1000, 1900).expect("issue");
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
        let (tok, _) = wrong.issue(&task("a"), 1000, 1900).expect("issue");
        assert_eq!(iss.verify(&tok, 1000), Err(TokenError::Audience));
    }

    /// An assertion with any claim values, signed by `key`.
    fn assertion_with(key: &AgentKey, iat: i64, exp: i64) -> String {
        let claims = AssertionClaims {
            iss: "agent-a".into(),
            sub: "agent-a".into(),
            aud: AUD.into(),
            iat,
            exp,
            jti: "jti_1".into(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_der(key.pkcs8_der()),
        )
        .expect("sign")
    }

    /// A task token with any time claims, signed by `iss`'s own key.
    fn task_token_with(iss: &TokenIssuer, iat: i64, nbf: i64, exp: i64) -> String {
        let claims = TaskClaims {
            iss: iss.issuer.clone(),
            aud: iss.audience.clone(),
            sub: "alice".into(),
            act: ActClaim {
                sub: "a".into(),
                agent_id: "agent_1".into(),
            },
            task_id: "t".into(),
            template: "x".into(),
            iat,
            nbf,
            exp,
            jti: "tok_1".into(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(iss.key.kid().to_owned());
        header.typ = Some("at+jwt".to_owned());
        jsonwebtoken::encode(&header, &claims, &iss.encoding).expect("sign")
    }

    #[test]
    fn a_credential_token_signed_with_the_same_key_is_never_a_task_token() {
        let iss = issuer();
        let now = 1_700_000_000;
        let good = task_token_with(&iss, now, now, now + 60);
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                good.split('.').nth(1).expect("payload"),
            )
            .expect("base64"),
        )
        .expect("claims");
        // The very claims of a valid task token, signed as a credential: refused by type.
        let credential = iss.sign_claims(&claims).expect("signed");
        assert_eq!(iss.verify(&credential, now), Err(TokenError::Malformed));
        assert!(iss.verify(&good, now).is_ok());
    }

    const AUD: &str = "http://127.0.0.1:8470";

    #[test]
    fn extreme_assertion_times_are_refused_without_panic() {
        let agent = AgentKey::generate().expect("key");
        let now = 1_700_000_000;
        let cases = [
            (i64::MIN, now + 60, TokenError::Malformed),
            (now, i64::MAX, TokenError::Malformed),
            (i64::MIN, i64::MAX, TokenError::Malformed),
            (i64::MAX, i64::MIN, TokenError::Malformed),
            (-1, now + 60, TokenError::Malformed),
            (now, MAX_CLAIM_SECS + 1, TokenError::Malformed),
            (now + 10, now + 5, TokenError::Lifetime),
            (now, now + MAX_ASSERTION_SECS + 1, TokenError::Lifetime),
        ];
        for (iat, exp, want) in cases {
            let a = assertion_with(&agent, iat, exp);
            assert_eq!(
                verify_assertion(&a, &agent.public_key(), AUD, now),
                Err(want),
                "iat {iat}, exp {exp}"
            );
        }
        let a = assertion_with(&agent, now, now + MAX_ASSERTION_SECS);
        assert!(verify_assertion(&a, &agent.public_key(), AUD, now).is_ok());
        // An extreme clock is refused, not overflowed.
        assert_eq!(
            verify_assertion(&a, &agent.public_key(), AUD, i64::MAX),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_assertion(&a, &agent.public_key(), AUD, i64::MIN),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn extreme_task_token_times_are_refused_without_panic() {
        let iss = issuer();
        let now = 1_700_000_000;
        for (iat, nbf, exp) in [
            (i64::MIN, now, now + 60),
            (now, i64::MIN, now + 60),
            (now, now, i64::MAX),
            (now, -1, now + 60),
            (now, now, MAX_CLAIM_SECS + 1),
        ] {
            let t = task_token_with(&iss, iat, nbf, exp);
            assert_eq!(
                iss.verify(&t, now),
                Err(TokenError::Malformed),
                "iat {iat}, nbf {nbf}, exp {exp}"
            );
        }
        let t = task_token_with(&iss, now, now, now + 60);
        assert!(iss.verify(&t, now).is_ok());
        assert_eq!(iss.verify(&t, i64::MAX), Err(TokenError::Expired));
        assert_eq!(iss.verify(&t, i64::MIN), Err(TokenError::Expired));
    }

    /// Times that hit the edges: anything, the valid range, and values around a fixed `now`.
    fn time() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            0..=MAX_CLAIM_SECS,
            (MAX_CLAIM_SECS - 5)..=(MAX_CLAIM_SECS + 5),
            -5i64..5,
            (1_000i64 - 400)..(1_000 + 400),
            Just(i64::MIN),
            Just(i64::MAX),
        ]
    }

    fn in_range(t: i64) -> bool {
        (0..=i128::from(MAX_CLAIM_SECS)).contains(&i128::from(t))
    }

    proptest! {
        #[test]
        fn assertion_times_never_panic_and_accept_only_valid(
            iat in time(), exp in time(), now in prop_oneof![time(), Just(1_000i64)]
        ) {
            static KEY: std::sync::OnceLock<AgentKey> = std::sync::OnceLock::new();
            let agent = KEY.get_or_init(|| AgentKey::generate().expect("key"));
            let a = assertion_with(agent, iat, exp);
            let got = verify_assertion(&a, &agent.public_key(), AUD, now);
            // The rule, in i128 so the oracle itself cannot overflow.
            let (iat_w, exp_w, now_w) = (i128::from(iat), i128::from(exp), i128::from(now));
            let valid = in_range(iat)
                && in_range(exp)
                && now_w < exp_w
                && iat_w <= now_w + i128::from(SKEW_SECS)
                && exp_w - iat_w >= 1
                && exp_w - iat_w <= i128::from(MAX_ASSERTION_SECS);
            prop_assert_eq!(got.is_ok(), valid, "iat {} exp {} now {}: {:?}", iat, exp, now, got);
        }

        #[test]
        fn task_token_times_never_panic_and_accept_only_valid(
            iat in time(), nbf in time(), exp in time(),
            now in prop_oneof![time(), Just(1_000i64)]
        ) {
            static ISSUER: std::sync::OnceLock<TokenIssuer> = std::sync::OnceLock::new();
            let iss = ISSUER.get_or_init(issuer);
            let t = task_token_with(iss, iat, nbf, exp);
            let got = iss.verify(&t, now);
            let valid = in_range(iat) && in_range(nbf) && in_range(exp) && nbf <= now && now < exp;
            prop_assert_eq!(got.is_ok(), valid, "iat {} nbf {} exp {} now {}: {:?}", iat, nbf, exp, now, got);
        }
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
