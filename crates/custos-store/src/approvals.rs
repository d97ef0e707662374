//! Approval requests: written when a call is held, answered once by a human, used once.
//! Every transition is one conditional UPDATE, so two replicas (or two racing calls) never
//! answer or use the same approval twice.

use custos_core::{Approval, ApprovalId, ApprovalState, TaskId, Tier};
use sqlx::Row as _;

use crate::{Store, StoreError, on_pool};

macro_rules! columns {
    () => {
        "id, task, agent, initiator, started_by, tool, upstream, arguments, digest, tier, policy_version, rule, state, created_at, expires_at, decided_at, decided_by, note, executed_at, expiry_reported"
    };
}

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("approval {what} `{v}`"))
}

macro_rules! row_to_approval {
    ($r:expr) => {{
        let r = $r;
        let id: String = r.try_get("id")?;
        let task: String = r.try_get("task")?;
        let state: String = r.try_get("state")?;
        let arguments: String = r.try_get("arguments")?;
        let tier: i64 = r.try_get("tier")?;
        Ok::<_, StoreError>(Approval {
            id: ApprovalId::parse(&id).ok_or_else(|| corrupt("id", &id))?,
            task: TaskId::parse(&task).ok_or_else(|| corrupt("task", &task))?,
            agent: r.try_get("agent")?,
            initiator: r.try_get("initiator")?,
            started_by: r.try_get("started_by")?,
            tool: r.try_get("tool")?,
            upstream: r.try_get("upstream")?,
            arguments: serde_json::from_str(&arguments)
                .map_err(|_| corrupt("arguments", "not JSON"))?,
            digest: r.try_get("digest")?,
            tier: u8::try_from(tier)
                .ok()
                .and_then(|t| Tier::try_from(t).ok())
                .ok_or_else(|| corrupt("tier", &tier.to_string()))?,
            policy_version: r.try_get("policy_version")?,
            rule: r.try_get("rule")?,
            state: ApprovalState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            decided_at: r.try_get("decided_at")?,
            decided_by: r.try_get("decided_by")?,
            note: r.try_get("note")?,
            executed_at: r.try_get("executed_at")?,
            expiry_reported: r.try_get::<i64, _>("expiry_reported")? != 0,
        })
    }};
}

macro_rules! fetch_approvals {
    ($store:expr, $q:expr, $($bind:expr),*) => {{
        let q: &'static str = $q;
        on_pool!($store, p => {
            let rows = sqlx::query(q)$(.bind($bind))*.fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_approval!(r)).collect::<Result<Vec<Approval>, StoreError>>()
        })
    }};
}

/// A human's answer to a pending approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Allow the call, once.
    Approve,
    /// Refuse it.
    Deny,
}

impl Store {
    /// Stores a new approval request.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the id exists; [`StoreError`] otherwise.
    pub async fn insert_approval(&self, a: &Approval) -> Result<(), StoreError> {
        const Q: &str = concat!(
            "INSERT INTO approvals (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
        );
        let arguments = a.arguments.to_string();
        let _turn = self.write_turn().await;
        on_pool!(self, p => sqlx::query(Q)
            .bind(a.id.as_str()).bind(a.task.as_str()).bind(&a.agent).bind(&a.initiator)
            .bind(&a.started_by).bind(&a.tool).bind(&a.upstream).bind(&arguments).bind(&a.digest)
            .bind(i64::from(a.tier.number())).bind(a.policy_version).bind(&a.rule)
            .bind(a.state.as_str()).bind(a.created_at).bind(a.expires_at).bind(a.decided_at)
            .bind(&a.decided_by).bind(&a.note).bind(a.executed_at).bind(i64::from(a.expiry_reported))
            .execute(p).await.map(|_| ()).map_err(StoreError::from_write))
    }

    /// One approval.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn get_approval(&self, id: &ApprovalId) -> Result<Option<Approval>, StoreError> {
        const Q: &str = concat!("SELECT ", columns!(), " FROM approvals WHERE id = $1");
        Ok(fetch_approvals!(self, Q, id.as_str())?.into_iter().next())
    }

    /// The latest approval request for exactly this call: task, exposed tool, argument digest
    /// and policy version.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn latest_approval_for(
        &self,
        task: &TaskId,
        tool: &str,
        digest: &str,
        policy_version: i64,
    ) -> Result<Option<Approval>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM approvals WHERE task = $1 AND tool = $2 AND digest = $3 AND policy_version = $4 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        Ok(
            fetch_approvals!(self, Q, task.as_str(), tool, digest, policy_version)?
                .into_iter()
                .next(),
        )
    }

    /// How many of a task's approvals are still waiting for an answer at `now`.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn pending_approvals_of(&self, task: &TaskId, now: i64) -> Result<i64, StoreError> {
        const Q: &str = "SELECT COUNT(*) AS n FROM approvals WHERE task = $1 AND state = 'pending' AND expires_at > $2";
        on_pool!(self, p => Ok(sqlx::query(Q).bind(task.as_str()).bind(now).fetch_one(p).await?.try_get::<i64, _>("n")?))
    }

    /// Approvals, newest first, at most `limit`: only those still waiting at `now`, or all;
    /// only one task's when `task` is given.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn list_approvals(
        &self,
        all: bool,
        task: Option<&TaskId>,
        now: i64,
        limit: i64,
    ) -> Result<Vec<Approval>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM approvals WHERE ($1 OR (state = 'pending' AND expires_at > $2)) \
             AND ($4 IS NULL OR task = $4) ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        fetch_approvals!(self, Q, all, now, limit, task.map(TaskId::as_str))
    }

    /// Answers a pending, unexpired approval. `false` when it was not pending at `now` (already
    /// answered, expired, or unknown): an approval answers once.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn answer_approval(
        &self,
        id: &ApprovalId,
        answer: Answer,
        by: &str,
        note: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE approvals SET state = $1, decided_at = $2, decided_by = $3, note = $4 \
                         WHERE id = $5 AND state = 'pending' AND expires_at > $2";
        let state = match answer {
            Answer::Approve => ApprovalState::Approved,
            Answer::Deny => ApprovalState::Denied,
        };
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q)
            .bind(state.as_str()).bind(now).bind(by).bind(note).bind(id.as_str())
            .execute(p).await?.rows_affected() == 1))
    }

    /// Withdraws an answer `by` gave that was not used yet (its record could not be written):
    /// the approval is pending again. `false` when there was none to withdraw.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn unanswer_approval(&self, id: &ApprovalId, by: &str) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE approvals SET state = 'pending', decided_at = NULL, decided_by = NULL, note = NULL \
                         WHERE id = $1 AND decided_by = $2 AND state IN ('approved', 'denied')";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(id.as_str()).bind(by).execute(p).await?.rows_affected() == 1))
    }

    /// Uses an approved, unexpired approval: it becomes executed. `false` when it was not
    /// approved at `now` (so the call it allowed already ran, or the approval expired).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn use_approval(&self, id: &ApprovalId, now: i64) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE approvals SET state = 'executed', executed_at = $1 \
                         WHERE id = $2 AND state = 'approved' AND expires_at > $1";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(now).bind(id.as_str()).execute(p).await?.rows_affected() == 1))
    }

    /// Notes that the agent was told an approval expired. `false` when it already was.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn report_approval_expiry(&self, id: &ApprovalId) -> Result<bool, StoreError> {
        const Q: &str =
            "UPDATE approvals SET expiry_reported = 1 WHERE id = $1 AND expiry_reported = 0";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(id.as_str()).execute(p).await?.rows_affected() == 1))
    }
}
