//! The registry as the edges see it: stored resources with their version and last change,
//! what an apply or delete did, and an agent's suspension status.

use serde_json::Value;

use crate::resource::Kind;

/// A resource as stored: its spec and which version of it is current.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Its immutable id (`agent_…`, `template_…`, `upstream_…`), given when it was created.
    pub id: String,
    /// Starts at 1; every change adds one.
    pub version: i64,
    /// The spec as applied, as a JSON object (without `kind`).
    pub spec: Value,
    /// When it last changed (Unix ms).
    pub updated_at: i64,
    /// Which operator changed it.
    pub updated_by: String,
}

/// What applying or deleting one resource did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// It did not exist.
    Created,
    /// It existed with another spec.
    Updated,
    /// It existed with the same spec; nothing was written.
    Unchanged,
    /// It was removed.
    Deleted,
}

impl ChangeOp {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Created => "created",
            ChangeOp::Updated => "updated",
            ChangeOp::Unchanged => "unchanged",
            ChangeOp::Deleted => "deleted",
        }
    }
}

impl std::fmt::Display for ChangeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The kind.
    pub kind: Kind,
    /// The name.
    pub name: String,
    /// The resource's immutable id.
    pub id: String,
    /// The version now current (for a delete: the version removed).
    pub version: i64,
    /// What happened.
    pub op: ChangeOp,
}

/// Whether an agent is suspended, as of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// The agent's name.
    pub name: String,
    /// A suspended agent's tokens are refused at once.
    pub suspended: bool,
    /// When this last changed (Unix ms).
    pub updated_at: i64,
    /// Who changed it.
    pub updated_by: String,
}
