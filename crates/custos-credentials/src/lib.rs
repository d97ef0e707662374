//! Credential engines: mint, revoke and list per-lease principals on PostgreSQL, MariaDB/MySQL
//! and Redis, and sign per-lease JWTs for HTTP APIs.
//!
//! An engine knows one kind of server and nothing about leases, tasks or storage: the lease
//! manager (elsewhere) decides *when* to mint and revoke, writes the lease intent first, and
//! calls [`Engine::list_principals`] from its reconciler to remove principals no live lease
//! covers. Everything an engine puts into SQL or ACL text is either a fixed keyword, a value
//! escaped for that server, or an operator-written statement template validated by
//! [`RoleSpec::validate`]; no task or agent name ever reaches it, because a
//! [`PrincipalName`] is built only from the `custos_` prefix and a lease id.
//!
//! Errors are [`CredentialError`]s, which never carry a secret: server messages are scrubbed of
//! the password being minted before they are kept.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use custos_credentials::{
//!     Engine, PostgresConfig, PostgresEngine, PostgresRole, PrincipalName, RoleSpec,
//! };
//! use secrecy::{ExposeSecret, SecretString};
//!
//! # async fn example() -> Result<(), custos_credentials::CredentialError> {
//! let admin = SecretString::from("postgres://custos_admin:pw@127.0.0.1:5432/app");
//! let engine: Arc<dyn Engine> = Arc::new(PostgresEngine::new(PostgresConfig::new(admin))?);
//! engine.check().await?;
//!
//! let role = RoleSpec::Postgres(PostgresRole {
//!     groups: vec!["app_readonly".to_owned()],
//!     ..PostgresRole::default()
//! });
//! role.validate()?; // when the CredentialRole is applied
//!
//! let principal = PrincipalName::for_lease("01j9z3k7")?; // custos_01j9z3k7
//! let expires = time::OffsetDateTime::now_utc() + time::Duration::minutes(15);
//! let credential = engine.mint(&principal, expires, &role).await?;
//! let _password: &str = credential.password.expose_secret(); // inject it, never log it
//!
//! engine.revoke(&principal).await?; // idempotent
//! # Ok(())
//! # }
//! ```

mod connection_url;
mod engine;
mod error;
mod jwt;
mod mysql;
mod pg_connections;
mod postgres;
mod principal;
mod redact;
mod redis_engine;
mod role;
mod scram;
mod secret;
mod sql;
mod template;

pub use connection_url::{connection_url, percent_encoded};
pub use engine::{Engine, EngineFuture, Grant, MintedCredential, Serverless};
pub use error::{CredentialError, EngineKind};
pub use jwt::{ClaimsSigner, JwtEngine, JwtRole};
pub use mysql::{MysqlConfig, MysqlEngine, MysqlRole};
pub use postgres::{PostgresConfig, PostgresEngine, PostgresRole};
pub use principal::{MAX_LEASE_ID_LEN, PRINCIPAL_PREFIX, PrincipalName, PrincipalPrefix};
pub use redact::{REDACTED, Redactor};
pub use redis_engine::{RedisConfig, RedisEngine, RedisRole};
pub use role::{RoleSpec, StaticRole};
