//! Approvals: found by the exact call they bind, answered once, used once, expired by time.

use custos_core::{Approval, ApprovalId, ApprovalState, TaskId, Tier};
use custos_store::{Answer, Store};
use custos_test_support::both_backends;
use serde_json::json;

both_backends!(
    an_approval_binds_the_exact_call,
    an_approval_answers_once_and_runs_once,
    expiry_is_a_time_not_a_write,
    racing_uses_of_one_approval_run_it_once,
);

fn approval(id: &str, task: &str, digest: &str, created_at: i64) -> Approval {
    Approval {
        id: ApprovalId::parse(id).expect("approval id"),
        task: TaskId::parse(task).expect("task id"),
        agent: "agent-a".into(),
        initiator: "alice@example.com".into(),
        started_by: "admin".into(),
        tool: "bank__send_money".into(),
        upstream: "bank".into(),
        arguments: json!({"amount": 5000, "password": "[REDACTED]"}),
        digest: digest.into(),
        tier: Tier::T3,
        policy_version: 4,
        rule: "upstream:bank:tier_rules[0]".into(),
        state: ApprovalState::Pending,
        created_at,
        expires_at: created_at + 600_000,
        decided_at: None,
        decided_by: None,
        note: None,
        executed_at: None,
        expiry_reported: false,
    }
}

fn aid(s: &str) -> ApprovalId {
    ApprovalId::parse(s).expect("approval id")
}

async fn an_approval_binds_the_exact_call(store: Store) {
    let a = approval("apr_a", "task_1", "d1", 1_000);
    store.insert_approval(&a).await.expect("insert");
    store
        .insert_approval(&approval("apr_b", "task_1", "d1", 2_000))
        .await
        .expect("insert a later one");
    assert_eq!(
        store.get_approval(&aid("apr_a")).await.expect("get"),
        Some(a)
    );
    let task = TaskId::parse("task_1").expect("task id");
    let latest = |tool: &'static str, digest: &'static str, version: i64| {
        let store = store.clone();
        let task = task.clone();
        async move {
            store
                .latest_approval_for(&task, tool, digest, version)
                .await
                .expect("lookup")
                .map(|a| a.id.to_string())
        }
    };
    assert_eq!(
        latest("bank__send_money", "d1", 4).await,
        Some("apr_b".into())
    );
    assert_eq!(
        latest("bank__send_money", "d2", 4).await,
        None,
        "other arguments"
    );
    assert_eq!(
        latest("bank__send_money", "d1", 5).await,
        None,
        "another policy version"
    );
    assert_eq!(latest("bank__other", "d1", 4).await, None, "another tool");
    let other_task = TaskId::parse("task_2").expect("task id");
    assert_eq!(
        store
            .latest_approval_for(&other_task, "bank__send_money", "d1", 4)
            .await
            .expect("lookup"),
        None,
        "another task"
    );
    assert_eq!(
        store
            .pending_approvals_of(&task, 1_500)
            .await
            .expect("count"),
        2
    );
    let listed = |t: Option<&TaskId>| {
        let store = store.clone();
        let t = t.cloned();
        async move {
            store
                .list_approvals(true, t.as_ref(), 1_500, 10)
                .await
                .expect("list")
                .len()
        }
    };
    assert_eq!(listed(Some(&task)).await, 2);
    assert_eq!(listed(Some(&other_task)).await, 0);
    assert_eq!(listed(None).await, 2);
}

async fn an_approval_answers_once_and_runs_once(store: Store) {
    store
        .insert_approval(&approval("apr_a", "task_1", "d1", 1_000))
        .await
        .expect("insert");
    let id = aid("apr_a");
    // Not approved yet: it cannot be used.
    assert!(!store.use_approval(&id, 2_000).await.expect("use"));
    assert!(
        store
            .answer_approval(&id, Answer::Approve, "carol", None, 2_000)
            .await
            .expect("approve")
    );
    // Answers once.
    assert!(
        !store
            .answer_approval(&id, Answer::Deny, "dave", Some("no"), 2_100)
            .await
            .expect("deny")
    );
    let a = store.get_approval(&id).await.expect("get").expect("exists");
    assert_eq!(
        (a.state, a.decided_by.as_deref(), a.decided_at, a.note),
        (ApprovalState::Approved, Some("carol"), Some(2_000), None)
    );
    // Runs once.
    assert!(store.use_approval(&id, 3_000).await.expect("use"));
    assert!(!store.use_approval(&id, 3_001).await.expect("use again"));
    let a = store.get_approval(&id).await.expect("get").expect("exists");
    assert_eq!(
        (a.state, a.executed_at),
        (ApprovalState::Executed, Some(3_000))
    );

    store
        .insert_approval(&approval("apr_d", "task_1", "d2", 1_000))
        .await
        .expect("insert");
    let d = aid("apr_d");
    assert!(
        store
            .answer_approval(&d, Answer::Deny, "carol", Some("not that payee"), 2_000)
            .await
            .expect("deny")
    );
    assert!(
        !store
            .use_approval(&d, 2_001)
            .await
            .expect("a denied one is never used")
    );
    let a = store.get_approval(&d).await.expect("get").expect("exists");
    assert_eq!(
        (a.state, a.note.as_deref()),
        (ApprovalState::Denied, Some("not that payee"))
    );
}

async fn expiry_is_a_time_not_a_write(store: Store) {
    let a = approval("apr_a", "task_1", "d1", 1_000);
    let expires = a.expires_at;
    store.insert_approval(&a).await.expect("insert");
    let id = aid("apr_a");
    // Past its expiry it cannot be answered, and it is not listed as waiting.
    assert!(
        !store
            .answer_approval(&id, Answer::Approve, "carol", None, expires)
            .await
            .expect("approve")
    );
    assert!(
        store
            .list_approvals(false, None, expires, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .list_approvals(true, None, expires, 10)
            .await
            .expect("list")
            .len(),
        1
    );
    let task = TaskId::parse("task_1").expect("task id");
    assert_eq!(
        store
            .pending_approvals_of(&task, expires)
            .await
            .expect("count"),
        0
    );
    let stored = store.get_approval(&id).await.expect("get").expect("exists");
    assert_eq!(stored.state_at(expires), ApprovalState::Expired);
    assert_eq!(stored.state_at(expires - 1), ApprovalState::Pending);
    // An approved one unused past its expiry cannot run.
    store
        .insert_approval(&approval("apr_b", "task_1", "d2", 1_000))
        .await
        .expect("insert");
    let b = aid("apr_b");
    assert!(
        store
            .answer_approval(&b, Answer::Approve, "carol", None, 2_000)
            .await
            .expect("approve")
    );
    assert!(!store.use_approval(&b, expires).await.expect("use"));
    // The agent is told of an expiry once.
    assert!(store.report_approval_expiry(&id).await.expect("report"));
    assert!(
        !store
            .report_approval_expiry(&id)
            .await
            .expect("report again")
    );
}

async fn racing_uses_of_one_approval_run_it_once(store: Store) {
    store
        .insert_approval(&approval("apr_a", "task_1", "d1", 1_000))
        .await
        .expect("insert");
    let id = aid("apr_a");
    assert!(
        store
            .answer_approval(&id, Answer::Approve, "carol", None, 2_000)
            .await
            .expect("approve")
    );
    let mut racers = Vec::new();
    for i in 0..8 {
        let (store, id) = (store.clone(), id.clone());
        racers.push(tokio::spawn(async move {
            store.use_approval(&id, 3_000 + i).await.expect("use")
        }));
    }
    let mut won = 0;
    for r in racers {
        if r.await.expect("racer") {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one racing call runs");
}
