//! Tampering done directly in the database, each kind caught and the record named.
//!
//! Every test seeds a log of [`N`] records through [`AuditLog`], checks it verifies, changes
//! the stored rows with SQL, and verifies again, both with no expected head and with the head
//! the writer last committed (`AuditLog::last_written`), as the server does.

use custos_audit::{AuditLog, record_hash, verify};
use custos_store::{AuditHead, AuditRow, Store};
use custos_test_support::both_backends;

use super::support::{
    all_rows, assert_broken, assert_intact, exec, put_row, row, seeded, set_head,
};

const N: i64 = 12;

both_backends!(
    an_edited_field_is_caught,
    an_edit_to_any_column_is_caught,
    a_deleted_middle_record_is_caught,
    a_deleted_last_record_is_caught_by_the_head_row,
    a_deleted_last_record_with_the_head_rewritten_is_caught_by_the_expected_head,
    a_record_inserted_after_a_gap_is_caught,
    a_record_inserted_in_the_middle_is_caught,
    swapped_records_are_caught,
    an_edit_with_its_hash_recomputed_is_caught_by_the_next_record,
    a_rewritten_chain_is_caught_by_the_expected_head,
    the_chain_is_checked_across_verification_pages,
    a_deleted_head_row_is_caught,
);

/// A verified log of `N` records and the head its writer reported.
async fn setup(store: &Store) -> (AuditLog, AuditHead) {
    let log = seeded(store, N as usize).await;
    let head = log.last_written().expect("written");
    assert_eq!(head.seq, N);
    assert_intact(
        &verify(store, Some(&head)).await.expect("verify"),
        N,
        "before tampering",
    );
    (log, head)
}

/// Verifies without and with the expected head; both must fail naming `seqs`.
async fn assert_caught(store: &Store, head: &AuditHead, seqs: &[i64], what: &str) {
    let without = verify(store, None).await.expect("verify");
    assert_broken(&without, seqs, &format!("{what} (no expected head)"));
    let with = verify(store, Some(head)).await.expect("verify");
    assert_broken(&with, seqs, &format!("{what} (expected head)"));
}

async fn an_edited_field_is_caught(store: Store) {
    let (_log, head) = setup(&store).await;
    exec(
        &store,
        "UPDATE audit_log SET decision = 'allow' WHERE seq = 5",
    )
    .await;
    assert_caught(&store, &head, &[5], "decision of record 5 changed").await;
    let report = verify(&store, Some(&head)).await.expect("verify");
    assert_eq!(
        report.problems,
        ["record 5 was altered: its content does not match its hash"],
        "only the edited record is blamed"
    );
}

async fn an_edit_to_any_column_is_caught(store: Store) {
    let (_log, head) = setup(&store).await;
    let original = row(&store, 6).await;
    let edits = [
        "at = at + 1",
        "prev_hash = hash",
        "kind = 'auth_failure'",
        "actor = 'mallory'",
        "reason = NULL",
        "initiator = NULL",
        "agent = 'agent-x'",
        "task = NULL",
        "template = 'other'",
        "tool = 'fx__wipe'",
        "upstream = NULL",
        "arg_digest = 'ff'",
        "decision = NULL",
        "tier = 1",
        "tier = NULL",
        "reason = 'fine'",
        "outcome = 'error'",
        "latency_us = 0",
        "detail = '{}'",
        "detail = NULL",
        "call_id = 'call_other'",
        "policy_version = 99",
        "policy_version = NULL",
        "format = 1",
    ];
    for edit in edits {
        exec(
            &store,
            &format!("UPDATE audit_log SET {edit} WHERE seq = 6"),
        )
        .await;
        assert_ne!(row(&store, 6).await, original, "{edit} changed nothing");
        assert_caught(&store, &head, &[6], &format!("record 6: SET {edit}")).await;
        put_row(&store, &original).await;
        assert_intact(
            &verify(&store, Some(&head)).await.expect("verify"),
            N,
            &format!("record 6 restored after SET {edit}"),
        );
    }
}

