//! Persistence for Custos over SQLite (embedded default) or PostgreSQL (several replicas).
//!
//! One schema, two migration sets, runtime queries written once: every query uses `$N`
//! placeholders, which both backends read, and `on_pool!` expands a body once per backend.

mod approvals;
mod audit;
mod identity;
mod leases;
mod pins;
mod resources;
mod secrets;
mod tasks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use thiserror::Error;

pub use approvals::Answer;
pub use audit::{AuditAppender, AuditHead, AuditRow};
pub use identity::{AgentStatus, OperatorRow};
pub use pins::ToolPin;
pub use resources::{AppliedChange, ChangeOp, ResourceRow, ResourceWrite};
pub use tasks::{TaskRow, TaskState};

/// A storage failure. The detail is for logs; callers answer "store unavailable".
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed at startup.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names no supported backend.
    #[error("unsupported database URL `{0}`: use sqlite:PATH or postgres://...")]
    Url(String),
    /// A unique constraint was hit (the thing already exists).
    #[error("already exists")]
    Conflict,
    /// A stored value no longer decodes.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A coarse reason for metrics and audit.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Conflict => "conflict",
            _ => "store_unavailable",
        }
    }

    fn from_write(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            _ => StoreError::Database(e),
        }
    }
}

/// How hard SQLite works to keep a committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: survives a killed process (the default).
    #[default]
    Process,
    /// `synchronous=FULL`: survives a power cut.
    Power,
}

/// The database behind the store.
#[derive(Debug, Clone)]
pub enum Pool {
    /// Embedded SQLite, WAL mode.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the concrete pool of either backend.
macro_rules! on_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($p) => $body,
            $crate::Pool::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Opens a write transaction: `BEGIN IMMEDIATE` on SQLite, so concurrent writers queue on
/// the busy timeout instead of failing when a read lock cannot be upgraded; plain `BEGIN`
/// on PostgreSQL.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin()
    }
}

/// The store: a pool and the queries Custos runs.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// SQLite has one writer at a time; a writer that finds the database locked sleeps in
    /// SQLite's busy handler (1 ms, 2 ms, 5 ms, …), which under concurrent writes costs more
    /// than the writes. Writers of this process take their turn here instead, in order, and
    /// meet the lock only when another process holds it.
    write_gate: Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Connects to `url` (`sqlite:PATH` or `postgres://...`) and runs the migrations.
    ///
    /// # Errors
    /// [`StoreError`] when the URL is unsupported, the database is unreachable or a migration fails.
    pub async fn connect(url: &str, durability: Durability) -> Result<Self, StoreError> {
        let pool = if url.starts_with("sqlite:") {
            let sync = match durability {
                Durability::Process => SqliteSynchronous::Normal,
                Durability::Power => SqliteSynchronous::Full,
            };
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(sync)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                // An embedded database cannot drop a connection: skip the ping per acquire.
                .test_before_acquire(false)
                .connect_with(opts)
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts)
                .await?;
            // The migrator takes an advisory lock, so replicas can start together.
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        Ok(Self {
            pool,
            write_gate: Arc::default(),
        })
    }

    /// This process's turn to write, on SQLite (see `write_gate`); nothing to wait for on
    /// PostgreSQL, whose writers do not sleep on a busy lock.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.pool {
            Pool::Sqlite(_) => Some(self.write_gate.lock().await),
            Pool::Postgres(_) => None,
        }
    }

    /// Which backend this store uses: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// The underlying pool, for tests that must reach past the store (to tamper with it).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Checks the database answers.
    ///
    /// # Errors
    /// [`StoreError::Database`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await);
    }
}
