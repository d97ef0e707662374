//! Approvals: the hold stage of the pipeline (a Tier 3 call waits for a human, bound to the
//! exact call) and the approvers' use cases (list, show, approve, deny).
//!
//! An approval binds the task, the exposed tool, the digest of the canonical arguments and
//! the policy version. It answers once and allows one call: the identical call made while it
//! is approved and unexpired. Every transition is a conditional write in the store, so racing
//! calls and replicas never use one approval twice.

use std::time::{Duration, Instant};

use custos_audit::{AuditEvent, Detail, EventKind};
use custos_core::approval::arguments_for_review;
use custos_core::operator::Permission;
use custos_core::text::truncate;
use custos_core::{Approval, ApprovalId, ApprovalState, Reason, TaskId};
use custos_policy::{HeldCall, PermittedCall, Refusal};
use custos_store::Answer;

use crate::call::TaskContext;
use crate::{Broker, BrokerError, Operator};

/// How often a waiting call re-reads its approval when no answer was announced in this
/// process (an approver may answer through another replica).
const POLL: Duration = Duration::from_millis(500);
/// The longest note a denial keeps.
const MAX_NOTE: usize = 1024;
/// The most approvals one listing returns.
const LIST_LIMIT: i64 = 500;

/// How long held calls wait and approvals live.
#[derive(Debug, Clone)]
pub struct ApprovalConfig {
    /// How long a held call waits for an answer before it is refused with
    /// `approval_pending` (the identical call may be retried).
    pub hold: Duration,
    /// How long an approval request lives: unanswered, or approved and unused.
    pub ttl: Duration,
    /// Whether the task's initiator and the operator who started it are refused as its
    /// approvers.
    pub separation_of_duties: bool,
    /// The most approvals of one task waiting for an answer at once; past it, new held calls
    /// are refused (an agent cannot flood approvers).
    pub max_pending_per_task: i64,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            hold: Duration::from_secs(25),
            ttl: Duration::from_secs(600),
            separation_of_duties: true,
            max_pending_per_task: 16,
        }
    }
}

/// An approval request written or answered, as announced on [`Broker::approval_events`].
#[derive(Debug, Clone)]
pub enum ApprovalEvent {
    /// A held call's request, written and recorded: someone should answer it.
    Requested(Approval),
    /// A request answered (its state says how).
    Answered(Approval),
}

/// What an approver needs beside the request itself to judge it.
#[derive(Debug, Clone, Default)]
pub struct ApprovalContext {
    /// The task's purpose, as the operator who started it wrote it.
    pub purpose: Option<String>,
    /// The task's latest tool-call records before now, oldest first (at most 10).
    pub recent_calls: Vec<RecentCall>,
}

/// One earlier tool-call record of a task.
#[derive(Debug, Clone)]
pub struct RecentCall {
    /// Unix ms.
    pub at: i64,
    /// The exposed tool.
    pub tool: String,
    /// `allow`, `deny` or `hold` for a decision; the outcome for a result.
    pub what: String,
    /// The reason code, when refused or held.
    pub reason: Option<String>,
}

/// What the hold stage made of a held call.
pub(crate) enum HoldOutcome<'a> {
    /// An approval allows it: this call runs.
    Run(PermittedCall<'a>),
    /// Not (yet) allowed.
    Refuse(Refusal),
}

