//! One tool call through the pipeline, and the filtered tool list.
//!
//! ```text
//! decide (policy: Permit | Hold | Deny)
//!   -> pinned: a permitted or held call whose tool's definition is not the approved one is
//!        denied (module `pins`)
//!   -> Hold: wait for an approval bound to this exact call (module `approvals`)
//!        -> approved: the call goes on as the one permitted call the approval allows
//!        -> pending past the hold, denied, expired: finish (record, answer)
//!   -> Deny: finish (record, answer)
//!   -> Permit: commit the decision record (durable, write-ahead)
//!        -> connection: the task's credentials for the upstream, issued on first use, or
//!           a call's own, minted for it (module `inject`)
//!        -> call upstream, bounded by its timeout; its notifications about the call
//!           (progress, log messages) relayed to the agent, scrubbed like the result
//!           (module `relay`)
//!        -> redact: injected credentials cut out of the result or error
//!        -> a call's own credentials revoked
//!        -> [scan result]                     (scanners)
//!        -> taint: an untrusted tool's content taints the task
//!        -> finish (result record, answer)
//! ```
//! Each stage is one function below; [`Broker::finish`] ends every call. The pipeline runs on
//! a task of its own: a client that hangs up cannot stop it between the upstream call and the
//! record of its outcome.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_audit::{AuditEvent, Detail, EventKind};
use custos_core::text::truncate;
use custos_core::{Decision, ExposedTool, Outcome, Reason, Tier, UpstreamSpec};
use custos_crypto::{TaskClaims, new_id};
use custos_policy::{CallRequest, PermittedCall, PolicyView, Refusal, Verdict};
use serde_json::Value;
use thiserror::Error;

use crate::approvals::HoldOutcome;
use crate::inject::Injection;
use crate::pins::PinStatus;
use crate::registry::Snapshot;
use crate::relay::CallChannel;
use crate::{Broker, BrokerError};

/// The longest tool name stored in an audit record.
const MAX_TOOL_FIELD: usize = 128;

/// An authenticated task: its token's claims and the registry as of this request. Only the
/// broker builds one, by authenticating a task token.
#[derive(Debug, Clone)]
pub struct TaskContext {
    claims: TaskClaims,
    snapshot: Arc<Snapshot>,
    tainted: bool,
}

impl TaskContext {
    pub(crate) fn new(claims: TaskClaims, snapshot: Arc<Snapshot>, tainted: bool) -> Self {
        Self {
            claims,
            snapshot,
            tainted,
        }
    }

    /// Whether the task was tainted when this request was authenticated.
    pub fn tainted(&self) -> bool {
        self.tainted
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.claims.task_id
    }

    /// The agent's name.
    pub fn agent(&self) -> &str {
        &self.claims.act.sub
    }

    /// The task's template.
    pub fn template(&self) -> &str {
        &self.claims.template
    }

    /// The human or event on whose behalf the task runs.
    pub fn initiator(&self) -> &str {
        &self.claims.sub
    }

    /// The name policy and the audit log give the tool the agent called `name`
    /// ([`Snapshot::canonical_tool`]).
    pub fn canonical_tool<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        self.snapshot.canonical_tool(&self.claims.template, name)
    }

    /// The upstream whose resource `uri` is, when the task's template allows it (its first
    /// resource entry that matches).
    pub fn resource_upstream(&self, uri: &str) -> Option<&str> {
        self.snapshot
            .templates
            .get(&self.claims.template)
            .and_then(|t| t.spec.resource_upstream(uri))
    }

    /// The registry snapshot this request is decided against.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// An audit event carrying the task's attribution chain.
    pub(crate) fn event(&self, kind: EventKind) -> AuditEvent {
        let mut e = AuditEvent::new(kind);
        e.initiator = Some(self.claims.sub.clone());
        e.agent = Some(self.claims.act.sub.clone());
        e.task = Some(self.claims.task_id.clone());
        e.template = Some(self.claims.template.clone());
        e
    }
}

