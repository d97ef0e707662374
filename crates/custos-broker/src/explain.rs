//! `policy explain`: what would happen to one call of a task, and why — decided exactly as the
//! pipeline decides it (the same snapshot, taint and Cedar slice), without calling anything.

use custos_core::operator::Permission;
use custos_core::{Approval, Decision, Reason, TaskId, Tier};
use custos_policy::{CallRequest, PolicyView, Verdict};
use serde_json::Value;

use crate::{Broker, BrokerError, Operator};

/// What would happen to one call, and why.
#[derive(Debug, Clone)]
pub struct CallExplanation {
    /// The task.
    pub task: TaskId,
    /// Its template.
    pub template: String,
    /// The tool as asked.
    pub tool: String,
    /// SHA-256 of the canonical arguments.
    pub digest: String,
    /// Allow, hold (Tier 3: an approval is needed) or deny.
    pub decision: Decision,
    /// The reason code the call would get (`permitted` when allowed).
    pub reason: Reason,
    /// What the agent would be told when refused.
    pub message: Option<String>,
    /// The tier, when classified.
    pub tier: Option<Tier>,
    /// The template entries that allow the call (Cedar policy ids).
    pub allowed_by: Vec<String>,
    /// The policies that set its tier.
    pub tiered_by: Vec<String>,
    /// Policies that could not be evaluated on these arguments (counted against the call).
    pub errors: Vec<String>,
    /// Raw `forbid` policies that refuse the call.
    pub forbidden_by: Vec<String>,
    /// Whether the task is tainted, and by which tool.
    pub tainted: bool,
    /// The tool that tainted it.
    pub tainted_by: Option<String>,
    /// The policy version this was decided under.
    pub policy_version: i64,
    /// For a held call: the latest approval request for exactly this call, if any (shown to
    /// operators who may see approvals: approvers, auditors, admins).
    pub approval: Option<Approval>,
    /// The Cedar policies the call was evaluated against.
    pub cedar: Option<String>,
}

impl Broker {
    /// Explains how a call of `tool` with `arguments` by task `id` would be decided now.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for an unknown task; [`BrokerError::Unavailable`] when the
    /// store cannot be read.
    pub async fn explain<U: crate::Upstreams>(
        &self,
        op: &Operator,
        id: &TaskId,
        tool: &str,
        arguments: Value,
        upstreams: &U,
    ) -> Result<CallExplanation, BrokerError> {
        op.require(Permission::Read)?;
        let task = self
            .inner
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("task `{id}` not found")))?;
        let snap = self.snapshot().await?;
        let view = PolicyView {
            template: snap.templates.get(&task.template).map(|t| &t.spec),
            upstreams: &snap.upstreams,
            version: snap.policy_version,
            compiled: &snap.compiled,
            tainted: task.tainted_at.is_some(),
        };
        // A trusted upstream's annotations, as the task's own connection serves them.
        let proposed = self
            .proposed_tier(&snap, None, id.as_str(), tool, upstreams)
            .await;
        let request = CallRequest::new(id.as_str(), tool, arguments).with_proposed_tier(proposed);
        let digest = request.digest().to_owned();
        let (verdict, why) = custos_policy::decide_explained(view, request);
        let (decision, reason, message, held) = match &verdict {
            Verdict::Permit(_) => (Decision::Allow, Reason::Permitted, None, None),
            Verdict::Hold(h) => (
                Decision::Hold,
                Reason::ApprovalPending,
                Some(format!(
                    "tool `{}` is Tier 3: the call would be held for a human approval",
                    h.tool()
                )),
                Some((h.tool().to_string(), h.policy_version())),
            ),
            Verdict::Deny(r) => (Decision::Deny, r.reason, Some(r.message.clone()), None),
        };
        // Approval requests are for approvers and auditors to see, as in `approvals list`.
        let may_review =
            op.role().allows(Permission::Approve) || op.role().allows(Permission::Audit);
        let approval = match held.filter(|_| may_review) {
            Some((exposed, version)) => {
                let mut a = self
                    .inner
                    .store
                    .latest_approval_for(id, &exposed, &digest, version)
                    .await?;
                if let Some(a) = &mut a {
                    a.state = a.state_at(self.now());
                }
                a
            }
            None => None,
        };
        Ok(CallExplanation {
            task: task.id,
            template: task.template,
            tool: custos_core::text::truncate(tool, 128).into_owned(),
            digest,
            decision,
            reason,
            message,
            tier: why.tier,
            allowed_by: why.allowed_by,
            tiered_by: why.tiered_by,
            errors: why.errors,
            forbidden_by: why.forbidden_by,
            tainted: why.tainted,
            tainted_by: task.tainted_by,
            policy_version: snap.policy_version,
            approval,
            cedar: why.cedar.map(|c| c.to_string()),
        })
    }
}
