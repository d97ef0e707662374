//! Operators, agent suspension and assertion replay protection.

use custos_store::{OperatorRow, Store, StoreError};
use custos_test_support::both_backends;

both_backends!(
    operators_are_created_listed_and_found_by_token_hash,
    a_duplicate_operator_is_a_conflict,
    upsert_replaces_role_and_token,
    agents_are_suspended_and_resumed,
    a_jti_is_claimed_once_and_expired_ones_are_swept,
);

fn op(name: &str, role: &str, at: i64) -> OperatorRow {
    OperatorRow {
        name: name.to_owned(),
        role: role.to_owned(),
        created_at: at,
        created_by: "admin".to_owned(),
    }
}

async fn operators_are_created_listed_and_found_by_token_hash(store: Store) {
    assert!(store.list_operators().await.expect("list").is_empty());
    store
        .create_operator(&op("zed", "auditor", 10), "hash-z")
        .await
        .expect("create zed");
    store
        .create_operator(&op("amy", "approver", 20), "hash-a")
        .await
        .expect("create amy");

    let all = store.list_operators().await.expect("list");
    assert_eq!(
        all,
        vec![op("amy", "approver", 20), op("zed", "auditor", 10)]
    );

    assert_eq!(
        store
            .operator_by_token_hash("hash-z")
            .await
            .expect("lookup"),
        Some(op("zed", "auditor", 10))
    );
    assert_eq!(
        store
            .operator_by_token_hash("hash-unknown")
            .await
            .expect("lookup"),
        None
    );
}

async fn a_duplicate_operator_is_a_conflict(store: Store) {
    store
        .create_operator(&op("amy", "admin", 1), "hash-1")
        .await
        .expect("create");
    let same_name = store
        .create_operator(&op("amy", "auditor", 2), "hash-2")
        .await
        .expect_err("same name");
    assert!(matches!(same_name, StoreError::Conflict), "{same_name:?}");
    assert_eq!(same_name.reason(), "conflict");
    let same_token = store
        .create_operator(&op("bob", "auditor", 2), "hash-1")
        .await
        .expect_err("same token hash");
    assert!(matches!(same_token, StoreError::Conflict), "{same_token:?}");

    // The refused creates changed nothing.
    assert_eq!(
        store.list_operators().await.expect("list"),
        vec![op("amy", "admin", 1)]
    );
    assert_eq!(
        store
            .operator_by_token_hash("hash-2")
            .await
            .expect("lookup"),
        None
    );
}

async fn upsert_replaces_role_and_token(store: Store) {
    store
        .upsert_operator(&op("dev-admin", "admin", 100), "old-hash")
        .await
        .expect("first upsert creates");
    assert_eq!(
        store
            .operator_by_token_hash("old-hash")
            .await
            .expect("lookup"),
        Some(op("dev-admin", "admin", 100))
    );

    store
        .upsert_operator(&op("dev-admin", "auditor", 200), "new-hash")
        .await
        .expect("second upsert replaces");
    assert_eq!(
        store
            .operator_by_token_hash("old-hash")
            .await
            .expect("lookup"),
        None,
        "the old token no longer works"
    );
    // Role and token change; when and by whom it was created do not.
    assert_eq!(
        store
            .operator_by_token_hash("new-hash")
            .await
            .expect("lookup"),
        Some(op("dev-admin", "auditor", 100))
    );
    assert_eq!(store.list_operators().await.expect("list").len(), 1);
}

async fn agents_are_suspended_and_resumed(store: Store) {
    assert!(
        !store.agent_suspended("a").await.expect("status"),
        "never suspended"
    );
    store
        .set_agent_suspended("a", true, "op", 1)
        .await
        .expect("suspend");
    assert!(store.agent_suspended("a").await.expect("status"));
    assert!(
        !store.agent_suspended("b").await.expect("status"),
        "only the named agent"
    );
    store
        .set_agent_suspended("a", true, "op", 2)
        .await
        .expect("suspend twice");
    assert!(store.agent_suspended("a").await.expect("status"));
    store
        .set_agent_suspended("a", false, "op2", 3)
        .await
        .expect("resume");
    assert!(!store.agent_suspended("a").await.expect("status"));
}

async fn a_jti_is_claimed_once_and_expired_ones_are_swept(store: Store) {
    assert!(store.claim_jti("j1", "a", 1_000, 0).await.expect("claim"));
    assert!(
        !store.claim_jti("j1", "a", 1_000, 10).await.expect("claim"),
        "a replay"
    );
    assert!(
        !store.claim_jti("j1", "b", 5_000, 10).await.expect("claim"),
        "a replay, whoever presents it"
    );
    assert!(store.claim_jti("j2", "a", 3_000, 10).await.expect("claim"));

    // At 2000 j1 has expired and is swept; j2 has not.
    assert!(
        store
            .claim_jti("j3", "a", 9_000, 2_000)
            .await
            .expect("claim")
    );
    assert!(
        store
            .claim_jti("j1", "a", 9_000, 2_000)
            .await
            .expect("claim"),
        "swept, so claimable again (its assertion has expired anyway)"
    );
    assert!(
        !store
            .claim_jti("j2", "a", 9_000, 2_000)
            .await
            .expect("claim")
    );
    // Expiry is strict: an entry expiring exactly now is kept.
    assert!(
        !store
            .claim_jti("j2", "a", 9_000, 3_000)
            .await
            .expect("claim")
    );
    assert!(
        store
            .claim_jti("j2", "a", 9_000, 3_001)
            .await
            .expect("claim")
    );
}
