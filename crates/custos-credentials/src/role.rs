//! Role specs: the engine part of a `kind: CredentialRole` resource.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{CredentialError, EngineKind};
use crate::jwt::JwtRole;
use crate::mysql::MysqlRole;
use crate::postgres::PostgresRole;
use crate::redis_engine::RedisRole;

/// What to mint, for one of the engines; read from YAML as `engine: postgres` plus that
/// engine's fields (unknown fields are refused).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "engine", rename_all = "lowercase")]
pub enum RoleSpec {
    /// A PostgreSQL login role.
    Postgres(PostgresRole),
    /// A MariaDB/MySQL user (`engine: mysql`, or `mariadb`).
    #[serde(alias = "mariadb")]
    Mysql(MysqlRole),
    /// A Redis ACL user.
    Redis(RedisRole),
    /// A JWT signed by Custos.
    Jwt(JwtRole),
    /// A value an operator stored; no fields.
    Static(StaticRole),
}

/// A `static` role: its value is stored with `custos secret put`, not written here.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticRole {}

impl RoleSpec {
    /// The engine this role is for.
    #[must_use]
    pub fn engine(&self) -> EngineKind {
        match self {
            Self::Postgres(_) => EngineKind::Postgres,
            Self::Mysql(_) => EngineKind::Mysql,
            Self::Redis(_) => EngineKind::Redis,
            Self::Jwt(_) => EngineKind::Jwt,
            Self::Static(_) => EngineKind::Static,
        }
    }

    /// Checks the spec as the engine would before minting, so a bad role fails when it is
    /// applied rather than when a task first needs it.
    ///
    /// # Errors
    /// [`CredentialError::InvalidRole`] naming the field.
    pub fn validate(&self) -> Result<(), CredentialError> {
        match self {
            Self::Postgres(r) => r.validate().map(drop),
            Self::Mysql(r) => r.validate().map(drop),
            Self::Redis(r) => r.validate().map(drop),
            Self::Jwt(r) => r.validate(),
            Self::Static(_) => Ok(()),
        }
    }
}

/// Reads a human duration (`30s`, `2m`) with `custos-core`'s parser.
pub(crate) fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    custos_core::parse_duration(&text).map_err(serde::de::Error::custom)
}

pub(crate) fn invalid_role(
    engine: EngineKind,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> CredentialError {
    CredentialError::InvalidRole {
        engine,
        field: field.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tagged_specs_and_refuses_unknown_fields() {
        let spec: RoleSpec =
            serde_json::from_str(r#"{"engine":"postgres","groups":["readers"],"grace":"5s"}"#)
                .expect("valid");
        assert_eq!(spec.engine(), EngineKind::Postgres);
        assert!(spec.validate().is_ok());
        let unknown = serde_json::from_str::<RoleSpec>(
            r#"{"engine":"postgres","groups":["readers"],"superuser":true}"#,
        );
        assert!(unknown.is_err());
        let other = serde_json::from_str::<RoleSpec>(r#"{"engine":"oracle"}"#);
        assert!(other.is_err());
        let redis: RoleSpec =
            serde_json::from_str(r#"{"engine":"redis","keys":["a:*"],"commands":["@read"]}"#)
                .expect("valid");
        assert_eq!(redis.engine(), EngineKind::Redis);
        let maria: RoleSpec = serde_json::from_str(
            r#"{"engine":"mariadb","statements":["GRANT SELECT ON db.* TO {{name}}"]}"#,
        )
        .expect("valid");
        assert_eq!(maria.engine(), EngineKind::Mysql);
        assert!(maria.validate().is_ok());
        let bad_grace = serde_json::from_str::<RoleSpec>(r#"{"engine":"postgres","grace":"soon"}"#);
        assert!(bad_grace.is_err());
    }
}
