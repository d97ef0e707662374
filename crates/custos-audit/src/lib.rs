//! The audit trail: a hash-chained, append-only log of every decision, with group commit,
//! verification and per-task traces.
//!
//! A record is the commit point of a decision: [`AuditLog::append`] returns only once the
//! record is durable, and concurrent appends share one transaction (group commit), run by
//! one of the callers on its own task.

mod chain;
mod event;
mod log;
mod to_end;
mod verify;

pub use chain::{CURRENT_FORMAT, GENESIS_HASH, KNOWN_FORMATS, canonical_bytes, record_hash};
pub use event::{AuditEvent, Detail, EventKind, MAX_DETAIL, MAX_FIELD};
pub use log::{AuditError, AuditLog};
pub use to_end::{Panicked, ToEnd, to_end};
pub use verify::{VerifyReport, verify};
