//! Tasks: one run of work by one agent under one template for one initiator.

use serde::Serialize;

use crate::ids::{AgentId, TaskId};

/// A task's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Running; tokens may be issued and used until `expires_at`.
    Active,
    /// Ended by an operator; everything under it is refused.
    Ended,
}

impl TaskState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Ended => "ended",
        }
    }

    /// Reads a name written by [`TaskState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TaskState::Active),
            "ended" => Some(TaskState::Ended),
            _ => None,
        }
    }
}

/// A task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// `task_…`.
    pub id: TaskId,
    /// The agent doing the work.
    pub agent: String,
    /// That agent's immutable id: the task belongs to this registration of the agent, not to
    /// whatever is registered under its name later.
    pub agent_id: AgentId,
    /// The template it runs under.
    pub template: String,
    /// The template's version when the task started.
    pub template_version: i64,
    /// The operator who started it.
    pub started_by: String,
    /// The human or event on whose behalf it runs (the initiator).
    pub on_behalf_of: String,
    /// Why.
    pub purpose: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub expires_at: i64,
    /// Lifecycle state.
    pub state: TaskState,
    /// Unix ms.
    pub ended_at: Option<i64>,
    /// Who ended it.
    pub ended_by: Option<String>,
    /// When an untrusted tool first returned content to it (Unix ms): from then on policy
    /// may raise its calls' tiers.
    pub tainted_at: Option<i64>,
    /// The tool that tainted it.
    pub tainted_by: Option<String>,
}

impl Task {
    /// Whether tokens of this task may be issued and used at `now_ms`.
    pub fn is_active_at(&self, now_ms: i64) -> bool {
        self.state == TaskState::Active && now_ms < self.expires_at
    }
}
