//! Registry resources: current versions and their history.

use serde::Serialize;
use sqlx::Row as _;

use crate::{BeginWrite as _, Pool, Store, StoreError, on_pool};

// Any fixed number: serialises registry writes on PostgreSQL, where `BEGIN` alone lets two
// applies read the same version and both write the next one. SQLite's `BEGIN IMMEDIATE`
// already serialises writers.
const PG_REGISTRY_LOCK: i64 = 0x4355_5354_5245;
const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

/// A stored resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceRow {
    /// `Upstream`, `Template` or `Agent`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its immutable id, given when it was created: an update keeps it, a delete and re-create
    /// under the same name gets a new one.
    pub uid: String,
    /// Starts at 1; every change adds one.
    pub version: i64,
    /// The spec as JSON.
    pub spec: serde_json::Value,
    /// When it last changed (Unix ms).
    pub updated_at: i64,
    /// Which operator changed it.
    pub updated_by: String,
}

/// What applying one resource did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
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

/// One resource to write.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceWrite {
    /// `Upstream`, `Template` or `Agent`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The spec as JSON.
    pub spec: serde_json::Value,
    /// The id it gets if this write creates it (ignored when it exists: ids never change).
    pub uid_if_created: String,
}

/// One applied change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedChange {
    /// The kind.
    pub kind: String,
    /// The name.
    pub name: String,
    /// Its immutable id.
    pub uid: String,
    /// The version now current (for a delete: the version removed).
    pub version: i64,
    /// What happened.
    pub op: ChangeOp,
}

/// Bumps the policy version, in the transaction that changes what decides calls.
const BUMP_POLICY: &str =
    "UPDATE registry_meta SET policy_version = policy_version + 1 WHERE id = 1";

/// Whether a change to a resource of this kind can change a call's decision.
fn decides_calls(kind: &str) -> bool {
    matches!(kind, "Upstream" | "Template" | "Policy")
}

fn parse_spec(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

macro_rules! row_to_resource {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, StoreError>(ResourceRow {
            kind: row.try_get("kind")?,
            name: row.try_get("name")?,
            uid: row.try_get("uid")?,
            version: row.try_get("version")?,
            spec: parse_spec(&row.try_get::<String, _>("spec")?)?,
            updated_at: row.try_get("updated_at")?,
            updated_by: row.try_get("updated_by")?,
        })
    }};
}

