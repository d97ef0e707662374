//! Properties of the canonical encoding: it decodes back to the record, so different records
//! never share an encoding, and their hashes differ.

use custos_audit::{canonical_bytes, record_hash};
use custos_store::AuditRow;
use proptest::prelude::*;

/// The canonical encoding's shape: `hash` is the one field left out.
type Fields = (
    (String, i64, i64, String, String),
    (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
    ),
    (Option<String>, Option<String>, Option<i64>, Option<String>),
);

fn fields(r: &AuditRow) -> Fields {
    (
        (
            "v1".to_owned(),
            r.seq,
            r.at,
            r.prev_hash.clone(),
            r.kind.clone(),
        ),
        (
            r.actor.clone(),
            r.initiator.clone(),
            r.agent.clone(),
            r.task.clone(),
            r.template.clone(),
        ),
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
    )
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
        (small_int(), small_int(), text(), text()),
        (opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
        (opt_text(), opt_text(), opt_text(), opt_text()),
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
                (seq, at, prev_hash, kind),
                (actor, initiator, agent, task, template),
                (tool, upstream, arg_digest, decision),
                (tier, reason, outcome, latency_us, detail),
            )| AuditRow {
                seq,
                at,
                prev_hash,
                hash: String::new(),
                kind,
                actor,
                initiator,
                agent,
                task,
                template,
                tool,
                upstream,
                arg_digest,
                decision,
                tier,
                reason,
                outcome,
                latency_us,
                detail,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_encoding_decodes_back_to_the_record(r in row()) {
        let decoded: Fields = serde_json::from_slice(&canonical_bytes(&r))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded, fields(&r));
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
