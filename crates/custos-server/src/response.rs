//! The JSON bodies the API answers with: the server's own types, mapped from the broker's
//! domain types, so a change below the broker never changes the wire by accident. Each one
//! also describes itself to the OpenAPI document.

use custos_core::clock::rfc3339;
use custos_core::{AgentStatus, Change, ChangeOp, OperatorInfo, Role, StoredResource, Task};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code (`unauthenticated`, `forbidden`, `not_found`, `invalid_request`, …).
    pub code: String,
    /// A human message: never a secret or an internal detail.
    pub message: String,
}

/// An operator's role.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = Role)]
#[serde(rename_all = "lowercase")]
pub enum RoleBody {
    /// Everything.
    Admin,
    /// Starts and ends tasks; reads the registry.
    Initiator,
    /// Answers held calls; reads the registry.
    Approver,
    /// Reads and verifies the audit trail; reads the registry.
    Auditor,
}

impl From<Role> for RoleBody {
    fn from(r: Role) -> Self {
        match r {
            Role::Admin => RoleBody::Admin,
            Role::Initiator => RoleBody::Initiator,
            Role::Approver => RoleBody::Approver,
            Role::Auditor => RoleBody::Auditor,
        }
    }
}

/// What applying or deleting one resource did.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = ChangeOp)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOpBody {
    /// It did not exist.
    Created,
    /// It existed with another spec.
    Updated,
    /// It existed with the same spec; nothing was written.
    Unchanged,
    /// It was removed.
    Deleted,
}

/// One applied change.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Change)]
pub struct ChangeBody {
    /// `Upstream`, `Template` or `Agent`.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// The resource's immutable id: kept by updates; a re-created resource gets a new one.
    pub id: String,
    /// The version now current (for a delete: the version removed).
    pub version: i64,
    /// What happened.
    pub op: ChangeOpBody,
}

impl From<Change> for ChangeBody {
    fn from(c: Change) -> Self {
        Self {
            kind: c.kind.as_str().to_owned(),
            name: c.name,
            id: c.id,
            version: c.version,
            op: match c.op {
                ChangeOp::Created => ChangeOpBody::Created,
                ChangeOp::Updated => ChangeOpBody::Updated,
                ChangeOp::Unchanged => ChangeOpBody::Unchanged,
                ChangeOp::Deleted => ChangeOpBody::Deleted,
            },
        }
    }
}

/// What `POST /v1/apply` did, one entry per document in the order applied.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ApplyOutcome)]
pub struct ApplyBody {
    /// One entry per document.
    pub changes: Vec<ChangeBody>,
}

/// A stored resource and its current version.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Resource)]
pub struct ResourceBody {
    /// The resource as applied: `kind` and the fields of its spec.
    #[schema(value_type = Object)]
    pub resource: Map<String, Value>,
    /// Its immutable id: kept by updates; a re-created resource gets a new one.
    pub id: String,
    /// Starts at 1; every change adds one.
    pub version: i64,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Which operator changed it.
    pub updated_by: String,
}

impl From<StoredResource> for ResourceBody {
    fn from(r: StoredResource) -> Self {
        let mut resource = Map::new();
        resource.insert("kind".into(), r.kind.as_str().into());
        if let Value::Object(spec) = r.spec {
            resource.extend(spec);
        }
        Self {
            resource,
            id: r.id,
            version: r.version,
            updated_at: rfc3339(r.updated_at),
            updated_by: r.updated_by,
        }
    }
}

/// A new operator and its token, shown once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedOperator)]
pub struct CreatedOperatorBody {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: RoleBody,
    /// The operator token (`custos_op_…`). Only its hash is stored: it is not shown again.
    pub token: String,
}

/// An operator (never its token).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Operator)]
pub struct OperatorBody {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: RoleBody,
    /// When it was created (Unix ms).
    pub created_at: i64,
    /// Who created it (an operator, or `bootstrap`).
    pub created_by: String,
}

impl From<OperatorInfo> for OperatorBody {
    fn from(o: OperatorInfo) -> Self {
        Self {
            name: o.name,
            role: o.role.into(),
            created_at: o.created_at,
            created_by: o.created_by,
        }
    }
}

