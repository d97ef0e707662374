//! The appender: one writer task, group commit, durable before the caller hears back.

use std::sync::Arc;
use std::sync::Mutex;

use custos_core::Clock;
use custos_store::{AuditHead, AuditRow, Store, StoreError};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::chain::GENESIS_HASH;
use crate::event::AuditEvent;

/// The most records one commit carries.
const MAX_BATCH: usize = 512;

/// The audit log could not record; the caller must fail closed.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The store refused the append.
    #[error("audit store unavailable")]
    Store(#[from] StoreError),
    /// The stored chain no longer reaches what this process wrote: someone rewrote the log.
    /// Nothing more is appended, so the rewrite stays visible.
    #[error("the stored audit chain is behind what this server wrote; refusing to append")]
    Rewritten,
    /// The writer task is gone (shutting down).
    #[error("audit writer stopped")]
    Stopped,
}

/// How long a record nobody waits for (a call's outcome) may wait for one somebody waits for
/// (the next decision), so that the two share a commit.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

type Reply = oneshot::Sender<Result<AuditRow, AuditError>>;

enum Msg {
    Append {
        event: Box<AuditEvent>,
        /// `None`: nobody waits for the commit.
        reply: Option<Reply>,
    },
    Close(oneshot::Sender<()>),
}

/// A handle to the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
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
        let (tx, rx) = mpsc::channel::<Msg>(8192);
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
            .send(Msg::Append {
                event: Box::new(event),
                reply: Some(reply),
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Queues one record behind everything sent before it, without waiting for its commit:
    /// for a record that completes a committed one (a call's outcome after its write-ahead
    /// decision). It is committed with the next record somebody waits for, or within a few
    /// milliseconds (5 ms), so sequential calls cost one commit each; a failure is
    /// logged by the writer, and shutdown ([`AuditLog::close`]) still commits it.
    ///
    /// # Errors
    /// [`AuditError::Stopped`] when the writer has stopped.
    pub async fn enqueue(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.tx
            .send(Msg::Append {
                event: Box::new(event),
                reply: None,
            })
            .await
            .map_err(|_| AuditError::Stopped)
    }

    /// Commits every record sent before this call, then stops the writer: later appends fail
    /// with [`AuditError::Stopped`]. Returns once the writer has drained.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
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

/// Whether the stored head no longer reaches `ours`, the last record this process committed.
/// On SQLite this process is the only writer, so a head behind ours, or one at our position
/// with another hash, means the log was truncated or rewritten behind our back. (Replicas on
/// PostgreSQL move the head ahead of each other; behind is still a rewrite there.)
fn rewritten(stored: Option<&AuditHead>, ours: Option<&AuditHead>) -> bool {
    match (stored, ours) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(s), Some(o)) => s.seq < o.seq || (s.seq == o.seq && s.hash != o.hash),
    }
}

async fn writer(
    store: Store,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::Receiver<Msg>,
    last_written: Arc<Mutex<Option<AuditHead>>>,
) {
    // A connection kept for the writer (SQLite): no pool round trip per commit.
    let mut appender = store.audit_appender();
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut replies: Vec<Option<Reply>> = Vec::with_capacity(MAX_BATCH);
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        let Some(first) = rx.recv().await else { break };
        let mut next = Some(first);
        let mut linger_until = None;
        loop {
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append { event, reply } => {
                        events.push(*event);
                        replies.push(reply);
                    }
                    Msg::Close(done) => {
                        closing = Some(done);
                        break;
                    }
                }
                if events.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            // A batch nobody waits for lingers briefly for a record somebody does.
            if closing.is_some() || events.len() >= MAX_BATCH || replies.iter().any(Option::is_some)
            {
                break;
            }
            let until = *linger_until.get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(msg)) => next = Some(msg),
                Ok(None) | Err(_) => break,
            }
        }
        if events.is_empty() {
            continue;
        }
        let now = clock.now_ms();
        let ours = last_written.lock().ok().and_then(|g| g.clone());
        let mut refused = false;
        // Called once, or twice if another writer moved the head (then with the stored head).
        let result = appender
            .append(|head| {
                if rewritten(head.as_ref(), ours.as_ref()) {
                    refused = true;
                    return Vec::new();
                }
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
            Ok(rows) if !refused && rows.len() == replies.len() => {
                if let (Some(last), Ok(mut g)) = (rows.last(), last_written.lock()) {
                    *g = Some(AuditHead {
                        seq: last.seq,
                        hash: last.hash.clone(),
                    });
                }
                for (reply, row) in replies.drain(..).zip(rows) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(row));
                    }
                }
            }
            Ok(_) => {
                tracing::error!(
                    records = replies.len(),
                    "the stored audit chain is behind what this server wrote (truncated or \
                     rewritten); refusing to append, denying"
                );
                for reply in replies.drain(..).flatten() {
                    let _ = reply.send(Err(AuditError::Rewritten));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = replies.len(), "audit append failed; denying");
                for reply in replies.drain(..).flatten() {
                    let _ = reply.send(Err(AuditError::Store(StoreError::Corrupt(
                        "append failed".into(),
                    ))));
                }
            }
        }
    }
    drop(appender);
    if let Some(done) = closing {
        rx.close();
        // Anything queued after the close is refused, never silently dropped.
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Append {
                reply: Some(reply), ..
            } = msg
            {
                let _ = reply.send(Err(AuditError::Stopped));
            }
        }
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: i64, hash: &str) -> AuditHead {
        AuditHead {
            seq,
            hash: hash.into(),
        }
    }

    #[test]
    fn a_head_behind_or_different_is_a_rewrite() {
        assert!(!rewritten(None, None));
        assert!(!rewritten(Some(&head(3, "a")), None));
        assert!(!rewritten(Some(&head(3, "a")), Some(&head(3, "a"))));
        assert!(
            !rewritten(Some(&head(9, "z")), Some(&head(3, "a"))),
            "another replica"
        );
        assert!(rewritten(None, Some(&head(3, "a"))), "emptied");
        assert!(
            rewritten(Some(&head(2, "b")), Some(&head(3, "a"))),
            "truncated"
        );
        assert!(
            rewritten(Some(&head(3, "x")), Some(&head(3, "a"))),
            "rewritten"
        );
    }
}
