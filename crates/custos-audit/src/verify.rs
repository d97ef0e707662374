//! Verification: re-read every stored record and check the chain end to end.

use custos_store::{AuditHead, Store, StoreError};
use serde::Serialize;

use crate::chain::{GENESIS_HASH, KNOWN_FORMATS, record_hash};

const PAGE: i64 = 5000;
const MAX_PROBLEMS: usize = 20;

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True only if every check held.
    pub ok: bool,
    /// How many records were read.
    pub records: i64,
    /// The last record's sequence number.
    pub last_seq: i64,
    /// The last record's hash.
    pub last_hash: String,
    /// What is wrong, first problems first (at most 20).
    pub problems: Vec<String>,
}

/// Re-reads every stored record and checks: sequence numbers run 1, 2, 3… without gaps;
/// each `prev_hash` is the previous record's hash; each hash matches its record's content;
/// the stored head and `expected_head` (the last record this process wrote) are reached.
///
/// # Errors
/// [`StoreError`] when the store cannot be read.
pub async fn verify(
    store: &Store,
    expected_head: Option<&AuditHead>,
) -> Result<VerifyReport, StoreError> {
    let mut problems = Vec::new();
    let mut note = |p: String| {
        if problems.len() < MAX_PROBLEMS {
            problems.push(p);
        }
    };
    let mut after = 0i64;
    let mut expected_seq = 1i64;
    let mut prev = GENESIS_HASH.to_owned();
    let mut records = 0i64;
    let mut seen_expected = expected_head.is_none();
    loop {
        let page = store.audit_page(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            records += 1;
            if r.seq != expected_seq {
                note(format!(
                    "expected record {expected_seq}, found record {}: records missing or inserted",
                    r.seq
                ));
            }
            if r.prev_hash != prev {
                note(format!(
                    "record {} does not follow the record before it: chain broken",
                    r.seq
                ));
            }
            if !KNOWN_FORMATS.contains(&r.format) {
                note(format!(
                    "record {} has format {}, which this version cannot verify",
                    r.seq, r.format
                ));
            } else if record_hash(r).as_deref() != Some(r.hash.as_str()) {
                note(format!(
                    "record {} was altered: its content does not match its hash",
                    r.seq
                ));
            }
            if let Some(h) = expected_head
                && h.seq == r.seq
            {
                if h.hash == r.hash {
                    seen_expected = true;
                } else {
                    note(format!(
                        "record {} differs from the one this server wrote",
                        r.seq
                    ));
                }
            }
            prev = r.hash.clone();
            expected_seq = r.seq + 1;
        }
    }
    let last_seq = expected_seq - 1;
    match store.audit_head().await? {
        Some(head) if head.seq != last_seq || head.hash != prev => {
            note(format!(
                "the log ends at record {last_seq} but its head says record {}: records removed or added",
                head.seq
            ));
        }
        None if records > 0 => note("the log has records but no head".to_owned()),
        _ => {}
    }
    if !seen_expected && let Some(h) = expected_head {
        note(format!(
            "record {} written by this server is missing: the log was truncated",
            h.seq
        ));
    }
    Ok(VerifyReport {
        ok: problems.is_empty(),
        records,
        last_seq,
        last_hash: prev,
        problems,
    })
}
