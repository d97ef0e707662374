//! Records, their canonical encoding and the hash chain.

use custos_crypto::sha256_hex;
use custos_store::AuditRow;
use serde::Serialize;

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a caller records: everything but the position, time and hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// `tool_call`, `tools_list`, `auth_failure`, `task_start`, `task_end`, `token_issued`,
    /// `registry_change`, `operator_create`, `agent_suspend`, `agent_resume`.
    pub kind: String,
    /// The operator who acted.
    pub actor: Option<String>,
    /// The human or event on whose behalf.
    pub initiator: Option<String>,
    /// The agent.
    pub agent: Option<String>,
    /// The task.
    pub task: Option<String>,
    /// The template.
    pub template: Option<String>,
    /// The exposed tool name.
    pub tool: Option<String>,
    /// The upstream.
    pub upstream: Option<String>,
    /// SHA-256 of the canonical arguments.
    pub arg_digest: Option<String>,
    /// `allow`, `deny` or `hold`.
    pub decision: Option<String>,
    /// 1 to 4.
    pub tier: Option<i64>,
    /// Why.
    pub reason: Option<String>,
    /// How it ended.
    pub outcome: Option<String>,
    /// Microseconds spent.
    pub latency_us: Option<i64>,
    /// Kind-specific details (JSON text). Never a secret.
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event of `kind` with nothing else set.
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            ..Self::default()
        }
    }

    pub(crate) fn into_row(self, seq: i64, at: i64, prev_hash: String) -> AuditRow {
        let mut row = AuditRow {
            seq,
            at,
            prev_hash,
            hash: String::new(),
            kind: self.kind,
            actor: self.actor,
            initiator: self.initiator,
            agent: self.agent,
            task: self.task,
            template: self.template,
            tool: self.tool,
            upstream: self.upstream,
            arg_digest: self.arg_digest,
            decision: self.decision,
            tier: self.tier,
            reason: self.reason,
            outcome: self.outcome,
            latency_us: self.latency_us,
            detail: self.detail,
        };
        row.hash = record_hash(&row);
        row
    }
}

/// The canonical encoding of a record: a JSON array of every field but `hash`, in a fixed
/// order, with absent values as `null`. `serde_json` escapes strings deterministically.
pub fn canonical_bytes(r: &AuditRow) -> Vec<u8> {
    let fields = (
        ("v1", r.seq, r.at, &r.prev_hash, &r.kind),
        (&r.actor, &r.initiator, &r.agent, &r.task, &r.template),
        (&r.tool, &r.upstream, &r.arg_digest, &r.decision, r.tier),
        (&r.reason, &r.outcome, r.latency_us, &r.detail),
    );
    // Serialising tuples of strings and integers cannot fail.
    serde_json::to_vec(&fields).unwrap_or_default()
}

/// SHA-256 of the canonical encoding, lowercase hex.
pub fn record_hash(r: &AuditRow) -> String {
    sha256_hex(&canonical_bytes(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_field() {
        let base = AuditEvent {
            kind: "tool_call".into(),
            agent: Some("a".into()),
            tier: Some(1),
            ..AuditEvent::default()
        }
        .into_row(1, 5, GENESIS_HASH.into());
        let h = base.hash.clone();
        let mut edits: Vec<AuditRow> = Vec::new();
        let mut e = base.clone();
        e.seq = 2;
        edits.push(e);
        let mut e = base.clone();
        e.at = 6;
        edits.push(e);
        let mut e = base.clone();
        e.kind = "x".into();
        edits.push(e);
        let mut e = base.clone();
        e.agent = None;
        edits.push(e);
        let mut e = base.clone();
        e.actor = Some("a".into());
        edits.push(e);
        let mut e = base.clone();
        e.tier = Some(4);
        edits.push(e);
        let mut e = base.clone();
        e.detail = Some("{}".into());
        edits.push(e);
        let mut e = base.clone();
        e.prev_hash = "1".repeat(64);
        edits.push(e);
        for e in edits {
            assert_ne!(record_hash(&e), h, "{e:?}");
        }
        // Moving a value between neighbouring fields changes the hash too.
        let mut a = base.clone();
        a.agent = None;
        a.task = Some("a".into());
        assert_ne!(record_hash(&a), h);
    }
}
