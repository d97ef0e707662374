//! Reaching past the store, as an attacker or a broken migration would.

use custos_store::{Pool, Store};
use sqlx::AssertSqlSafe;

/// Runs SQL (one or more statements, no parameters) directly on the store's database.
pub async fn exec(store: &Store, sql: &str) {
    let r = match store.pool() {
        Pool::Sqlite(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(p)
            .await
            .map(|_| ()),
        Pool::Postgres(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(p)
            .await
            .map(|_| ()),
    };
    r.unwrap_or_else(|e| panic!("{sql}: {e}"));
}
