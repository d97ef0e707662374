//! Credential leases: one credential minted for one task, with its lifecycle.

use serde::Serialize;

use crate::ids::{AgentId, TaskId};

/// A lease's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// The intent is written; the credential may or may not exist yet.
    Pending,
    /// The credential exists and was handed out.
    Active,
    /// The credential was removed.
    Revoked,
    /// Minting failed (nothing was left behind), or revocation gave up after its retries (the
    /// credential may still exist: the lease is kept and reported).
    Failed,
}

impl LeaseState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Active => "active",
            LeaseState::Revoked => "revoked",
            LeaseState::Failed => "failed",
        }
    }

    /// Reads a name written by [`LeaseState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(LeaseState::Pending),
            "active" => Some(LeaseState::Active),
            "revoked" => Some(LeaseState::Revoked),
            "failed" => Some(LeaseState::Failed),
            _ => None,
        }
    }
}

/// One lease, as stored. Never a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// `lease_…`: the lease's id; its part after `lease_` is the principal's after `custos_`.
    pub id: String,
    /// The credential role.
    pub role: String,
    /// The engine (`postgres`, `mysql`, `redis`).
    pub engine: String,
    /// The database user (or ACL user) name, `custos_…`.
    pub principal: String,
    /// The task it was minted for.
    pub task: TaskId,
    /// The task's agent.
    pub agent: String,
    /// That agent registration's id.
    pub agent_id: AgentId,
    /// On whose behalf the task runs.
    pub initiator: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms: when the credential is revoked on its own.
    pub expires_at: i64,
    /// Lifecycle state.
    pub state: LeaseState,
    /// Failed revocation attempts so far.
    pub attempts: i64,
    /// The last failure, bounded, never a secret.
    pub last_error: Option<String>,
    /// Unix ms: the earliest the next revocation attempt runs.
    pub next_attempt_at: i64,
    /// Unix ms.
    pub revoked_at: Option<i64>,
    /// Unix ms: when it was last renewed, if ever.
    pub renewed_at: Option<i64>,
}
