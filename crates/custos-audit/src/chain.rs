//! Records, their canonical encodings and the hash chain.
//!
//! Every stored record carries the format it was written in, and its hash is computed over
//! that format's canonical encoding. A new field means a new format, never a change to an old
//! one: records written by earlier versions keep verifying.

use custos_crypto::sha256_hex;
use custos_store::AuditRow;

use crate::event::{AuditEvent, bounded, detail_text};

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The format records are written in now: 2 adds the call id and the policy version.
pub const CURRENT_FORMAT: i64 = 2;

/// The formats this version can verify.
pub const KNOWN_FORMATS: [i64; 2] = [1, 2];

impl AuditEvent {
    pub(crate) fn into_row(self, seq: i64, at: i64, prev_hash: String) -> AuditRow {
        let mut row = AuditRow {
            seq,
            at,
            prev_hash,
            hash: String::new(),
            format: CURRENT_FORMAT,
            kind: self.kind.as_str().to_owned(),
            actor: bounded(self.actor),
            initiator: bounded(self.initiator),
            agent: bounded(self.agent),
            task: bounded(self.task),
            template: bounded(self.template),
            call_id: bounded(self.call_id),
            tool: bounded(self.tool),
            upstream: bounded(self.upstream),
            arg_digest: bounded(self.arg_digest),
            decision: self.decision.map(|d| d.as_str().to_owned()),
            tier: self.tier.map(|t| i64::from(t.number())),
            reason: self.reason.map(|r| r.as_str().to_owned()),
            outcome: self.outcome.map(|o| o.as_str().to_owned()),
            latency_us: self.latency_us,
            policy_version: self.policy_version,
            detail: detail_text(self.detail.as_ref()),
        };
        row.hash = record_hash(&row).unwrap_or_default();
        row
    }
}

/// The canonical encoding of a record in its own format: a JSON array of every field but
/// `hash`, in a fixed order, absent values as `null` (`serde_json` escapes strings
/// deterministically). `None` for a format this version does not know.
pub fn canonical_bytes(r: &AuditRow) -> Option<Vec<u8>> {
    // Serialising tuples of strings and integers cannot fail.
    match r.format {
        // INVARIANT: format 1 is what the foundation wrote; it must never change.
        1 => serde_json::to_vec(&(
            ("v1", r.seq, r.at, &r.prev_hash, &r.kind),
            (&r.actor, &r.initiator, &r.agent, &r.task, &r.template),
            (&r.tool, &r.upstream, &r.arg_digest, &r.decision, r.tier),
            (&r.reason, &r.outcome, r.latency_us, &r.detail),
        ))
        .ok(),
        // INVARIANT: format 2 is frozen too; add format 3 for new fields.
        2 => serde_json::to_vec(&(
            ("v2", r.seq, r.at, &r.prev_hash, &r.kind),
            (&r.actor, &r.initiator, &r.agent, &r.task, &r.template),
            (&r.call_id, &r.tool, &r.upstream, &r.arg_digest, &r.decision),
            (
                r.tier,
                &r.reason,
                &r.outcome,
                r.latency_us,
                r.policy_version,
            ),
            (&r.detail,),
        ))
        .ok(),
        _ => None,
    }
}

/// SHA-256 of the canonical encoding, lowercase hex; `None` for an unknown format.
pub fn record_hash(r: &AuditRow) -> Option<String> {
    canonical_bytes(r).map(|b| sha256_hex(&b))
}

#[cfg(test)]
mod tests {
    use custos_core::{Decision, Outcome, Reason, Tier};

    use super::*;
    use crate::event::{Detail, EventKind, MAX_FIELD};

    fn v1_row() -> AuditRow {
        AuditRow {
            seq: 7,
            at: 1_764_000_000_000,
            prev_hash: "ab".repeat(32),
            hash: String::new(),
            format: 1,
            kind: "tool_call".into(),
            actor: None,
            initiator: Some("alice@example.com".into()),
            agent: Some("agent-a".into()),
            task: Some("task_x".into()),
            template: Some("docs".into()),
            call_id: None,
            tool: Some("files__read_text_file".into()),
            upstream: Some("files".into()),
            arg_digest: Some("cd".repeat(32)),
            decision: Some("allow".into()),
            tier: Some(1),
            reason: Some("docs:files__read_*".into()),
            outcome: Some("ok".into()),
            latency_us: Some(250),
            policy_version: None,
            detail: None,
        }
    }

