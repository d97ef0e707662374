//! Tasks: one run of work by one agent under one template for one initiator.

use serde::Serialize;
use sqlx::Row as _;

use crate::{Store, StoreError, on_pool};

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
    fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Ended => "ended",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(TaskState::Active),
            "ended" => Ok(TaskState::Ended),
            other => Err(StoreError::Corrupt(format!("task state `{other}`"))),
        }
    }
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRow {
    /// `task_…`.
    pub id: String,
    /// The agent doing the work.
    pub agent: String,
    /// The template it runs under.
    pub template: String,
    /// The template's version when the task started.
    pub template_version: i64,
    /// The operator who started it.
    pub initiator: String,
    /// The human or event on whose behalf it runs.
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
}

macro_rules! row_to_task {
    ($r:expr) => {{
        let r = $r;
        Ok::<_, StoreError>(TaskRow {
            id: r.try_get("id")?,
            agent: r.try_get("agent")?,
            template: r.try_get("template")?,
            template_version: r.try_get("template_version")?,
            initiator: r.try_get("initiator")?,
            on_behalf_of: r.try_get("on_behalf_of")?,
            purpose: r.try_get("purpose")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            state: TaskState::parse(&r.try_get::<String, _>("state")?)?,
            ended_at: r.try_get("ended_at")?,
            ended_by: r.try_get("ended_by")?,
        })
    }};
}

impl Store {
    /// Stores a new task.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn create_task(&self, t: &TaskRow) -> Result<(), StoreError> {
        const Q: &str = "INSERT INTO tasks (id, agent, template, template_version, initiator, on_behalf_of, purpose, created_at, expires_at, state, ended_at, ended_by) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
        on_pool!(self, p => sqlx::query(Q)
            .bind(&t.id).bind(&t.agent).bind(&t.template).bind(t.template_version).bind(&t.initiator)
            .bind(&t.on_behalf_of).bind(&t.purpose).bind(t.created_at).bind(t.expires_at)
            .bind(t.state.as_str()).bind(t.ended_at).bind(&t.ended_by)
            .execute(p).await.map(|_| ()).map_err(StoreError::from_write))
    }

    /// One task.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn get_task(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        const Q: &str = "SELECT id, agent, template, template_version, initiator, on_behalf_of, purpose, created_at, expires_at, state, ended_at, ended_by FROM tasks WHERE id = $1";
        on_pool!(self, p => match sqlx::query(Q).bind(id).fetch_optional(p).await? {
            Some(r) => row_to_task!(r).map(Some),
            None => Ok(None),
        })
    }

    /// Tasks, newest first, optionally only one agent's, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn list_tasks(
        &self,
        agent: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TaskRow>, StoreError> {
        const Q: &str = "SELECT id, agent, template, template_version, initiator, on_behalf_of, purpose, created_at, expires_at, state, ended_at, ended_by FROM tasks \
                         WHERE ($1 IS NULL OR agent = $1) ORDER BY created_at DESC, id LIMIT $2";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(agent).bind(limit).fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_task!(r)).collect()
        })
    }

    /// Ends an active task. `false` when it was not active.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn end_task(&self, id: &str, actor: &str, at: i64) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE tasks SET state = 'ended', ended_at = $1, ended_by = $2 WHERE id = $3 AND state = 'active'";
        on_pool!(self, p => {
            let r = sqlx::query(Q).bind(at).bind(actor).bind(id).execute(p).await?;
            Ok(r.rows_affected() == 1)
        })
    }
}
