//! Operators, agent suspension and replay protection for agent assertions.

use serde::Serialize;
use sqlx::Row as _;

use crate::{Store, StoreError, on_pool};

/// A stored operator. The token itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorRow {
    /// Its name.
    pub name: String,
    /// `admin`, `initiator`, `approver` or `auditor`.
    pub role: String,
    /// When it was created (Unix ms).
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

/// Whether an agent is suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentStatus {
    /// The agent's name.
    pub name: String,
    /// Suspended agents' tokens are refused at once.
    pub suspended: bool,
    /// When this last changed (Unix ms).
    pub updated_at: i64,
    /// Who changed it.
    pub updated_by: String,
}

impl Store {
    /// Creates an operator.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the name exists; [`StoreError::Database`] otherwise.
    pub async fn create_operator(
        &self,
        op: &OperatorRow,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        const Q: &str = "INSERT INTO operators (name, role, token_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5)";
        let _turn = self.write_turn().await;
        on_pool!(self, p => sqlx::query(Q)
            .bind(&op.name).bind(&op.role).bind(token_hash).bind(op.created_at).bind(&op.created_by)
            .execute(p).await.map(|_| ()).map_err(StoreError::from_write))
    }

    /// Replaces an operator's token (used for the dev admin at each start).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn upsert_operator(
        &self,
        op: &OperatorRow,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        const Q: &str = "INSERT INTO operators (name, role, token_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (name) DO UPDATE SET role = excluded.role, token_hash = excluded.token_hash";
        let _turn = self.write_turn().await;
        on_pool!(self, p => sqlx::query(Q)
            .bind(&op.name).bind(&op.role).bind(token_hash).bind(op.created_at).bind(&op.created_by)
            .execute(p).await.map(|_| ()).map_err(StoreError::from_write))
    }

    /// The operator holding the token with this hash.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn operator_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<OperatorRow>, StoreError> {
        const Q: &str =
            "SELECT name, role, created_at, created_by FROM operators WHERE token_hash = $1";
        on_pool!(self, p => {
            let Some(r) = sqlx::query(Q).bind(token_hash).fetch_optional(p).await? else { return Ok(None) };
            Ok(Some(OperatorRow {
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                created_at: r.try_get("created_at")?,
                created_by: r.try_get("created_by")?,
            }))
        })
    }

    /// All operators, by name.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn list_operators(&self) -> Result<Vec<OperatorRow>, StoreError> {
        const Q: &str = "SELECT name, role, created_at, created_by FROM operators ORDER BY name";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).fetch_all(p).await?;
            rows.into_iter().map(|r| Ok(OperatorRow {
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                created_at: r.try_get("created_at")?,
                created_by: r.try_get("created_by")?,
            })).collect()
        })
    }

    /// Sets whether an agent is suspended.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn set_agent_suspended(
        &self,
        name: &str,
        suspended: bool,
        actor: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        const Q: &str = "INSERT INTO agent_status (name, suspended, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (name) DO UPDATE SET suspended = excluded.suspended, updated_at = excluded.updated_at, updated_by = excluded.updated_by";
        let _turn = self.write_turn().await;
        on_pool!(self, p => sqlx::query(Q).bind(name).bind(suspended).bind(at).bind(actor)
            .execute(p).await.map(|_| ()).map_err(StoreError::from_write))
    }

    /// Whether an agent is suspended (an agent never suspended is not).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn agent_suspended(&self, name: &str) -> Result<bool, StoreError> {
        const Q: &str = "SELECT suspended FROM agent_status WHERE name = $1";
        on_pool!(self, p => {
            let row = sqlx::query(Q).bind(name).fetch_optional(p).await?;
            Ok(match row { Some(r) => r.try_get::<bool, _>("suspended")?, None => false })
        })
    }

    /// The names of all suspended agents.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn suspended_agents(&self) -> Result<Vec<String>, StoreError> {
        const Q: &str = "SELECT name FROM agent_status WHERE suspended = $1";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(true).fetch_all(p).await?;
            rows.into_iter().map(|r| Ok(r.try_get("name")?)).collect()
        })
    }

    /// Records an assertion's `jti`. `false` when it was seen before (a replay).
    ///
    /// Expired entries are swept as a side effect.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn claim_jti(
        &self,
        jti: &str,
        agent: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        const SWEEP: &str = "DELETE FROM used_jti WHERE expires_at < $1";
        const Q: &str = "INSERT INTO used_jti (jti, agent, expires_at) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING";
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            sqlx::query(SWEEP).bind(now).execute(p).await?;
            let r = sqlx::query(Q).bind(jti).bind(agent).bind(expires_at).execute(p).await?;
            Ok(r.rows_affected() == 1)
        })
    }
}