async fn a_deleted_middle_record_is_caught(store: Store) {
    let (_log, head) = setup(&store).await;
    exec(&store, "DELETE FROM audit_log WHERE seq = 6").await;
    assert_caught(&store, &head, &[6], "record 6 deleted").await;
    // The record after the hole is blamed too: its predecessor is not the one it names.
    assert_broken(
        &verify(&store, None).await.expect("verify"),
        &[7],
        "record 6 deleted",
    );
}

async fn a_deleted_last_record_is_caught_by_the_head_row(store: Store) {
    let (_log, head) = setup(&store).await;
    exec(&store, &format!("DELETE FROM audit_log WHERE seq = {N}")).await;
    assert_caught(&store, &head, &[N], "last record deleted, head row left").await;
}

async fn a_deleted_last_record_with_the_head_rewritten_is_caught_by_the_expected_head(
    store: Store,
) {
    let (_log, head) = setup(&store).await;
    let before_last = row(&store, N - 1).await;
    exec(&store, &format!("DELETE FROM audit_log WHERE seq = {N}")).await;
    set_head(&store, N - 1, &before_last.hash).await;

    // The stored rows alone are now a consistent, shorter chain: only the head this
    // process remembers writing can tell.
    let without = verify(&store, None).await.expect("verify");
    assert_intact(
        &without,
        N - 1,
        "a cleanly truncated log, nothing to compare with",
    );
    let with = verify(&store, Some(&head)).await.expect("verify");
    assert_broken(&with, &[N], "last record deleted, head rewritten");
    assert!(
        with.problems.iter().any(|p| p.contains("missing")),
        "{:?}",
        with.problems
    );
}

async fn a_record_inserted_after_a_gap_is_caught(store: Store) {
    let (_log, head) = setup(&store).await;
    // A well-formed record chained after the last one, but at N + 2.
    let last = row(&store, N).await;
    let mut forged = AuditRow {
        seq: N + 2,
        prev_hash: last.hash.clone(),
        decision: Some("allow".into()),
        ..last.clone()
    };
    forged.hash = record_hash(&forged).expect("known format");
    put_row(&store, &forged).await;
    assert_caught(&store, &head, &[N + 2], "record inserted after a gap").await;

    // The same with the head moved to it.
    set_head(&store, forged.seq, &forged.hash).await;
    assert_caught(
        &store,
        &head,
        &[N + 2],
        "record inserted after a gap, head moved",
    )
    .await;
}

