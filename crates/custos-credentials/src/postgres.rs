//! PostgreSQL: a login role per lease, privileges through group roles, a SCRAM-SHA-256
//! verifier instead of a password, `VALID UNTIL` so the server refuses logins even if Custos
//! is down.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use postgres_protocol::escape::{escape_identifier, escape_literal};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor, Postgres};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::engine::MintedCredential;
use crate::error::{CredentialError, EngineKind, sqlx_error};
use crate::pg_connections::PgConnections;
use crate::principal::{PRINCIPAL_PREFIX, PrincipalName, PrincipalPrefix};
use crate::role::{RoleSpec, deserialize_duration, invalid_role};
use crate::scram;
use crate::secret::{generate_password, random_bytes};
use crate::sql::SafeSql;
use crate::template::{Dialect, Template};

const KIND: EngineKind = EngineKind::Postgres;
/// Most group roles and statements one role may name.
const MAX_ITEMS: usize = 32;
/// The largest `grace` a role may ask for: it is time a credential outlives its lease.
pub const MAX_GRACE: Duration = Duration::from_secs(300);
/// The `grace` of a role that names none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How long revocation waits for each terminated session to end.
const TERMINATE_WAIT_MS: i64 = 5_000;
/// The first key of the advisory locks revocation takes (`Cust`), so they do not collide
/// with an application's one-key locks.
const ADVISORY_LOCK_CLASS: i32 = 0x4375_7374;

/// How to reach the PostgreSQL server as an administrator allowed to create roles.
///
/// A superuser admin has every privilege the engine needs (the tests use one). A
/// non-superuser admin needs `CREATEROLE`, `ADMIN OPTION` on every group a role names, and
/// the privileges of the principals it created for `REASSIGN OWNED` and
/// `pg_terminate_backend` (PostgreSQL 16: `createrole_self_grant = 'set, inherit'`); that
/// setup is not tested here yet.
///
/// Connections are not encrypted (the workspace's sqlx has no TLS feature): reach a remote
/// server through a TLS tunnel, or keep it on the same host, until that is configured.
#[derive(Debug)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// `postgres://admin:password@host:port/database`; statements of roles run in this
    /// database.
    pub admin_url: SecretString,
    /// Admin connections kept open (default 4).
    pub max_connections: u32,
    /// How long to wait for a connection (default 5 s).
    pub connect_timeout: Duration,
    /// The role that receives objects a revoked principal owned (`REASSIGN OWNED`); default
    /// the admin role itself.
    pub owner: Option<String>,
}

impl PostgresConfig {
    /// The defaults, with this admin URL.
    #[must_use]
    pub fn new(admin_url: SecretString) -> Self {
        Self {
            admin_url,
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
            owner: None,
        }
    }
}

/// A PostgreSQL credential role: which group roles the login role joins, extra statements,
/// and the grace added to `VALID UNTIL`.
///
/// ```yaml
/// engine: postgres
/// groups: [app_readonly]
/// statements:
///   - "COMMENT ON ROLE {{name}} IS 'custos lease'"
/// grace: 30s
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresRole {
    /// Group roles the login role is made a member of (`IN ROLE`); they hold the privileges.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Statements run after `CREATE ROLE` in the same transaction, in the admin URL's database.
    /// `{{name}}` becomes the quoted role name, `{{expiration}}` the quoted `VALID UNTIL`
    /// timestamp. One statement each; placeholders must not be inside quotes.
    #[serde(default)]
    pub statements: Vec<String>,
    /// Added to the lease expiry for `VALID UNTIL` (clock skew, revocation lag); at most 5 min.
    #[serde(default = "default_grace", deserialize_with = "deserialize_duration")]
    pub grace: Duration,
    /// `CONNECTION LIMIT` of the login role.
    #[serde(default)]
    pub connection_limit: Option<u32>,
}

fn default_grace() -> Duration {
    DEFAULT_GRACE
}

impl Default for PostgresRole {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            statements: Vec::new(),
            grace: DEFAULT_GRACE,
            connection_limit: None,
        }
    }
}

pub(crate) struct ValidPostgresRole<'a> {
    groups: &'a [String],
    statements: Vec<Template>,
    grace: Duration,
    connection_limit: Option<u32>,
}

