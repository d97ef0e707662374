//! Credential leases: the intent written before a credential exists, its activation, its
//! revocation (with retries), and what the expiry worker and the reconciler read.

use custos_core::{AgentId, Lease, LeaseState, TaskId};
use sqlx::Row as _;

use crate::{Store, StoreError, on_pool};

macro_rules! columns {
    () => {
        "id, role, engine, principal, task, agent, agent_uid, initiator, created_at, expires_at, state, attempts, last_error, next_attempt_at, revoked_at, renewed_at"
    };
}

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("lease {what} `{v}`"))
}

macro_rules! row_to_lease {
    ($r:expr) => {{
        let r = $r;
        let task: String = r.try_get("task")?;
        let agent_uid: String = r.try_get("agent_uid")?;
        let state: String = r.try_get("state")?;
        Ok::<_, StoreError>(Lease {
            id: r.try_get("id")?,
            role: r.try_get("role")?,
            engine: r.try_get("engine")?,
            principal: r.try_get("principal")?,
            task: TaskId::parse(&task).ok_or_else(|| corrupt("task", &task))?,
            agent: r.try_get("agent")?,
            agent_id: AgentId::parse(&agent_uid).ok_or_else(|| corrupt("agent id", &agent_uid))?,
            initiator: r.try_get("initiator")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            state: LeaseState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
            attempts: r.try_get("attempts")?,
            last_error: r.try_get("last_error")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            revoked_at: r.try_get("revoked_at")?,
            renewed_at: r.try_get("renewed_at")?,
        })
    }};
}

macro_rules! fetch_leases {
    ($store:expr, $q:expr, $($bind:expr),*) => {{
        let q: &'static str = $q;
        on_pool!($store, p => {
            let rows = sqlx::query(q)$(.bind($bind))*.fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_lease!(r)).collect::<Result<Vec<Lease>, StoreError>>()
        })
    }};
}

impl Store {
    /// Writes a lease intent (its state is whatever `lease.state` says, normally pending).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the id or principal exists; [`StoreError`] otherwise.
    pub async fn insert_lease(&self, l: &Lease) -> Result<(), StoreError> {
        const Q: &str = concat!(
            "INSERT INTO leases (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        let _turn = self.write_turn().await;
        on_pool!(self, p => sqlx::query(Q)
            .bind(&l.id).bind(&l.role).bind(&l.engine).bind(&l.principal).bind(l.task.as_str())
            .bind(&l.agent).bind(l.agent_id.as_str()).bind(&l.initiator).bind(l.created_at)
            .bind(l.expires_at).bind(l.state.as_str()).bind(l.attempts).bind(&l.last_error)
            .bind(l.next_attempt_at).bind(l.revoked_at).bind(l.renewed_at)
            .execute(p).await.map(|_| ()).map_err(StoreError::from_write))
    }

    /// Marks a pending lease active (its credential exists). `false` when it was not pending.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn activate_lease(&self, id: &str) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE leases SET state = 'active' WHERE id = $1 AND state = 'pending'";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(id).execute(p).await?.rows_affected() == 1))
    }

