//! Opening the broker from a database URL: the store (migrated), the audit writer, then the
//! broker over them. The edges name no storage type: they pass a URL and a durability.

use std::sync::Arc;

use custos_audit::AuditLog;
use custos_core::Clock;
use custos_crypto::TokenIssuer;
use custos_store::Store;
use thiserror::Error;

use crate::{Broker, BrokerConfig, BrokerError};

/// How hard the embedded SQLite database works to keep a committed write (PostgreSQL ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: survives a killed process (the default).
    #[default]
    Process,
    /// `synchronous=FULL`: survives a power cut.
    Power,
}

impl From<Durability> for custos_store::Durability {
    fn from(d: Durability) -> Self {
        match d {
            Durability::Process => custos_store::Durability::Process,
            Durability::Power => custos_store::Durability::Power,
        }
    }
}

/// Why the broker could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The database could not be reached, opened or migrated; the URL has its password masked.
    #[error("cannot open the database ({url})")]
    Database {
        /// The database URL, password masked.
        url: String,
        /// What the store said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database opened but the broker could not start over it.
    #[error("cannot start the broker: {0}")]
    Start(BrokerError),
}

impl Broker {
    /// Opens the database at `database_url` (`sqlite:PATH` or `postgres://…`), runs its
    /// migrations, starts the audit writer and builds the broker over them.
    ///
    /// # Errors
    /// [`OpenError::Database`] when the URL is unsupported or the database cannot be opened
    /// or migrated; [`OpenError::Start`] when the registry cannot be loaded.
    pub async fn open(
        database_url: &str,
        durability: Durability,
        tokens: TokenIssuer,
        clock: Arc<dyn Clock>,
        config: BrokerConfig,
    ) -> Result<Self, OpenError> {
        let store = Store::connect(database_url, durability.into())
            .await
            .map_err(|e| OpenError::Database {
                url: redact_url(database_url),
                source: Box::new(e),
            })?;
        let audit = AuditLog::start(store.clone(), clock.clone());
        Broker::new(store, audit, tokens, clock, config)
            .await
            .map_err(OpenError::Start)
    }

    /// Which database backend the broker uses: `sqlite` or `postgres`.
    pub fn store_backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    /// Checks the database answers.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when it does not (the detail goes to the log).
    pub async fn health(&self) -> Result<(), BrokerError> {
        self.inner.store.ping().await.map_err(|e| {
            tracing::warn!(error = %e, "store health check failed");
            BrokerError::Unavailable("store")
        })
    }

    /// Closes the database, waiting for its connections to finish. Call it last, after
    /// [`Broker::shutdown`] and after anything else that might still record.
    pub async fn close(&self) {
        self.inner.store.close().await;
    }
}

/// `postgres://user:password@host/db` → `postgres://user:***@host/db`.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact_url("sqlite:/x/y.db"), "sqlite:/x/y.db");
    }
}
