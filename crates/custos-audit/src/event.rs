//! What a caller records: a typed event. Kinds, decisions, outcomes and reasons are types; the
//! kind-specific part is a typed [`Detail`]. Turning an event into a stored row bounds every
//! field, so nothing from outside is stored at whatever length it arrived.

use custos_core::text::truncate;
use custos_core::{Decision, Outcome, Reason, Tier};
use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A decision on one tool call: allowed (written before the upstream is called) or
    /// refused (the call never reaches an upstream).
    ToolCall,
    /// How an allowed tool call ended; linked to its decision by the call id.
    ToolResult,
    /// Failed authentications of one source and reason, summed over a window.
    AuthFailures,
    /// A task started.
    TaskStart,
    /// A task ended.
    TaskEnd,
    /// A task token issued.
    TokenIssued,
    /// A registry resource created, updated or deleted.
    RegistryChange,
    /// An operator created.
    OperatorCreate,
    /// An agent suspended.
    AgentSuspend,
    /// An agent resumed.
    AgentResume,
    /// A credential lease issued: its principal exists and was handed to the task.
    LeaseIssued,
    /// A credential request refused (the template does not allow the role) or failed (the
    /// engine could not mint).
    LeaseRefused,
    /// A credential lease renewed: its new expiry is in the detail.
    LeaseRenewed,
    /// A credential lease revoked: its principal is gone.
    LeaseRevoked,
    /// A lease whose revocation gave up after its retries: the principal may still exist.
    LeaseRevokeFailed,
    /// A task tainted: an untrusted tool returned content to it.
    TaskTainted,
    /// A Tier 3 call held: an approval request written, bound to the exact call.
    ApprovalRequested,
    /// An approval request answered by an approver (the actor): approved or denied.
    ApprovalAnswered,
    /// An approval request delivered to the approvals webhook.
    ApprovalNotified,
    /// A pinned upstream tool seen with another definition: hidden and refused from then on.
    ToolChanged,
    /// An operator approved an upstream's tools: their definitions are pinned.
    ToolsPinned,
    /// A tool's definition pinned the first time a task's connection saw it (first-use
    /// pinning, the `--dev` default), attributed to that task.
    ToolPinned,
    /// An operator stored the value of a static credential role (the value is never recorded).
    SecretWritten,
    /// An upstream, during a tool call, asked the agent's client something (sampling,
    /// elicitation, roots), relayed to the agent: attributed to the task and the tool.
    ClientRequest,
    /// A decision on one resource read (`resources/read`): allowed (written before the
    /// upstream is asked) or refused. `tool` holds the URI.
    ResourceRead,
    /// A decision on one prompt get (`prompts/get`), the same way. `tool` holds the prompt.
    PromptGet,
    /// A decision on one resource subscription (`resources/subscribe`), the same way.
    ResourceSubscribe,
    /// A decision on one completion request (`completion/complete`) for a prompt's or a
    /// resource template's argument. `tool` holds the prompt or the URI template.
    Completion,
    /// How an allowed resource read, prompt get or completion ended; linked to its decision
    /// by the call id.
    ReadResult,
}

impl EventKind {
    /// The snake_case name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ToolCall => "tool_call",
            EventKind::ToolResult => "tool_result",
            EventKind::AuthFailures => "auth_failures",
            EventKind::TaskStart => "task_start",
            EventKind::TaskEnd => "task_end",
            EventKind::TokenIssued => "token_issued",
            EventKind::RegistryChange => "registry_change",
            EventKind::OperatorCreate => "operator_create",
            EventKind::AgentSuspend => "agent_suspend",
            EventKind::AgentResume => "agent_resume",
            EventKind::LeaseIssued => "lease_issued",
            EventKind::LeaseRefused => "lease_refused",
            EventKind::LeaseRenewed => "lease_renewed",
            EventKind::LeaseRevoked => "lease_revoked",
            EventKind::LeaseRevokeFailed => "lease_revoke_failed",
            EventKind::TaskTainted => "task_tainted",
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::ApprovalAnswered => "approval_answered",
            EventKind::ApprovalNotified => "approval_notified",
            EventKind::ToolChanged => "tool_changed",
            EventKind::ToolsPinned => "tools_pinned",
            EventKind::ToolPinned => "tool_pinned",
            EventKind::SecretWritten => "secret_written",
            EventKind::ClientRequest => "client_request",
            EventKind::ResourceRead => "resource_read",
            EventKind::PromptGet => "prompt_get",
            EventKind::ResourceSubscribe => "resource_subscribe",
            EventKind::Completion => "completion",
            EventKind::ReadResult => "read_result",
        }
    }
}

