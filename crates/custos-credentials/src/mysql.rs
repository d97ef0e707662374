//! MariaDB/MySQL: a user per lease with the role's grants; revocation drops it and kills its
//! connections.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::mysql::{
    MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
};
use sqlx::{ConnectOptions, Connection, Executor, MySql};
use time::OffsetDateTime;

use crate::engine::MintedCredential;
use crate::error::sqlx_error;
use crate::error::{CredentialError, EngineKind};
use crate::principal::{PrincipalName, PrincipalPrefix};
use crate::role::{RoleSpec, invalid_role};
use crate::secret::generate_password;
use crate::sql::{SafeSql, mysql_literal};
use crate::template::{Dialect, Template};

const KIND: EngineKind = EngineKind::Mysql;
const MAX_STATEMENTS: usize = 32;
/// MySQL's `ER_CANNOT_USER`: `CREATE USER` of an account that exists.
const ER_CANNOT_USER: u16 = 1396;
/// `ER_NO_SUCH_THREAD`: the connection ended before `KILL` reached it.
const ER_NO_SUCH_THREAD: u16 = 1094;

/// The server's error number (`1064`), which `code()` (the SQLSTATE) does not give.
fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// How to reach the MariaDB/MySQL server as an administrator allowed to create users and grant.
#[derive(Debug)]
#[non_exhaustive]
pub struct MysqlConfig {
    /// `mysql://admin:password@host:port/`.
    pub admin_url: SecretString,
    /// Admin connections kept open (default 4).
    pub max_connections: u32,
    /// How long to wait for a connection (default 5 s).
    pub connect_timeout: Duration,
}

impl MysqlConfig {
    /// The defaults, with this admin URL.
    #[must_use]
    pub fn new(admin_url: SecretString) -> Self {
        Self {
            admin_url,
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A MariaDB/MySQL credential role.
///
/// ```yaml
/// engine: mysql
/// host: "%"
/// statements:
///   - "GRANT SELECT ON app.* TO {{name}}"
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MysqlRole {
    /// The account's host pattern (`'user'@'host'`); default `%`.
    #[serde(default = "default_host")]
    pub host: String,
    /// Statements run after `CREATE USER`, usually `GRANT`s. `{{name}}` becomes the quoted
    /// account `'custos_..'@'host'`, `{{expiration}}` the quoted lease expiry. One statement
    /// each; placeholders must not be inside quotes.
    #[serde(default)]
    pub statements: Vec<String>,
    /// `MAX_USER_CONNECTIONS` of the account.
    #[serde(default)]
    pub max_connections: Option<u32>,
}

fn default_host() -> String {
    "%".to_owned()
}

impl Default for MysqlRole {
    fn default() -> Self {
        Self {
            host: default_host(),
            statements: Vec::new(),
            max_connections: None,
        }
    }
}

impl MysqlRole {
    pub(crate) fn validate(&self) -> Result<Vec<Template>, CredentialError> {
        let host = &self.host;
        if host.is_empty()
            || host.len() > 255
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_%:".contains(&b))
        {
            let shown: String = host.chars().take(64).collect();
            return Err(invalid_role(
                KIND,
                "host",
                format!("`{shown}`: a host pattern is 1 to 255 of [A-Za-z0-9.-_%:]"),
            ));
        }
        if self.statements.len() > MAX_STATEMENTS {
            return Err(invalid_role(
                KIND,
                "statements",
                format!("more than {MAX_STATEMENTS}"),
            ));
        }
        if self.max_connections == Some(0) {
            return Err(invalid_role(
                KIND,
                "max_connections",
                "0 means unlimited; leave it out",
            ));
        }
        self.statements
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Template::parse(s, Dialect::Mysql)
                    .map_err(|r| invalid_role(KIND, format!("statements[{i}]"), r))
            })
            .collect()
    }
}

/// The MariaDB/MySQL engine.
pub struct MysqlEngine {
    pool: MySqlPool,
    options: MySqlConnectOptions,
    target: String,
    connect_timeout: Duration,
}

impl std::fmt::Debug for MysqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlEngine")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl MysqlEngine {
    /// An engine for this server. Connects lazily: use [`Engine::check`](crate::Engine::check) to find out whether
    /// the server is reachable.
    ///
    /// # Errors
    /// [`CredentialError::InvalidConfig`] when the URL is unusable.
    pub fn new(config: MysqlConfig) -> Result<Self, CredentialError> {
        let options = MySqlConnectOptions::from_str(config.admin_url.expose_secret())
            .map_err(|_| CredentialError::InvalidConfig {
                engine: KIND,
                reason: "the admin URL is not a valid mysql:// URL".to_owned(),
            })?
            // `CREATE USER .. IDENTIFIED BY` carries the password: never log statements.
            .disable_statement_logging();
        let target = format!("{}:{}", options.get_host(), options.get_port());
        let pool = MySqlPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.connect_timeout)
            // A ping before every acquire would add a round trip to every mint; a broken
            // connection fails the operation instead, which the caller retries.
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            options,
            target,
            connect_timeout: config.connect_timeout,
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

