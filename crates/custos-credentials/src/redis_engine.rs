//! Redis: an ACL user per lease with the role's key patterns, channels and commands;
//! revocation switches it off, kills its clients and deletes it.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::engine::MintedCredential;
use crate::error::{CredentialError, EngineKind, redact};
use crate::principal::{PrincipalName, PrincipalPrefix};
use crate::role::{RoleSpec, invalid_role};
use crate::secret::generate_password;

const KIND: EngineKind = EngineKind::Redis;
const MAX_ITEMS: usize = 64;
const MAX_PATTERN_LEN: usize = 256;
const MAX_COMMAND_LEN: usize = 64;

/// How to reach Redis as a user allowed to run `ACL` and `CLIENT KILL`.
#[derive(Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/`.
    pub url: SecretString,
    /// How long to wait for a connection and for each reply (default 5 s).
    pub timeout: Duration,
}

impl RedisConfig {
    /// The defaults, with this URL.
    #[must_use]
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A Redis credential role: an ACL user that starts from nothing (`-@all`, no keys, no
/// channels) and gets exactly these.
///
/// ```yaml
/// engine: redis
/// keys: ["cache:*"]
/// commands: ["@read", "ping"]
/// deny_commands: ["keys"]
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisRole {
    /// Key patterns (`~pattern`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Pub/sub channel patterns (`&pattern`).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Commands or `@categories` allowed (`+get`, `+@read`, `+config|get`).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Commands or `@categories` then taken away (`-keys`).
    #[serde(default)]
    pub deny_commands: Vec<String>,
}

impl RedisRole {
    /// The ACL rules after `on >password`, in order.
    pub(crate) fn validate(&self) -> Result<Vec<String>, CredentialError> {
        for (field, list) in [
            ("keys", &self.keys),
            ("channels", &self.channels),
            ("commands", &self.commands),
            ("deny_commands", &self.deny_commands),
        ] {
            if list.len() > MAX_ITEMS {
                return Err(invalid_role(KIND, field, format!("more than {MAX_ITEMS}")));
            }
        }
        let mut rules = vec!["resetkeys".to_owned()];
        for (i, p) in self.keys.iter().enumerate() {
            check_pattern(p).map_err(|r| invalid_role(KIND, format!("keys[{i}]"), r))?;
            rules.push(format!("~{p}"));
        }
        rules.push("resetchannels".to_owned());
        for (i, p) in self.channels.iter().enumerate() {
            check_pattern(p).map_err(|r| invalid_role(KIND, format!("channels[{i}]"), r))?;
            rules.push(format!("&{p}"));
        }
        rules.push("-@all".to_owned());
        for (i, c) in self.commands.iter().enumerate() {
            check_command(c, true).map_err(|r| invalid_role(KIND, format!("commands[{i}]"), r))?;
            rules.push(format!("+{c}"));
        }
        for (i, c) in self.deny_commands.iter().enumerate() {
            check_command(c, false)
                .map_err(|r| invalid_role(KIND, format!("deny_commands[{i}]"), r))?;
            rules.push(format!("-{c}"));
        }
        Ok(rules)
    }
}

/// A key or channel pattern: 1 to 256 printable ASCII characters, no spaces.
fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_PATTERN_LEN || !p.bytes().all(|b| b.is_ascii_graphic()) {
        let shown: String = p.chars().take(64).collect();
        return Err(format!(
            "`{}`: a pattern is 1 to {MAX_PATTERN_LEN} printable ASCII characters without spaces",
            shown.escape_debug()
        ));
    }
    Ok(())
}

/// A command (`get`, `config|get`) or category (`@read`), lowercase. Granting `acl`,
/// `@admin`, `@dangerous` or `@all` would let the credential rewrite ACLs or the server, so
/// those are refused.
fn check_command(c: &str, granting: bool) -> Result<(), String> {
    let body = c.strip_prefix('@').unwrap_or(c);
    let shown: String = c.chars().take(64).collect();
    if body.is_empty()
        || c.len() > MAX_COMMAND_LEN
        || !body.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'|' || b == b'-' || b == b'_'
        })
    {
        return Err(format!(
            "`{}`: a command or @category is lowercase [a-z0-9|_-], at most {MAX_COMMAND_LEN}",
            shown.escape_debug()
        ));
    }
    let command = body.split('|').next().unwrap_or(body);
    if granting
        && (matches!(c, "@admin" | "@dangerous" | "@all")
            || (!c.starts_with('@') && command == "acl"))
    {
        return Err(format!(
            "`{shown}` would let a lease credential administer the server"
        ));
    }
    Ok(())
}

/// The Redis engine.
pub struct RedisEngine {
    client: Client,
    target: String,
    config: AsyncConnectionConfig,
    timeout: Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl RedisEngine {
    /// An engine for this server. Connects lazily: use [`Engine::check`](crate::Engine::check) to find out whether
    /// the server is reachable.
    ///
    /// # Errors
    /// [`CredentialError::InvalidConfig`] when the URL is unusable.
    pub fn new(config: RedisConfig) -> Result<Self, CredentialError> {
        let client = Client::open(config.url.expose_secret()).map_err(|_| {
            CredentialError::InvalidConfig {
                engine: KIND,
                reason: "the URL is not a valid redis:// URL".to_owned(),
            }
        })?;
        let target = client.get_connection_info().addr.to_string();
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(config.timeout)
            .set_response_timeout(config.timeout);
        Ok(Self {
            client,
            target,
            config: connection_config,
            timeout: config.timeout,
            connection: Mutex::new(None),
        })
    }

    /// Closes the admin connections (they reopen on next use); call before shutdown or
    /// before dropping the database they are connected to.
    pub async fn close(&self) {
        *self.connection.lock().await = None;
    }

    /// The shared admin connection, opened on first use and after a failure.
    async fn connection(&self) -> Result<MultiplexedConnection, CredentialError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| self.unreachable(&e))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn unreachable(&self, e: &RedisError) -> CredentialError {
        let detail = if e.is_timeout() {
            format!("no answer within {:?}", self.timeout)
        } else {
            e.to_string()
        };
        CredentialError::Unreachable {
            engine: KIND,
            target: self.target.clone(),
            detail,
        }
    }