/// An upstream that failed to answer.
#[derive(Debug, Clone, Error)]
pub enum UpstreamError {
    /// No answer within the upstream's timeout; the upstream is restarted.
    #[error("upstream `{0}` did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The upstream could not be started, reached, or it died.
    #[error("upstream `{0}` failed: {1}")]
    Failed(String, String),
    /// The agent cancelled the call; the upstream was sent `notifications/cancelled`.
    #[error("the call to upstream `{0}` was cancelled by the agent")]
    Cancelled(String),
    /// The upstream answered with a JSON-RPC error.
    #[error("upstream `{upstream}` returned error {code}: {message}")]
    Rpc {
        /// The upstream.
        upstream: String,
        /// JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
        /// Its `data`, relayed to the agent when small (at most 4 KiB as JSON); never
        /// recorded in the audit log.
        data: Option<Box<Value>>,
    },
}

impl UpstreamError {
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            UpstreamError::Timeout(..) => Outcome::Timeout,
            UpstreamError::Failed(..) => Outcome::UpstreamFailed,
            UpstreamError::Cancelled(..) => Outcome::Cancelled,
            UpstreamError::Rpc { .. } => Outcome::ToolError,
        }
    }
}

/// One tool as an upstream serves it: the raw MCP tool object and the digest that pins its
/// definition, computed once when the tool is listed.
#[derive(Debug, Clone)]
pub struct ListedTool {
    /// The MCP tool object, its name as the upstream gives it.
    pub definition: Value,
    /// [`custos_crypto::tool_definition_digest`] of it.
    pub digest: String,
}

impl ListedTool {
    /// A listed tool, its digest computed.
    pub fn new(definition: Value) -> Self {
        let digest = custos_crypto::tool_definition_digest(&definition);
        Self { definition, digest }
    }

    /// Its name as the upstream gives it.
    pub fn name(&self) -> Option<&str> {
        self.definition.get("name").and_then(Value::as_str)
    }
}

/// One task's way to one upstream: the upstream, whom the connection serves, and the
/// credentials it carries. Only the broker builds one, after issuing those credentials, so the
/// gateway cannot start a credentialed connection the broker did not provision.
#[derive(Debug, Clone)]
pub struct Connection<'a> {
    upstream: &'a UpstreamSpec,
    task: &'a str,
    injection: Option<Arc<Injection>>,
    /// A connection for one call, with credentials minted for it: made for that call and
    /// stopped after it.
    one_call: bool,
}

impl<'a> Connection<'a> {
    /// A connection to an upstream that takes no credentials; `None` for one that does (only
    /// the broker issues those).
    pub fn without_credentials(upstream: &'a UpstreamSpec, task: &'a str) -> Option<Self> {
        upstream.credentials.is_empty().then_some(Self {
            upstream,
            task,
            injection: None,
            one_call: false,
        })
    }

    /// The upstream.
    pub fn upstream(&self) -> &'a UpstreamSpec {
        self.upstream
    }

    /// The task it serves (a `scope: task` upstream answers on that task's own connection),
    /// or an id of its own for a connection no task owns.
    pub fn task(&self) -> &'a str {
        self.task
    }

    /// The credentials to inject, for an upstream that takes some.
    pub fn injection(&self) -> Option<&Arc<Injection>> {
        self.injection.as_ref()
    }

    /// Whether this connection serves one call only (credentials minted for that call): it
    /// is made for the call, shared with nothing, and stopped when the call ends.
    pub fn one_call(&self) -> bool {
        self.one_call
    }
}

