//! Connecting: URLs, backends, migrations run again on an existing database.

use custos_store::{Durability, ResourceWrite, Store, StoreError};
use custos_test_support::{Backend, fresh_store};
use serde_json::json;

#[tokio::test]
async fn an_unsupported_url_is_refused() {
    for url in ["mysql://localhost/db", "custos.db", ""] {
        let err = Store::connect(url, Durability::Process)
            .await
            .expect_err("unsupported");
        assert!(matches!(err, StoreError::Url(ref u) if u == url), "{err:?}");
    }
}

async fn reopening_keeps_data_and_migrations_are_idempotent(backend: Backend, name: &str) {
    let (store, guard) = fresh_store(backend).await;
    assert_eq!(store.backend(), name);
    store.ping().await.expect("ping");
    store
        .apply_resources(
            &[ResourceWrite {
                kind: "Agent".into(),
                name: "a".into(),
                spec: json!({"k": 1}),
                uid_if_created: "agent_1".into(),
            }],
            "op",
            1,
        )
        .await
        .expect("apply");
    store.close().await;

    // A restart (or a second replica) runs the migrations again over the same database.
    let again = Store::connect(&guard.url(), Durability::Power)
        .await
        .expect("reopen");
    assert_eq!(again.backend(), name);
    let row = again
        .get_resource("Agent", "a")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!((row.spec, row.uid.as_str()), (json!({"k": 1}), "agent_1"));
    again.close().await;
    drop(guard);
}

#[tokio::test]
async fn reopening_keeps_data_and_migrations_are_idempotent_sqlite() {
    reopening_keeps_data_and_migrations_are_idempotent(Backend::Sqlite, "sqlite").await;
}

#[tokio::test]
async fn reopening_keeps_data_and_migrations_are_idempotent_postgres() {
    reopening_keeps_data_and_migrations_are_idempotent(Backend::Postgres, "postgres").await;
}

#[tokio::test]
async fn replicas_start_together_on_one_postgres_database() {
    // Several replicas migrating the same fresh database at once: the migrator's lock lets
    // exactly one create the schema and the others find it done.
    let db = custos_test_support::fresh_pg_db().await;
    let mut handles = Vec::new();
    for _ in 0..4 {
        let url = db.url().to_owned();
        handles.push(tokio::spawn(async move {
            Store::connect(&url, Durability::Process).await
        }));
    }
    for h in handles {
        let store = h.await.expect("join").expect("connect and migrate");
        store.ping().await.expect("ping");
        store.close().await;
    }
}