    /// Runs one command; an I/O failure drops the cached connection.
    async fn run(
        &self,
        cmd: &redis::Cmd,
        step: &str,
        principal: &str,
        secrets: &[&str],
    ) -> Result<Value, CredentialError> {
        let mut conn = self.connection().await?;
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                *self.connection.lock().await = None;
                Err(self.unreachable(&e))
            }
            Err(e) => Err(CredentialError::Server {
                engine: KIND,
                step: step.to_owned(),
                principal: principal.to_owned(),
                detail: redact(&e.to_string(), secrets),
            }),
        }
    }

    async fn exists(&self, name: &str) -> Result<bool, CredentialError> {
        let v = self
            .run(
                redis::cmd("ACL").arg("GETUSER").arg(name),
                "acl getuser",
                name,
                &[],
            )
            .await?;
        Ok(!matches!(v, Value::Nil))
    }

    async fn mint_inner(
        &self,
        principal: &PrincipalName,
        _expires_at: OffsetDateTime,
        role: &RoleSpec,
    ) -> Result<MintedCredential, CredentialError> {
        let RoleSpec::Redis(spec) = role else {
            return Err(CredentialError::WrongRole {
                engine: KIND,
                got: role.engine(),
            });
        };
        let rules = spec.validate()?;
        let name = principal.as_str();
        // `ACL SETUSER` on an existing user would change it: refuse instead. (Two concurrent
        // mints of one lease could both pass this check; the lease manager mints a lease once.)
        if self.exists(name).await? {
            return Err(CredentialError::AlreadyExists {
                engine: KIND,
                principal: name.to_owned(),
            });
        }
        let password = generate_password()?;
        let secret_rule = zeroize::Zeroizing::new(format!(">{}", password.expose_secret()));
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(name)
            .arg("reset")
            .arg("on")
            .arg(secret_rule.as_str());
        for rule in &rules {
            cmd.arg(rule);
        }
        // One command, applied atomically: a rule the server rejects leaves no user.
        self.run(&cmd, "acl setuser", name, &[password.expose_secret()])
            .await?;
        tracing::debug!(principal = %principal, "redis user minted");
        Ok(MintedCredential {
            principal: principal.clone(),
            password,
            server_expires_at: None,
        })
    }

    async fn revoke_inner(&self, principal: &PrincipalName) -> Result<(), CredentialError> {
        let name = principal.as_str();
        if !self.exists(name).await? {
            return Ok(());
        }
        // Off first (no new AUTH), then end its clients, then delete.
        self.run(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(name)
                .arg("off")
                .arg("resetpass"),
            "acl setuser off",
            name,
            &[],
        )
        .await?;
        match self
            .run(
                redis::cmd("CLIENT").arg("KILL").arg("USER").arg(name),
                "client kill",
                name,
                &[],
            )
            .await
        {
            Ok(_) => {}
            // Deleted concurrently.
            Err(CredentialError::Server { detail, .. }) if detail.contains("No such user") => {}
            Err(e) => return Err(e),
        }
        self.run(
            redis::cmd("ACL").arg("DELUSER").arg(name),
            "acl deluser",
            name,
            &[],
        )
        .await?;
        tracing::debug!(principal = %principal, "redis user revoked");
        Ok(())
    }

    async fn list_inner(
        &self,
        prefix: &PrincipalPrefix,
    ) -> Result<Vec<PrincipalName>, CredentialError> {
        let v = self
            .run(redis::cmd("ACL").arg("USERS"), "acl users", "-", &[])
            .await?;
        let names: Vec<String> =
            redis::from_redis_value(&v).map_err(|e| CredentialError::Server {
                engine: KIND,
                step: "acl users".to_owned(),
                principal: "-".to_owned(),
                detail: e.to_string(),
            })?;
        Ok(prefix.filter(names))
    }

    async fn check_inner(&self) -> Result<(), CredentialError> {
        self.run(&redis::cmd("PING"), "ping", "-", &[])
            .await
            .map(drop)
    }
}

crate::engine::engine_from_inner_methods!(RedisEngine, KIND);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = RedisRole {
            keys: vec!["ns:*".into()],
            commands: vec!["@read".into(), "ping".into(), "client|id".into()],
            deny_commands: vec!["keys".into()],
            ..RedisRole::default()
        };
        assert_eq!(
            ok.validate().expect("valid"),
            [
                "resetkeys",
                "~ns:*",
                "resetchannels",
                "-@all",
                "+@read",
                "+ping",
                "+client|id",
                "-keys"
            ]
        );
        for bad in [
            RedisRole {
                keys: vec!["a b".into()],
                ..RedisRole::default()
            },
            RedisRole {
                keys: vec!["a\nb".into()],
                ..RedisRole::default()
            },
            RedisRole {
                keys: vec![String::new()],
                ..RedisRole::default()
            },
            RedisRole {
                commands: vec!["get on >x".into()],
                ..RedisRole::default()
            },
            RedisRole {
                commands: vec!["GET".into()],
                ..RedisRole::default()
            },
            RedisRole {
                commands: vec!["@all".into()],
                ..RedisRole::default()
            },
            RedisRole {
                commands: vec!["acl|setuser".into()],
                ..RedisRole::default()
            },
            RedisRole {
                commands: vec!["@admin".into()],
                ..RedisRole::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
