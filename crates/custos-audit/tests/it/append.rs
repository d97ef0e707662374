//! Appending: many callers at once, several writers on one database, restarts.

use std::collections::BTreeSet;
use std::future::Future as _;
use std::sync::Arc;

use custos_audit::{AuditLog, GENESIS_HASH, record_hash, verify};
use custos_core::clock::ManualClock;
use custos_store::{AuditHead, AuditRow, Store};
use custos_test_support::both_backends;

use super::support::{all_rows, assert_intact, event};

both_backends!(
    concurrent_appends_get_gapless_sequence_numbers_and_verify,
    two_writers_on_one_database_keep_one_chain,
    a_restarted_log_continues_the_chain,
    an_empty_log_verifies,
    queued_records_ride_with_the_next_commit_or_land_on_their_own,
    an_append_whose_caller_hangs_up_is_still_committed,
);

/// Appends `per_task` events from each of `tasks` tasks at once; every returned record.
async fn append_concurrently(log: &AuditLog, tasks: usize, per_task: usize) -> Vec<AuditRow> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut rows = Vec::new();
            for i in 0..per_task {
                rows.push(log.append(event(t * per_task + i)).await.expect("append"));
            }
            rows
        }));
    }
    let mut rows = Vec::new();
    for h in handles {
        rows.extend(h.await.expect("join"));
    }
    rows.sort_by_key(|r| r.seq);
    rows
}

async fn concurrent_appends_get_gapless_sequence_numbers_and_verify(store: Store) {
    let clock = ManualClock::new(1_700_000_000_000);
    let log = AuditLog::start(store.clone(), Arc::new(clock.clone()));
    let rows = append_concurrently(&log, 50, 10).await;

    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>(),
        "every caller got its own sequence number, without gaps"
    );
    // Every event was recorded exactly once.
    let digests: BTreeSet<_> = rows.iter().map(|r| r.arg_digest.clone()).collect();
    assert_eq!(digests.len(), 500);
    // What callers were told is what is stored, hashed and chained.
    assert_eq!(all_rows(&store).await, rows);
    assert_eq!(rows[0].prev_hash, GENESIS_HASH);
    for r in &rows {
        assert_eq!(Some(r.hash.clone()), record_hash(r), "record {}", r.seq);
    }
    for w in rows.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash, "record {}", w[1].seq);
    }

    let last = rows.last().expect("rows");
    let head = AuditHead {
        seq: 500,
        hash: last.hash.clone(),
    };
    assert_eq!(log.last_written(), Some(head.clone()));
    assert_eq!(store.audit_head().await.expect("head"), Some(head.clone()));
    let report = verify(&store, Some(&head)).await.expect("verify");
    assert_intact(&report, 500, "after concurrent appends");
    assert_eq!(report.last_hash, last.hash);
}

async fn two_writers_on_one_database_keep_one_chain(store: Store) {
    // Two replicas: two logs, each with its own writer, sharing one database.
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let a = AuditLog::start(store.clone(), clock.clone());
    let b = AuditLog::start(store.clone(), clock);
    let (ra, rb) = tokio::join!(
        append_concurrently(&a, 20, 10),
        append_concurrently(&b, 20, 10)
    );
    assert_eq!((ra.len(), rb.len()), (200, 200));
    let seqs: BTreeSet<i64> = ra.iter().chain(&rb).map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=400).collect::<BTreeSet<_>>());

    for log in [&a, &b] {
        let head = log.last_written().expect("each wrote");
        let report = verify(&store, Some(&head)).await.expect("verify");
        assert_intact(&report, 400, "two writers");
    }
}

async fn a_restarted_log_continues_the_chain(store: Store) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let first = AuditLog::start(store.clone(), clock.clone());
    for i in 0..3 {
        first.append(event(i)).await.expect("append");
    }
    drop(first);

    let second = AuditLog::start(store.clone(), clock.clone());
    assert_eq!(
        second.last_written(),
        None,
        "nothing written by this one yet"
    );
    clock.advance(5);
    let r = second.append(event(3)).await.expect("append");
    let before = all_rows(&store).await;
    assert_eq!(r.seq, 4);
    assert_eq!(r.at, 1_700_000_000_005);
    assert_eq!(r.prev_hash, before[2].hash);
    let report = verify(&store, second.last_written().as_ref())
        .await
        .expect("verify");
    assert_intact(&report, 4, "after a restart");
}

async fn an_empty_log_verifies(store: Store) {
    let report = verify(&store, None).await.expect("verify");
    assert_intact(&report, 0, "empty");
    assert_eq!(report.last_hash, GENESIS_HASH);
}

async fn queued_records_ride_with_the_next_commit_or_land_on_their_own(store: Store) {
    let log = AuditLog::start(store.clone(), Arc::new(ManualClock::new(1_700_000_000_000)));
    // Queued (an outcome), then appended (the next decision): committed in that order, the
    // queued one no later than the awaited one.
    log.enqueue(event(1)).await.expect("enqueue");
    let awaited = log.append(event(2)).await.expect("append");
    let rows = all_rows(&store).await;
    assert_eq!(
        rows.len(),
        2,
        "both committed once the awaited append returned"
    );
    assert_eq!((rows[0].seq, rows[1].seq), (1, 2));
    assert_eq!(rows[1], awaited);
    // Queued with nothing after it: it lands on its own within a few milliseconds.
    log.enqueue(event(3)).await.expect("enqueue");
    let mut landed = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if all_rows(&store).await.len() == 3 {
            landed = true;
            break;
        }
    }
    assert!(landed, "a queued record waits for no one for long");
    // And shutdown commits whatever is still queued.
    log.enqueue(event(4)).await.expect("enqueue");
    log.close().await;
    assert_eq!(all_rows(&store).await.len(), 4);
    let report = verify(&store, log.last_written().as_ref())
        .await
        .expect("verify");
    assert_intact(&report, 4, "queued records");
}

async fn an_append_whose_caller_hangs_up_is_still_committed(store: Store) {
    let log = AuditLog::start(store.clone(), Arc::new(ManualClock::new(1_700_000_000_000)));
    // Polled once (queued, its commit started) and dropped before it answered: the client
    // hung up. (The database thread may answer within the first poll; then try the next.)
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut dropped = None;
    for i in 0..50 {
        let mut append = Box::pin(log.append(event(i)));
        if append.as_mut().poll(&mut cx).is_pending() {
            dropped = Some(event(i).arg_digest);
            break;
        }
    }
    let dropped = dropped.expect("some append was still under way after its first poll");
    let mut landed = false;
    for _ in 0..100 {
        if all_rows(&store)
            .await
            .iter()
            .any(|r| r.arg_digest == dropped)
        {
            landed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        landed,
        "the record was committed without anyone waiting for it"
    );
    // The log goes on: the next record chains on the last.
    let before = all_rows(&store).await;
    let next = log.append(event(99)).await.expect("append");
    let last = before.last().expect("rows");
    assert_eq!(
        (next.seq, next.prev_hash.as_str()),
        (last.seq + 1, last.hash.as_str())
    );
}