impl PostgresRole {
    pub(crate) fn validate(&self) -> Result<ValidPostgresRole<'_>, CredentialError> {
        if self.groups.len() > MAX_ITEMS {
            return Err(invalid_role(
                KIND,
                "groups",
                format!("more than {MAX_ITEMS}"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, group) in self.groups.iter().enumerate() {
            check_role_name(group).map_err(|r| invalid_role(KIND, format!("groups[{i}]"), r))?;
            if !seen.insert(group.as_str()) {
                return Err(invalid_role(KIND, format!("groups[{i}]"), "named twice"));
            }
        }
        if self.statements.len() > MAX_ITEMS {
            return Err(invalid_role(
                KIND,
                "statements",
                format!("more than {MAX_ITEMS}"),
            ));
        }
        let statements = self
            .statements
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Template::parse(s, Dialect::Postgres)
                    .map_err(|r| invalid_role(KIND, format!("statements[{i}]"), r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.grace > MAX_GRACE {
            return Err(invalid_role(KIND, "grace", "at most 5m"));
        }
        if self.connection_limit == Some(0) {
            return Err(invalid_role(
                KIND,
                "connection_limit",
                "0 would refuse every login",
            ));
        }
        Ok(ValidPostgresRole {
            groups: &self.groups,
            statements,
            grace: self.grace,
            connection_limit: self.connection_limit,
        })
    }
}

/// A role name a spec or config may name: `[A-Za-z_][A-Za-z0-9_-]*`, at most 63 bytes, not a
/// Custos principal. It is still escaped wherever it is used.
fn check_role_name(name: &str) -> Result<(), String> {
    let shown: String = name.chars().take(64).collect();
    if name.is_empty() || name.len() > 63 {
        return Err(format!("`{shown}`: a role name is 1 to 63 bytes"));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!(
            "`{shown}`: a role name is a letter or `_` followed by letters, digits, `_` or `-`"
        ));
    }
    if name.starts_with(PRINCIPAL_PREFIX) {
        return Err(format!(
            "`{shown}`: names under `custos_` are per-lease principals"
        ));
    }
    Ok(())
}

/// The PostgreSQL engine.
pub struct PostgresEngine {
    conns: PgConnections,
    target: String,
    owner: Option<String>,
}

impl std::fmt::Debug for PostgresEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEngine")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PostgresEngine {
    /// An engine for this server. Connects lazily: use [`Engine::check`](crate::Engine::check) to find out whether
    /// the server is reachable.
    ///
    /// # Errors
    /// [`CredentialError::InvalidConfig`] when the URL or owner is unusable.
    pub fn new(config: PostgresConfig) -> Result<Self, CredentialError> {
        // The parse error is dropped: it may quote the URL, which holds the admin password.
        let options = PgConnectOptions::from_str(config.admin_url.expose_secret())
            .map_err(|_| CredentialError::InvalidConfig {
                engine: KIND,
                reason: "the admin URL is not a valid postgres:// URL".to_owned(),
            })?
            .application_name("custos-credentials")
            // Statements carry password verifiers: never log them.
            .disable_statement_logging();
        if let Some(owner) = &config.owner {
            check_role_name(owner).map_err(|reason| CredentialError::InvalidConfig {
                engine: KIND,
                reason: format!("owner: {reason}"),
            })?;
        }
        let target = format!("{}:{}", options.get_host(), options.get_port());
        let conns = PgConnections::new(
            options,
            config.max_connections,
            config.connect_timeout,
            target.clone(),
        );
        Ok(Self {
            conns,
            target,
            owner: config.owner,
        })
    }

    fn error(
        &self,
        e: sqlx::Error,
        step: &str,
        principal: &str,
        secrets: &[&str],
    ) -> CredentialError {
        sqlx_error(KIND, &self.target, e, step, principal, secrets)
    }

    /// Closes the admin connections; later calls fail. Call before shutdown or before
    /// dropping the database they are connected to.
    pub async fn close(&self) {
        self.conns.close().await;
    }

    async fn mint_inner(
        &self,
        principal: &PrincipalName,
        expires_at: OffsetDateTime,
        role: &RoleSpec,
    ) -> Result<MintedCredential, CredentialError> {
        let (role, valid_until, valid_until_text) = validity(role, expires_at)?;
        let name = principal.as_str();

        let password = generate_password()?;
        let salt = random_bytes::<16>()?;
        let verifier = Zeroizing::new(scram::verifier(
            password.expose_secret().as_bytes(),
            &salt,
            scram::ITERATIONS,
        ));
        let secrets = [password.expose_secret(), verifier.as_str()];

        let mut create = SafeSql::new("CREATE ROLE ")
            .pg_ident(name)
            .kw(" LOGIN PASSWORD ")
            .pg_literal(&verifier)
            .kw(" VALID UNTIL ")
            .pg_literal(&valid_until_text);
        if let Some(limit) = role.connection_limit {
            create = create.kw(" CONNECTION LIMIT ").number(u64::from(limit));
        }
        for (i, group) in role.groups.iter().enumerate() {
            create = create
                .kw(if i == 0 { " IN ROLE " } else { ", " })
                .pg_ident(group);
        }

        let create_error = |e: sqlx::Error| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42710") => {
                CredentialError::AlreadyExists {
                    engine: KIND,
                    principal: name.to_owned(),
                }
            }
            _ => self.error(e, "create role", name, &secrets),
        };
        if role.statements.is_empty() {
            // One statement is atomic on its own: no transaction, one round trip.
            let mut conn = self.conns.acquire().await?;
            match execute_composed(conn.get(), create).await {
                Ok(()) => conn.release(),
                Err(e @ sqlx::Error::Database(_)) => {
                    // The server answered (and refused): nothing was created and the
                    // connection is fine.
                    conn.release();
                    return Err(create_error(e));
                }
                Err(e) => {
                    // The connection broke with the statement sent: its outcome is unknown.
                    drop(conn);
                    return Err(self.undo(principal, create_error(e)).await);
                }
            }
        } else {
            let mut conn = self.conns.acquire().await?;
            let mut tx = conn
                .get()
                .begin()
                .await
                .map_err(|e| self.error(e, "begin", name, &secrets))?;
            let steps = async {
                execute_composed(&mut *tx, create)
                    .await
                    .map_err(create_error)?;
                let quoted_name = escape_identifier(name);
                let quoted_expiry = escape_literal(&valid_until_text);
                for (i, statement) in role.statements.iter().enumerate() {
                    let sql =
                        SafeSql::from_template(statement.render(&quoted_name, &quoted_expiry));
                    execute(&mut *tx, sql)
                        .await
                        .map_err(|e| self.error(e, &format!("statements[{i}]"), name, &secrets))?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = steps {
                // CREATE ROLE is transactional: rolling back leaves nothing behind. If the
                // rollback itself cannot be sent, the server aborts the transaction when the
                // connection closes.
                let _ = tx.rollback().await;
                return Err(e);
            }
            if let Err(e) = tx.commit().await {
                // The commit's outcome is unknown (e.g. the connection broke): remove
                // whatever may exist.
                let mint = self.error(e, "commit", name, &secrets);
                drop(conn);
                return Err(self.undo(principal, mint).await);
            }
            conn.release();
        }
        tracing::debug!(principal = %principal, valid_until = %valid_until_text, "postgres role minted");
        Ok(MintedCredential {
            principal: principal.clone(),
            password,
            server_expires_at: Some(valid_until),
        })
    }

    /// Moves the role's `VALID UNTIL` to `expires_at` plus the role's grace.
    async fn renew_inner(
        &self,
        principal: &PrincipalName,
        expires_at: OffsetDateTime,
        role: &RoleSpec,
    ) -> Result<Option<OffsetDateTime>, CredentialError> {
        let (_, valid_until, valid_until_text) = validity(role, expires_at)?;
        let name = principal.as_str();
        let alter = SafeSql::new("ALTER ROLE ")
            .pg_ident(name)
            .kw(" VALID UNTIL ")
            .pg_literal(&valid_until_text);
        let mut conn = self.conns.acquire().await?;
        match execute_composed(conn.get(), alter).await {
            Ok(()) => conn.release(),
            Err(e @ sqlx::Error::Database(_)) => {
                conn.release();
                return Err(self.error(e, "alter role", name, &[]));
            }
            Err(e) => return Err(self.error(e, "alter role", name, &[])),
        }
        tracing::debug!(principal = %principal, valid_until = %valid_until_text, "postgres role renewed");
        Ok(Some(valid_until))
    }

    /// After a mint failed with its outcome unknown: removes whatever may exist, and says
    /// whether that worked too.
    async fn undo(&self, principal: &PrincipalName, mint: CredentialError) -> CredentialError {
        match self.revoke_inner(principal).await {
            Ok(()) => mint,
            Err(cleanup) => CredentialError::CleanupFailed {
                mint: Box::new(mint),
                cleanup: Box::new(cleanup),
            },
        }
    }

    async fn revoke_inner(&self, principal: &PrincipalName) -> Result<(), CredentialError> {
        match self.revoke_steps(principal).await {
            Ok(()) => Ok(()),
            // Another revoker (a replica, the reconciler) may have dropped it between two of
            // our steps: gone is what was asked for.
            Err(e) => match self.role_exists(principal.as_str()).await {
                Ok(false) => Ok(()),
                _ => Err(e),
            },
        }
    }

    async fn role_exists(&self, name: &str) -> Result<bool, CredentialError> {
        let mut conn = self.conns.acquire().await?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(name)
            .fetch_optional(conn.get())
            .await
            .map_err(|e| self.error(e, "look up role", name, &[]))?;
        conn.release();
        Ok(exists.is_some())
    }

    async fn revoke_steps(&self, principal: &PrincipalName) -> Result<(), CredentialError> {
        let name = principal.as_str();
        if !self.role_exists(name).await? {
            return Ok(());
        }
        let mut conn = self.conns.acquire().await?;
        // Revokers of one principal (replicas, the reconciler) take turns: concurrent
        // `ALTER ROLE`s of one role fail with "tuple concurrently updated". A session lock,
        // released below or when the connection closes.
        sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
            .bind(ADVISORY_LOCK_CLASS)
            .bind(name)
            .execute(conn.get())
            .await
            .map_err(|e| self.error(e, "lock", name, &[]))?;
        let result = self.revoke_locked(conn.get(), principal).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(ADVISORY_LOCK_CLASS)
            .bind(name)
            .execute(conn.get())
            .await;
        // A connection whose unlock failed is dropped, not reused: closing the session
        // releases the lock.
        if unlocked.is_ok() && result.is_ok() {
            conn.release();
        }
        result
    }

    async fn revoke_locked(
        &self,
        conn: &mut PgConnection,
        principal: &PrincipalName,
    ) -> Result<(), CredentialError> {
        let name = principal.as_str();
        let err = |step: &'static str| move |e| self.error(e, step, name, &[]);
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(err("look up role"))?;
        if exists.is_none() {
            // The revoker we waited for finished it.
            return Ok(());
        }
        // No new logins first, then end the sessions already open: `VALID UNTIL` alone would
        // leave them running.
        let nologin = SafeSql::new("ALTER ROLE ").pg_ident(name).kw(" NOLOGIN");
        execute_composed(&mut *conn, nologin)
            .await
            .map_err(err("nologin"))?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid, $2) FROM pg_stat_activity \
             WHERE usename = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .bind(TERMINATE_WAIT_MS)
        .execute(&mut *conn)
        .await
        .map_err(err("terminate sessions"))?;

        // Objects it owns or privileges granted to it, in other databases of the cluster:
        // `DROP OWNED` only reaches the current one, so visit each.
        let others: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT d.datname::text FROM pg_shdepend s \
             JOIN pg_database d ON d.oid = s.dbid \
             JOIN pg_roles r ON r.oid = s.refobjid \
             WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = $1 \
             AND d.datname <> current_database() AND d.datallowconn",
        )
        .bind(name)
        .fetch_all(&mut *conn)
        .await
        .map_err(err("find databases"))?;
        for database in others {
            let mut other = self.conns.connect_to(&database).await?;
            self.disown(&mut other, name).await?;
            let _ = other.close().await;
        }
        self.disown(conn, name).await?;
        execute_composed(
            &mut *conn,
            SafeSql::new("DROP ROLE IF EXISTS ").pg_ident(name),
        )
        .await
        .map_err(err("drop role"))?;
        tracing::debug!(principal = %principal, "postgres role revoked");
        Ok(())
    }

