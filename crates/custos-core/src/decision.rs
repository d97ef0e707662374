//! What the broker decided about one request, and how it ended.

use serde::{Deserialize, Serialize};

/// The broker's decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
    /// Held for a human approver.
    Hold,
}

impl Decision {
    /// The lowercase name used in audit records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Hold => "hold",
        }
    }
}

/// How an allowed call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered with a result.
    Ok,
    /// The upstream answered with a tool error (`isError: true`) or a JSON-RPC error.
    ToolError,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream could not be reached or died.
    UpstreamFailed,
    /// The agent cancelled the call while it ran (`notifications/cancelled`); the upstream
    /// was told.
    Cancelled,
    /// The call never reached an upstream.
    NotCalled,
}

impl Outcome {
    /// The snake_case name used in audit records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError => "tool_error",
            Outcome::Timeout => "timeout",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Cancelled => "cancelled",
            Outcome::NotCalled => "not_called",
        }
    }
}
