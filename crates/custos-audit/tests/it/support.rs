//! Seeding a log, reading records back, and reaching past the store to tamper with it.

use std::sync::Arc;

use custos_audit::{AuditEvent, AuditLog, Detail, EventKind, VerifyReport};
use custos_core::clock::ManualClock;
use custos_core::{Decision, Outcome, Reason, Tier};
use custos_store::{AuditRow, Store};
use custos_test_support::tamper;

/// A varied event: every field the chain covers gets a value in some records.
pub fn event(i: usize) -> AuditEvent {
    let kinds = [
        EventKind::ToolCall,
        EventKind::TaskStart,
        EventKind::RegistryChange,
    ];
    let mut e = AuditEvent::new(kinds[i % 3]);
    e.actor = i.is_multiple_of(2).then(|| "admin".to_owned());
    e.initiator = Some(format!("user{}@example.com", i % 4));
    e.agent = Some(format!("agent-{}", i % 3));
    e.task = Some(format!("task_{}", i % 7));
    e.template = (!i.is_multiple_of(5)).then(|| "tpl".to_owned());
    e.call_id = i.is_multiple_of(3).then(|| format!("call_{i}"));
    e.tool = Some(format!("fx__tool{}", i % 6));
    e.upstream = Some("fx".to_owned());
    e.arg_digest = Some(format!("{i:064x}"));
    e.decision = Some([Decision::Deny, Decision::Allow][i % 2]);
    e.tier = Some([Tier::T1, Tier::T2, Tier::T3, Tier::T4][i % 4]);
    e.reason = Some(Reason::ALL[i % Reason::ALL.len()]);
    e.outcome = i.is_multiple_of(3).then_some(Outcome::Ok);
    e.latency_us = Some(i64::try_from(i).unwrap_or(0) * 17);
    e.policy_version = Some(i64::try_from(i % 5).unwrap_or(0));
    e.detail = Some(Detail::Refusal {
        message: format!("reason \"{i}\" ✓"),
        approval_id: None,
    });
    e
}

/// A log over `store` with `n` records appended one after the other.
pub async fn seeded(store: &Store, n: usize) -> AuditLog {
    let log = AuditLog::start(store.clone(), Arc::new(ManualClock::new(1_700_000_000_000)));
    for i in 0..n {
        log.append(event(i)).await.expect("append");
    }
    log
}

/// Every stored record, in order.
pub async fn all_rows(store: &Store) -> Vec<AuditRow> {
    store.audit_page(0, i64::MAX).await.expect("read the log")
}

/// The stored record `seq`.
pub async fn row(store: &Store, seq: i64) -> AuditRow {
    let mut page = store.audit_page(seq - 1, 1).await.expect("read a record");
    match page.pop() {
        Some(r) if r.seq == seq => r,
        other => panic!("record {seq} not found: {other:?}"),
    }
}

/// Runs SQL (one or more statements, no parameters) directly on the store's database.
pub async fn exec(store: &Store, sql: &str) {
    tamper::exec(store, sql).await;
}

/// Writes `r` in place of whatever record has its `seq` (or adds it).
pub async fn put_row(store: &Store, r: &AuditRow) {
    tamper::put_audit_row(store, r).await;
}

/// Rewrites the stored head.
pub async fn set_head(store: &Store, seq: i64, hash: &str) {
    tamper::set_audit_head(store, seq, hash).await;
}

/// Whether one of the problems names record `seq` ("record 5", not "record 50").
pub fn names(report: &VerifyReport, seq: i64) -> bool {
    let needle = format!("record {seq}");
    report.problems.iter().any(|p| {
        p.match_indices(&needle)
            .any(|(i, _)| !p[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// Asserts verification failed and named each of `seqs`.
#[track_caller]
pub fn assert_broken(report: &VerifyReport, seqs: &[i64], what: &str) {
    assert!(!report.ok, "{what}: verification passed: {report:#?}");
    assert!(
        !report.problems.is_empty(),
        "{what}: not ok but no problem given: {report:#?}"
    );
    for seq in seqs {
        assert!(
            names(report, *seq),
            "{what}: no problem names record {seq}: {:#?}",
            report.problems
        );
    }
}

/// Asserts verification passed.
#[track_caller]
pub fn assert_intact(report: &VerifyReport, records: i64, what: &str) {
    assert!(
        report.ok && report.problems.is_empty(),
        "{what}: {report:#?}"
    );
    assert_eq!(report.records, records, "{what}");
    assert_eq!(report.last_seq, records, "{what}");
}