    /// `REASSIGN OWNED` to the owner, then `DROP OWNED` (privileges, default privileges and
    /// whatever is left), in the connection's database.
    async fn disown(&self, conn: &mut PgConnection, name: &str) -> Result<(), CredentialError> {
        let reassign = SafeSql::new("REASSIGN OWNED BY ").pg_ident(name).kw(" TO ");
        let reassign = match &self.owner {
            Some(owner) => reassign.pg_ident(owner),
            None => reassign.kw("CURRENT_USER"),
        };
        execute_composed(&mut *conn, reassign)
            .await
            .map_err(|e| self.error(e, "reassign owned", name, &[]))?;
        execute_composed(&mut *conn, SafeSql::new("DROP OWNED BY ").pg_ident(name))
            .await
            .map_err(|e| self.error(e, "drop owned", name, &[]))
    }

    async fn list_inner(
        &self,
        prefix: &PrincipalPrefix,
    ) -> Result<Vec<PrincipalName>, CredentialError> {
        let mut conn = self.conns.acquire().await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1)",
        )
        .bind(prefix.as_str())
        .fetch_all(conn.get())
        .await
        .map_err(|e| self.error(e, "list roles", "-", &[]))?;
        conn.release();
        Ok(prefix.filter(names))
    }

    async fn check_inner(&self) -> Result<(), CredentialError> {
        let mut conn = self.conns.connect_fresh().await?;
        conn.execute("SELECT 1")
            .await
            .map_err(|e| self.error(e, "select 1", "-", &[]))?;
        let _ = conn.close().await;
        Ok(())
    }
}

