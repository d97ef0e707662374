//! Properties of the canonical encoding: it decodes back to the record, so different records
//! never share an encoding, and their hashes differ.

use custos_audit::{canonical_bytes, record_hash};
use custos_store::AuditRow;
use proptest::prelude::*;

type Names = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Format 1's shape: `hash` and the fields format 1 does not know are left out.
type Fields1 = (
    (String, i64, i64, String, String),
    Names,
    (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
    ),
    (Option<String>, Option<String>, Option<i64>, Option<String>),
);

/// Format 2's shape: every field but `hash`.
type Fields2 = (
    (String, i64, i64, String, String),
    Names,
    Names,
    (
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    ),
    (Option<String>,),
);

#[derive(Debug, PartialEq)]
enum Fields {
    V1(Fields1),
    V2(Fields2),
}

fn names(r: &AuditRow) -> Names {
    (
        r.actor.clone(),
        r.initiator.clone(),
        r.agent.clone(),
        r.task.clone(),
        r.template.clone(),
    )
}

fn fields(r: &AuditRow) -> Fields {
    let head = |v: &str| {
        (
            v.to_owned(),
            r.seq,
            r.at,
            r.prev_hash.clone(),
            r.kind.clone(),
        )
    };
    if r.format == 1 {
        Fields::V1((
            head("v1"),
            names(r),
            (
                r.tool.clone(),
                r.upstream.clone(),
                r.arg_digest.clone(),
                r.decision.clone(),
                r.tier,
            ),
            (
                r.reason.clone(),
                r.outcome.clone(),
                r.latency_us,
                r.detail.clone(),
            ),
        ))
    } else {
        Fields::V2((
            head("v2"),
            names(r),
            (
                r.call_id.clone(),
                r.tool.clone(),
                r.upstream.clone(),
                r.arg_digest.clone(),
                r.decision.clone(),
            ),
            (
                r.tier,
                r.reason.clone(),
                r.outcome.clone(),
                r.latency_us,
                r.policy_version,
            ),
            (r.detail.clone(),),
        ))
    }
}

fn decode(r: &AuditRow) -> Result<Fields, TestCaseError> {
    let bytes = canonical_bytes(r).ok_or_else(|| TestCaseError::fail("unknown format"))?;
    let fail = |e: serde_json::Error| TestCaseError::fail(e.to_string());
    Ok(if r.format == 1 {
        Fields::V1(serde_json::from_slice(&bytes).map_err(fail)?)
    } else {
        Fields::V2(serde_json::from_slice(&bytes).map_err(fail)?)
    })
}

/// Short strings over characters that matter to a JSON encoding (quotes, escapes,
/// separators, `null`, non-ASCII), so near-collisions are common.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "", "a", "b", "\"", "\\", ",", "[", "]", "null", "é", "\u{0}", "\n",
        ]),
        0..4,
    )
    .prop_map(|parts| parts.concat())
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

fn small_int() -> impl Strategy<Value = i64> {
    prop_oneof![-2i64..3, Just(i64::MIN), Just(i64::MAX)]
}

fn row() -> impl Strategy<Value = AuditRow> {
    (
        (1i64..=2, small_int(), small_int(), text(), text()),
        (opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
        (opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
        prop::option::of(small_int()),
        (
            prop::option::of(small_int()),
            opt_text(),
            opt_text(),
            prop::option::of(small_int()),
            opt_text(),
        ),
    )
        .prop_map(
            |(
                (format, seq, at, prev_hash, kind),
                (actor, initiator, agent, task, template),
                (call_id, tool, upstream, arg_digest, decision),
                policy_version,
                (tier, reason, outcome, latency_us, detail),
            )| AuditRow {
                seq,
                at,
                prev_hash,
                hash: String::new(),
                format,
                kind,
                actor,
                initiator,
                agent,
                task,
                template,
                // Format 1 has no call id or policy version: such rows never hold one.
                call_id: if format == 1 { None } else { call_id },
                tool,
                upstream,
                arg_digest,
                decision,
                tier,
                reason,
                outcome,
                latency_us,
                policy_version: if format == 1 { None } else { policy_version },
                detail,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_encoding_decodes_back_to_the_record(r in row()) {
        prop_assert_eq!(decode(&r)?, fields(&r));
    }

    #[test]
    fn different_records_hash_differently(a in row(), b in row()) {
        let same = fields(&a) == fields(&b);
        prop_assert_eq!(canonical_bytes(&a) == canonical_bytes(&b), same);
        prop_assert_eq!(record_hash(&a) == record_hash(&b), same);
    }

    #[test]
    fn the_stored_hash_is_not_part_of_the_encoding(r in row(), h in text()) {
        let mut other = r.clone();
        other.hash = h;
        prop_assert_eq!(canonical_bytes(&r), canonical_bytes(&other));
    }
}