async fn a_record_inserted_in_the_middle_is_caught(store: Store) {
    let (_log, head) = setup(&store).await;
    // Make room at 6 by renumbering 6..=N up by one (through negatives: seq is the key),
    // then insert a well-formed record chained after record 5, and move the head.
    exec(
        &store,
        "UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= 6; \
         UPDATE audit_log SET seq = -seq WHERE seq < 0;",
    )
    .await;
    let fifth = row(&store, 5).await;
    let mut forged = AuditRow {
        seq: 6,
        prev_hash: fifth.hash.clone(),
        kind: "registry_change".into(),
        detail: Some(r#"{"forged":true}"#.into()),
        ..fifth.clone()
    };
    forged.hash = record_hash(&forged).expect("known format");
    put_row(&store, &forged).await;
    let new_last = row(&store, N + 1).await;
    set_head(&store, N + 1, &new_last.hash).await;

    // The forged record itself is well formed; the one pushed down no longer is.
    assert_caught(&store, &head, &[7], "record inserted at 6").await;
    let with = verify(&store, Some(&head)).await.expect("verify");
    assert_broken(
        &with,
        &[N],
        "record inserted at 6 (the record this server wrote last moved)",
    );
}

async fn swapped_records_are_caught(store: Store) {
    let (_log, head) = setup(&store).await;
    let (four, five) = (row(&store, 4).await, row(&store, 5).await);
    // Exchange the contents of records 4 and 5, each keeping its position.
    exec(
        &store,
        "UPDATE audit_log SET seq = -4 WHERE seq = 4; \
         UPDATE audit_log SET seq = 4 WHERE seq = 5; \
         UPDATE audit_log SET seq = 5 WHERE seq = -4;",
    )
    .await;
    assert_eq!(row(&store, 4).await.hash, five.hash);
    assert_eq!(row(&store, 5).await.hash, four.hash);
    assert_caught(&store, &head, &[4, 5], "records 4 and 5 swapped").await;
}

async fn an_edit_with_its_hash_recomputed_is_caught_by_the_next_record(store: Store) {
    let (_log, head) = setup(&store).await;
    let mut fifth = row(&store, 5).await;
    fifth.decision = Some("allow".into());
    fifth.hash = record_hash(&fifth).expect("known format");
    exec(
        &store,
        &format!(
            "UPDATE audit_log SET decision = 'allow', hash = '{}' WHERE seq = 5",
            fifth.hash
        ),
    )
    .await;
    assert_eq!(row(&store, 5).await, fifth);
    assert_caught(&store, &head, &[6], "record 5 edited and rehashed").await;
    let report = verify(&store, None).await.expect("verify");
    assert!(
        report.problems.iter().all(|p| !p.contains("record 5 ")),
        "record 5 is self-consistent; the break shows at 6: {:?}",
        report.problems
    );
}

async fn a_rewritten_chain_is_caught_by_the_expected_head(store: Store) {
    let (_log, head) = setup(&store).await;
    // Edit record 5 and re-chain everything after it, head included: a perfect forgery of
    // the stored rows, which only the head this process remembers writing can expose.
    let rows = all_rows(&store).await;
    let mut prev = rows[3].hash.clone();
    for r in &rows[4..] {
        let mut r = r.clone();
        if r.seq == 5 {
            r.decision = Some("allow".into());
        }
        r.prev_hash = prev;
        r.hash = record_hash(&r).expect("known format");
        prev = r.hash.clone();
        put_row(&store, &r).await;
    }
    set_head(&store, N, &prev).await;

    let without = verify(&store, None).await.expect("verify");
    assert_intact(&without, N, "a re-chained log, nothing to compare with");
    let with = verify(&store, Some(&head)).await.expect("verify");
    assert_broken(&with, &[N], "records 5.. rewritten and re-chained");
}

async fn the_chain_is_checked_across_verification_pages(store: Store) {
    // More records than one verification page (5000), written in one append.
    const TOTAL: i64 = 5_010;
    let rows = store
        .append_audit(|head| {
            assert!(head.is_none());
            let mut prev = custos_audit::GENESIS_HASH.to_owned();
            (1..=TOTAL)
                .map(|seq| {
                    let mut r = AuditRow {
                        seq,
                        at: 1_700_000_000_000 + seq,
                        prev_hash: std::mem::take(&mut prev),
                        hash: String::new(),
                        format: 2,
                        kind: "tool_call".into(),
                        actor: None,
                        initiator: None,
                        agent: Some("a".into()),
                        task: None,
                        template: None,
                        call_id: None,
                        tool: None,
                        upstream: None,
                        arg_digest: None,
                        decision: Some("deny".into()),
                        tier: Some(1),
                        reason: None,
                        outcome: None,
                        latency_us: None,
                        policy_version: None,
                        detail: None,
                    };
                    r.hash = record_hash(&r).expect("known format");
                    prev = r.hash.clone();
                    r
                })
                .collect()
        })
        .await
        .expect("append");
    let head = AuditHead {
        seq: TOTAL,
        hash: rows[rows.len() - 1].hash.clone(),
    };
    assert_intact(
        &verify(&store, Some(&head)).await.expect("verify"),
        TOTAL,
        "a long log",
    );

    // Rehash the last record of the first page: only the first of the next page can tell.
    let mut r = row(&store, 5_000).await;
    r.decision = Some("allow".into());
    r.hash = record_hash(&r).expect("known format");
    put_row(&store, &r).await;
    assert_caught(&store, &head, &[5_001], "record 5000 edited and rehashed").await;
}

async fn a_deleted_head_row_is_caught(store: Store) {
    let (_log, head) = setup(&store).await;
    exec(&store, "DELETE FROM audit_head").await;
    for expected in [None, Some(&head)] {
        let report = verify(&store, expected).await.expect("verify");
        assert_broken(&report, &[], "head row deleted");
        assert!(
            report.problems.iter().any(|p| p.contains("no head")),
            "{:?}",
            report.problems
        );
    }
}