crate::engine::engine_from_inner_methods!(PostgresEngine, KIND, renew = renew_inner);

/// Runs one operator-written statement template with the extended protocol, through which
/// the server refuses to run more than one statement.
/// A PostgreSQL role spec, checked, and the `VALID UNTIL` of a credential of it expiring at
/// `expires_at`: that plus the role's grace, as a time and as the text sent.
fn validity(
    role: &RoleSpec,
    expires_at: OffsetDateTime,
) -> Result<(ValidPostgresRole<'_>, OffsetDateTime, String), CredentialError> {
    let RoleSpec::Postgres(spec) = role else {
        return Err(CredentialError::WrongRole {
            engine: KIND,
            got: role.engine(),
        });
    };
    let role = spec.validate()?;
    let valid_until = time::Duration::try_from(role.grace)
        .ok()
        .and_then(|g| expires_at.checked_add(g))
        .ok_or_else(|| invalid_role(KIND, "grace", "expiry out of range"))?;
    let text = timestamp(valid_until)?;
    Ok((role, valid_until, text))
}

async fn execute<'c, E>(executor: E, sql: SafeSql) -> Result<(), sqlx::Error>
where
    E: Executor<'c, Database = Postgres>,
{
    sqlx::query(sql.into_sqlx())
        .persistent(false)
        .execute(executor)
        .await
        .map(drop)
}

