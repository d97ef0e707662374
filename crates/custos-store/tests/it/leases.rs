//! Leases: intent, activation, revocation with retries, claims, the reconciler's reads.

use custos_core::{AgentId, Lease, LeaseState, TaskId};
use custos_store::{Store, StoreError};
use custos_test_support::both_backends;

both_backends!(
    a_lease_goes_from_intent_to_active_to_revoked,
    a_failed_mint_marks_the_intent_failed,
    due_leases_are_claimed_once_and_retried_with_backoff,
    leases_list_by_task_and_failed,
    live_principals_skip_stale_intents,
    the_lease_scope_is_chosen_once,
);

fn lease(id: &str, task: &str, created_at: i64, expires_at: i64) -> Lease {
    Lease {
        id: format!("lease_{id}"),
        role: "pg-readonly".to_owned(),
        engine: "postgres".to_owned(),
        principal: format!("custos_{id}"),
        task: TaskId::parse(task).expect("task id"),
        agent: "agent-a".to_owned(),
        agent_id: AgentId::parse("agent_a1").expect("agent id"),
        initiator: "alice@example.com".to_owned(),
        created_at,
        expires_at,
        state: LeaseState::Pending,
        attempts: 0,
        last_error: None,
        next_attempt_at: 0,
        revoked_at: None,
        renewed_at: None,
    }
}

async fn state(store: &Store, id: &str) -> LeaseState {
    store
        .get_lease(id)
        .await
        .expect("get")
        .expect("exists")
        .state
}

async fn a_lease_goes_from_intent_to_active_to_revoked(store: Store) {
    let l = lease("a1", "task_1", 1_000, 61_000);
    store.insert_lease(&l).await.expect("insert");
    assert_eq!(
        store.get_lease("lease_a1").await.expect("get"),
        Some(l.clone())
    );
    let dup = store.insert_lease(&l).await.expect_err("same id");
    assert!(matches!(dup, StoreError::Conflict), "{dup:?}");
    assert!(store.activate_lease("lease_a1").await.expect("activate"));
    assert!(!store.activate_lease("lease_a1").await.expect("again"));
    assert_eq!(state(&store, "lease_a1").await, LeaseState::Active);
    assert_eq!(
        store
            .lease_by_principal("custos_a1")
            .await
            .expect("by principal")
            .map(|l| l.id),
        Some("lease_a1".to_owned())
    );
    assert!(
        store
            .mark_lease_revoked("lease_a1", 5_000)
            .await
            .expect("revoke")
    );
    assert!(
        !store
            .mark_lease_revoked("lease_a1", 6_000)
            .await
            .expect("twice")
    );
    let got = store
        .get_lease("lease_a1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (got.state, got.revoked_at),
        (LeaseState::Revoked, Some(5_000))
    );
}

