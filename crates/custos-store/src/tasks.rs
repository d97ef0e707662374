//! Tasks: one run of work by one agent under one template for one initiator.

pub use custos_core::task::{Task as TaskRow, TaskState};
use custos_core::{AgentId, TaskId};
use sqlx::Row as _;

use crate::{Store, StoreError, on_pool};

fn parse_task_id(s: &str) -> Result<TaskId, StoreError> {
    TaskId::parse(s).ok_or_else(|| StoreError::Corrupt(format!("task id `{s}`")))
}

fn parse_agent_id(s: &str) -> Result<AgentId, StoreError> {
    AgentId::parse(s).ok_or_else(|| StoreError::Corrupt(format!("agent id `{s}`")))
}

fn parse_state(s: &str) -> Result<TaskState, StoreError> {
    TaskState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("task state `{s}`")))
}

macro_rules! row_to_task {
    ($r:expr) => {{
        let r = $r;
        Ok::<_, StoreError>(TaskRow {
            id: parse_task_id(&r.try_get::<String, _>("id")?)?,
            agent: r.try_get("agent")?,
            agent_id: parse_agent_id(&r.try_get::<String, _>("agent_uid")?)?,
            template: r.try_get("template")?,
            template_version: r.try_get("template_version")?,
            started_by: r.try_get("started_by")?,
            on_behalf_of: r.try_get("on_behalf_of")?,
            purpose: r.try_get("purpose")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            state: parse_state(&r.try_get::<String, _>("state")?)?,
            ended_at: r.try_get("ended_at")?,
            ended_by: r.try_get("ended_by")?,
            tainted_at: r.try_get("tainted_at")?,
            tainted_by: r.try_get("tainted_by")?,
        })
    }};
}

impl Store {
    /// Stores a new task.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn create_task(&self, t: &TaskRow) -> Result<(), StoreError> {
        const Q: &str = "INSERT INTO tasks (id, agent, agent_uid, template, template_version, started_by, on_behalf_of, purpose, created_at, expires_at, state, ended_at, ended_by) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
        let _turn = self.write_turn().await;
        on_pool!(self, p => sqlx::query(Q)
            .bind(t.id.as_str()).bind(&t.agent).bind(t.agent_id.as_str()).bind(&t.template).bind(t.template_version).bind(&t.started_by)
            .bind(&t.on_behalf_of).bind(&t.purpose).bind(t.created_at).bind(t.expires_at)
            .bind(t.state.as_str()).bind(t.ended_at).bind(&t.ended_by)
            .execute(p).await.map(|_| ()).map_err(StoreError::from_write))
    }

    /// One task.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRow>, StoreError> {
        const Q: &str = "SELECT id, agent, agent_uid, template, template_version, started_by, on_behalf_of, purpose, created_at, expires_at, state, ended_at, ended_by, tainted_at, tainted_by FROM tasks WHERE id = $1";
        on_pool!(self, p => match sqlx::query(Q).bind(id.as_str()).fetch_optional(p).await? {
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
        const Q: &str = "SELECT id, agent, agent_uid, template, template_version, started_by, on_behalf_of, purpose, created_at, expires_at, state, ended_at, ended_by, tainted_at, tainted_by FROM tasks \
                         WHERE ($1 IS NULL OR agent = $1) ORDER BY created_at DESC, id LIMIT $2";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(agent).bind(limit).fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_task!(r)).collect()
        })
    }

    /// The ids of tasks still active whose expiry falls in `(after, until]`, oldest first, at
    /// most `limit`: what the expiry watcher announces.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn tasks_expiring(
        &self,
        after: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<(TaskId, i64)>, StoreError> {
        const Q: &str = "SELECT id, expires_at FROM tasks WHERE state = 'active' AND expires_at > $1 AND expires_at <= $2 \
                         ORDER BY expires_at, id LIMIT $3";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(after).bind(until).bind(limit).fetch_all(p).await?;
            rows.into_iter().map(|r| Ok((parse_task_id(&r.try_get::<String, _>("id")?)?, r.try_get("expires_at")?))).collect()
        })
    }

    /// Ends an active task. `false` when it was not active.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn end_task(&self, id: &TaskId, actor: &str, at: i64) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE tasks SET state = 'ended', ended_at = $1, ended_by = $2 WHERE id = $3 AND state = 'active'";
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            let r = sqlx::query(Q).bind(at).bind(actor).bind(id.as_str()).execute(p).await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Marks a task tainted by `tool` at `at`, unless it already is (the first taint is
    /// kept). Returns whether this call marked it.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn mark_tainted(&self, id: &TaskId, tool: &str, at: i64) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE tasks SET tainted_at = $1, tainted_by = $2 WHERE id = $3 AND tainted_at IS NULL";
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            let r = sqlx::query(Q).bind(at).bind(tool).bind(id.as_str()).execute(p).await?;
            Ok(r.rows_affected() == 1)
        })
    }
}
