//! Tasks: create, read, list, end.

use custos_core::{AgentId, TaskId};
use custos_store::{Store, StoreError, TaskRow, TaskState};
use custos_test_support::both_backends;

both_backends!(
    a_task_is_stored_and_read_back,
    a_duplicate_task_id_is_a_conflict,
    tasks_list_newest_first_filtered_by_agent_and_limited,
    a_task_ends_only_once,
);

fn task(id: &str, agent: &str, created_at: i64) -> TaskRow {
    TaskRow {
        id: tid(id),
        agent: agent.to_owned(),
        agent_id: AgentId::parse(&format!("agent_{}", agent.replace('-', ""))).expect("agent id"),
        template: "tpl".to_owned(),
        template_version: 3,
        started_by: "op".to_owned(),
        on_behalf_of: "alice@example.com".to_owned(),
        purpose: None,
        created_at,
        expires_at: created_at + 600_000,
        state: TaskState::Active,
        ended_at: None,
        ended_by: None,
        tainted_at: None,
        tainted_by: None,
    }
}

fn tid(id: &str) -> TaskId {
    TaskId::parse(id).expect("task id")
}

fn ids(rows: &[TaskRow]) -> Vec<&str> {
    rows.iter().map(|t| t.id.as_str()).collect()
}

async fn a_task_is_stored_and_read_back(store: Store) {
    let mut t = task("task_1", "agent-a", 1_000);
    t.purpose = Some("review \"docs\" ✓".to_owned());
    store.create_task(&t).await.expect("create");
    assert_eq!(store.get_task(&tid("task_1")).await.expect("get"), Some(t));
    assert_eq!(store.get_task(&tid("task_2")).await.expect("get"), None);
}

async fn a_duplicate_task_id_is_a_conflict(store: Store) {
    store
        .create_task(&task("task_1", "a", 1))
        .await
        .expect("create");
    let err = store
        .create_task(&task("task_1", "b", 2))
        .await
        .expect_err("same id");
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    assert_eq!(
        store
            .get_task(&tid("task_1"))
            .await
            .expect("get")
            .map(|t| t.agent),
        Some("a".to_owned())
    );
}

async fn tasks_list_newest_first_filtered_by_agent_and_limited(store: Store) {
    for (id, agent, at) in [
        ("task_a1", "a", 100),
        ("task_b1", "b", 200),
        ("task_a2", "a", 300),
        ("task_a3", "a", 300),
        ("task_b2", "b", 400),
    ] {
        store
            .create_task(&task(id, agent, at))
            .await
            .expect("create");
    }
    let all = store.list_tasks(None, 100).await.expect("list all");
    // Newest first; equal times by id.
    assert_eq!(
        ids(&all),
        ["task_b2", "task_a2", "task_a3", "task_b1", "task_a1"]
    );
    let a = store.list_tasks(Some("a"), 100).await.expect("list a");
    assert_eq!(ids(&a), ["task_a2", "task_a3", "task_a1"]);
    assert!(a.iter().all(|t| t.agent == "a"));
    let b = store.list_tasks(Some("b"), 1).await.expect("list b");
    assert_eq!(ids(&b), ["task_b2"]);
    assert!(
        store
            .list_tasks(Some("nobody"), 100)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(store.list_tasks(None, 2).await.expect("list").len(), 2);
}

async fn a_task_ends_only_once(store: Store) {
    store
        .create_task(&task("task_1", "a", 1_000))
        .await
        .expect("create");
    assert!(
        store
            .end_task(&tid("task_1"), "op-1", 2_000)
            .await
            .expect("end")
    );
    assert!(
        !store
            .end_task(&tid("task_1"), "op-2", 3_000)
            .await
            .expect("end again"),
        "an ended task does not end again"
    );
    let t = store
        .get_task(&tid("task_1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(t.state, TaskState::Ended);
    assert_eq!(t.ended_at, Some(2_000), "the first end is kept");
    assert_eq!(t.ended_by.as_deref(), Some("op-1"));
    assert!(
        !store
            .end_task(&tid("task_unknown"), "op", 1)
            .await
            .expect("end unknown")
    );
    // Ended tasks are still listed.
    assert_eq!(
        store.list_tasks(Some("a"), 10).await.expect("list").len(),
        1
    );
}
