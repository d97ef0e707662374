//! Credential engines: mint, revoke and list per-lease principals on PostgreSQL, MariaDB/MySQL
//! and Redis.
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

mod engine;
mod error;
mod mysql;
mod postgres;
mod principal;
mod redis_engine;
mod role;
mod scram;
mod secret;
mod sql;
mod template;

pub use engine::{Engine, EngineFuture, MintedCredential};
pub use error::{CredentialError, EngineKind};
pub use mysql::{MysqlConfig, MysqlEngine, MysqlRole};
pub use postgres::{PostgresConfig, PostgresEngine, PostgresRole};
pub use principal::{MAX_LEASE_ID_LEN, PRINCIPAL_PREFIX, PrincipalName, PrincipalPrefix};
pub use redis_engine::{RedisConfig, RedisEngine, RedisRole};
pub use role::RoleSpec;
