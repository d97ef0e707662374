//! One tool call through the pipeline, and the filtered tool list.
//!
//! ```text
//! authenticate (done by the edge) -> resolve tool -> classify tier -> decide
//!   -> [hold for approval: Tier 3]            (approvals)
//!   -> [mint per-call credential]             (credentials)
//!   -> call upstream, bounded by its timeout
//!   -> [scan result: redact, mark taint]      (scanners)
//!   -> [revoke per-call credential]           (credentials)
//!   -> append audit record (durable) -> answer
//! ```
//! Stages in brackets are where later capabilities slot in; each is one function call below.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_audit::AuditEvent;
use custos_core::{ExposedTool, Outcome, UpstreamSpec};
use custos_crypto::TaskClaims;
use custos_crypto::sha256_hex;
use custos_policy::Permit;
use serde_json::Value;
use thiserror::Error;

use crate::registry::Snapshot;
use crate::{Broker, BrokerError};

/// An authenticated task: its token's claims and the registry as of this request.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The verified claims.
    pub claims: TaskClaims,
    /// The registry snapshot used for this request.
    pub snapshot: Arc<Snapshot>,
}

impl TaskContext {
    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.claims.task_id
    }

    /// The agent's name.
    pub fn agent(&self) -> &str {
        &self.claims.act.sub
    }

    fn event(&self, kind: &str) -> AuditEvent {
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
    /// The upstream answered with a JSON-RPC error.
    #[error("upstream `{upstream}` returned error {code}: {message}")]
    Rpc {
        /// The upstream.
        upstream: String,
        /// JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
    },
}

impl UpstreamError {
    fn outcome(&self) -> Outcome {
        match self {
            UpstreamError::Timeout(..) => Outcome::Timeout,
            UpstreamError::Failed(..) => Outcome::UpstreamFailed,
            UpstreamError::Rpc { .. } => Outcome::ToolError,
        }
    }
}

/// The MCP client side, implemented by the gateway: lists and calls tools on upstreams.
pub trait Upstreams: Send + Sync {
    /// The upstream's tools (raw MCP tool objects, names as the upstream gives them).
    fn list_tools(
        &self,
        upstream: &UpstreamSpec,
    ) -> impl Future<Output = Result<Vec<Value>, UpstreamError>> + Send;

    /// Calls one tool; the result is the raw MCP `CallToolResult`.
    fn call_tool(
        &self,
        upstream: &UpstreamSpec,
        tool: &str,
        arguments: Value,
    ) -> impl Future<Output = Result<Value, UpstreamError>> + Send;
}