impl Broker {
    /// The hold stage: the held call runs if an approval allows it now or within the hold;
    /// otherwise it is refused with `approval_pending` (and can be retried), `approval_denied`
    /// or `approval_expired`. A new request is written (and recorded) before the wait.
    pub(crate) async fn hold<'a>(
        &self,
        ctx: &TaskContext,
        call_id: Option<&str>,
        held: HeldCall<'a>,
    ) -> Result<HoldOutcome<'a>, BrokerError> {
        let task = TaskId::parse(ctx.task_id())
            .ok_or_else(|| BrokerError::Invalid("malformed task id".into()))?;
        let tool = held.tool().to_string();
        let deadline = Instant::now() + self.inner.config.approvals.hold;
        let mut current = self
            .inner
            .store
            .latest_approval_for(&task, &tool, held.digest(), held.policy_version())
            .await?;
        loop {
            // Registered before the state is read, so an answer in between is not missed.
            let answered = self.inner.approval_answers.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let now = self.now();
            let approval = match current.take() {
                Some(a) => match a.state_at(now) {
                    ApprovalState::Pending => a,
                    ApprovalState::Approved => {
                        if self.inner.store.use_approval(&a.id, now).await? {
                            return Ok(HoldOutcome::Run(held.into_permitted(a.id.as_str())));
                        }
                        // Used by an identical call a moment ago, or just expired: re-read.
                        current = self.inner.store.get_approval(&a.id).await?;
                        continue;
                    }
                    ApprovalState::Denied => {
                        return Ok(HoldOutcome::Refuse(answered_refusal(
                            &held,
                            &a,
                            Reason::ApprovalDenied,
                        )));
                    }
                    ApprovalState::Expired if !a.expiry_reported => {
                        self.inner.store.report_approval_expiry(&a.id).await?;
                        return Ok(HoldOutcome::Refuse(answered_refusal(
                            &held,
                            &a,
                            Reason::ApprovalExpired,
                        )));
                    }
                    // Used, or expired and reported: this call needs an approval of its own.
                    ApprovalState::Expired | ApprovalState::Executed => {
                        match self.request_approval(ctx, call_id, &task, &held).await? {
                            Ok(a) => a,
                            Err(refusal) => return Ok(HoldOutcome::Refuse(refusal)),
                        }
                    }
                },
                None => match self.request_approval(ctx, call_id, &task, &held).await? {
                    Ok(a) => a,
                    Err(refusal) => return Ok(HoldOutcome::Refuse(refusal)),
                },
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(HoldOutcome::Refuse(pending_refusal(&held, &approval)));
            }
            tokio::select! {
                () = &mut answered => {}
                () = tokio::time::sleep(left.min(POLL)) => {}
                () = self.inner.stopping.cancelled() => {
                    return Ok(HoldOutcome::Refuse(pending_refusal(&held, &approval)));
                }
            }
            current = self.inner.store.get_approval(&approval.id).await?;
        }
    }

    /// Writes a new approval request for a held call and records it, unless the task already
    /// has as many waiting as it may.
    async fn request_approval(
        &self,
        ctx: &TaskContext,
        call_id: Option<&str>,
        task: &TaskId,
        held: &HeldCall<'_>,
    ) -> Result<Result<Approval, Refusal>, BrokerError> {
        let now = self.now();
        let config = &self.inner.config.approvals;
        if self.inner.store.pending_approvals_of(task, now).await? >= config.max_pending_per_task {
            return Ok(Err(Refusal {
                reason: Reason::ApprovalLimit,
                message: format!(
                    "tool `{}` is Tier 3 and needs a human approval, but this task already has {} waiting; retry once they are answered",
                    held.tool(),
                    config.max_pending_per_task
                ),
                tier: Some(held.tier()),
                upstream: Some(held.upstream().name.clone()),
                approval: None,
            }));
        }
        let started_by = self
            .inner
            .store
            .get_task(task)
            .await?
            .map(|t| t.started_by)
            .ok_or_else(|| BrokerError::NotFound(format!("task `{task}` not found")))?;
        let ttl = i64::try_from(config.ttl.as_millis()).unwrap_or(i64::MAX);
        let id = ApprovalId::parse(&custos_crypto::new_id(ApprovalId::PREFIX))
            .ok_or_else(|| BrokerError::Invalid("approval id".into()))?;
        let approval = Approval {
            id,
            task: task.clone(),
            agent: ctx.agent().to_owned(),
            initiator: ctx.initiator().to_owned(),
            started_by,
            tool: held.tool().to_string(),
            upstream: held.upstream().name.clone(),
            arguments: arguments_for_review(held.arguments()),
            digest: held.digest().to_owned(),
            tier: held.tier(),
            policy_version: held.policy_version(),
            rule: truncate(held.tiered_by(), 1024).into_owned(),
            state: ApprovalState::Pending,
            created_at: now,
            expires_at: now.saturating_add(ttl),
            decided_at: None,
            decided_by: None,
            note: None,
            executed_at: None,
            expiry_reported: false,
        };
        // Recorded before it is stored: no request can be answered that the trail lacks.
        let mut e = ctx.event(EventKind::ApprovalRequested);
        e.call_id = call_id.map(str::to_owned);
        fill_call(&mut e, &approval);
        e.decision = Some(custos_core::Decision::Hold);
        e.reason = Some(Reason::ApprovalPending);
        self.record(e).await?;
        self.inner.store.insert_approval(&approval).await?;
        self.inner.metrics.approval(ApprovalState::Pending);
        let _ = self
            .inner
            .approval_events
            .send(ApprovalEvent::Requested(approval.clone()));
        tracing::info!(approval = %approval.id, task = %approval.task, agent = %approval.agent, tool = %custos_core::text::escape_unsafe(&approval.tool), "tool call held for approval");
        Ok(Ok(approval))
    }

    /// Approvals: those waiting for an answer, or (with `all`) the most recent of every state;
    /// with `task`, only that task's.
    /// States are as of now (an unanswered request past its expiry is `expired`).
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] unless the operator may approve or audit.
    pub async fn list_approvals(
        &self,
        op: &Operator,
        all: bool,
        task: Option<&TaskId>,
    ) -> Result<Vec<Approval>, BrokerError> {
        require_reviewer(op)?;
        let now = self.now();
        let mut list = self
            .inner
            .store
            .list_approvals(all, task, now, LIST_LIMIT)
            .await?;
        for a in &mut list {
            a.state = a.state_at(now);
        }
        Ok(list)
    }

    /// One approval, its state as of now.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for an unknown id; [`BrokerError::Forbidden`] unless the
    /// operator may approve or audit.
    pub async fn get_approval(
        &self,
        op: &Operator,
        id: &ApprovalId,
    ) -> Result<Approval, BrokerError> {
        require_reviewer(op)?;
        let mut a = self
            .inner
            .store
            .get_approval(id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("approval `{id}` not found")))?;
        a.state = a.state_at(self.now());
        Ok(a)
    }

    /// Answers a pending approval: once, by an approver who is neither the task's initiator
    /// nor the operator who started it (separation of duties, unless turned off). The answer
    /// is recorded with the approver as actor; a call waiting on it wakes at once.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] for an operator who may not answer it,
    /// [`BrokerError::NotFound`] for an unknown id, [`BrokerError::Conflict`] when it was
    /// already answered or has expired.
    pub async fn answer_approval(
        &self,
        op: &Operator,
        id: &ApprovalId,
        answer: Answer,
        note: Option<&str>,
    ) -> Result<Approval, BrokerError> {
        // On a task of its own: an approver who hangs up mid-answer leaves either no answer
        // or a recorded one, never an unrecorded one.
        let (broker, op, id) = (self.clone(), op.clone(), id.clone());
        let note = note.map(str::to_owned);
        self.to_completion("approval answer", async move {
            broker.answer_now(&op, &id, answer, note.as_deref()).await
        })
        .await?
    }

    async fn answer_now(
        &self,
        op: &Operator,
        id: &ApprovalId,
        answer: Answer,
        note: Option<&str>,
    ) -> Result<Approval, BrokerError> {
        op.require(Permission::Approve)?;
        let note = note.map(|n| truncate(n, MAX_NOTE).into_owned());
        let before = self.get_approval(op, id).await?;
        if self.inner.config.approvals.separation_of_duties {
            if op.name == before.initiator {
                return Err(BrokerError::Forbidden(format!(
                    "`{}` initiated task `{}` and cannot answer its approvals (separation of duties)",
                    op.name, before.task
                )));
            }
            if op.name == before.started_by {
                return Err(BrokerError::Forbidden(format!(
                    "`{}` started task `{}` and cannot answer its approvals (separation of duties)",
                    op.name, before.task
                )));
            }
        }
        let now = self.now();
        if !self
            .inner
            .store
            .answer_approval(id, answer, &op.name, note.as_deref(), now)
            .await?
        {
            let state = self.get_approval(op, id).await?.state;
            return Err(BrokerError::Conflict(format!(
                "approval `{id}` is {}: it can no longer be answered",
                state.as_str()
            )));
        }
        let after = self.get_approval(op, id).await?;
        let mut e = AuditEvent::new(EventKind::ApprovalAnswered);
        e.actor = Some(op.name.clone());
        e.initiator = Some(after.initiator.clone());
        e.agent = Some(after.agent.clone());
        e.task = Some(after.task.to_string());
        fill_call(&mut e, &after);
        let (decision, reason) = match answer {
            Answer::Approve => (custos_core::Decision::Allow, Reason::Permitted),
            Answer::Deny => (custos_core::Decision::Deny, Reason::ApprovalDenied),
        };
        e.decision = Some(decision);
        e.reason = Some(reason);
        if let Err(err) = self.record(e).await {
            // An answer that cannot be recorded does not stand (fail closed). A held call that
            // used it in between is on record itself (its decision names the approval).
            if let Err(undo) = self.inner.store.unanswer_approval(id, &op.name).await {
                tracing::error!(approval = %id, error = %undo, "unrecorded approval answer could not be withdrawn");
            }
            return Err(err);
        }
        self.inner.metrics.approval(after.state);
        self.inner.approval_answers.notify_waiters();
        let _ = self
            .inner
            .approval_events
            .send(ApprovalEvent::Answered(after.clone()));
        tracing::info!(approval = %id, task = %after.task, approver = %op.name, state = after.state.as_str(), "approval answered");
        Ok(after)
    }

    /// Records that an approval request was delivered to a notification channel (the
    /// webhook), so the trail shows who could have known when.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the audit log cannot be written.
    pub async fn record_approval_notified(
        &self,
        a: &Approval,
        channel: &str,
    ) -> Result<(), BrokerError> {
        let mut e = AuditEvent::new(EventKind::ApprovalNotified);
        e.initiator = Some(a.initiator.clone());
        e.agent = Some(a.agent.clone());
        e.task = Some(a.task.to_string());
        e.actor = Some(channel.to_owned());
        fill_call(&mut e, a);
        self.record(e).await
    }

    /// The context of one approval request: its task's purpose and latest calls.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] unless the operator may approve or audit.
    pub async fn approval_context(
        &self,
        op: &Operator,
        a: &Approval,
    ) -> Result<ApprovalContext, BrokerError> {
        require_reviewer(op)?;
        let purpose = self
            .inner
            .store
            .get_task(&a.task)
            .await?
            .and_then(|t| t.purpose);
        let mut records = self
            .inner
            .store
            .recent_tool_records(a.task.as_str(), 10)
            .await?;
        records.reverse();
        let recent: Vec<RecentCall> = records
            .into_iter()
            .map(|r| RecentCall {
                at: r.at,
                tool: r.tool.unwrap_or_default(),
                what: if r.kind == "tool_result" {
                    format!("result: {}", r.outcome.unwrap_or_default())
                } else {
                    r.decision.unwrap_or_default()
                },
                reason: r.reason.filter(|r| r != "permitted"),
            })
            .collect();
        Ok(ApprovalContext {
            purpose,
            recent_calls: recent,
        })
    }

    pub(crate) fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }
}

