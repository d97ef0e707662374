//! Signed tokens for HTTP APIs (`engine: jwt`): one short-lived JWT per lease, signed by Custos
//! with the audience and extra claims the role names, and naming who holds it — the initiator
//! as `sub`, the agent as `act.sub` (RFC 8693), the task and the lease — for downstream
//! services that trust Custos's JWKS.
//!
//! There is no server: the token is the credential and its `exp` (the lease's expiry) is the
//! bound a downstream enforces. Revoking a lease cannot recall a token already handed out,
//! which is why a role's TTL is at most an hour; the reconciler has nothing to list.
//!
//! ```yaml
//! kind: CredentialRole
//! name: billing-api
//! engine: jwt
//! default_ttl: 5m
//! max_ttl: 15m
//! role:
//!   audience: https://billing.internal
//!   claims: { scope: "invoices:read" }
//! ```

use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::engine::{EngineFuture, Grant, MintedCredential, Serverless};
use crate::error::{CredentialError, EngineKind};
use crate::principal::PrincipalName;
use crate::role::{RoleSpec, invalid_role};

const KIND: EngineKind = EngineKind::Jwt;

/// The longest audience.
const MAX_AUDIENCE: usize = 256;
/// The most extra claims a role adds.
const MAX_CLAIMS: usize = 16;
/// The most JSON bytes of the extra claims together.
const MAX_CLAIMS_BYTES: usize = 4096;

/// Claims Custos sets itself, which a role may not name.
const RESERVED: [&str; 10] = [
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "act", "task_id", "lease_id",
];

/// A `jwt` role: the audience its tokens are for and the claims they carry besides who holds
/// them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwtRole {
    /// The `aud` of every token (the downstream service's identifier).
    pub audience: String,
    /// Extra claims, copied into every token (names of letters, digits and `_`; not one
    /// Custos sets).
    #[serde(default)]
    pub claims: Map<String, Value>,
}

impl JwtRole {
    /// Checks the audience and the extra claims.
    ///
    /// # Errors
    /// [`CredentialError::InvalidRole`] naming the field.
    pub fn validate(&self) -> Result<(), CredentialError> {
        let aud = &self.audience;
        if aud.is_empty() || aud.len() > MAX_AUDIENCE || !aud.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(invalid_role(
                KIND,
                "audience",
                format!("1 to {MAX_AUDIENCE} printable characters without spaces"),
            ));
        }
        if self.claims.len() > MAX_CLAIMS {
            return Err(invalid_role(
                KIND,
                "claims",
                format!("at most {MAX_CLAIMS} claims"),
            ));
        }
        for name in self.claims.keys() {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(invalid_role(
                    KIND,
                    "claims",
                    "claim names are 1 to 64 letters, digits and `_`",
                ));
            }
            if RESERVED.contains(&name.as_str()) {
                return Err(invalid_role(
                    KIND,
                    format!("claims.{name}"),
                    "is set by Custos itself",
                ));
            }
        }
        let bytes = serde_json::to_vec(&self.claims).map_or(usize::MAX, |b| b.len());
        if bytes > MAX_CLAIMS_BYTES {
            return Err(invalid_role(
                KIND,
                "claims",
                format!("at most {MAX_CLAIMS_BYTES} bytes of JSON"),
            ));
        }
        Ok(())
    }
}

/// Signs a token's claims: Custos's own token key, so downstreams verify it with Custos's
/// JWKS.
pub trait ClaimsSigner: Send + Sync {
    /// The issuer (`iss`) of the tokens this signer makes.
    fn issuer(&self) -> &str;

    /// The audiences a credential token may not name (Custos's own: a credential must never
    /// be usable as a task token).
    fn forbidden_audience(&self, audience: &str) -> bool;

    /// A compact JWS of `claims`.
    ///
    /// # Errors
    /// [`CredentialError::InvalidConfig`] when signing fails.
    fn sign(&self, claims: &Value) -> Result<SecretString, CredentialError>;
}

/// The `jwt` engine.
pub struct JwtEngine {
    signer: Arc<dyn ClaimsSigner>,
}

impl std::fmt::Debug for JwtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtEngine")
            .field("issuer", &self.signer.issuer())
            .finish()
    }
}

impl JwtEngine {
    /// An engine signing with `signer`.
    pub fn new(signer: Arc<dyn ClaimsSigner>) -> Self {
        Self { signer }
    }

