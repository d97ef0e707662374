//! The one error type of the credential engines; no variant ever holds a secret.

use std::fmt;

use thiserror::Error;

/// Which server an engine talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// PostgreSQL login roles.
    Postgres,
    /// MariaDB or MySQL users.
    Mysql,
    /// Redis ACL users.
    Redis,
    /// JWTs signed by Custos.
    Jwt,
    /// Values an operator stored.
    Static,
}

impl EngineKind {
    /// The name used in role specs (`engine: postgres`), metrics and messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
            Self::Jwt => "jwt",
            Self::Static => "static",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A credential engine failure.
///
/// INVARIANT: no variant holds a password, a password verifier or an admin connection URL.
/// Server messages are passed through `redact` with the secrets of the operation before they
/// are stored here, and connection targets are rendered as `host:port` only.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// A lease id or principal name is not `custos_` plus lowercase `[a-z0-9]`.
    #[error("invalid principal `{value}`: {reason}")]
    InvalidPrincipal {
        /// The rejected lease id or name (not a secret).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A role spec failed validation; `field` names where.
    #[error("invalid {engine} role: {field}: {reason}")]
    InvalidRole {
        /// The engine the role is for.
        engine: EngineKind,
        /// The offending field, e.g. `groups[1]` or `statements[0]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A role spec for one engine was given to another.
    #[error("the {engine} engine cannot mint a {got} role")]
    WrongRole {
        /// The engine that was called.
        engine: EngineKind,
        /// The engine the role is for.
        got: EngineKind,
    },
    /// The engine's own configuration (admin URL, owner) is unusable.
    #[error("invalid {engine} engine configuration: {reason}")]
    InvalidConfig {
        /// The engine.
        engine: EngineKind,
        /// What is wrong (never the URL itself).
        reason: String,
    },
    /// The server could not be reached (refused, timed out, closed the connection).
    #[error("cannot reach the {engine} server at {target}: {detail}")]
    Unreachable {
        /// The engine.
        engine: EngineKind,
        /// `host:port` of the server.
        target: String,
        /// The I/O error.
        detail: String,
    },
    /// The server answered with an error at one step of an operation.
    #[error("{engine} refused {step} for `{principal}`: {detail}")]
    Server {
        /// The engine.
        engine: EngineKind,
        /// The step, e.g. `create role` or `statements[1]`.
        step: String,
        /// The principal the operation was about (or `-`).
        principal: String,
        /// The server's message and code, scrubbed of secrets.
        detail: String,
    },
    /// The principal to mint already exists on the server; it was left untouched.
    #[error("{engine} principal `{principal}` already exists")]
    AlreadyExists {
        /// The engine.
        engine: EngineKind,
        /// The existing principal.
        principal: String,
    },
    /// A mint failed after the principal may have been created, and removing it failed too:
    /// the reconciler must remove it.
    #[error("{mint}; removing the half-made principal failed too: {cleanup}")]
    CleanupFailed {
        /// Why the mint failed.
        mint: Box<CredentialError>,
        /// Why the cleanup failed.
        cleanup: Box<CredentialError>,
    },
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The engine's credentials cannot be extended (a signed token's expiry is fixed).
    #[error("{0} credentials cannot be renewed: request a new one")]
    NotRenewable(EngineKind),
}

impl CredentialError {
    /// A coarse, stable reason for metrics and audit records.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidPrincipal { .. } => "invalid_principal",
            Self::InvalidRole { .. } => "invalid_role",
            Self::WrongRole { .. } => "wrong_role",
            Self::InvalidConfig { .. } => "invalid_config",
            Self::Unreachable { .. } => "unreachable",
            Self::Server { .. } => "server_error",
            Self::AlreadyExists { .. } => "already_exists",
            Self::CleanupFailed { .. } => "cleanup_failed",
            Self::Random => "random_failed",
            Self::NotRenewable(_) => "not_renewable",
        }
    }

    /// Whether retrying later may succeed (the server was unreachable or refused transiently).
    #[must_use]
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::CleanupFailed { mint, .. } => mint.is_unreachable(),
            _ => false,
        }
    }
}

/// Replaces every occurrence of each secret in `text` with `[REDACTED]`.
///
/// Server error messages can quote the statement they failed on; the statements an engine
/// sends never contain a secret in a position a syntax error would quote, but this keeps the
/// guarantee independent of that.
pub(crate) fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret) {
            out = out.replace(secret, "[REDACTED]");
        }
    }
    out
}

/// Maps a sqlx error: I/O and pool timeouts are [`CredentialError::Unreachable`], the rest
/// [`CredentialError::Server`] with the server's message and code, scrubbed of `secrets`.
pub(crate) fn sqlx_error(
    engine: EngineKind,
    target: &str,
    e: sqlx::Error,
    step: &str,
    principal: &str,
    secrets: &[&str],
) -> CredentialError {
    match e {
        sqlx::Error::Io(io) => CredentialError::Unreachable {
            engine,
            target: target.to_owned(),
            detail: redact(&io.to_string(), secrets),
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => CredentialError::Unreachable {
            engine,
            target: target.to_owned(),
            detail: "no connection available in time".to_owned(),
        },
        sqlx::Error::Database(db) => {
            let mut detail = db.message().to_owned();
            if let Some(more) = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(sqlx::postgres::PgDatabaseError::detail)
            {
                detail.push_str(": ");
                detail.push_str(more);
            }
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                detail.push_str(&format!(" (error {})", my.number()));
            } else if let Some(code) = db.code() {
                detail.push_str(&format!(" (SQLSTATE {code})"));
            }
            CredentialError::Server {
                engine,
                step: step.to_owned(),
                principal: principal.to_owned(),
                detail: redact(&detail, secrets),
            }
        }
        other => CredentialError::Server {
            engine,
            step: step.to_owned(),
            principal: principal.to_owned(),
            detail: redact(&other.to_string(), secrets),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_replaces_every_occurrence() {
        assert_eq!(redact("a pw b pw", &["pw"]), "a [REDACTED] b [REDACTED]");
        assert_eq!(redact("nothing", &["", "x"]), "nothing");
    }
}