/// The MCP client side, implemented by the gateway: lists and calls tools on upstreams.
pub trait Upstreams: Send + Sync + 'static {
    /// The upstream's tools, as `conn` serves them, with the credentials injected into it cut
    /// out of each definition ([`Injection::redact_json`]) before its digest is computed.
    fn list_tools(
        &self,
        conn: &Connection<'_>,
    ) -> impl Future<Output = Result<Vec<ListedTool>, UpstreamError>> + Send;

    /// The tool `name` (as the upstream names it) as `conn` serves it, if it lists one.
    fn find_tool(
        &self,
        conn: &Connection<'_>,
        name: &str,
    ) -> impl Future<Output = Result<Option<ListedTool>, UpstreamError>> + Send {
        async move {
            Ok(self
                .list_tools(conn)
                .await?
                .into_iter()
                .find(|t| t.name() == Some(name)))
        }
    }

    /// Makes one permitted call on `conn`; the result is the raw MCP `CallToolResult`. When
    /// the channel's cancellation fires first, the upstream is sent `notifications/cancelled`
    /// for it and the answer is [`UpstreamError::Cancelled`]. The upstream's notifications
    /// about the call go to [`CallChannel::notify`]; when the channel
    /// [wants progress](CallChannel::wants_progress), the upstream is asked for it.
    fn call_tool(
        &self,
        call: &PermittedCall<'_>,
        conn: &Connection<'_>,
        channel: &CallChannel,
    ) -> impl Future<Output = Result<Value, UpstreamError>> + Send;

    /// Sends one request of another MCP method on `conn` (`resources/list`,
    /// `resources/read`, `prompts/get`, …), decided and recorded by the broker; its raw
    /// result.
    fn request(
        &self,
        conn: &Connection<'_>,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, UpstreamError>> + Send;
}

/// A call that did not produce a tool result.
#[derive(Debug, Error)]
pub enum CallError {
    /// Refused by policy; the upstream was not called.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// Allowed, but the upstream failed.
    #[error("{0}")]
    Upstream(UpstreamError),
    /// The broker could not decide or record (fail closed).
    #[error("{0}")]
    Broker(#[from] BrokerError),
}

impl CallError {
    /// The stable reason code for the agent (`data.reason`), metrics and logs.
    pub fn reason(&self) -> Reason {
        match self {
            CallError::Refused(r) => r.reason,
            CallError::Upstream(_) => Reason::UpstreamFailed,
            CallError::Broker(_) => Reason::Unavailable,
        }
    }
}

/// A tool result to return to the agent.
pub type CallResult = Result<Value, CallError>;

/// One call on its way through the pipeline: its id, its attribution and its clock.
struct CallLog {
    event: AuditEvent,
    started: Instant,
}

impl CallLog {
    fn begin(ctx: &TaskContext, request: &CallRequest) -> Self {
        let mut event = ctx.event(EventKind::ToolCall);
        event.call_id = Some(new_id("call_"));
        event.tool = Some(truncate(request.name(), MAX_TOOL_FIELD).into_owned());
        event.arg_digest = Some(request.digest().to_owned());
        event.policy_version = Some(ctx.snapshot.policy_version);
        Self {
            event,
            started: Instant::now(),
        }
    }

    fn micros(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX)
    }
}

/// How a call ended, for [`Broker::finish`].
enum Ending {
    /// Refused before any upstream was called.
    Refused(Refusal),
    /// Permitted and called.
    Called {
        tier: Tier,
        upstream: String,
        result: Result<Value, UpstreamError>,
    },
}

