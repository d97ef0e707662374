//! The audit log's rows and its chain head. Hashing lives in `custos-audit`; this is storage.

use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use crate::{BeginWrite as _, Pool, Store, StoreError, on_pool};

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// Unix ms.
    pub at: i64,
    /// The previous record's hash (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over the canonical encoding of every other field.
    pub hash: String,
    /// What happened: `tool_call`, `auth_failure`, `task_start`, `registry_change`, ...
    pub kind: String,
    /// The operator who acted, when an operator did.
    pub actor: Option<String>,
    /// The human or event on whose behalf.
    pub initiator: Option<String>,
    /// The agent.
    pub agent: Option<String>,
    /// The task id.
    pub task: Option<String>,
    /// The template.
    pub template: Option<String>,
    /// The tool (exposed name).
    pub tool: Option<String>,
    /// The upstream.
    pub upstream: Option<String>,
    /// SHA-256 of the canonical arguments.
    pub arg_digest: Option<String>,
    /// `allow`, `deny` or `hold`.
    pub decision: Option<String>,
    /// 1 to 4.
    pub tier: Option<i64>,
    /// Why: a stable reason code and text.
    pub reason: Option<String>,
    /// How it ended.
    pub outcome: Option<String>,
    /// Time spent, microseconds.
    pub latency_us: Option<i64>,
    /// Kind-specific details, JSON.
    pub detail: Option<String>,
}

/// The last record's position and hash, kept beside the log so a truncated tail is caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditHead {
    /// The last sequence number.
    pub seq: i64,
    /// The last hash.
    pub hash: String,
}

const INSERT: &str = "INSERT INTO audit_log (seq, at, prev_hash, hash, kind, actor, initiator, agent, task, template, tool, upstream, arg_digest, decision, tier, reason, outcome, latency_us, detail) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)";
const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
const SET_HEAD: &str = "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";

// Any fixed number: serialises appends from several replicas sharing one PostgreSQL.
const PG_AUDIT_LOCK: i64 = 0x4355_5354_4f53;

macro_rules! row_to_audit {
    ($r:expr) => {{
        let r = $r;
        Ok::<_, StoreError>(AuditRow {
            seq: r.try_get("seq")?,
            at: r.try_get("at")?,
            prev_hash: r.try_get("prev_hash")?,
            hash: r.try_get("hash")?,
            kind: r.try_get("kind")?,
            actor: r.try_get("actor")?,
            initiator: r.try_get("initiator")?,
            agent: r.try_get("agent")?,
            task: r.try_get("task")?,
            template: r.try_get("template")?,
            tool: r.try_get("tool")?,
            upstream: r.try_get("upstream")?,
            arg_digest: r.try_get("arg_digest")?,
            decision: r.try_get("decision")?,
            tier: r.try_get("tier")?,
            reason: r.try_get("reason")?,
            outcome: r.try_get("outcome")?,
            latency_us: r.try_get("latency_us")?,
            detail: r.try_get("detail")?,
        })
    }};
}

macro_rules! insert_row {
    ($tx:expr, $r:expr) => {{
        let r = $r;
        sqlx::query(INSERT)
            .bind(r.seq)
            .bind(r.at)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .bind(&r.kind)
            .bind(&r.actor)
            .bind(&r.initiator)
            .bind(&r.agent)
            .bind(&r.task)
            .bind(&r.template)
            .bind(&r.tool)
            .bind(&r.upstream)
            .bind(&r.arg_digest)
            .bind(&r.decision)
            .bind(r.tier)
            .bind(&r.reason)
            .bind(&r.outcome)
            .bind(r.latency_us)
            .bind(&r.detail)
            .execute(&mut *$tx)
            .await?;
    }};
}

impl Store {
    /// Appends records in one transaction. `build` receives the current head (under the
    /// chain lock) and returns the rows to append, already chained and hashed.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails; nothing is appended then.
    pub async fn append_audit<F>(&self, build: F) -> Result<Vec<AuditRow>, StoreError>
    where
        F: FnOnce(Option<AuditHead>) -> Vec<AuditRow>,
    {
        let is_pg = matches!(self.pool, Pool::Postgres(_));
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if is_pg {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_AUDIT_LOCK).execute(&mut *tx).await?;
            }
            let head = match sqlx::query(HEAD).fetch_optional(&mut *tx).await? {
                Some(r) => Some(AuditHead { seq: r.try_get("seq")?, hash: r.try_get("hash")? }),
                None => None,
            };
            let rows = build(head);
            for r in &rows {
                insert_row!(tx, r);
            }
            if let Some(last) = rows.last() {
                sqlx::query(SET_HEAD).bind(last.seq).bind(&last.hash).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(rows)
        })
    }

    /// The stored chain head.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        on_pool!(self, p => match sqlx::query(HEAD).fetch_optional(p).await? {
            Some(r) => Ok(Some(AuditHead { seq: r.try_get("seq")?, hash: r.try_get("hash")? })),
            None => Ok(None),
        })
    }

    /// Records with `seq > after`, in order, at most `limit` (for verifying in pages).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        const Q: &str = "SELECT seq, at, prev_hash, hash, kind, actor, initiator, agent, task, template, tool, upstream, arg_digest, decision, tier, reason, outcome, latency_us, detail FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(after).bind(limit).fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_audit!(r)).collect()
        })
    }

    /// Every record of one task, in order.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn audit_for_task(&self, task: &str) -> Result<Vec<AuditRow>, StoreError> {
        const Q: &str = "SELECT seq, at, prev_hash, hash, kind, actor, initiator, agent, task, template, tool, upstream, arg_digest, decision, tier, reason, outcome, latency_us, detail FROM audit_log WHERE task = $1 ORDER BY seq";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(task).fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_audit!(r)).collect()
        })
    }
}
