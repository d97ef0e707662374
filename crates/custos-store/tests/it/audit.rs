//! Audit storage: appends chained off the stored head, paging, per-task reads. Hashing is
//! `custos-audit`'s; here hashes are opaque labels.

use custos_store::{AuditHead, AuditRow, Store};
use custos_test_support::both_backends;

both_backends!(
    appends_continue_from_the_stored_head,
    concurrent_appends_see_each_others_heads,
    a_failed_append_leaves_nothing_behind,
    every_field_round_trips_and_pages_are_in_order,
    a_tasks_records_are_read_in_order,
);

fn row(seq: i64, prev_hash: &str, task: Option<&str>) -> AuditRow {
    AuditRow {
        seq,
        at: 1_000 + seq,
        prev_hash: prev_hash.to_owned(),
        hash: format!("h{seq}"),
        format: 2,
        kind: "tool_call".to_owned(),
        actor: None,
        initiator: None,
        agent: None,
        task: task.map(str::to_owned),
        template: None,
        call_id: None,
        tool: None,
        upstream: None,
        arg_digest: None,
        decision: None,
        tier: None,
        reason: None,
        outcome: None,
        latency_us: None,
        policy_version: None,
        detail: None,
    }
}

/// `n` rows chained after `head`, the way the audit writer builds them.
fn chain_after(head: Option<AuditHead>, n: i64, task: Option<&str>) -> Vec<AuditRow> {
    let (mut seq, mut prev) = head.map_or((0, "genesis".to_owned()), |h| (h.seq, h.hash));
    (0..n)
        .map(|_| {
            seq += 1;
            let r = row(seq, &prev, task);
            prev = r.hash.clone();
            r
        })
        .collect()
}

async fn all_rows(store: &Store) -> Vec<AuditRow> {
    store.audit_page(0, i64::MAX).await.expect("read all")
}

async fn appends_continue_from_the_stored_head(store: Store) {
    assert_eq!(store.audit_head().await.expect("head"), None);

    let mut seen = Vec::new();
    let first = store
        .append_audit(|head| {
            seen.push(head.clone());
            chain_after(head, 3, None)
        })
        .await
        .expect("append");
    assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        store.audit_head().await.expect("head"),
        Some(AuditHead {
            seq: 3,
            hash: "h3".into()
        })
    );

    // A later call, on the same or another handle, is handed the head the first one left.
    let other = store.clone();
    let second = other
        .append_audit(|head| {
            seen.push(head.clone());
            chain_after(head, 2, None)
        })
        .await
        .expect("append");
    assert_eq!(second[0].prev_hash, "h3");
    assert_eq!(second.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);

    // Appending nothing leaves the head alone.
    let none = store
        .append_audit(|head| {
            seen.push(head.clone());
            Vec::new()
        })
        .await
        .expect("empty append");
    assert!(none.is_empty());
    assert_eq!(
        seen,
        vec![
            None,
            Some(AuditHead {
                seq: 3,
                hash: "h3".into()
            }),
            Some(AuditHead {
                seq: 5,
                hash: "h5".into()
            }),
        ]
    );
    assert_eq!(
        store.audit_head().await.expect("head"),
        Some(AuditHead {
            seq: 5,
            hash: "h5".into()
        })
    );
    let rows = all_rows(&store).await;
    assert_eq!(rows, [first, second].concat());
}

async fn concurrent_appends_see_each_others_heads(store: Store) {
    // Several writers (replicas, or a writer and a stray caller) at once: the chain lock makes
    // each one build on the head the previous one committed.
    let mut handles = Vec::new();
    for _ in 0..10 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            s.append_audit(|head| chain_after(head, 5, None))
                .await
                .expect("append")
        }));
    }
    for h in handles {
        h.await.expect("join");
    }
    let rows = all_rows(&store).await;
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
    for w in rows.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash, "record {} is chained", w[1].seq);
    }
    assert_eq!(
        store.audit_head().await.expect("head"),
        Some(AuditHead {
            seq: 50,
            hash: "h50".into()
        })
    );
}

async fn a_failed_append_leaves_nothing_behind(store: Store) {
    store
        .append_audit(|head| chain_after(head, 3, None))
        .await
        .expect("append");
    // Record 4 is fine, the next reuses seq 2: the whole batch must be refused.
    let err = store
        .append_audit(|_| vec![row(4, "h3", None), row(2, "h4", None)])
        .await
        .expect_err("duplicate seq");
    assert_eq!(err.reason(), "store_unavailable");
    assert_eq!(
        all_rows(&store)
            .await
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        store.audit_head().await.expect("head"),
        Some(AuditHead {
            seq: 3,
            hash: "h3".into()
        })
    );
}

async fn every_field_round_trips_and_pages_are_in_order(store: Store) {
    let full = AuditRow {
        seq: 1,
        at: 1_700_000_000_123,
        prev_hash: "0".repeat(64),
        hash: "h1".into(),
        format: 2,
        kind: "tool_call".into(),
        actor: Some("op".into()),
        initiator: Some("alice@example.com".into()),
        agent: Some("agent-a".into()),
        task: Some("task_1".into()),
        template: Some("tpl".into()),
        call_id: Some("call_x".into()),
        tool: Some("fx__echo".into()),
        upstream: Some("fx".into()),
        arg_digest: Some("ab".repeat(32)),
        decision: Some("allow".into()),
        tier: Some(4),
        reason: Some("tier: \"quoted\" ✓\nnewline".into()),
        outcome: Some("ok".into()),
        latency_us: Some(i64::MAX),
        policy_version: Some(i64::MIN),
        detail: Some(r#"{"k":[1,2]}"#.into()),
    };
    let written = store
        .append_audit(|_| {
            let mut rows = vec![full.clone()];
            rows.extend(chain_after(
                Some(AuditHead {
                    seq: 1,
                    hash: "h1".into(),
                }),
                6,
                None,
            ));
            rows
        })
        .await
        .expect("append");
    assert_eq!(written.len(), 7);

    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_page(after, 3).await.expect("page");
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages.push(page.iter().map(|r| r.seq).collect::<Vec<_>>());
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(pages, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    let first = store.audit_page(0, 1).await.expect("page");
    assert_eq!(first, vec![full]);
    assert!(store.audit_page(7, 100).await.expect("page").is_empty());
    assert_eq!(
        store
            .audit_page(2, 2)
            .await
            .expect("page")
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [3, 4]
    );
}

async fn a_tasks_records_are_read_in_order(store: Store) {
    // Interleaved records of two tasks, written across several appends.
    for t in ["task_1", "task_2", "task_1", "task_2", "task_1"] {
        store
            .append_audit(|head| chain_after(head, 2, Some(t)))
            .await
            .expect("append");
    }
    store
        .append_audit(|head| chain_after(head, 1, None))
        .await
        .expect("append");
    let seqs = |rows: Vec<AuditRow>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.audit_for_task("task_1").await.expect("task_1")),
        [1, 2, 5, 6, 9, 10]
    );
    assert_eq!(
        seqs(store.audit_for_task("task_2").await.expect("task_2")),
        [3, 4, 7, 8]
    );
    assert!(
        store
            .audit_for_task("task_3")
            .await
            .expect("task_3")
            .is_empty()
    );
}