/// A call that did not produce a tool result.
#[derive(Debug, Error)]
pub enum CallError {
    /// Refused by policy; the upstream was not called.
    #[error("{message}")]
    Denied {
        /// Stable reason code.
        reason: &'static str,
        /// What the agent is told.
        message: String,
    },
    /// Allowed, but the upstream failed.
    #[error("{0}")]
    Upstream(UpstreamError),
    /// The broker could not decide or record (fail closed).
    #[error("{0}")]
    Broker(#[from] BrokerError),
}

/// A tool result to return to the agent.
pub type CallResult = Result<Value, CallError>;

/// SHA-256 of the arguments' JSON with object keys sorted (so equal arguments digest equally).
pub fn argument_digest(arguments: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sha256_hex(sorted(arguments).to_string().as_bytes())
}

impl Broker {
    /// The tools this task may see: every tool its template allows, except Tier 4, named
    /// `upstream__tool`. An upstream that fails to list is left out (and logged).
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
            let prefix = format!("{name}__");
            // Only ask upstreams some pattern could match.
            let wanted = template.tools.iter().any(|p| {
                p.starts_with(&prefix)
                    || custos_core::glob::glob_match(p.split("__").next().unwrap_or(""), name)
            });
            if !wanted {
                continue;
            }
            let tools = match upstreams.list_tools(&up.spec).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "upstream tools unavailable; left out of tools/list");
                    continue;
                }
            };
            for mut tool in tools {
                let Some(tool_name) = tool.get("name").and_then(Value::as_str).map(str::to_owned)
                else {
                    continue;
                };
                let Some(exposed) = ExposedTool::expose(name, &tool_name) else {
                    tracing::debug!(upstream = %name, tool = %tool_name, "tool name cannot be exposed; skipped");
                    continue;
                };
                if custos_policy::lists(template, &up.spec, &exposed, &tool_name) {
                    tool["name"] = Value::String(exposed);
                    out.push(tool);
                }
            }
        }
        Ok(out)
    }

    /// Runs one `tools/call` through the pipeline. Every outcome is audited before it returns.
    ///
    /// # Errors
    /// [`CallError::Denied`] when policy refuses, [`CallError::Upstream`] when the upstream fails,
    /// [`CallError::Broker`] when the decision cannot be recorded (nothing is called then).
    pub async fn call_tool<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        name: &str,
        arguments: Value,
        upstreams: &U,
    ) -> CallResult {
        let started = Instant::now();
        let mut event = ctx.event("tool_call");
        event.tool = Some(name.chars().take(128).collect());
        event.arg_digest = Some(argument_digest(&arguments));

        // Resolve the tool and decide.
        let permit = self.decide(ctx, name, &arguments, &mut event);
        let Resolved {
            permit,
            upstream,
            tool,
        } = match permit {
            Ok(r) => r,
            Err((reason, message, tier)) => {
                event.decision = Some("deny".into());
                event.reason = Some(format!("{reason}: {message}"));
                event.outcome = Some(Outcome::NotCalled.as_str().into());
                event.tier = tier.map(i64::from);
                event.latency_us = Some(micros(started));
                self.inner
                    .metrics
                    .decision("deny", tier, reason, Outcome::NotCalled.as_str());
                tracing::info!(agent = %ctx.agent(), task = %ctx.task_id(), tool = %name, reason, "tool call denied");
                self.record(event).await?;
                return Err(CallError::Denied { reason, message });
            }
        };
        let tier = permit.tier().number();
        event.tier = Some(i64::from(tier));
        event.decision = Some("allow".into());
        event.reason = Some(permit.rule().to_owned());

        // [Tier 3 hold, credential minting: later stages, before the call.]
        let call_started = Instant::now();
        let result = upstreams.call_tool(upstream, &tool.tool, arguments).await;
        self.inner
            .metrics
            .upstream_latency(&upstream.name, call_started.elapsed().as_secs_f64());
        // [Result scanning and per-call credential revocation: later stages, after the call.]

        let outcome = match &result {
            Ok(v) if v.get("isError").and_then(Value::as_bool) == Some(true) => Outcome::ToolError,
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome(),
        };
        event.outcome = Some(outcome.as_str().into());
        if let Err(e) = &result {
            event.detail =
                serde_json::to_string(&serde_json::json!({ "error": e.to_string() })).ok();
        }
        event.latency_us = Some(micros(started));
        self.inner
            .metrics
            .decision("allow", Some(tier), "permitted", outcome.as_str());
        // Tier 2 is "autonomous and logged"; Tier 1 calls are logged at debug.
        if tier >= 2 {
            tracing::info!(agent = %ctx.agent(), task = %ctx.task_id(), tool = %name, tier, outcome = outcome.as_str(), "tool call allowed");
        } else {
            tracing::debug!(agent = %ctx.agent(), task = %ctx.task_id(), tool = %name, tier, outcome = outcome.as_str(), "tool call allowed");
        }
        self.record(event).await?;
        result.map_err(CallError::Upstream)
    }

    /// Resolves the exposed name and decides.
    fn decide<'a>(
        &self,
        ctx: &'a TaskContext,
        name: &str,
        arguments: &Value,
        event: &mut AuditEvent,
    ) -> Result<Resolved<'a>, Refused> {
        let tool =
            ExposedTool::parse(name).map_err(|e| ("invalid_tool_name", e.to_string(), None))?;
        event.upstream = Some(tool.upstream.clone());
        let template = &ctx
            .snapshot
            .templates
            .get(&ctx.claims.template)
            .ok_or((
                "unknown_template",
                "the task's template no longer exists".to_owned(),
                None,
            ))?
            .spec;
        let upstream = ctx.snapshot.upstreams.get(&tool.upstream).map(|u| &u.spec);
        match custos_policy::decide(template, upstream, &tool, arguments) {
            Ok(permit) => match upstream {
                Some(upstream) => Ok(Resolved {
                    permit,
                    upstream,
                    tool,
                }),
                None => Err((
                    "unknown_upstream",
                    format!("tool `{name}` names no registered upstream"),
                    None,
                )),
            },
            Err(r) => Err((r.reason, r.message, r.tier.map(|t| t.number()))),
        }
    }
}

/// A permitted call: the permit, its upstream (borrowed from the request's snapshot) and the
/// parsed tool.
struct Resolved<'a> {
    permit: Permit,
    upstream: &'a UpstreamSpec,
    tool: ExposedTool,
}

/// A refused call: reason code, message for the agent, tier when one was classified.
type Refused = (&'static str, String, Option<u8>);

fn micros(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::argument_digest;

    #[test]
    fn digest_ignores_key_order_but_not_values() {
        let a = serde_json::json!({"a": 1, "b": {"x": [1, 2], "y": null}});
        let b = serde_json::json!({"b": {"y": null, "x": [1, 2]}, "a": 1});
        let c = serde_json::json!({"a": 2, "b": {"x": [1, 2], "y": null}});
        assert_eq!(argument_digest(&a), argument_digest(&b));
        assert_ne!(argument_digest(&a), argument_digest(&c));
    }
}