impl Broker {
    /// The tools this task may see: every tool its template allows, except Tier 4, tools a raw
    /// `forbid` refuses to this task outright, and tools whose definition is not the approved
    /// (pinned) one, named `upstream__tool`. An upstream that fails to list is left out (and logged).
    ///
    /// # Errors
    /// [`BrokerError`] when the task's template is gone.
    pub async fn list_tools<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        upstreams: &U,
    ) -> Result<Vec<Value>, BrokerError> {
        let template = &ctx
            .snapshot
            .templates
            .get(&ctx.claims.template)
            .ok_or_else(|| BrokerError::NotFound("template gone".into()))?
            .spec;
        let mut out = Vec::new();
        for (name, up) in &ctx.snapshot.upstreams {
            // Only ask upstreams some pattern could match.
            if !template.may_reach(name) {
                continue;
            }
            // Definitions come with injected credentials cut out (by the implementation).
            let listed = match self.connection(ctx, &up.spec).await {
                Ok(conn) => upstreams.list_tools(&conn).await,
                Err(e) => Err(e),
            };
            let tools = match listed {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "upstream tools unavailable; left out of tools/list");
                    continue;
                }
            };
            for listed in tools {
                let Some(tool_name) = listed.name().map(str::to_owned) else {
                    continue;
                };
                let Some(exposed) = ExposedTool::expose(name, &tool_name) else {
                    tracing::debug!(upstream = %name, tool = %custos_core::text::for_display(&tool_name, 80), "tool name cannot be exposed; skipped");
                    continue;
                };
                // What the agent calls it: `upstream__tool`, or for an upstream exposed
                // without a prefix its own name — unless that name would be read as another
                // upstream's tool (then it cannot be called, and is not listed).
                let agent_name = if up.spec.prefix {
                    exposed.clone()
                } else if ctx.snapshot.canonical_tool(ctx.template(), &tool_name) == exposed {
                    tool_name.clone()
                } else {
                    tracing::debug!(upstream = %name, tool = %custos_core::text::for_display(&tool_name, 80), "tool name reads as another upstream's tool; skipped");
                    continue;
                };
                if !custos_policy::lists(template, &up.spec, &exposed, &tool_name)
                    || ctx.snapshot.compiled.forbids_outright(
                        &template.name,
                        name,
                        &tool_name,
                        &exposed,
                        ctx.task_id(),
                        ctx.tainted,
                    )
                {
                    continue;
                }
                match self
                    .pin_status(ctx, name, &tool_name, &listed.digest)
                    .await?
                {
                    PinStatus::Pinned => {
                        let mut tool = listed.definition;
                        tool["name"] = Value::String(agent_name);
                        out.push(tool);
                    }
                    // Changed since approved, or never approved: hidden (and refused on call).
                    PinStatus::Changed | PinStatus::Unapproved => {}
                }
            }
        }
        Ok(out)
    }

    /// Runs one `tools/call` through the pipeline, on a task of its own: once started it runs
    /// to its end (and its records are written) even if the caller stops waiting. A permitted
    /// call's decision is durable before the upstream is called; every call's ending is
    /// recorded before this returns.
    ///
    /// # Errors
    /// [`CallError::Refused`] when policy refuses, [`CallError::Upstream`] when the upstream
    /// fails, [`CallError::Broker`] when the decision or outcome cannot be recorded (a
    /// permitted call whose decision cannot be recorded is never made).
    pub async fn call_tool<U: Upstreams>(
        &self,
        ctx: TaskContext,
        name: String,
        arguments: Value,
        upstreams: Arc<U>,
        channel: CallChannel,
    ) -> CallResult {
        let broker = self.clone();
        self.to_completion("call pipeline", async move {
            // Named as the agent named it unless it is a bare upstream's (no copy then).
            let name = match ctx.canonical_tool(&name) {
                std::borrow::Cow::Borrowed(_) => name,
                std::borrow::Cow::Owned(canonical) => canonical,
            };
            broker
                .run_call(&ctx, &name, arguments, upstreams.as_ref(), &channel)
                .await
        })
        .await
        .unwrap_or_else(|e| Err(CallError::Broker(e)))
    }

    /// The pipeline: each stage passes the call on or stops it; [`Broker::finish`] ends it.
    async fn run_call<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        name: &str,
        arguments: Value,
        upstreams: &U,
        channel: &CallChannel,
    ) -> CallResult {
        let proposed = self
            .proposed_tier(&ctx.snapshot, Some(ctx), ctx.task_id(), name, upstreams)
            .await;
        let request = CallRequest::new(ctx.task_id(), name, arguments).with_proposed_tier(proposed);
        let mut call = CallLog::begin(ctx, &request);
        let verdict = self.pinned(ctx, decide(ctx, request), upstreams).await?;
        let permitted = match verdict {
            Verdict::Permit(p) => p,
            Verdict::Hold(held) => match self.hold(ctx, call.event.call_id.as_deref(), held).await?
            {
                HoldOutcome::Run(permitted) => permitted,
                HoldOutcome::Refuse(refusal) => {
                    return self.finish(ctx, call, Ending::Refused(refusal)).await;
                }
            },
            Verdict::Deny(refusal) => {
                return self.finish(ctx, call, Ending::Refused(refusal)).await;
            }
        };
        self.commit_decision(&mut call, &permitted).await?;
        let result = self
            .call_upstream(ctx, &permitted, upstreams, channel)
            .await;
        // [Result scanning: a later stage, after the call.]
        let result = self.taint(ctx, &permitted, result).await;
        let ending = Ending::Called {
            tier: permitted.tier(),
            upstream: permitted.upstream().name.clone(),
            result,
        };
        self.finish(ctx, call, ending).await
    }

    /// The tier a trusted upstream's annotations propose for the called tool (none for an
    /// upstream that is not trusted, a tool it does not list, or one it cannot list now: the
    /// upstream's `default_tier` then holds). Without an authenticated task (an operator's
    /// `policy explain`), an upstream that takes credentials is not connected for this and
    /// proposes nothing.
    pub(crate) async fn proposed_tier<U: Upstreams>(
        &self,
        snapshot: &Snapshot,
        ctx: Option<&TaskContext>,
        task: &str,
        name: &str,
        upstreams: &U,
    ) -> Option<Tier> {
        let tool = ExposedTool::parse(name).ok()?;
        let up = snapshot.upstreams.get(&tool.upstream)?;
        if !up.spec.trusted || up.spec.tiers.contains_key(&tool.tool) {
            return None;
        }
        let conn = match ctx {
            Some(ctx) => self.connection(ctx, &up.spec).await.ok()?,
            None => Connection::without_credentials(&up.spec, task)?,
        };
        let listed = upstreams.find_tool(&conn, &tool.tool).await.ok()??;
        custos_core::annotation_tier(listed.definition.get("annotations"))
    }

    /// The connection stage: `ctx`'s connection to `spec`, with the credentials it takes
    /// issued (or reused) first.
    ///
    /// # Errors
    /// [`UpstreamError::Failed`] naming why the credentials could not be issued.
    pub(crate) async fn connection<'a>(
        &self,
        ctx: &'a TaskContext,
        spec: &'a UpstreamSpec,
    ) -> Result<Connection<'a>, UpstreamError> {
        Self::connected(ctx, spec, self.injection(ctx, spec).await, false)
    }

    /// The connection one permitted call is made on: the task's (as
    /// [`Broker::connection`]), or for an upstream whose credentials are minted per call, one
    /// of its own with a new set.
    ///
    /// # Errors
    /// As [`Broker::connection`].
    async fn call_connection<'a>(
        &self,
        ctx: &'a TaskContext,
        spec: &'a UpstreamSpec,
    ) -> Result<Connection<'a>, UpstreamError> {
        let injection = self.call_injection(ctx, spec).await;
        Self::connected(ctx, spec, injection, spec.credentials_per_call())
    }

    fn connected<'a>(
        ctx: &'a TaskContext,
        spec: &'a UpstreamSpec,
        injection: Result<Option<Arc<Injection>>, BrokerError>,
        one_call: bool,
    ) -> Result<Connection<'a>, UpstreamError> {
        let injection = injection.map_err(|e| {
            UpstreamError::Failed(
                spec.name.clone(),
                format!("its credentials could not be issued: {e}"),
            )
        })?;
        Ok(Connection {
            upstream: spec,
            task: ctx.task_id(),
            injection,
            one_call,
        })
    }

    /// A connection no task owns (an operator approving an upstream's tools), with stand-in
    /// credentials for an upstream that takes some.
    pub(crate) fn unowned_connection<'a>(spec: &'a UpstreamSpec, scope: &'a str) -> Connection<'a> {
        Connection {
            upstream: spec,
            task: scope,
            injection: (!spec.credentials.is_empty())
                .then(|| Arc::new(Injection::placeholder(spec))),
            one_call: false,
        }
    }

    /// Write-ahead: the decision to allow is durable before the upstream is called. If it
    /// cannot be recorded, the call is not made.
    async fn commit_decision(
        &self,
        call: &mut CallLog,
        permitted: &PermittedCall<'_>,
    ) -> Result<(), CallError> {
        let mut e = call.event.clone();
        e.upstream = Some(permitted.upstream().name.clone());
        e.decision = Some(Decision::Allow);
        e.tier = Some(permitted.tier());
        e.reason = Some(Reason::Permitted);
        e.policy_version = Some(permitted.policy_version());
        e.detail = Some(Detail::Permit {
            rule: permitted.rule().to_owned(),
        });
        self.record(e).await?;
        // The result record follows the decision it belongs to.
        call.event.kind = EventKind::ToolResult;
        call.event.upstream = Some(permitted.upstream().name.clone());
        Ok(())
    }

    /// The taint stage: content from an untrusted tool taints the task before the agent
    /// sees it, so its next calls are decided as a tainted task's. If the taint cannot be
    /// stored the content is withheld (fail closed).
    async fn taint(
        &self,
        ctx: &TaskContext,
        permitted: &PermittedCall<'_>,
        result: Result<Value, UpstreamError>,
    ) -> Result<Value, UpstreamError> {
        let returned_content = matches!(&result, Ok(v) if v
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
            || v.get("structuredContent").is_some());
        if permitted.taints() && returned_content && !ctx.tainted {
            let tool = permitted.tool().to_string();
            if let Err(e) = self.mark_tainted(ctx, &tool).await {
                tracing::error!(task = %ctx.task_id(), tool = %tool, error = %e, "taint not recorded; result withheld");
                return Err(UpstreamError::Failed(
                    permitted.upstream().name.clone(),
                    "result withheld: the task's taint could not be recorded".into(),
                ));
            }
        }
        result
    }

    /// The upstream stages of a permitted call: its connection (with the credentials it
    /// takes), the call, the redaction of those credentials from what came back, and the end
    /// of credentials minted for this call alone.
    async fn call_upstream<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        permitted: &PermittedCall<'_>,
        upstreams: &U,
        channel: &CallChannel,
    ) -> Result<Value, UpstreamError> {
        let conn = self.call_connection(ctx, permitted.upstream()).await?;
        // Notices are scrubbed like the result; a call whose content would taint the task
        // relays no content before the taint is recorded.
        let channel = channel.for_call(conn.injection(), permitted.taints() && !ctx.tainted);
        let result = self.invoke(permitted, &conn, upstreams, &channel).await;
        let result = redact(&conn, result);
        self.end_call_injection(conn.upstream(), conn.injection().map(AsRef::as_ref))
            .await;
        result
    }

    /// Calls the upstream.
    async fn invoke<U: Upstreams>(
        &self,
        permitted: &PermittedCall<'_>,
        conn: &Connection<'_>,
        upstreams: &U,
        channel: &CallChannel,
    ) -> Result<Value, UpstreamError> {
        let started = Instant::now();
        let result = upstreams.call_tool(permitted, conn, channel).await;
        self.inner
            .metrics
            .upstream_latency(&permitted.upstream().name, started.elapsed().as_secs_f64());
        result
    }

    /// The one place every call ends: its last record (a refusal, or the result of a
    /// permitted call), its metric, its log line and the answer.
    async fn finish(&self, ctx: &TaskContext, call: CallLog, ending: Ending) -> CallResult {
        let latency = call.micros();
        let mut e = call.event;
        e.latency_us = Some(latency);
        let tool = e.tool.clone().unwrap_or_default();
        match ending {
            Ending::Refused(refusal) => {
                // A call still waiting for its approval is held, not denied.
                let decision = if refusal.reason == Reason::ApprovalPending {
                    Decision::Hold
                } else {
                    Decision::Deny
                };
                e.decision = Some(decision);
                e.tier = refusal.tier;
                e.reason = Some(refusal.reason);
                e.outcome = Some(Outcome::NotCalled);
                e.upstream = refusal.upstream.clone();
                e.detail = Some(Detail::Refusal {
                    message: refusal.message.clone(),
                    approval_id: refusal.approval.as_ref().map(ToString::to_string),
                });
                self.inner.metrics.decision(
                    decision,
                    refusal.tier,
                    refusal.reason,
                    Outcome::NotCalled,
                );
                tracing::info!(agent = %ctx.agent(), task = %ctx.task_id(), tool = %custos_core::text::escape_unsafe(&tool), reason = %refusal.reason, "tool call denied");
                self.record(e).await?;
                Err(CallError::Refused(refusal))
            }
            Ending::Called {
                tier,
                upstream,
                result,
            } => {
                let outcome = match &result {
                    Ok(v) if v.get("isError").and_then(Value::as_bool) == Some(true) => {
                        Outcome::ToolError
                    }
                    Ok(_) => Outcome::Ok,
                    Err(err) => err.outcome(),
                };
                e.tier = Some(tier);
                e.outcome = Some(outcome);
                if let Err(err) = &result {
                    e.detail = Some(Detail::UpstreamError {
                        message: truncate(&err.to_string(), 1024).into_owned(),
                    });
                }
                self.inner.metrics.decision(
                    Decision::Allow,
                    Some(tier),
                    Reason::Permitted,
                    outcome,
                );
                // Tier 2 is "autonomous and logged"; Tier 1 calls are logged at debug.
                if tier >= Tier::T2 {
                    tracing::info!(agent = %ctx.agent(), task = %ctx.task_id(), tool = %tool, upstream = %upstream, tier = tier.number(), outcome = outcome.as_str(), "tool call allowed");
                } else {
                    tracing::debug!(agent = %ctx.agent(), task = %ctx.task_id(), tool = %tool, upstream = %upstream, tier = tier.number(), outcome = outcome.as_str(), "tool call allowed");
                }
                // The decision was committed before the upstream was called; the outcome
                // follows it into the log and is committed with the next batch, so an allowed
                // call waits for one commit, not two.
                self.record_after(e).await?;
                result.map_err(CallError::Upstream)
            }
        }
    }
}

