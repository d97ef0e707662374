//! Credential roles (`kind: CredentialRole`): what a lease mints, on which server, for how long.
//!
//! The engine's own fields (`role:`) are kept here as an opaque JSON object: this crate knows
//! no engine. The broker reads them into `custos_credentials::RoleSpec` and validates them when
//! the role is applied, so a stored role always has a valid spec.
//!
//! ```yaml
//! kind: CredentialRole
//! name: pg-readonly
//! engine: postgres            # postgres, mysql (or mariadb), redis, jwt, static
//! default_ttl: 5m             # 1s to 1h, at most max_ttl
//! max_ttl: 15m                # 1s to 1h
//! connection_env: APP_PG_ADMIN_URL   # the server's environment variable holding the admin URL
//! role:                       # the engine's fields (PostgreSQL: groups, statements, grace, connection_limit)
//!   groups: [app_readonly]
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::{BoundedDuration, DurationField};
use crate::names::check_resource_name;

/// The longest lease a credential role may hand out.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);

/// The longest environment variable name `connection_env` may name.
const MAX_ENV_NAME: usize = 128;

/// The bounds of a credential role's `default_ttl`.
#[derive(Debug)]
pub enum DefaultTtlField {}

impl DurationField for DefaultTtlField {
    const FIELD: &'static str = "default_ttl";
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = MAX_LEASE_TTL;
}

/// The bounds of a credential role's `max_ttl`.
#[derive(Debug)]
pub enum MaxTtlField {}

impl DurationField for MaxTtlField {
    const FIELD: &'static str = "max_ttl";
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = MAX_LEASE_TTL;
}

/// The lease TTL a role gives when nothing shorter applies: 1s to 1h.
pub type DefaultLeaseTtl = BoundedDuration<DefaultTtlField>;
/// The longest lease a role gives: 1s to 1h.
pub type MaxLeaseTtl = BoundedDuration<MaxTtlField>;

/// Which kind of server a credential role mints on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialEngine {
    /// A PostgreSQL login role per lease.
    Postgres,
    /// A MariaDB/MySQL user per lease (`engine: mysql` or `mariadb`).
    #[serde(alias = "mariadb")]
    Mysql,
    /// A Redis ACL user per lease.
    Redis,
    /// A short-lived JWT per lease, signed by Custos with the audience and claims the role
    /// names, for HTTP APIs that trust Custos's JWKS (no server, no `connection_env`).
    Jwt,
    /// A value an operator stored (encrypted at rest), handed out only by injection into an
    /// upstream (no server, no `connection_env`).
    Static,
}

impl CredentialEngine {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialEngine::Postgres => "postgres",
            CredentialEngine::Mysql => "mysql",
            CredentialEngine::Redis => "redis",
            CredentialEngine::Jwt => "jwt",
            CredentialEngine::Static => "static",
        }
    }

    /// Whether leases of this engine are principals on a server reached with an admin
    /// connection (`connection_env`).
    pub fn has_server(self) -> bool {
        !matches!(self, CredentialEngine::Jwt | CredentialEngine::Static)
    }
}

impl std::fmt::Display for CredentialEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known of a static role's stored value without opening it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticSecret {
    /// The credential role it belongs to.
    pub role: String,
    /// When it was last written (Unix ms).
    pub updated_at: i64,
    /// The operator who wrote it.
    pub updated_by: String,
}

/// A credential role: the engine, its lease TTLs, where the admin connection comes from, and
/// the engine's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRoleSpec {
    /// Lowercase letters, digits and `-`; what templates list in `credentials` and what
    /// `GET /v1/database/creds/{role}` names.
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The server kind.
    pub engine: CredentialEngine,
    /// The lease TTL when the task lives long enough (1s to 1h).
    pub default_ttl: DefaultLeaseTtl,
    /// The longest lease (1s to 1h); `default_ttl` may not exceed it.
    pub max_ttl: MaxLeaseTtl,
    /// The name of an environment variable of the server process that holds the admin
    /// connection URL (for the engines with a server; `jwt` and `static` roles have none).
    /// Without it, the URL is the value an admin stored for the role (`custos secret put`,
    /// sealed at rest). The URL is never returned or logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_env: Option<String>,
    /// The engine's own fields, read by the broker into the engine's role spec (unknown
    /// fields are refused when applied).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub role: serde_json::Map<String, serde_json::Value>,
}

impl CredentialRoleSpec {
    /// The lease TTL for a task that has `task_left` to live: the role's default, never beyond
    /// the role's maximum nor the task's expiry. `None` when the task has no whole millisecond
    /// left.
    pub fn lease_ttl(&self, task_left: Duration) -> Option<Duration> {
        let ttl = self
            .default_ttl
            .get()
            .min(self.max_ttl.get())
            .min(task_left);
        (ttl >= Duration::from_millis(1)).then_some(ttl)
    }