    // Golden vectors: a known record and its known hash. They fail if either encoding moves,
    // which would make every stored record of that format unverifiable.
    #[test]
    fn format_1_golden_vector() {
        let r = v1_row();
        assert_eq!(
            String::from_utf8(canonical_bytes(&r).expect("known")).expect("utf-8"),
            format!(
                r#"[["v1",7,1764000000000,"{}","tool_call"],[null,"alice@example.com","agent-a","task_x","docs"],["files__read_text_file","files","{}","allow",1],["docs:files__read_*","ok",250,null]]"#,
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
        assert_eq!(
            record_hash(&r).expect("known"),
            "a322c299472173ccec6f718c18f3afdef300a5158ad28c8ef171ce00c34410ed"
        );
    }

    #[test]
    fn format_2_golden_vector() {
        let mut r = v1_row();
        r.format = 2;
        r.call_id = Some("call_1".into());
        r.reason = Some("permitted".into());
        r.policy_version = Some(3);
        r.detail = Some(r#"{"type":"refusal","message":"m"}"#.into());
        assert_eq!(
            String::from_utf8(canonical_bytes(&r).expect("known")).expect("utf-8"),
            format!(
                r#"[["v2",7,1764000000000,"{}","tool_call"],[null,"alice@example.com","agent-a","task_x","docs"],["call_1","files__read_text_file","files","{}","allow"],[1,"permitted","ok",250,3],["{{\"type\":\"refusal\",\"message\":\"m\"}}"]]"#,
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
        assert_eq!(
            record_hash(&r).expect("known"),
            "eadc249ef3a57d548a4468798fc851b8b6f35fd94bf8ff9ff0fb2d00e1ce6986"
        );
    }

    #[test]
    fn unknown_formats_have_no_hash() {
        let mut r = v1_row();
        r.format = 99;
        assert_eq!(record_hash(&r), None);
    }

    #[test]
    fn events_become_bounded_rows_in_the_current_format() {
        let mut e = AuditEvent::new(EventKind::ToolCall);
        e.tool = Some("x".repeat(4 << 20));
        e.decision = Some(Decision::Deny);
        e.tier = Some(Tier::T4);
        e.reason = Some(Reason::Tier4Denied);
        e.outcome = Some(Outcome::NotCalled);
        e.detail = Some(Detail::Refusal {
            message: "y".repeat(1 << 20),
            approval_id: None,
        });
        let row = e.into_row(1, 5, GENESIS_HASH.into());
        assert_eq!(row.format, CURRENT_FORMAT);
        assert!(row.tool.as_ref().expect("tool").len() <= MAX_FIELD);
        assert!(row.detail.as_ref().expect("detail").len() <= crate::event::MAX_DETAIL);
        assert_eq!(row.reason.as_deref(), Some("tier4_denied"));
        assert_eq!(row.decision.as_deref(), Some("deny"));
        assert_eq!(record_hash(&row), Some(row.hash.clone()));
    }

    #[test]
    fn hash_covers_every_field() {
        let mut base = v1_row();
        base.format = 2;
        let h = record_hash(&base).expect("known");
        let edits: [fn(&mut AuditRow); 12] = [
            |r| r.seq = 8,
            |r| r.at = 6,
            |r| r.kind = "x".into(),
            |r| r.agent = None,
            |r| r.actor = Some("a".into()),
            |r| r.tier = Some(4),
            |r| r.detail = Some("{}".into()),
            |r| r.prev_hash = "1".repeat(64),
            |r| r.call_id = Some("c".into()),
            |r| r.policy_version = Some(9),
            |r| r.format = 1,
            // Moving a value between neighbouring fields changes the hash too.
            |r| {
                r.agent = None;
                r.task = Some("agent-a".into());
            },
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut e = base.clone();
            edit(&mut e);
            assert_ne!(record_hash(&e), Some(h.clone()), "edit {i}");
        }
    }
}