/// The redaction stage: the credentials injected into the connection are cut out of the
/// result, and out of an error's message and data, before anything else reads them.
pub(crate) fn redact(
    conn: &Connection<'_>,
    result: Result<Value, UpstreamError>,
) -> Result<Value, UpstreamError> {
    let Some(injection) = conn.injection() else {
        return result;
    };
    let text = |s: &mut String| {
        if let std::borrow::Cow::Owned(clean) = injection.redactor().redact(s) {
            *s = clean;
        }
    };
    match result {
        Ok(mut v) => {
            injection.redact_json(&mut v);
            Ok(v)
        }
        Err(mut e) => {
            match &mut e {
                UpstreamError::Failed(_, m) => text(m),
                UpstreamError::Rpc { message, data, .. } => {
                    text(message);
                    if let Some(d) = data {
                        injection.redact_json(d);
                    }
                }
                UpstreamError::Timeout(..) | UpstreamError::Cancelled(_) => {}
            }
            Err(e)
        }
    }
}

/// Decides one call against the request's registry snapshot.
fn decide(ctx: &TaskContext, request: CallRequest) -> Verdict<'_> {
    let snap = &ctx.snapshot;
    let view = PolicyView {
        template: snap.templates.get(ctx.template()).map(|t| &t.spec),
        upstreams: &snap.upstreams,
        version: snap.policy_version,
        compiled: &snap.compiled,
        tainted: ctx.tainted,
    };
    custos_policy::decide(view, request)
}
