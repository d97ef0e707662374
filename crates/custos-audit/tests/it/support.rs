//! Seeding a log, reading records back, and reaching past the store to tamper with it.

use std::sync::Arc;

use custos_audit::{AuditEvent, AuditLog, VerifyReport};
use custos_core::clock::ManualClock;
use custos_store::{AuditRow, Pool, Store};
use sqlx::AssertSqlSafe;

/// A varied event: every field the chain covers gets a value in some records.
pub fn event(i: usize) -> AuditEvent {
    AuditEvent {
        kind: ["tool_call", "task_start", "registry_change"][i % 3].to_owned(),
        actor: i.is_multiple_of(2).then(|| "admin".to_owned()),
        initiator: Some(format!("user{}@example.com", i % 4)),
        agent: Some(format!("agent-{}", i % 3)),
        task: Some(format!("task_{}", i % 7)),
        template: (!i.is_multiple_of(5)).then(|| "tpl".to_owned()),
        tool: Some(format!("fx__tool{}", i % 6)),
        upstream: Some("fx".to_owned()),
        arg_digest: Some(format!("{i:064x}")),
        decision: Some("deny".to_owned()),
        tier: Some(i64::try_from(i % 4).unwrap_or(0) + 1),
        reason: Some(format!("reason \"{i}\" ✓")),
        outcome: i.is_multiple_of(3).then(|| "ok".to_owned()),
        latency_us: Some(i64::try_from(i).unwrap_or(0) * 17),
        detail: Some(format!(r#"{{"i":{i}}}"#)),
    }
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
    let r = match store.pool() {
        Pool::Sqlite(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(p)
            .await
            .map(|_| ()),
        Pool::Postgres(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(p)
            .await
            .map(|_| ()),
    };
    r.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn text(v: Option<&str>) -> String {
    v.map_or_else(
        || "NULL".to_owned(),
        |s| format!("'{}'", s.replace('\'', "''")),
    )
}

fn int(v: Option<i64>) -> String {
    v.map_or_else(|| "NULL".to_owned(), |i| i.to_string())
}

/// Writes `r` in place of whatever record has its `seq` (or adds it).
pub async fn put_row(store: &Store, r: &AuditRow) {
    let sql = format!(
        "DELETE FROM audit_log WHERE seq = {seq}; \
         INSERT INTO audit_log (seq, at, prev_hash, hash, kind, actor, initiator, agent, task, \
         template, tool, upstream, arg_digest, decision, tier, reason, outcome, latency_us, detail) \
         VALUES ({seq}, {at}, {prev}, {hash}, {kind}, {actor}, {initiator}, {agent}, {task}, \
         {template}, {tool}, {upstream}, {arg}, {decision}, {tier}, {reason}, {outcome}, \
         {latency}, {detail});",
        seq = r.seq,
        at = r.at,
        prev = text(Some(&r.prev_hash)),
        hash = text(Some(&r.hash)),
        kind = text(Some(&r.kind)),
        actor = text(r.actor.as_deref()),
        initiator = text(r.initiator.as_deref()),
        agent = text(r.agent.as_deref()),
        task = text(r.task.as_deref()),
        template = text(r.template.as_deref()),
        tool = text(r.tool.as_deref()),
        upstream = text(r.upstream.as_deref()),
        arg = text(r.arg_digest.as_deref()),
        decision = text(r.decision.as_deref()),
        tier = int(r.tier),
        reason = text(r.reason.as_deref()),
        outcome = text(r.outcome.as_deref()),
        latency = int(r.latency_us),
        detail = text(r.detail.as_deref()),
    );
    exec(store, &sql).await;
}

/// Rewrites the stored head.
pub async fn set_head(store: &Store, seq: i64, hash: &str) {
    exec(
        store,
        &format!(
            "UPDATE audit_head SET seq = {seq}, hash = {} WHERE id = 1",
            text(Some(hash))
        ),
    )
    .await;
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