/// An agent's suspension, as just set.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AgentSuspension)]
pub struct SuspensionBody {
    /// The agent.
    pub name: String,
    /// Whether its tokens are refused.
    pub suspended: bool,
}

impl From<AgentStatus> for SuspensionBody {
    fn from(a: AgentStatus) -> Self {
        Self {
            name: a.name,
            suspended: a.suspended,
        }
    }
}

/// A task's lifecycle state.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = TaskState)]
#[serde(rename_all = "lowercase")]
pub enum TaskStateBody {
    /// Running until `expires`.
    Active,
    /// Ended; everything under it is refused.
    Ended,
}

/// A task.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Task)]
pub struct TaskBody {
    /// `task_…`.
    pub id: String,
    /// The agent doing the work.
    pub agent: String,
    /// That agent's immutable id: the task belongs to this registration of the agent.
    pub agent_id: String,
    /// The template it runs under.
    pub template: String,
    /// The template's version when the task started.
    pub template_version: i64,
    /// The operator who started it.
    pub started_by: String,
    /// The initiator: the human or event on whose behalf it runs.
    pub on_behalf_of: String,
    /// Why.
    pub purpose: Option<String>,
    /// When it started (Unix ms).
    pub created_at: i64,
    /// When it expires (Unix ms).
    pub expires_at: i64,
    /// Lifecycle state.
    pub state: TaskStateBody,
    /// When it ended (Unix ms).
    pub ended_at: Option<i64>,
    /// Who ended it.
    pub ended_by: Option<String>,
    /// Whether an untrusted tool has returned content to it (policy may raise its tiers).
    pub tainted: bool,
    /// When it was first tainted (Unix ms).
    pub tainted_at: Option<i64>,
    /// The tool that tainted it.
    pub tainted_by: Option<String>,
    /// The same as `id`, under the name `custos task start --json` prints.
    pub task_id: String,
    /// When it expires (RFC 3339).
    pub expires: String,
}

impl From<Task> for TaskBody {
    fn from(t: Task) -> Self {
        Self {
            task_id: t.id.to_string(),
            expires: rfc3339(t.expires_at),
            id: t.id.into(),
            agent: t.agent,
            agent_id: t.agent_id.into(),
            template: t.template,
            template_version: t.template_version,
            started_by: t.started_by,
            on_behalf_of: t.on_behalf_of,
            purpose: t.purpose,
            created_at: t.created_at,
            expires_at: t.expires_at,
            state: match t.state {
                custos_core::TaskState::Active => TaskStateBody::Active,
                custos_core::TaskState::Ended => TaskStateBody::Ended,
            },
            ended_at: t.ended_at,
            ended_by: t.ended_by,
            tainted: t.tainted_at.is_some(),
            tainted_at: t.tainted_at,
            tainted_by: t.tainted_by,
        }
    }
}

/// What re-reading the audit trail found.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = VerifyReport)]
pub struct VerifyBody {
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

impl From<custos_broker::VerifyReport> for VerifyBody {
    fn from(r: custos_broker::VerifyReport) -> Self {
        Self {
            ok: r.ok,
            records: r.records,
            last_seq: r.last_seq,
            last_hash: r.last_hash,
            problems: r.problems,
        }
    }
}

/// `GET /healthz` when the store answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthBody {
    /// `ok`.
    pub status: String,
    /// The database backend: `sqlite` or `postgres`.
    pub store: String,
}

/// The answer of the token exchange.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TokenResponse)]
pub struct TokenBody {
    /// The task token (EdDSA JWT).
    pub access_token: String,
    /// `urn:ietf:params:oauth:token-type:access_token`.
    pub issued_token_type: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: i64,
}