fn require_reviewer(op: &Operator) -> Result<(), BrokerError> {
    op.require(Permission::Approve)
        .or_else(|_| op.require(Permission::Audit))
}

/// The call-binding fields and the approval detail of an approval's audit record.
fn fill_call(e: &mut AuditEvent, a: &Approval) {
    e.tool = Some(a.tool.clone());
    e.upstream = Some(a.upstream.clone());
    e.arg_digest = Some(a.digest.clone());
    e.tier = Some(a.tier);
    e.policy_version = Some(a.policy_version);
    e.detail = Some(Detail::Approval {
        approval_id: a.id.to_string(),
        state: a.state.as_str().to_owned(),
        expires_at: a.expires_at,
        note: a.note.clone(),
    });
}

fn pending_refusal(held: &HeldCall<'_>, a: &Approval) -> Refusal {
    Refusal {
        reason: Reason::ApprovalPending,
        message: format!(
            "tool `{}` is Tier 3: held for a human approval ({}); retry the identical call once it is approved",
            held.tool(),
            a.id
        ),
        tier: Some(held.tier()),
        upstream: Some(held.upstream().name.clone()),
        approval: Some(a.id.clone()),
    }
}

fn answered_refusal(held: &HeldCall<'_>, a: &Approval, reason: Reason) -> Refusal {
    let what = match reason {
        Reason::ApprovalDenied => "was denied",
        _ => "expired",
    };
    Refusal {
        reason,
        message: format!(
            "tool `{}` is Tier 3 and its approval {} {what}",
            held.tool(),
            a.id
        ),
        tier: Some(held.tier()),
        upstream: Some(held.upstream().name.clone()),
        approval: Some(a.id.clone()),
    }
}
