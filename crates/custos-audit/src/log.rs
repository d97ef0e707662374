//! The appender: one writer task, group commit, durable before the caller hears back.

use std::sync::Arc;
use std::sync::Mutex;

use custos_core::Clock;
use custos_store::{AuditHead, AuditRow, Store, StoreError};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::chain::{AuditEvent, GENESIS_HASH};

/// The most records one commit carries.
const MAX_BATCH: usize = 512;

/// The audit log could not record; the caller must fail closed.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The store refused the append.
    #[error("audit store unavailable")]
    Store(#[from] StoreError),
    /// The writer task is gone (shutting down).
    #[error("audit writer stopped")]
    Stopped,
}

struct Pending {
    event: AuditEvent,
    reply: oneshot::Sender<Result<AuditRow, AuditError>>,
}

/// A handle to the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    store: Store,
    last_written: Arc<Mutex<Option<AuditHead>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::channel::<Pending>(8192);
        let last_written = Arc::new(Mutex::new(None));
        tokio::spawn(writer(store.clone(), clock, rx, last_written.clone()));
        Self {
            tx,
            store,
            last_written,
        }
    }

    /// Appends one record and waits until it is committed.
    ///
    /// # Errors
    /// [`AuditError`] when the record could not be made durable: the caller must deny.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditRow, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { event, reply })
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// The store the log writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The last record this process committed, if any: verification checks the stored
    /// chain still reaches it, so a truncated tail is caught even if the head row was rewritten.
    pub fn last_written(&self) -> Option<AuditHead> {
        self.last_written.lock().ok().and_then(|g| g.clone())
    }
}

async fn writer(
    store: Store,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::Receiver<Pending>,
    last_written: Arc<Mutex<Option<AuditHead>>>,
) {
    // A connection kept for the writer (SQLite): no pool round trip per commit.
    let mut appender = store.audit_appender();
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut replies: Vec<oneshot::Sender<Result<AuditRow, AuditError>>> =
        Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        events.push(first.event);
        replies.push(first.reply);
        while events.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    events.push(p.event);
                    replies.push(p.reply);
                }
                Err(_) => break,
            }
        }
        let now = clock.now_ms();
        // Called once, or twice if another writer moved the head (then with the stored head).
        let result = appender
            .append(|head| {
                let (mut seq, mut prev) = match head {
                    Some(h) => (h.seq, h.hash),
                    None => (0, GENESIS_HASH.to_owned()),
                };
                events
                    .iter()
                    .map(|e| {
                        seq += 1;
                        let row = e.clone().into_row(seq, now, std::mem::take(&mut prev));
                        prev = row.hash.clone();
                        row
                    })
                    .collect()
            })
            .await;
        events.clear();
        match result {
            Ok(rows) => {
                if let (Some(last), Ok(mut g)) = (rows.last(), last_written.lock()) {
                    *g = Some(AuditHead {
                        seq: last.seq,
                        hash: last.hash.clone(),
                    });
                }
                for (reply, row) in replies.drain(..).zip(rows) {
                    let _ = reply.send(Ok(row));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = replies.len(), "audit append failed; denying");
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(AuditError::Store(StoreError::Corrupt(
                        "append failed".into(),
                    ))));
                }
            }
        }
    }
}