    /// When a lease renewed at `now` expires (Unix ms), as Vault computes it: `now` plus
    /// `increment` (the role's `default_ttl` when none is asked for), never beyond the lease's
    /// `created_at` plus the role's `max_ttl` nor the task's expiry, and never earlier than the
    /// lease's current expiry (a renewal does not shorten a lease).
    pub fn renewed_expiry(
        &self,
        created_at: i64,
        current: i64,
        now: i64,
        task_expires_at: i64,
        increment: Option<Duration>,
    ) -> i64 {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let wanted = now.saturating_add(ms(increment.unwrap_or(self.default_ttl.get())));
        let cap = created_at.saturating_add(ms(self.max_ttl.get()));
        wanted.min(cap).min(task_expires_at).max(current)
    }

    /// The role's engine fields with `engine` added: the JSON the engine's role spec reads.
    pub fn engine_document(&self) -> serde_json::Value {
        let mut doc = self.role.clone();
        doc.insert("engine".into(), self.engine.as_str().into());
        serde_json::Value::Object(doc)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        check_resource_name(&self.name).map_err(|e| format!("field `name`: {e}"))?;
        if self.default_ttl.get() > self.max_ttl.get() {
            return Err(format!(
                "field `default_ttl`: `{}` is longer than `max_ttl` `{}`",
                self.default_ttl, self.max_ttl
            ));
        }
        match (&self.connection_env, self.engine.has_server()) {
            (Some(_), false) => {
                return Err(format!(
                    "field `connection_env`: a `{}` role has no server (Custos signs or stores its credential itself)",
                    self.engine
                ));
            }
            (Some(env), true) if !is_env_name(env) => {
                return Err(format!(
                    "field `connection_env`: `{}` is not an environment variable name \
                     (letters, digits and `_`, not starting with a digit, at most {MAX_ENV_NAME})",
                    crate::text::for_display(env, 64)
                ));
            }
            _ => {}
        }
        if self.role.contains_key("engine") {
            return Err("field `role`: `engine` is set once, at the top level".into());
        }
        Ok(())
    }
}

/// Whether `name` is an environment variable name: letters, digits and `_`, not starting with
/// a digit, at most 128 bytes.
pub(crate) fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ENV_NAME
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(default_ttl: &str, max_ttl: &str) -> CredentialRoleSpec {
        CredentialRoleSpec {
            name: "pg".into(),
            description: None,
            engine: CredentialEngine::Postgres,
            default_ttl: default_ttl.parse().expect("default"),
            max_ttl: max_ttl.parse().expect("max"),
            connection_env: Some("PG_ADMIN".into()),
            role: serde_json::Map::new(),
        }
    }

    #[test]
    fn renewal_is_bounded_by_max_ttl_and_the_task_and_never_shortens() {
        let s = spec("5m", "15m");
        let (created, min) = (1_000_000, 60_000);
        let renew = |now: i64, current: i64, task: i64, inc: Option<u64>| {
            s.renewed_expiry(created, current, now, task, inc.map(Duration::from_secs))
        };
        let far = created + 120 * min;
        // The default TTL from now.
        assert_eq!(
            renew(created + 4 * min, created + 5 * min, far, None),
            created + 9 * min
        );
        // An increment, within max_ttl counted from the lease's creation.
        assert_eq!(
            renew(created + min, created + 5 * min, far, Some(600)),
            created + 11 * min
        );
        assert_eq!(
            renew(created + 10 * min, created + 11 * min, far, Some(3600)),
            created + 15 * min
        );
        // Never beyond the task.
        assert_eq!(
            renew(
                created + min,
                created + 5 * min,
                created + 7 * min,
                Some(600)
            ),
            created + 7 * min
        );
        // Never shorter than it was.
        assert_eq!(
            renew(created + min, created + 5 * min, far, Some(1)),
            created + 5 * min
        );
    }

    #[test]
    fn lease_ttl_is_the_default_within_the_max_and_the_task() {
        let s = spec("5m", "15m");
        assert_eq!(
            s.lease_ttl(Duration::from_secs(3600)),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            s.lease_ttl(Duration::from_secs(60)),
            Some(Duration::from_secs(60)),
            "never beyond the task's expiry"
        );
        assert_eq!(s.lease_ttl(Duration::ZERO), None);
        assert_eq!(
            s.lease_ttl(Duration::from_micros(10)),
            None,
            "less than a millisecond left"
        );
        // A default above the max cannot be applied; were one stored, the max still holds.
        let mut odd = spec("1h", "1h");
        odd.max_ttl = "2m".parse().expect("2m");
        assert_eq!(
            odd.lease_ttl(Duration::from_secs(3600)),
            Some(Duration::from_secs(120))
        );
        assert!(odd.validate().is_err());
    }

    #[test]
    fn env_names_are_plain() {
        for good in ["PG", "_X", "app_pg_admin_1"] {
            assert!(is_env_name(good), "{good}");
        }
        for bad in ["", "1X", "A-B", "A B", "A=B", "É", &"A".repeat(129)] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_engine_document_carries_the_engine() {
        let mut s = spec("1m", "1m");
        s.role.insert("groups".into(), serde_json::json!(["r"]));
        assert_eq!(
            s.engine_document(),
            serde_json::json!({"engine": "postgres", "groups": ["r"]})
        );
        let maria: CredentialEngine = serde_json::from_str(r#""mariadb""#).expect("alias");
        assert_eq!(maria, CredentialEngine::Mysql);
    }
}