    /// Closes the admin connections (they reopen on next use); call before shutdown or
    /// before dropping the database they are connected to.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn mint_inner(
        &self,
        principal: &PrincipalName,
        expires_at: OffsetDateTime,
        role: &RoleSpec,
    ) -> Result<MintedCredential, CredentialError> {
        let RoleSpec::Mysql(spec) = role else {
            return Err(CredentialError::WrongRole {
                engine: KIND,
                got: role.engine(),
            });
        };
        let statements = spec.validate()?;
        let name = principal.as_str();
        let expiration = expires_at
            .to_offset(time::UtcOffset::UTC)
            .format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .map_err(|_| invalid_role(KIND, "expires_at", "cannot be written as a timestamp"))?;
        let password = generate_password()?;
        let secrets = [password.expose_secret()];
        let account = |sql: SafeSql| sql.mysql_literal(name).kw("@").mysql_literal(&spec.host);

        let mut create = account(SafeSql::new("CREATE USER "))
            .kw(" IDENTIFIED BY ")
            .mysql_literal(password.expose_secret());
        if let Some(n) = spec.max_connections {
            create = create
                .kw(" WITH MAX_USER_CONNECTIONS ")
                .number(u64::from(n));
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.error(e, "connect", name, &secrets))?;
        match execute(&mut *conn, create).await {
            Ok(()) => {}
            Err(e) if error_number(&e) == Some(ER_CANNOT_USER) => {
                return Err(CredentialError::AlreadyExists {
                    engine: KIND,
                    principal: name.to_owned(),
                });
            }
            // The server refused: nothing was created.
            Err(e @ sqlx::Error::Database(_)) => {
                return Err(self.error(e, "create user", name, &secrets));
            }
            // The connection broke with the statement sent: its outcome is unknown.
            Err(e) => {
                drop(conn);
                let mint = self.error(e, "create user", name, &secrets);
                return Err(self.undo(principal, mint).await);
            }
        }

        // DDL is not transactional here: undo by hand if a grant fails.
        let quoted_account = format!("{}@{}", mysql_literal(name), mysql_literal(&spec.host));
        let quoted_expiry = mysql_literal(&expiration);
        for (i, statement) in statements.iter().enumerate() {
            let sql = SafeSql::from_template(statement.render(&quoted_account, &quoted_expiry));
            if let Err(e) = execute(&mut *conn, sql).await {
                let mint = self.error(e, &format!("statements[{i}]"), name, &secrets);
                drop(conn);
                return Err(self.undo(principal, mint).await);
            }
        }
        tracing::debug!(principal = %principal, "mysql user minted");
        Ok(MintedCredential {
            principal: principal.clone(),
            password,
            server_expires_at: None,
        })
    }

    /// After a mint failed past `CREATE USER`: removes the user, and says whether that
    /// worked too.
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
        let name = principal.as_str();
        let err = |step: &'static str| move |e| self.error(e, step, name, &[]);
        let mut conn = self.pool.acquire().await.map_err(err("connect"))?;
        // Every host the user exists for (a role may have used any pattern).
        let hosts: Vec<String> =
            sqlx::query_scalar("SELECT CONVERT(Host USING utf8mb4) FROM mysql.user WHERE User = ?")
                .bind(name)
                .fetch_all(&mut *conn)
                .await
                .map_err(err("look up user"))?;
        // Drop first, so no new login can start, then kill the sessions already open.
        for host in &hosts {
            let drop_user = SafeSql::new("DROP USER IF EXISTS ")
                .mysql_literal(name)
                .kw("@")
                .mysql_literal(host);
            execute(&mut *conn, drop_user)
                .await
                .map_err(err("drop user"))?;
        }
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist WHERE user = ?",
        )
        .bind(name)
        .fetch_all(&mut *conn)
        .await
        .map_err(err("list connections"))?;
        for id in ids {
            match execute(&mut *conn, SafeSql::new("KILL CONNECTION ").number(id)).await {
                Ok(()) => {}
                Err(e) if error_number(&e) == Some(ER_NO_SUCH_THREAD) => {}
                Err(e) => return Err(err("kill connection")(e)),
            }
        }
        tracing::debug!(principal = %principal, "mysql user revoked");
        Ok(())
    }

    async fn list_inner(
        &self,
        prefix: &PrincipalPrefix,
    ) -> Result<Vec<PrincipalName>, CredentialError> {
        // `LIKE` would read the `_` in `custos_` as a wildcard: match loosely, filter exactly.
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT CONVERT(User USING utf8mb4) FROM mysql.user WHERE User LIKE 'custos%'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e, "list users", "-", &[]))?;
        Ok(prefix.filter(names))
    }

    async fn check_inner(&self) -> Result<(), CredentialError> {
        let connect = MySqlConnection::connect_with(&self.options);
        let mut conn = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| CredentialError::Unreachable {
                engine: KIND,
                target: self.target.clone(),
                detail: format!("no connection within {:?}", self.connect_timeout),
            })?
            .map_err(|e| self.error(e, "connect", "-", &[]))?;
        conn.execute("SELECT 1")
            .await
            .map_err(|e| self.error(e, "select 1", "-", &[]))?;
        let _ = conn.close().await;
        Ok(())
    }
}

crate::engine::engine_from_inner_methods!(MysqlEngine, KIND);

/// Runs one statement over the text protocol (`CREATE USER`, `GRANT` and `KILL` are not all
/// preparable on every server version). Validated templates hold no `;`, so it is one
/// statement.
async fn execute<'c, E>(executor: E, sql: SafeSql) -> Result<(), sqlx::Error>
where
    E: Executor<'c, Database = MySql>,
{
    sqlx::raw_sql(sql.into_sqlx())
        .execute(executor)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        for host in ["", "a b", "x'", "a\\b", "%'; DROP USER root; --"] {
            let role = MysqlRole {
                host: host.to_owned(),
                ..MysqlRole::default()
            };
            assert!(role.validate().is_err(), "{host:?}");
        }
        let ok = MysqlRole {
            host: "10.0.%".into(),
            statements: vec!["GRANT SELECT ON db.* TO {{name}}".into()],
            max_connections: Some(2),
        };
        assert!(ok.validate().is_ok());
        let inj = MysqlRole {
            statements: vec!["GRANT SELECT ON db.* TO {{name}}; DROP USER root".into()],
            ..MysqlRole::default()
        };
        assert!(inj.validate().is_err());
    }
}
