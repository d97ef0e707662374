//! The appender: group commit on the caller's own task, durable before the caller hears back.
//!
//! A record waits in a queue; the first caller to take the writer commits everything queued
//! (its own record and those of callers that arrived while the previous commit ran) in one
//! transaction, and hands each caller its row. There is no writer task in between: a waited-for
//! record costs the hand-off to the database and back, nothing more. The commit runs to its end
//! even if the caller that runs it stops waiting ([`crate::to_end`]), since it carries other
//! callers' records.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use custos_core::Clock;
use custos_store::{AuditAppender, AuditHead, AuditRow, Store, StoreError};
use thiserror::Error;
use tokio::sync::{Notify, OwnedMutexGuard, oneshot};
use tokio::time::Instant;

use crate::chain::GENESIS_HASH;
use crate::event::AuditEvent;

/// The most records one commit carries.
const MAX_BATCH: usize = 512;

/// Records queued without a waiter beyond which [`AuditLog::enqueue`] commits before it
/// returns: the queue stays bounded when the database falls behind.
const MAX_QUEUED: usize = 8192;

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
    /// The log was closed (shutting down).
    #[error("audit writer stopped")]
    Stopped,
}

/// How long a record nobody waits for (a call's outcome) may wait for one somebody waits for
/// (the next decision), so that the two share a commit.
const LINGER: Duration = Duration::from_millis(5);

type Reply = oneshot::Sender<Result<AuditRow, AuditError>>;

/// Records waiting for a commit, in the order they were given.
#[derive(Default)]
struct Queue {
    events: Vec<AuditEvent>,
    /// One per event; `None`: nobody waits for that record's commit.
    replies: Vec<Option<Reply>>,
    /// When the oldest queued record nobody waits for was queued.
    oldest_unwaited: Option<Instant>,
    /// Whether the linger task is watching the queue.
    lingering: bool,
    /// No more records are taken.
    closed: bool,
}

/// What commits: the kept connection, behind the one lock that makes this process a single
/// writer.
struct Writer {
    appender: AuditAppender,
    /// Set by [`AuditLog::close`]: later batches are refused.
    stopped: bool,
}

struct Shared {
    store: Store,
    clock: Arc<dyn Clock>,
    queue: Mutex<Queue>,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    last_written: Mutex<Option<AuditHead>>,
    /// Wakes the linger task (shared with it, so it can wait without keeping the log alive).
    linger: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The linger task waits without a handle on the log; let it see the log is gone.
        self.linger.notify_one();
    }
}

/// A handle to the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AuditLog {
    /// A log writing to `store`; its linger task runs on the current runtime.
    pub fn start(store: Store, clock: Arc<dyn Clock>) -> Self {
        let linger = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            writer: Arc::new(tokio::sync::Mutex::new(Writer {
                appender: store.audit_appender(),
                stopped: false,
            })),
            store,
            clock,
            queue: Mutex::new(Queue::default()),
            last_written: Mutex::new(None),
            linger: linger.clone(),
        });
        tokio::spawn(linger_task(Arc::downgrade(&shared), linger));
        Self { shared }
    }

    /// Appends one record and waits until it is committed. Once started, the append runs to
    /// its end even if the caller stops waiting (it may be carrying other callers' records).
    ///
    /// # Errors
    /// [`AuditError`] when the record could not be made durable: the caller must deny.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditRow, AuditError> {
        let shared = self.shared.clone();
        crate::to_end(async move { shared.append(event).await })
            .await
            .unwrap_or(Err(AuditError::Stopped))
    }

    /// Queues one record behind everything given before it, without waiting for its commit:
    /// for a record that completes a committed one (a call's outcome after its write-ahead
    /// decision). It is committed with the next record somebody waits for, or within a few
    /// milliseconds (5 ms), so sequential calls cost one commit each; a failure is
    /// logged, and [`AuditLog::close`] still commits it. When the queue is long (the
    /// database fell behind), this commits before it returns.
    ///
    /// # Errors
    /// [`AuditError::Stopped`] when the log was closed.
    pub async fn enqueue(&self, event: AuditEvent) -> Result<(), AuditError> {
        if self.shared.push(event, None)? >= MAX_QUEUED {
            let shared = self.shared.clone();
            let _ = crate::to_end(async move {
                let writer = shared.writer.clone().lock_owned().await;
                shared.commit_batch(writer).await;
            })
            .await;
        }
        Ok(())
    }

    /// Commits every record given before this call, then closes the log: later appends fail
    /// with [`AuditError::Stopped`]. Returns once everything queued was committed.
    pub async fn close(&self) {
        lock(&self.shared.queue).closed = true;
        loop {
            let writer = self.shared.writer.clone().lock_owned().await;
            if lock(&self.shared.queue).events.is_empty() {
                let mut writer = writer;
                writer.stopped = true;
                break;
            }
            self.shared.commit_batch(writer).await;
        }
        self.shared.linger.notify_one();
    }

    /// The store the log writes to.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The last record this process committed, if any: verification checks the stored
    /// chain still reaches it, so a truncated tail is caught even if the head row was rewritten.
    pub fn last_written(&self) -> Option<AuditHead> {
        lock(&self.shared.last_written).clone()
    }
}