/// The kind-specific part of a record, stored as a JSON object tagged by `type`. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Detail {
    /// A task started.
    TaskStart {
        /// The immutable id of the agent registration the task belongs to.
        agent_id: String,
        /// When it expires (Unix ms).
        expires_at: i64,
        /// The template's version.
        template_version: i64,
        /// Why, as the initiator wrote it (bounded).
        purpose: Option<String>,
    },
    /// A task token issued.
    TokenIssued {
        /// The token's id.
        jti: String,
        /// Its expiry (Unix seconds).
        exp: i64,
    },
    /// A registry change.
    RegistryChange {
        /// `created`, `updated` or `deleted`.
        op: String,
        /// The resource kind.
        resource_kind: String,
        /// The resource name.
        name: String,
        /// The resource's immutable id.
        id: String,
        /// The version now current (the version removed, for a delete).
        version: i64,
    },
    /// An operator created.
    OperatorCreate {
        /// Its name.
        name: String,
        /// Its role.
        role: String,
    },
    /// Which policy allowed a call.
    Permit {
        /// The Cedar policies of the template that allowed it (`template:NAME:tools[i]`,
        /// comma-separated), or `approval:ID`.
        rule: String,
    },
    /// A request from an upstream to the agent's client, relayed.
    ClientRequest {
        /// The MCP method (`sampling/createMessage`, `elicitation/create`, `roots/list`).
        method: String,
    },
    /// A task tainted.
    TaskTainted {
        /// The untrusted tool whose result tainted it.
        tool: String,
    },
    /// An approval request, as requested or answered.
    Approval {
        /// Its id.
        approval_id: String,
        /// Its state after this event.
        state: String,
        /// When it expires (Unix ms).
        expires_at: i64,
        /// The approver's note on a denial (bounded).
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A pinned tool seen with another definition.
    ToolChanged {
        /// The upstream.
        upstream: String,
        /// The tool, as the upstream names it.
        tool: String,
        /// The approved definition's digest.
        pinned_digest: String,
        /// The digest of the definition now served.
        observed_digest: String,
    },
    /// A definition pinned on first use.
    ToolPinned {
        /// The upstream.
        upstream: String,
        /// The tool, as the upstream names it.
        tool: String,
        /// The digest of the definition now pinned.
        digest: String,
    },
    /// A static secret stored: which role's, and under which key-encryption key.
    SecretWritten {
        /// The credential role.
        role: String,
        /// The id of the key-encryption key that sealed it.
        kek: String,
    },
    /// An upstream's tools pinned.
    ToolsPinned {
        /// The upstream.
        upstream: String,
        /// How many tools are pinned now.
        tools: u64,
        /// Tools whose pinned definition this changed, at most 32 named.
        changed: Vec<String>,
        /// Tools no longer served whose pins were dropped, at most 32 named.
        dropped: Vec<String>,
    },
    /// Why a call was refused, in words (the code is the record's reason).
    Refusal {
        /// What the agent was told.
        message: String,
        /// The approval request a held call waits on (or that answered it).
        #[serde(skip_serializing_if = "Option::is_none")]
        approval_id: Option<String>,
    },
    /// How an upstream failed.
    UpstreamError {
        /// The error, as the agent was told it.
        message: String,
    },
    /// A credential lease: the database user (or ACL user) name in clear, so "who received
    /// this user" is one trace; never its password.
    Lease {
        /// The lease id.
        lease_id: String,
        /// The credential role.
        role: String,
        /// The engine (`postgres`, `mysql`, `redis`).
        engine: String,
        /// The principal on the server.
        principal: String,
        /// The immutable id of the task's agent registration.
        agent_id: String,
        /// When the lease expires (Unix ms).
        expires_at: i64,
        /// For a revocation: why (`task_end`, `expired`, `revoked`, `agent_suspended`,
        /// `reconcile`).
        #[serde(skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
        /// For a failure: what failed (bounded, never a secret).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Failed authentications summed over a window.
    AuthFailures {
        /// What was presented: `operator`, `agent` or `task_token`.
        subject: String,
        /// The client's address, or `unknown`.
        source: String,
        /// How many failed in the window.
        count: u64,
        /// The first failure (Unix ms).
        first_at: i64,
        /// The last failure (Unix ms).
        last_at: i64,
    },
}

/// The longest stored name-like value (agents, tasks, tools, operators).
pub const MAX_FIELD: usize = 256;
/// The longest stored detail (JSON text).
pub const MAX_DETAIL: usize = 4096;

/// One event to record: everything but its position, time and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened.
    pub kind: EventKind,
    /// The operator who acted, when one did.
    pub actor: Option<String>,
    /// The human or event on whose behalf the task runs.
    pub initiator: Option<String>,
    /// The agent.
    pub agent: Option<String>,
    /// The task.
    pub task: Option<String>,
    /// The task's template.
    pub template: Option<String>,
    /// The tool call this record belongs to: its decision and its result share it.
    pub call_id: Option<String>,
    /// The exposed tool name.
    pub tool: Option<String>,
    /// The upstream.
    pub upstream: Option<String>,
    /// SHA-256 of the canonical arguments.
    pub arg_digest: Option<String>,
    /// The decision.
    pub decision: Option<Decision>,
    /// The tier.
    pub tier: Option<Tier>,
    /// Why.
    pub reason: Option<Reason>,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// Microseconds spent.
    pub latency_us: Option<i64>,
    /// The registry's policy version the decision was made under.
    pub policy_version: Option<i64>,
    /// The kind-specific part.
    pub detail: Option<Detail>,
}

impl AuditEvent {
    /// An event of `kind` with nothing else set.
    pub fn new(kind: EventKind) -> Self {
        Self {
            kind,
            actor: None,
            initiator: None,
            agent: None,
            task: None,
            template: None,
            call_id: None,
            tool: None,
            upstream: None,
            arg_digest: None,
            decision: None,
            tier: None,
            reason: None,
            outcome: None,
            latency_us: None,
            policy_version: None,
            detail: None,
        }
    }
}

pub(crate) fn bounded(v: Option<String>) -> Option<String> {
    v.map(|s| match truncate(&s, MAX_FIELD) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(t) => t,
    })
}

pub(crate) fn detail_text(d: Option<&Detail>) -> Option<String> {
    let text = serde_json::to_string(d?).ok()?;
    if text.len() <= MAX_DETAIL {
        return Some(text);
    }
    // Too long to keep whole: keep the type and say it was cut, never a broken JSON text.
    let tag = serde_json::to_value(d?)
        .ok()
        .and_then(|v| v.get("type").cloned())
        .unwrap_or(serde_json::Value::Null);
    Some(serde_json::json!({ "type": tag, "truncated": true, "bytes": text.len() }).to_string())
}