    /// Sets an active lease's expiry and when it was renewed (a renewal, or undoing one).
    /// `false` when it is not active.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn set_lease_expiry(
        &self,
        id: &str,
        expires_at: i64,
        renewed_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        const Q: &str =
            "UPDATE leases SET expires_at = $1, renewed_at = $2 WHERE id = $3 AND state = 'active'";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(expires_at).bind(renewed_at).bind(id).execute(p).await?.rows_affected() == 1))
    }

    /// Marks a lease revoked at `at`, whatever its state but revoked. `false` when it was
    /// already revoked or does not exist.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn mark_lease_revoked(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE leases SET state = 'revoked', revoked_at = $1 WHERE id = $2 AND state <> 'revoked'";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(at).bind(id).execute(p).await?.rows_affected() == 1))
    }

    /// Marks a pending lease failed: minting did not succeed.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn mark_lease_failed(&self, id: &str, error: &str) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE leases SET state = 'failed', last_error = $1 WHERE id = $2 AND state = 'pending'";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(error).bind(id).execute(p).await?.rows_affected() == 1))
    }

    /// Records a failed revocation of an active lease: one more attempt, the error, when to
    /// try next; the lease is due from `now` on (a revocation asked for before expiry keeps
    /// being retried). With `give_up` the lease becomes failed (kept, reported).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn note_revoke_failure(
        &self,
        id: &str,
        now: i64,
        error: &str,
        next_attempt_at: i64,
        give_up: bool,
    ) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE leases SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, \
                         expires_at = CASE WHEN expires_at > $3 THEN $3 ELSE expires_at END, \
                         state = CASE WHEN $4 THEN 'failed' ELSE state END \
                         WHERE id = $5 AND state = 'active'";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q)
            .bind(error).bind(next_attempt_at).bind(now).bind(give_up).bind(id)
            .execute(p).await?.rows_affected() == 1))
    }

    /// One lease.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn get_lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        const Q: &str = concat!("SELECT ", columns!(), " FROM leases WHERE id = $1");
        Ok(fetch_leases!(self, Q, id)?.into_iter().next())
    }

    /// The lease owning a principal.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn lease_by_principal(&self, principal: &str) -> Result<Option<Lease>, StoreError> {
        const Q: &str = concat!("SELECT ", columns!(), " FROM leases WHERE principal = $1");
        Ok(fetch_leases!(self, Q, principal)?.into_iter().next())
    }

    /// Leases newest first: one task's, or every one; only failed ones with `failed_only`.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn list_leases(
        &self,
        task: Option<&str>,
        failed_only: bool,
        limit: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM leases WHERE ($1 IS NULL OR task = $1) AND ($2 = FALSE OR state = 'failed') \
             ORDER BY created_at DESC, id LIMIT $3"
        );
        fetch_leases!(self, Q, task, failed_only, limit)
    }

    /// A task's leases that are pending or active.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn live_leases_of_task(&self, task: &TaskId) -> Result<Vec<Lease>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM leases WHERE task = $1 AND state IN ('pending', 'active') ORDER BY created_at, id"
        );
        fetch_leases!(self, Q, task.as_str())
    }

    /// The pending or active leases of one credential role, or of all roles.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn live_leases_of_role(&self, role: Option<&str>) -> Result<Vec<Lease>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM leases WHERE ($1 IS NULL OR role = $1) AND state IN ('pending', 'active') ORDER BY created_at, id"
        );
        fetch_leases!(self, Q, role)
    }

    /// An agent's leases that are pending or active.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn live_leases_of_agent(&self, agent: &str) -> Result<Vec<Lease>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM leases WHERE agent = $1 AND state IN ('pending', 'active') ORDER BY created_at, id"
        );
        fetch_leases!(self, Q, agent)
    }

    /// Claims up to `limit` active leases past their expiry whose next attempt is due, oldest
    /// expiry first: each claimed lease's next attempt moves to `claim_until`, so another
    /// replica looking at the same moment does not take it too.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn claim_due_leases(
        &self,
        now: i64,
        claim_until: i64,
        limit: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        // Usually nothing is due: a read says so without taking the write lock (on SQLite the
        // audit writer's), which the claiming UPDATE takes even when it matches nothing.
        const ANY: &str = "SELECT 1 AS due FROM leases WHERE state = 'active' AND expires_at <= $1 AND next_attempt_at <= $1 LIMIT 1";
        let due: bool = on_pool!(self, p => sqlx::query(ANY).bind(now).fetch_optional(p).await.map(|r| r.is_some()).map_err(StoreError::from))?;
        if !due {
            return Ok(Vec::new());
        }
        // The outer condition repeats the inner one: PostgreSQL re-checks it on a row another
        // transaction changed meanwhile, so a lease is claimed once.
        const Q: &str = concat!(
            "UPDATE leases SET next_attempt_at = $1 \
             WHERE state = 'active' AND expires_at <= $2 AND next_attempt_at <= $2 AND id IN \
             (SELECT id FROM leases WHERE state = 'active' AND expires_at <= $2 AND next_attempt_at <= $2 \
              ORDER BY expires_at, id LIMIT $3) \
             RETURNING ",
            columns!()
        );
        fetch_leases!(self, Q, claim_until, now, limit)
    }

    /// The principals of live leases: active ones, and pending ones created after
    /// `pending_after` (older intents are treated as dead: their mint never finished).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn live_principals(&self, pending_after: i64) -> Result<Vec<String>, StoreError> {
        const Q: &str = "SELECT principal FROM leases WHERE state = 'active' OR (state = 'pending' AND created_at > $1)";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(pending_after).fetch_all(p).await?;
            rows.into_iter().map(|r| r.try_get::<String, _>("principal").map_err(StoreError::from)).collect()
        })
    }

    /// Pending leases created at or before `before`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn stale_pending_leases(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM leases WHERE state = 'pending' AND created_at <= $1 ORDER BY created_at, id LIMIT $2"
        );
        fetch_leases!(self, Q, before, limit)
    }

    /// This installation's lease scope: `candidate` if none was chosen yet, else the one
    /// chosen first (by any replica).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn lease_scope(&self, candidate: &str) -> Result<String, StoreError> {
        const INSERT: &str =
            "INSERT INTO lease_scope (one, scope) VALUES (1, $1) ON CONFLICT (one) DO NOTHING";
        const SELECT: &str = "SELECT scope FROM lease_scope WHERE one = 1";
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            sqlx::query(INSERT).bind(candidate).execute(p).await?;
            let row = sqlx::query(SELECT).fetch_one(p).await?;
            Ok(row.try_get::<String, _>("scope")?)
        })
    }
}