/// Runs one statement Custos composed itself (keywords and escaped values only, so one
/// statement by construction) with the simple protocol: one round trip instead of two.
async fn execute_composed<'c, E>(executor: E, sql: SafeSql) -> Result<(), sqlx::Error>
where
    E: Executor<'c, Database = Postgres>,
{
    sqlx::raw_sql(sql.into_sqlx())
        .execute(executor)
        .await
        .map(drop)
}

/// RFC 3339 in UTC, which PostgreSQL reads as `timestamptz`.
fn timestamp(at: OffsetDateTime) -> Result<String, CredentialError> {
    at.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| invalid_role(KIND, "expires_at", "cannot be written as a timestamp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_injection_in_group_names() {
        for bad in [
            "x; DROP ROLE postgres",
            "x\" ; DROP ROLE postgres; --",
            "",
            "1abc",
            "custos_abc",
            &"a".repeat(64),
        ] {
            let role = PostgresRole {
                groups: vec![bad.to_owned()],
                ..PostgresRole::default()
            };
            assert!(role.validate().is_err(), "{bad:?}");
        }
        let ok = PostgresRole {
            groups: vec!["app_read".into(), "pg_read_all_data".into()],
            ..PostgresRole::default()
        };
        assert!(ok.validate().is_ok());
        let twice = PostgresRole {
            groups: vec!["a".into(), "a".into()],
            ..PostgresRole::default()
        };
        assert!(twice.validate().is_err());
        let long_grace = PostgresRole {
            grace: Duration::from_secs(301),
            ..PostgresRole::default()
        };
        assert!(long_grace.validate().is_err());
    }

    #[test]
    fn bad_admin_url_error_does_not_echo_it() {
        let err = PostgresEngine::new(PostgresConfig::new(SecretString::from(
            "postgres://admin:hunter2@[bad",
        )))
        .expect_err("invalid");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }
}
