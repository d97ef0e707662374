//! Static secrets: sealed values of `static` credential roles. The store never sees a value in
//! clear; the broker seals and opens them.

use sqlx::Row as _;

use crate::{BeginWrite as _, Store, StoreError, on_pool};

use custos_core::StaticSecret;

impl Store {
    /// Stores (or replaces) the sealed value of `role`.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn put_static_secret(
        &self,
        role: &str,
        sealed: &str,
        at: i64,
        by: &str,
    ) -> Result<(), StoreError> {
        const Q: &str = "INSERT INTO static_secrets (role, sealed, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (role) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at, updated_by = excluded.updated_by";
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query(Q).bind(role).bind(sealed).bind(at).bind(by)
                .execute(&mut *tx).await.map_err(StoreError::from_write)?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The sealed value of `role`, if one was stored.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn static_secret(&self, role: &str) -> Result<Option<String>, StoreError> {
        const Q: &str = "SELECT sealed FROM static_secrets WHERE role = $1";
        on_pool!(self, p => {
            let row = sqlx::query(Q).bind(role).fetch_optional(p).await?;
            row.map(|r| r.try_get("sealed")).transpose().map_err(StoreError::from)
        })
    }

    /// Every stored secret's role and when it was written, by role.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn list_static_secrets(&self) -> Result<Vec<StaticSecret>, StoreError> {
        const Q: &str = "SELECT role, updated_at, updated_by FROM static_secrets ORDER BY role";
        on_pool!(self, p => {
            let rows = sqlx::query(Q).fetch_all(p).await?;
            rows.into_iter().map(|r| Ok(StaticSecret {
                role: r.try_get("role")?,
                updated_at: r.try_get("updated_at")?,
                updated_by: r.try_get("updated_by")?,
            })).collect()
        })
    }
}
