//! Approvals: a held Tier 3 call waiting for a human, bound to the exact call.

use serde::Serialize;
use serde_json::Value;

use crate::ids::{ApprovalId, TaskId};
use crate::tier::Tier;

/// An approval's lifecycle. `pending` answers once: to `approved` or `denied`, or it becomes
/// `expired`; an approved one is used once (`executed`) or expires unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for a human.
    Pending,
    /// A human approved it; the identical call may run once.
    Approved,
    /// A human denied it.
    Denied,
    /// Nobody answered in time, or the approved call was not made in time.
    Expired,
    /// The approved call ran.
    Executed,
}

impl ApprovalState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
            ApprovalState::Executed => "executed",
        }
    }

    /// Reads a name written by [`ApprovalState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            ApprovalState::Pending,
            ApprovalState::Approved,
            ApprovalState::Denied,
            ApprovalState::Expired,
            ApprovalState::Executed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One approval request, as stored. It binds a task, an exposed tool, the digest of the
/// canonical arguments and the policy version: approving it allows exactly that call, once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    /// `apr_…`.
    pub id: ApprovalId,
    /// The task whose call is held.
    pub task: TaskId,
    /// The task's agent.
    pub agent: String,
    /// The human or event on whose behalf the task runs.
    pub initiator: String,
    /// The operator who started the task.
    pub started_by: String,
    /// The exposed tool name.
    pub tool: String,
    /// The upstream serving it.
    pub upstream: String,
    /// The arguments as a human should see them: secrets redacted, bounded.
    pub arguments: Value,
    /// SHA-256 of the canonical (unredacted) arguments: what the approval binds.
    pub digest: String,
    /// The call's tier.
    pub tier: Tier,
    /// The policy version the call was decided under.
    pub policy_version: i64,
    /// The policies that made it Tier 3 (Cedar policy ids, comma-separated).
    pub rule: String,
    /// Stored state; see [`Approval::state_at`] for the state at a given time.
    pub state: ApprovalState,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms: a pending approval expires unanswered, an approved one unused, at this time.
    pub expires_at: i64,
    /// Unix ms, when answered.
    pub decided_at: Option<i64>,
    /// The operator who answered.
    pub decided_by: Option<String>,
    /// Why it was denied, as the approver wrote it (bounded).
    pub note: Option<String>,
    /// Unix ms, when the approved call ran.
    pub executed_at: Option<i64>,
    /// Whether the agent has been told that it expired (after that, the identical call opens
    /// a new request).
    pub expiry_reported: bool,
}

impl Approval {
    /// The state at `now_ms`: a pending or approved approval past its expiry is expired.
    pub fn state_at(&self, now_ms: i64) -> ApprovalState {
        match self.state {
            ApprovalState::Pending | ApprovalState::Approved if now_ms >= self.expires_at => {
                ApprovalState::Expired
            }
            s => s,
        }
    }
}

/// Argument names whose values are shown as `[REDACTED]` to approvers and in listings: a
/// case-insensitive substring match on the key.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "credential",
    "authorization",
    "cookie",
    "session",
];

/// The longest string value shown to an approver; longer ones are cut with a marker.
pub const MAX_SHOWN_STRING: usize = 2048;
/// The deepest nesting shown; deeper values are replaced with a marker.
const MAX_SHOWN_DEPTH: usize = 8;
/// The most array items or object members shown per level.
const MAX_SHOWN_ITEMS: usize = 64;

/// The arguments as an approver sees them: values under secret-looking keys replaced with
/// `[REDACTED]`, strings, depth and breadth bounded. The digest is computed from the
/// original arguments, never from this.
pub fn arguments_for_review(arguments: &Value) -> Value {
    shown(arguments, 0)
}

fn shown(v: &Value, depth: usize) -> Value {
    if depth >= MAX_SHOWN_DEPTH {
        return Value::String("[nested too deep]".into());
    }
    match v {
        Value::String(s) => Value::String(crate::text::truncate(s, MAX_SHOWN_STRING).into_owned()),
        Value::Array(items) => {
            let mut out: Vec<Value> = items
                .iter()
                .take(MAX_SHOWN_ITEMS)
                .map(|i| shown(i, depth + 1))
                .collect();
            if items.len() > MAX_SHOWN_ITEMS {
                out.push(Value::String(format!(
                    "[{} more items]",
                    items.len() - MAX_SHOWN_ITEMS
                )));
            }
            Value::Array(out)
        }
        Value::Object(members) => {
            let mut out = serde_json::Map::new();
            for (k, val) in members.iter().take(MAX_SHOWN_ITEMS) {
                let key = crate::text::truncate(k, 128).into_owned();
                let lower = k.to_ascii_lowercase();
                let value = if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                    Value::String("[REDACTED]".into())
                } else {
                    shown(val, depth + 1)
                };
                out.insert(key, value);
            }
            if members.len() > MAX_SHOWN_ITEMS {
                out.insert(
                    "[more]".into(),
                    Value::String(format!("{} more members", members.len() - MAX_SHOWN_ITEMS)),
                );
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn states_round_trip() {
        for s in ["pending", "approved", "denied", "expired", "executed"] {
            assert_eq!(ApprovalState::parse(s).map(ApprovalState::as_str), Some(s));
        }
        assert_eq!(ApprovalState::parse("Pending"), None);
    }

    #[test]
    fn review_redacts_secret_keys_at_any_depth_and_bounds_the_rest() {
        let args = json!({
            "to": "alice@example.com",
            "Password": "hunter2",
            "nested": {"api_key": "k-123", "list": [{"access_token": "t"}, 3]},
            "body": "x".repeat(5000),
        });
        let shown = arguments_for_review(&args);
        assert_eq!(shown["to"], "alice@example.com");
        assert_eq!(shown["Password"], "[REDACTED]");
        assert_eq!(shown["nested"]["api_key"], "[REDACTED]");
        assert_eq!(shown["nested"]["list"][0]["access_token"], "[REDACTED]");
        assert_eq!(shown["nested"]["list"][1], 3);
        let body = shown["body"].as_str().expect("a string");
        assert!(body.len() < 2100, "{}", body.len());
        let text = shown.to_string();
        for secret in ["hunter2", "k-123"] {
            assert!(!text.contains(secret), "{secret} shown");
        }
    }
}
