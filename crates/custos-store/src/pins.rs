//! Tool pins: the approved digest of each upstream tool's definition.

use sqlx::Row as _;

use crate::{BeginWrite as _, Store, StoreError, on_pool};

/// One pinned tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPin {
    /// The upstream.
    pub upstream: String,
    /// The tool, as the upstream names it.
    pub tool: String,
    /// The approved definition's digest.
    pub digest: String,
    /// Unix ms.
    pub pinned_at: i64,
    /// The operator who approved it (`first-use` when pinned on first sight).
    pub pinned_by: String,
    /// A different definition last seen, if any.
    pub observed_digest: Option<String>,
}

impl Store {
    /// Every pin.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn list_pins(&self) -> Result<Vec<ToolPin>, StoreError> {
        const Q: &str = "SELECT upstream, tool, digest, pinned_at, pinned_by, observed_digest FROM tool_pins ORDER BY upstream, tool";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).fetch_all(p).await?;
            rows.into_iter().map(|r| Ok(ToolPin {
                upstream: r.try_get("upstream")?,
                tool: r.try_get("tool")?,
                digest: r.try_get("digest")?,
                pinned_at: r.try_get("pinned_at")?,
                pinned_by: r.try_get("pinned_by")?,
                observed_digest: r.try_get("observed_digest")?,
            })).collect()
        })
    }

    /// Replaces an upstream's pins with `tools` (`(tool, digest)`), in one transaction.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn pin_upstream(
        &self,
        upstream: &str,
        tools: &[(String, String)],
        by: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        const DEL: &str = "DELETE FROM tool_pins WHERE upstream = $1";
        const INS: &str = "INSERT INTO tool_pins (upstream, tool, digest, pinned_at, pinned_by) VALUES ($1, $2, $3, $4, $5)";
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query(DEL).bind(upstream).execute(&mut *tx).await?;
            for (tool, digest) in tools {
                sqlx::query(INS).bind(upstream).bind(tool).bind(digest).bind(at).bind(by)
                    .execute(&mut *tx).await.map_err(StoreError::from_write)?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Pins a tool unless it is pinned already (first-use pinning). `true` when this pinned it.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn pin_tool_first_use(
        &self,
        upstream: &str,
        tool: &str,
        digest: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        const Q: &str = "INSERT INTO tool_pins (upstream, tool, digest, pinned_at, pinned_by) VALUES ($1, $2, $3, $4, 'first-use') \
                         ON CONFLICT (upstream, tool) DO NOTHING";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(upstream).bind(tool).bind(digest).bind(at)
            .execute(p).await?.rows_affected() == 1))
    }

    /// Notes that a pinned tool was seen with another definition. `true` the first time this
    /// definition is noted (so the change is recorded once, whichever replica saw it).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn note_tool_change(
        &self,
        upstream: &str,
        tool: &str,
        observed: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        const Q: &str = "UPDATE tool_pins SET observed_digest = $1, observed_at = $2 \
                         WHERE upstream = $3 AND tool = $4 AND digest <> $1 \
                         AND (observed_digest IS NULL OR observed_digest <> $1)";
        let _turn = self.write_turn().await;
        on_pool!(self, p => Ok(sqlx::query(Q).bind(observed).bind(at).bind(upstream).bind(tool)
            .execute(p).await?.rows_affected() == 1))
    }
}
