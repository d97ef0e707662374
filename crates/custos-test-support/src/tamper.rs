//! Reaching past the store, as an attacker or a broken migration would: raw SQL on a store's
//! database, for the tamper tests of every crate (one helper, not one per test suite).

use custos_store::{AuditRow, Pool, Store};
use sqlx::{AssertSqlSafe, Row as _};

/// Runs SQL (one or more statements, no parameters, triggers allowed) directly on the store's
/// database.
///
/// # Panics
/// When the SQL fails: a tamper test that cannot tamper must not pass.
pub async fn exec(store: &Store, statements: &str) {
    let r = match store.pool() {
        Pool::Sqlite(p) => sqlx::raw_sql(AssertSqlSafe(statements.to_owned()))
            .execute(p)
            .await
            .map(|_| ()),
        Pool::Postgres(p) => sqlx::raw_sql(AssertSqlSafe(statements.to_owned()))
            .execute(p)
            .await
            .map(|_| ()),
    };
    r.unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// Runs `;`-separated SQL statements (no parameters) directly on the store's database and
/// returns the first column of the first row of the last statement, when it is an integer.
///
/// # Panics
/// When a statement fails: a tamper test that cannot tamper must not pass.
pub async fn sql(store: &Store, statements: &str) -> Option<i64> {
    let mut last = None;
    for stmt in statements
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        last = match store.pool() {
            Pool::Sqlite(p) => sqlx::query(AssertSqlSafe(stmt.to_owned()))
                .fetch_all(p)
                .await
                .map(|rows| rows.first().and_then(|r| r.try_get::<i64, _>(0).ok())),
            Pool::Postgres(p) => sqlx::query(AssertSqlSafe(stmt.to_owned()))
                .fetch_all(p)
                .await
                .map(|rows| rows.first().and_then(|r| r.try_get::<i64, _>(0).ok())),
        }
        .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    last
}

/// An SQL literal for a JSON scalar (strings quoted, `null` as NULL).
fn literal(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "NULL".to_owned(),
        serde_json::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        other => other.to_string(),
    }
}

/// Writes `r` in place of whatever record has its `seq` (or adds it), every column included:
/// the columns are the row's fields, so a new column is covered without editing this.
///
/// # Panics
/// When the write fails.
pub async fn put_audit_row(store: &Store, r: &AuditRow) {
    let serde_json::Value::Object(fields) = serde_json::to_value(r).unwrap_or_default() else {
        panic!("an audit row serialises to an object");
    };
    let columns: Vec<&str> = fields.keys().map(String::as_str).collect();
    let values: Vec<String> = fields.values().map(literal).collect();
    exec(
        store,
        &format!(
            "DELETE FROM audit_log WHERE seq = {}; INSERT INTO audit_log ({}) VALUES ({})",
            r.seq,
            columns.join(", "),
            values.join(", ")
        ),
    )
    .await;
}

/// Rewrites the stored chain head.
///
/// # Panics
/// When the write fails.
pub async fn set_audit_head(store: &Store, seq: i64, hash: &str) {
    exec(
        store,
        &format!(
            "UPDATE audit_head SET seq = {seq}, hash = {} WHERE id = 1",
            literal(&serde_json::Value::String(hash.to_owned()))
        ),
    )
    .await;
}

/// Opens the database at `url` on a second connection (as a running server's own store is
/// out of reach), runs `statements` as [`sql`] does, and closes it.
///
/// # Panics
/// When the database cannot be opened or a statement fails.
pub async fn sql_at(url: &str, statements: &str) -> Option<i64> {
    let store = open(url).await;
    let out = sql(&store, statements).await;
    store.close().await;
    out
}

/// Opens the database at `url` on a second connection, runs `statements` as [`exec`] does,
/// and closes it.
///
/// # Panics
/// When the database cannot be opened or the SQL fails.
pub async fn exec_at(url: &str, statements: &str) {
    let store = open(url).await;
    exec(&store, statements).await;
    store.close().await;
}

async fn open(url: &str) -> Store {
    Store::connect(url, custos_store::Durability::Process)
        .await
        .unwrap_or_else(|e| panic!("cannot open `{url}`: {e}"))
}