impl From<custos_broker::TokenResponse> for TokenBody {
    fn from(t: custos_broker::TokenResponse) -> Self {
        Self {
            access_token: t.access_token,
            issued_token_type: t.issued_token_type.to_owned(),
            token_type: t.token_type.to_owned(),
            expires_in: t.expires_in,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The wire shapes, key order included, as clients and the CLI read them.

    use custos_core::{Kind, TaskState};
    use serde_json::json;

    use super::*;

    fn wire(v: impl Serialize) -> String {
        serde_json::to_string(&v).expect("serialises")
    }

    #[test]
    fn a_task_keeps_its_fields_and_adds_task_id_and_expires() {
        let t = Task {
            id: custos_core::TaskId::parse("task_1").expect("id"),
            agent: "a".into(),
            agent_id: custos_core::AgentId::parse("agent_1").expect("id"),
            template: "t".into(),
            template_version: 2,
            started_by: "admin".into(),
            on_behalf_of: "alice@example.com".into(),
            purpose: None,
            created_at: 0,
            expires_at: 1_000,
            state: TaskState::Active,
            ended_at: None,
            ended_by: None,
            tainted_at: None,
            tainted_by: None,
        };
        assert_eq!(
            wire(TaskBody::from(t)),
            r#"{"id":"task_1","agent":"a","agent_id":"agent_1","template":"t","template_version":2,"started_by":"admin","on_behalf_of":"alice@example.com","purpose":null,"created_at":0,"expires_at":1000,"state":"active","ended_at":null,"ended_by":null,"tainted":false,"tainted_at":null,"tainted_by":null,"task_id":"task_1","expires":"1970-01-01T00:00:01Z"}"#
        );
    }

    #[test]
    fn a_resource_is_its_kind_and_spec_with_version_and_last_change() {
        let r = StoredResource {
            kind: Kind::Template,
            name: "docs".into(),
            id: "template_1".into(),
            version: 3,
            spec: json!({"name": "docs", "ttl": "30m"}),
            updated_at: 0,
            updated_by: "admin".into(),
        };
        assert_eq!(
            wire(ResourceBody::from(r)),
            r#"{"resource":{"kind":"Template","name":"docs","ttl":"30m"},"id":"template_1","version":3,"updated_at":"1970-01-01T00:00:00Z","updated_by":"admin"}"#
        );
    }

    #[test]
    fn changes_operators_suspensions_and_errors() {
        let c = Change {
            kind: Kind::Agent,
            name: "a".into(),
            id: "agent_1".into(),
            version: 1,
            op: ChangeOp::Created,
        };
        assert_eq!(
            wire(ApplyBody {
                changes: vec![c.into()]
            }),
            r#"{"changes":[{"kind":"Agent","name":"a","id":"agent_1","version":1,"op":"created"}]}"#
        );
        let o = OperatorInfo {
            name: "ops".into(),
            role: Role::Auditor,
            created_at: 5,
            created_by: "bootstrap".into(),
        };
        assert_eq!(
            wire(OperatorBody::from(o)),
            r#"{"name":"ops","role":"auditor","created_at":5,"created_by":"bootstrap"}"#
        );
        let a = AgentStatus {
            name: "a".into(),
            suspended: true,
            updated_at: 5,
            updated_by: "admin".into(),
        };
        assert_eq!(
            wire(SuspensionBody::from(a)),
            r#"{"name":"a","suspended":true}"#
        );
        assert_eq!(
            wire(ErrorBody {
                error: ErrorDetail {
                    code: "not_found".into(),
                    message: "no such endpoint".into(),
                },
            }),
            r#"{"error":{"code":"not_found","message":"no such endpoint"}}"#
        );
    }
}

/// A lease's state.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = LeaseState)]
#[serde(rename_all = "lowercase")]
pub enum LeaseStateBody {
    /// The intent is written; the credential may not exist yet.
    Pending,
    /// Minted and handed out.
    Active,
    /// Removed.
    Revoked,
    /// Minting failed, or revocation gave up after its retries (the principal may remain).
    Failed,
}

impl From<custos_core::LeaseState> for LeaseStateBody {
    fn from(s: custos_core::LeaseState) -> Self {
        match s {
            custos_core::LeaseState::Pending => LeaseStateBody::Pending,
            custos_core::LeaseState::Active => LeaseStateBody::Active,
            custos_core::LeaseState::Revoked => LeaseStateBody::Revoked,
            custos_core::LeaseState::Failed => LeaseStateBody::Failed,
        }
    }
}

/// A credential lease (never its password).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Lease)]
pub struct LeaseBody {
    /// `lease_…`.
    pub id: String,
    /// The credential role.
    pub role: String,
    /// `postgres`, `mysql`, `redis`, `jwt` or `static`.
    pub engine: String,
    /// The task it was minted for.
    pub task: String,
    /// The task's agent.
    pub agent: String,
    /// On whose behalf the task runs.
    pub initiator: String,
    /// The database user (or ACL user) name.
    pub principal: String,
    /// Lifecycle state.
    pub state: LeaseStateBody,
    /// When it was issued (RFC 3339).
    pub created: String,
    /// When it expires, or expired (RFC 3339).
    pub expires: String,
    /// When it was revoked (RFC 3339).
    pub revoked: Option<String>,
    /// When it was last renewed (RFC 3339).
    pub renewed: Option<String>,
    /// Failed revocation attempts.
    pub attempts: i64,
    /// The last failure (never a secret).
    pub last_error: Option<String>,
}

impl From<custos_core::Lease> for LeaseBody {
    fn from(l: custos_core::Lease) -> Self {
        Self {
            id: l.id,
            role: l.role,
            engine: l.engine,
            task: l.task.to_string(),
            agent: l.agent,
            initiator: l.initiator,
            principal: l.principal,
            state: l.state.into(),
            created: rfc3339(l.created_at),
            expires: rfc3339(l.expires_at),
            revoked: l.revoked_at.map(rfc3339),
            renewed: l.renewed_at.map(rfc3339),
            attempts: l.attempts,
            last_error: l.last_error,
        }
    }
}

/// A stored static secret: which role's, and when it was written (never its value).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StaticSecret)]
pub struct StaticSecretBody {
    /// The `static` credential role.
    pub role: String,
    /// When it was last written (RFC 3339).
    pub updated: String,
    /// The operator who wrote it.
    pub updated_by: String,
}

impl From<custos_core::StaticSecret> for StaticSecretBody {
    fn from(s: custos_core::StaticSecret) -> Self {
        Self {
            role: s.role,
            updated: rfc3339(s.updated_at),
            updated_by: s.updated_by,
        }
    }
}

/// An approval request's state.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = ApprovalState)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStateBody {
    /// Waiting for a human.
    Pending,
    /// Approved: the identical call may run once.
    Approved,
    /// Denied.
    Denied,
    /// Unanswered, or approved and unused, past its expiry.
    Expired,
    /// The approved call ran.
    Executed,
}

impl From<custos_core::ApprovalState> for ApprovalStateBody {
    fn from(s: custos_core::ApprovalState) -> Self {
        match s {
            custos_core::ApprovalState::Pending => ApprovalStateBody::Pending,
            custos_core::ApprovalState::Approved => ApprovalStateBody::Approved,
            custos_core::ApprovalState::Denied => ApprovalStateBody::Denied,
            custos_core::ApprovalState::Expired => ApprovalStateBody::Expired,
            custos_core::ApprovalState::Executed => ApprovalStateBody::Executed,
        }
    }
}

/// A held Tier 3 call: bound to its task, tool, argument digest and policy version.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Approval)]
pub struct ApprovalBody {
    /// `apr_…`.
    pub id: String,
    /// The task whose call is held.
    pub task: String,
    /// The task's agent.
    pub agent: String,
    /// On whose behalf the task runs.
    pub initiator: String,
    /// The operator who started the task.
    pub started_by: String,
    /// The exposed tool name.
    pub tool: String,
    /// The upstream serving it.
    pub upstream: String,
    /// The call's arguments, secrets redacted.
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
    /// SHA-256 of the canonical arguments: what the approval binds.
    pub digest: String,
    /// The call's tier.
    pub tier: u8,
    /// The policy version the call was decided under.
    pub policy_version: i64,
    /// The policies that held it.
    pub rule: String,
    /// State as of now.
    pub state: ApprovalStateBody,
    /// When it was requested (RFC 3339).
    pub created: String,
    /// When it expires, unanswered or approved and unused (RFC 3339).
    pub expires: String,
    /// When it was answered (RFC 3339).
    pub decided: Option<String>,
    /// Who answered it.
    pub decided_by: Option<String>,
    /// The approver's note on a denial.
    pub note: Option<String>,
    /// When the approved call ran (RFC 3339).
    pub executed: Option<String>,
}

impl From<custos_core::Approval> for ApprovalBody {
    fn from(a: custos_core::Approval) -> Self {
        Self {
            id: a.id.to_string(),
            task: a.task.to_string(),
            agent: a.agent,
            initiator: a.initiator,
            started_by: a.started_by,
            tool: a.tool,
            upstream: a.upstream,
            arguments: a.arguments,
            digest: a.digest,
            tier: a.tier.number(),
            policy_version: a.policy_version,
            rule: a.rule,
            state: a.state.into(),
            created: rfc3339(a.created_at),
            expires: rfc3339(a.expires_at),
            decided: a.decided_at.map(rfc3339),
            decided_by: a.decided_by,
            note: a.note,
            executed: a.executed_at.map(rfc3339),
        }
    }
}

/// What would happen to one call, and why (`custos policy explain`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Explanation)]
pub struct ExplanationBody {
    /// The task.
    pub task: String,
    /// Its template.
    pub template: String,
    /// The tool as asked.
    pub tool: String,
    /// SHA-256 of the canonical arguments.
    pub digest: String,
    /// `allow`, `hold` (Tier 3: an approval is needed) or `deny`.
    pub decision: String,
    /// The reason code the call would get (`permitted` when allowed).
    pub reason: String,
    /// What the agent would be told when refused or held.
    pub message: Option<String>,
    /// The tier, when classified.
    pub tier: Option<u8>,
    /// The template entries that allow the call (Cedar policy ids).
    pub allowed_by: Vec<String>,
    /// The policies that set its tier.
    pub tiered_by: Vec<String>,
    /// Policies that could not be evaluated on these arguments (counted against the call).
    pub errors: Vec<String>,
    /// Raw `forbid` policies (`kind: Policy`) that refuse the call.
    pub forbidden_by: Vec<String>,
    /// Whether the task is tainted.
    pub tainted: bool,
    /// The tool that tainted it.
    pub tainted_by: Option<String>,
    /// The policy version this was decided under.
    pub policy_version: i64,
    /// For a held call: the latest approval request for exactly this call.
    pub approval: Option<ApprovalBody>,
    /// The Cedar policies the call was evaluated against.
    pub cedar: Option<String>,
}

impl From<custos_broker::CallExplanation> for ExplanationBody {
    fn from(e: custos_broker::CallExplanation) -> Self {
        Self {
            task: e.task.to_string(),
            template: e.template,
            tool: e.tool,
            digest: e.digest,
            decision: e.decision.as_str().to_owned(),
            reason: e.reason.as_str().to_owned(),
            message: e.message,
            tier: e.tier.map(custos_core::Tier::number),
            allowed_by: e.allowed_by,
            tiered_by: e.tiered_by,
            errors: e.errors,
            forbidden_by: e.forbidden_by,
            tainted: e.tainted,
            tainted_by: e.tainted_by,
            policy_version: e.policy_version,
            approval: e.approval.map(ApprovalBody::from),
            cedar: e.cedar,
        }
    }
}

/// One pinned tool.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PinnedTool)]
pub struct PinnedToolBody {
    /// The tool, as the upstream names it.
    pub tool: String,
    /// SHA-256 of its definition's canonical text.
    pub digest: String,
}

/// An upstream's tools, approved and pinned.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PinnedUpstream)]
pub struct PinnedUpstreamBody {
    /// The upstream.
    pub upstream: String,
    /// Every tool now pinned.
    pub tools: Vec<PinnedToolBody>,
    /// Tools whose pinned definition this approval changed.
    pub changed: Vec<String>,
    /// Tools no longer served whose pins were dropped.
    pub dropped: Vec<String>,
}

impl From<custos_broker::PinnedUpstream> for PinnedUpstreamBody {
    fn from(p: custos_broker::PinnedUpstream) -> Self {
        Self {
            upstream: p.upstream,
            tools: p
                .tools
                .into_iter()
                .map(|(tool, digest)| PinnedToolBody { tool, digest })
                .collect(),
            changed: p.changed,
            dropped: p.dropped,
        }
    }
}
