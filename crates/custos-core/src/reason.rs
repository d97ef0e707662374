//! Why something was decided: one stable code shared by audit records, metrics labels, the
//! JSON-RPC `data.reason` of a refused call and the logs.

use serde::{Deserialize, Serialize};

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// A stable reason code. Its text (`as_str`) never changes once released: dashboards,
        /// alerts and agents match on it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The snake_case code.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// Reads a code written by [`Reason::as_str`].
            pub fn parse(code: &str) -> Option<Reason> {
                match code {
                    $($code => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    // Decisions on tool calls.
    /// Allowed by a template rule.
    Permitted => "permitted",
    /// The template names no pattern matching the tool.
    ToolNotAllowed => "tool_not_allowed",
    /// The tool name breaks the exposed-name rule.
    InvalidToolName => "invalid_tool_name",
    /// The template names the tool, but no entry allows these arguments.
    ArgumentNotAllowed => "argument_not_allowed",
    /// A raw Cedar policy (`kind: Policy`) forbids the call.
    PolicyForbidden => "policy_forbidden",
    /// The tool names no registered upstream.
    UnknownUpstream => "unknown_upstream",
    /// The task's template no longer exists.
    UnknownTemplate => "unknown_template",
    /// Tier 4: always refused.
    Tier4Denied => "tier4_denied",
    /// Tier 3, and no approval could be had (before approvals existed; kept so older records
    /// still read).
    ApprovalUnavailable => "approval_unavailable",
    /// Tier 3, and the task already has as many approval requests waiting as it may.
    ApprovalLimit => "approval_limit",
    /// Tier 3: held for a human approval that has not been given yet (the call may be
    /// retried with the same arguments; `data.approval_id` names the request).
    ApprovalPending => "approval_pending",
    /// Tier 3: a human denied the approval (or answered nothing before it expired and the
    /// default answer is a denial).
    ApprovalDenied => "approval_denied",
    /// Tier 3: the approval request expired before it was answered, or its approval before it
    /// was used.
    ApprovalExpired => "approval_expired",
    /// The upstream tool's definition changed since an operator approved (pinned) it.
    ToolChanged => "tool_changed",
    /// The upstream's tools have not been approved (pinned) by an operator yet.
    ToolNotApproved => "tool_not_approved",
    /// The template allows no resource entry matching the URI.
    ResourceNotAllowed => "resource_not_allowed",
    /// The template names no prompt pattern matching the prompt.
    PromptNotAllowed => "prompt_not_allowed",
    /// Allowed, but the upstream failed or did not answer in time.
    UpstreamFailed => "upstream_failed",
    /// The store or the audit log is down: refused (fail closed).
    Unavailable => "unavailable",
    // Authentication.
    /// Not a well-formed token or assertion.
    Malformed => "malformed",
    /// Signature, algorithm or key id does not check out.
    BadSignature => "bad_signature",
    /// Past its expiry or not yet valid.
    Expired => "expired",
    /// Wrong audience or issuer.
    WrongAudience => "wrong_audience",
    /// An assertion that lives longer than allowed.
    Lifetime => "lifetime",
    /// The assertion could not be read at all.
    MalformedAssertion => "malformed_assertion",
    /// The assertion names another agent than the task's.
    AssertionNamesAnotherAgent => "assertion_names_another_agent",
    /// The assertion's `jti` was used before.
    ReplayedAssertion => "replayed_assertion",
    /// No such task.
    UnknownTask => "unknown_task",
    /// No such agent.
    UnknownAgent => "unknown_agent",
    /// The agent was deleted and re-created under the same name since the task started: the
    /// task belongs to the old registration.
    AgentReplaced => "agent_replaced",
    /// The token's agent or template is not the task's.
    TaskMismatch => "task_mismatch",
    /// The task ended or expired.
    TaskNotActive => "task_not_active",
    /// The agent is suspended.
    AgentSuspended => "agent_suspended",
    /// The agent may no longer run the task's template.
    TemplateNotAllowed => "template_not_allowed",
    /// No operator holds this token.
    UnknownToken => "unknown_token",
    /// Too many failed authentications from one source: refused without checking.
    RateLimited => "rate_limited",
    // Credentials.
    /// The task's template does not list the credential role.
    CredentialNotAllowed => "credential_not_allowed",
    /// No such credential role.
    UnknownCredentialRole => "unknown_credential_role",
    /// The engine could not mint (server unreachable, refused, not configured).
    CredentialFailed => "credential_failed",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r:?} repeats a code");
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
            assert_eq!(
                serde_json::to_value(r).expect("serialises"),
                serde_json::Value::String(r.as_str().to_owned())
            );
        }
        assert_eq!(Reason::Tier4Denied.as_str(), "tier4_denied");
        assert_eq!(Reason::parse("nope"), None);
    }
}