impl Store {
    /// Applies `(kind, name, spec)` resources in one transaction: all or none.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails; nothing is applied then.
    pub async fn apply_resources(
        &self,
        items: &[ResourceWrite],
        actor: &str,
        at: i64,
    ) -> Result<Vec<AppliedChange>, StoreError> {
        let is_pg = matches!(self.pool, Pool::Postgres(_));
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if is_pg {
                sqlx::query(LOCK).bind(PG_REGISTRY_LOCK).execute(&mut *tx).await?;
            }
            let mut out = Vec::with_capacity(items.len());
            for ResourceWrite { kind, name, spec, uid_if_created } in items {
                let spec_text = spec.to_string();
                let current = sqlx::query("SELECT version, spec, uid FROM resources WHERE kind = $1 AND name = $2")
                    .bind(kind).bind(name).fetch_optional(&mut *tx).await?;
                let (version, op, uid) = match current {
                    Some(row) => {
                        let v: i64 = row.try_get("version")?;
                        let uid: String = row.try_get("uid")?;
                        let old = parse_spec(&row.try_get::<String, _>("spec")?)?;
                        if &old == spec {
                            out.push(AppliedChange { kind: kind.clone(), name: name.clone(), uid, version: v, op: ChangeOp::Unchanged });
                            continue;
                        }
                        sqlx::query("UPDATE resources SET version = $1, spec = $2, updated_at = $3, updated_by = $4 WHERE kind = $5 AND name = $6")
                            .bind(v + 1).bind(&spec_text).bind(at).bind(actor).bind(kind).bind(name)
                            .execute(&mut *tx).await?;
                        (v + 1, ChangeOp::Updated, uid)
                    }
                    None => {
                        // A re-created resource continues its version line from history.
                        let last: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM resource_history WHERE kind = $1 AND name = $2")
                            .bind(kind).bind(name).fetch_one(&mut *tx).await?.try_get("v")?;
                        let v = last.unwrap_or(0) + 1;
                        sqlx::query("INSERT INTO resources (kind, name, uid, version, spec, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                            .bind(kind).bind(name).bind(uid_if_created).bind(v).bind(&spec_text).bind(at).bind(actor)
                            .execute(&mut *tx).await?;
                        (v, ChangeOp::Created, uid_if_created.clone())
                    }
                };
                sqlx::query("INSERT INTO resource_history (kind, name, version, op, spec, at, actor) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(kind).bind(name).bind(version).bind(op.as_str()).bind(&spec_text).bind(at).bind(actor)
                    .execute(&mut *tx).await?;
                out.push(AppliedChange { kind: kind.clone(), name: name.clone(), uid, version, op });
            }
            if out.iter().any(|c| c.op != ChangeOp::Unchanged && decides_calls(&c.kind)) {
                sqlx::query(BUMP_POLICY).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Deletes one resource, keeping its history. `None` when it did not exist.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn delete_resource(
        &self,
        kind: &str,
        name: &str,
        actor: &str,
        at: i64,
    ) -> Result<Option<AppliedChange>, StoreError> {
        let is_pg = matches!(self.pool, Pool::Postgres(_));
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if is_pg {
                sqlx::query(LOCK).bind(PG_REGISTRY_LOCK).execute(&mut *tx).await?;
            }
            let row = sqlx::query("DELETE FROM resources WHERE kind = $1 AND name = $2 RETURNING version, uid")
                .bind(kind).bind(name).fetch_optional(&mut *tx).await?;
            let Some(row) = row else { return Ok(None) };
            let version: i64 = row.try_get("version")?;
            let uid: String = row.try_get("uid")?;
            sqlx::query("INSERT INTO resource_history (kind, name, version, op, spec, at, actor) VALUES ($1, $2, $3, 'deleted', NULL, $4, $5)")
                .bind(kind).bind(name).bind(version).bind(at).bind(actor)
                .execute(&mut *tx).await?;
            if decides_calls(kind) {
                sqlx::query(BUMP_POLICY).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Some(AppliedChange { kind: kind.to_owned(), name: name.to_owned(), uid, version, op: ChangeOp::Deleted }))
        })
    }

    /// One resource, if it exists.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn get_resource(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<ResourceRow>, StoreError> {
        const Q: &str = "SELECT kind, name, uid, version, spec, updated_at, updated_by FROM resources WHERE kind = $1 AND name = $2";
        on_pool!(self, p => {
            match sqlx::query(Q).bind(kind).bind(name).fetch_optional(p).await? {
                Some(row) => row_to_resource!(row).map(Some),
                None => Ok(None),
            }
        })
    }

    /// All resources of a kind, by name.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn list_resources(&self, kind: &str) -> Result<Vec<ResourceRow>, StoreError> {
        const Q: &str = "SELECT kind, name, uid, version, spec, updated_at, updated_by FROM resources WHERE kind = $1 ORDER BY name";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(kind).fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_resource!(r)).collect()
        })
    }

    /// The policy version: starts at 1 and grows with every change to upstreams or templates
    /// (made in the same transaction), so every replica reads the same number.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn policy_version(&self) -> Result<i64, StoreError> {
        const Q: &str = "SELECT policy_version FROM registry_meta WHERE id = 1";
        on_pool!(self, p => Ok(sqlx::query(Q).fetch_one(p).await?.try_get("policy_version")?))
    }

    /// The history of one resource, oldest first: `(version, op, at, actor)`.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn resource_history(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Vec<(i64, String, i64, String)>, StoreError> {
        const Q: &str = "SELECT version, op, at, actor FROM resource_history WHERE kind = $1 AND name = $2 ORDER BY id";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).bind(kind).bind(name).fetch_all(p).await?;
            rows.into_iter()
                .map(|r| Ok((r.try_get("version")?, r.try_get("op")?, r.try_get("at")?, r.try_get("actor")?)))
                .collect()
        })
    }
}