    fn token(
        &self,
        principal: &PrincipalName,
        expires_at: OffsetDateTime,
        role: &RoleSpec,
        grant: &Grant<'_>,
    ) -> Result<MintedCredential, CredentialError> {
        let RoleSpec::Jwt(role) = role else {
            return Err(CredentialError::WrongRole {
                engine: KIND,
                got: role.engine(),
            });
        };
        role.validate()?;
        if self.signer.forbidden_audience(&role.audience) {
            return Err(invalid_role(
                KIND,
                "audience",
                "names Custos itself: a credential must not work as a task token",
            ));
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut claims = Map::new();
        for (k, v) in &role.claims {
            claims.insert(k.clone(), v.clone());
        }
        for (k, v) in [
            ("iss", json!(self.signer.issuer())),
            ("aud", json!(role.audience)),
            ("sub", json!(grant.initiator)),
            (
                "act",
                json!({ "sub": grant.agent, "agent_id": grant.agent_id }),
            ),
            ("task_id", json!(grant.task)),
            ("lease_id", json!(grant.lease)),
            ("jti", json!(principal.as_str())),
            ("iat", json!(now)),
            ("nbf", json!(now)),
            ("exp", json!(expires_at.unix_timestamp())),
        ] {
            claims.insert(k.to_owned(), v);
        }
        let password = self.signer.sign(&Value::Object(claims))?;
        Ok(MintedCredential {
            principal: principal.clone(),
            password,
            server_expires_at: Some(expires_at),
        })
    }
}

impl Serverless for JwtEngine {
    fn kind(&self) -> EngineKind {
        KIND
    }

    // A token's expiry is part of it.
    fn renewable(&self) -> bool {
        false
    }

    fn issue<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
        grant: Option<&'a Grant<'a>>,
    ) -> EngineFuture<'a, MintedCredential> {
        Box::pin(std::future::ready(match grant {
            Some(grant) => self.token(principal, expires_at, role, grant),
            None => Err(invalid_role(
                KIND,
                "-",
                "a token names who holds it: mint it with a grant",
            )),
        }))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::engine::Engine as _;

    /// Signs by printing the claims (a test stand-in for Custos's token key).
    struct Plain;

    impl ClaimsSigner for Plain {
        fn issuer(&self) -> &str {
            "http://custos.test"
        }
        fn forbidden_audience(&self, audience: &str) -> bool {
            audience.starts_with("http://custos.test")
        }
        fn sign(&self, claims: &Value) -> Result<SecretString, CredentialError> {
            Ok(SecretString::from(claims.to_string()))
        }
    }

    fn role(yaml: &str) -> Result<RoleSpec, String> {
        let spec: RoleSpec = serde_yaml_ng(yaml)?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    fn serde_yaml_ng(json: &str) -> Result<RoleSpec, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_token_names_its_holder_audience_and_expiry_and_the_role_cannot_override_them() {
        let engine = JwtEngine::new(Arc::new(Plain));
        let spec = role(
            r#"{"engine":"jwt","audience":"https://billing.internal","claims":{"scope":"invoices:read"}}"#,
        )
        .expect("valid");
        let principal = PrincipalName::for_lease("abc123").expect("principal");
        let exp = OffsetDateTime::now_utc() + time::Duration::minutes(5);
        let grant = Grant {
            task: "task_1",
            agent: "billing-bot",
            agent_id: "agent_1",
            initiator: "alice@example.com",
            lease: "lease_abc123",
        };
        let minted = engine
            .mint_for(&principal, exp, &spec, &grant)
            .await
            .expect("minted");
        let claims: Value = serde_json::from_str(minted.password.expose_secret()).expect("claims");
        assert_eq!(claims["aud"], "https://billing.internal");
        assert_eq!(claims["sub"], "alice@example.com");
        assert_eq!(claims["act"]["sub"], "billing-bot");
        assert_eq!(claims["task_id"], "task_1");
        assert_eq!(claims["jti"], "custos_abc123");
        assert_eq!(claims["scope"], "invoices:read");
        assert_eq!(claims["exp"], exp.unix_timestamp());
        // Without a grant there is nobody to name; a token cannot be extended.
        assert!(engine.mint(&principal, exp, &spec).await.is_err());
        assert!(matches!(
            engine.renew(&principal, exp, &spec).await,
            Err(CredentialError::NotRenewable(EngineKind::Jwt))
        ));
        // Custos's own audience would make a credential a task token.
        let own = role(r#"{"engine":"jwt","audience":"http://custos.test/mcp"}"#).expect("valid");
        assert!(
            engine
                .mint_for(&principal, exp, &own, &grant)
                .await
                .is_err()
        );
    }

    #[test]
    fn roles_cannot_set_the_claims_custos_sets_or_grow_without_bound() {
        for (json, says) in [
            (r#"{"engine":"jwt","audience":""}"#, "audience"),
            (r#"{"engine":"jwt","audience":"a b"}"#, "audience"),
            (
                r#"{"engine":"jwt","audience":"x","claims":{"sub":"mallory"}}"#,
                "claims.sub",
            ),
            (
                r#"{"engine":"jwt","audience":"x","claims":{"act":{}}}"#,
                "claims.act",
            ),
            (
                r#"{"engine":"jwt","audience":"x","claims":{"a-b":1}}"#,
                "claim names",
            ),
            (
                r#"{"engine":"jwt","audience":"x","extra":1}"#,
                "unknown field",
            ),
        ] {
            let err = role(json).expect_err(json);
            assert!(err.contains(says), "{json}: {err}");
        }
        let big = format!(
            r#"{{"engine":"jwt","audience":"x","claims":{{"blob":"{}"}}}}"#,
            "x".repeat(5000)
        );
        assert!(role(&big).expect_err("too big").contains("bytes"));
    }
}
