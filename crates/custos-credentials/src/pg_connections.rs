//! The PostgreSQL engine's admin connections, handed out one operation at a time.
//!
//! Not sqlx's `PgPool`: it pings every connection as it is returned (sqlx-core 0.9
//! `pool/connection.rs`, unconditionally), one more round trip per operation, which measured
//! about 30 % fewer mints per second than the same statements over plain connections
//! (BENCHMARKS.md). Here a connection goes back to the idle list only when the operation that
//! used it finished ([`Conn::release`]); one dropped in the middle of an operation (an error,
//! a cancelled future) is closed, so no caller inherits a connection in an unknown state. A
//! connection idle for longer than [`IDLE_CHECK`] is pinged before it is reused.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{CredentialError, EngineKind, sqlx_error};

/// Idle connections older than this are pinged before reuse.
pub(crate) const IDLE_CHECK: Duration = Duration::from_secs(1);

pub(crate) struct PgConnections {
    options: PgConnectOptions,
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    permits: Semaphore,
    connect_timeout: Duration,
    target: String,
}

/// One admin connection, exclusively held.
pub(crate) struct Conn<'a> {
    owner: &'a PgConnections,
    // INVARIANT: `Some` until `release` or drop.
    conn: Option<PgConnection>,
    _permit: SemaphorePermit<'a>,
}

impl PgConnections {
    pub(crate) fn new(
        options: PgConnectOptions,
        max: u32,
        connect_timeout: Duration,
        target: String,
    ) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(usize::try_from(max.max(1)).unwrap_or(1)),
            connect_timeout,
            target,
        }
    }

    fn unreachable(&self, detail: String) -> CredentialError {
        CredentialError::Unreachable {
            engine: EngineKind::Postgres,
            target: self.target.clone(),
            detail,
        }
    }

    fn pop_idle(&self) -> Option<(PgConnection, Instant)> {
        match self.idle.lock() {
            Ok(mut idle) => idle.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        }
    }

    /// A connection: an idle one, else a new one (within the connect timeout).
    pub(crate) async fn acquire(&self) -> Result<Conn<'_>, CredentialError> {
        let permit = tokio::time::timeout(self.connect_timeout, self.permits.acquire())
            .await
            .map_err(|_| {
                self.unreachable(format!(
                    "no admin connection free within {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|_| self.unreachable("the engine was closed".to_owned()))?;
        while let Some((mut conn, since)) = self.pop_idle() {
            if since.elapsed() < IDLE_CHECK || conn.ping().await.is_ok() {
                return Ok(Conn {
                    owner: self,
                    conn: Some(conn),
                    _permit: permit,
                });
            }
        }
        let conn = self.connect().await?;
        Ok(Conn {
            owner: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    /// A new connection outside the set (e.g. to another database).
    pub(crate) async fn connect_to(&self, database: &str) -> Result<PgConnection, CredentialError> {
        let options = self.options.clone().database(database);
        self.connect_with(&options).await
    }

    async fn connect(&self) -> Result<PgConnection, CredentialError> {
        self.connect_with(&self.options).await
    }

    async fn connect_with(
        &self,
        options: &PgConnectOptions,
    ) -> Result<PgConnection, CredentialError> {
        tokio::time::timeout(self.connect_timeout, PgConnection::connect_with(options))
            .await
            .map_err(|_| {
                self.unreachable(format!("no connection within {:?}", self.connect_timeout))
            })?
            .map_err(|e| sqlx_error(EngineKind::Postgres, &self.target, e, "connect", "-", &[]))
    }

    /// A fresh connection, tested, outside the set (for `check`).
    pub(crate) async fn connect_fresh(&self) -> Result<PgConnection, CredentialError> {
        self.connect().await
    }

    /// Closes the idle connections and refuses new acquisitions.
    pub(crate) async fn close(&self) {
        self.permits.close();
        while let Some((conn, _)) = self.pop_idle() {
            let _ = conn.close().await;
        }
    }
}

impl Conn<'_> {
    /// The connection.
    pub(crate) fn get(&mut self) -> &mut PgConnection {
        // INVARIANT above: `release` consumes `self`, so `conn` is still `Some` here.
        self.conn
            .as_mut()
            .expect("connection present until release")
    }

    /// Returns the connection to the idle list: call only when the operation finished (its
    /// last statement answered, no transaction open).
    pub(crate) fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            if self.owner.permits.is_closed() {
                return;
            }
            match self.owner.idle.lock() {
                Ok(mut idle) => idle.push((conn, Instant::now())),
                Err(poisoned) => poisoned.into_inner().push((conn, Instant::now())),
            }
        }
    }
}