impl Shared {
    /// [`AuditLog::append`]: queue the record, then wait for a commit that carries it — run by
    /// this caller when it gets the writer first.
    async fn append(&self, event: AuditEvent) -> Result<AuditRow, AuditError> {
        let (reply, mut rx) = oneshot::channel();
        self.push(event, Some(reply))?;
        loop {
            tokio::select! {
                biased;
                committed = &mut rx => return committed.map_err(|_| AuditError::Stopped)?,
                // This caller commits what is queued, its own record among it (unless a
                // commit before it already did; then its answer is waiting above).
                writer = self.writer.clone().lock_owned() => self.commit_batch(writer).await,
            }
        }
    }

    /// Queues a record; the number of records now queued.
    fn push(&self, event: AuditEvent, reply: Option<Reply>) -> Result<usize, AuditError> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(AuditError::Stopped);
        }
        let unwaited = reply.is_none();
        q.events.push(event);
        q.replies.push(reply);
        if unwaited {
            if q.oldest_unwaited.is_none() {
                q.oldest_unwaited = Some(Instant::now());
            }
            if !q.lingering {
                q.lingering = true;
                self.linger.notify_one();
            }
        }
        Ok(q.events.len())
    }

    /// Commits the oldest queued records (at most [`MAX_BATCH`]) in one transaction and answers
    /// their callers. Holding `writer` makes this the only commit of this process.
    async fn commit_batch(&self, mut writer: OwnedMutexGuard<Writer>) {
        let (events, mut replies) = {
            let mut q = lock(&self.queue);
            if q.events.len() <= MAX_BATCH {
                q.oldest_unwaited = None;
                (
                    std::mem::take(&mut q.events),
                    std::mem::take(&mut q.replies),
                )
            } else {
                (
                    q.events.drain(..MAX_BATCH).collect::<Vec<_>>(),
                    q.replies.drain(..MAX_BATCH).collect::<Vec<_>>(),
                )
            }
        };
        if events.is_empty() {
            return;
        }
        if writer.stopped {
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(AuditError::Stopped));
            }
            return;
        }
        let now = self.clock.now_ms();
        let ours = lock(&self.last_written).clone();
        let mut refused = false;
        // Called once, or twice if another writer moved the head (then with the stored head).
        let result = writer
            .appender
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
        match result {
            Ok(rows) if !refused && rows.len() == replies.len() => {
                if let Some(last) = rows.last() {
                    *lock(&self.last_written) = Some(AuditHead {
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
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(AuditError::Rewritten));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = replies.len(), "audit append failed; denying");
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(AuditError::Store(StoreError::Corrupt(
                        "append failed".into(),
                    ))));
                }
            }
        }
    }
}

/// Commits records nobody waits for once the oldest has waited [`LINGER`] for a record
/// somebody waits for. It holds the log only while such records are queued, and ends when
/// the log is gone.
async fn linger_task(log: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(shared) = log.upgrade() else { return };
        loop {
            let deadline = {
                let mut q = lock(&shared.queue);
                match q.oldest_unwaited {
                    Some(t) if !q.closed => t + LINGER,
                    _ => {
                        q.lingering = false;
                        break;
                    }
                }
            };
            if Instant::now() < deadline {
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            let writer = shared.writer.clone().lock_owned().await;
            shared.commit_batch(writer).await;
        }
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