async fn a_failed_mint_marks_the_intent_failed(store: Store) {
    store
        .insert_lease(&lease("f1", "task_1", 1_000, 61_000))
        .await
        .expect("insert");
    assert!(
        store
            .mark_lease_failed("lease_f1", "cannot reach")
            .await
            .expect("fail")
    );
    let got = store
        .get_lease("lease_f1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.state, LeaseState::Failed);
    assert_eq!(got.last_error.as_deref(), Some("cannot reach"));
    assert!(!store.activate_lease("lease_f1").await.expect("not pending"));
}

async fn due_leases_are_claimed_once_and_retried_with_backoff(store: Store) {
    for (id, exp) in [("d1", 2_000), ("d2", 3_000), ("d3", 9_000)] {
        store
            .insert_lease(&lease(id, "task_1", 1_000, exp))
            .await
            .expect("insert");
        store
            .activate_lease(&format!("lease_{id}"))
            .await
            .expect("activate");
    }
    let ids = |v: Vec<Lease>| v.into_iter().map(|l| l.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .claim_due_leases(5_000, 35_000, 10)
            .await
            .expect("claim")),
        ["lease_d1", "lease_d2"]
    );
    assert!(
        store
            .claim_due_leases(5_000, 35_000, 10)
            .await
            .expect("claim")
            .is_empty(),
        "claimed leases are not claimed again before their claim runs out"
    );
    // A failed attempt: retried after the backoff, not before.
    assert!(
        store
            .note_revoke_failure("lease_d1", 5_000, "unreachable", 6_000, false)
            .await
            .expect("note")
    );
    assert!(
        store
            .claim_due_leases(5_500, 35_000, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(
        ids(store
            .claim_due_leases(6_000, 36_000, 10)
            .await
            .expect("claim")),
        ["lease_d1"]
    );
    // A revocation asked for before expiry that failed is due at once.
    assert!(
        store
            .note_revoke_failure("lease_d3", 7_000, "unreachable", 7_000, false)
            .await
            .expect("note")
    );
    let d3 = store
        .get_lease("lease_d3")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((d3.expires_at, d3.attempts), (7_000, 1));
    // Giving up keeps the lease, as failed.
    assert!(
        store
            .note_revoke_failure("lease_d3", 8_000, "still unreachable", 9_000, true)
            .await
            .expect("give up")
    );
    let d3 = store
        .get_lease("lease_d3")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((d3.state, d3.attempts), (LeaseState::Failed, 2));
    assert_eq!(d3.last_error.as_deref(), Some("still unreachable"));
    assert!(
        store
            .claim_due_leases(99_000, 99_000, 10)
            .await
            .expect("claim")
            .iter()
            .all(|l| l.id != "lease_d3")
    );
}

async fn leases_list_by_task_and_failed(store: Store) {
    store
        .insert_lease(&lease("l1", "task_1", 1_000, 9_000))
        .await
        .expect("insert");
    store
        .insert_lease(&lease("l2", "task_1", 2_000, 9_000))
        .await
        .expect("insert");
    store
        .insert_lease(&lease("l3", "task_2", 3_000, 9_000))
        .await
        .expect("insert");
    store.activate_lease("lease_l2").await.expect("activate");
    store
        .mark_lease_failed("lease_l1", "x")
        .await
        .expect("fail");
    let ids = |v: Vec<Lease>| v.into_iter().map(|l| l.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_leases(None, false, 100).await.expect("all")),
        ["lease_l3", "lease_l2", "lease_l1"]
    );
    assert_eq!(
        ids(store
            .list_leases(Some("task_1"), false, 100)
            .await
            .expect("task")),
        ["lease_l2", "lease_l1"]
    );
    assert_eq!(
        ids(store.list_leases(None, true, 100).await.expect("failed")),
        ["lease_l1"]
    );
    let t1 = TaskId::parse("task_1").expect("id");
    assert_eq!(
        ids(store.live_leases_of_task(&t1).await.expect("live")),
        ["lease_l2"]
    );
}

async fn live_principals_skip_stale_intents(store: Store) {
    store
        .insert_lease(&lease("p1", "task_1", 1_000, 99_000))
        .await
        .expect("insert");
    store
        .insert_lease(&lease("p2", "task_1", 50_000, 99_000))
        .await
        .expect("insert");
    store
        .insert_lease(&lease("p3", "task_1", 1_000, 99_000))
        .await
        .expect("insert");
    store.activate_lease("lease_p3").await.expect("activate");
    let mut live = store.live_principals(10_000).await.expect("live");
    live.sort();
    assert_eq!(live, ["custos_p2", "custos_p3"]);
    let stale = store.stale_pending_leases(10_000, 10).await.expect("stale");
    assert_eq!(
        stale.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["lease_p1"]
    );
}

async fn the_lease_scope_is_chosen_once(store: Store) {
    assert_eq!(store.lease_scope("abcde").await.expect("scope"), "abcde");
    assert_eq!(store.lease_scope("zzzzz").await.expect("scope"), "abcde");
}
