//! Reaching past the store, as an attacker or a broken migration would.

use custos_store::Store;

/// Runs SQL (one or more statements, no parameters) directly on the store's database.
pub async fn exec(store: &Store, sql: &str) {
    custos_test_support::tamper::exec(store, sql).await;
}
