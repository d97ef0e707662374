//! What agents read besides tool results: resources and prompts, listed and read through the
//! template and the audit log like tool calls.
//!
//! ```text
//! list: each upstream the template names resources (or prompts) of is asked, and only what
//!       the template allows is listed (resources by URI glob, prompts as `upstream__prompt`)
//! read / get:
//!   decide: the template's first resource entry matching the URI names the upstream (a
//!           prompt's name names it); none: refused, recorded
//!   -> commit the decision record (durable, write-ahead)
//!   -> the task's connection to the upstream (credentials issued as for tool calls)
//!   -> ask the upstream, bounded by its timeout
//!   -> redact: injected credentials cut out of what came back
//!   -> taint: what an upstream marked wholly untrusted (`untrusted: ["*"]`) serves taints
//!      the task
//!   -> the outcome record, and the answer
//! ```
//! Reads are Tier 2 (autonomous, logged): a template entry is the whole permission. Like a
//! tool call, a read runs on to its outcome record when the client hangs up.

use std::sync::Arc;
use std::time::Instant;

use custos_audit::{Detail, EventKind};
use custos_core::text::truncate;
use custos_core::{Decision, ExposedTool, Outcome, Reason, Tier};
use custos_crypto::new_id;
use serde_json::{Value, json};

use crate::call::{CallError, TaskContext, UpstreamError, Upstreams};
use crate::{Broker, BrokerError};

/// The longest URI or prompt name stored in an audit record.
const MAX_READ_FIELD: usize = 512;

/// Pages asked of one upstream for one listing: a misbehaving upstream cannot keep us here.
const MAX_PAGES: usize = 50;

/// What an agent lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `resources/list`.
    Resources,
    /// `resources/templates/list`.
    ResourceTemplates,
    /// `prompts/list`.
    Prompts,
}

impl Listing {
    fn method(self) -> &'static str {
        match self {
            Listing::Resources => "resources/list",
            Listing::ResourceTemplates => "resources/templates/list",
            Listing::Prompts => "prompts/list",
        }
    }

    /// The key of the listed array in the result.
    pub fn key(self) -> &'static str {
        match self {
            Listing::Resources => "resources",
            Listing::ResourceTemplates => "resourceTemplates",
            Listing::Prompts => "prompts",
        }
    }

    /// The field of one listed item that the template's patterns match.
    fn field(self) -> &'static str {
        match self {
            Listing::Resources => "uri",
            Listing::ResourceTemplates => "uriTemplate",
            Listing::Prompts => "name",
        }
    }
}

impl Broker {
    /// What this task may see of `listing`, from every upstream its template names: resources
    /// and resource templates whose URI an entry's glob matches, prompts under
    /// `upstream__prompt` (their own names for an upstream exposed without a prefix) that a
    /// prompt pattern allows. An upstream that fails to list is left out (and logged).
    ///
    /// # Errors
    /// [`BrokerError`] when the task's template is gone.
    pub async fn list_reads<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        listing: Listing,
        upstreams: &U,
    ) -> Result<Vec<Value>, BrokerError> {
        let snap = ctx.snapshot();
        let template = &snap
            .templates
            .get(ctx.template())
            .ok_or_else(|| BrokerError::NotFound("template gone".into()))?
            .spec;
        let mut out = Vec::new();
        for (name, up) in &snap.upstreams {
            let reached = match listing {
                Listing::Prompts => template.may_reach_prompts(name),
                _ => template.resources.iter().any(|e| e.upstream == *name),
            };
            if !reached {
                continue;
            }
            let items = match self.connection(ctx, &up.spec).await {
                Ok(conn) => list_all(upstreams, &conn, listing).await,
                Err(e) => Err(e),
            };
            let items = match items {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, method = listing.method(), "upstream listing unavailable; left out");
                    continue;
                }
            };
            for mut item in items {
                let Some(key) = item.get(listing.field()).and_then(Value::as_str) else {
                    continue;
                };
                let shown = match listing {
                    Listing::Prompts => {
                        let Some(canonical) = ExposedTool::expose(name, key) else {
                            continue;
                        };
                        if !template.allows_prompt(&canonical) {
                            continue;
                        }
                        if up.spec.prefix {
                            Some(canonical)
                        } else if snap.canonical_tool(ctx.template(), key) == canonical {
                            Some(key.to_owned())
                        } else {
                            continue;
                        }
                    }
                    _ if template.allows_resource(name, key) => None,
                    _ => continue,
                };
                if let Some(shown) = shown {
                    item["name"] = Value::String(shown);
                }
                out.push(item);
            }
        }
        Ok(out)
    }

    /// Reads one resource through the template and the audit log: the template's first
    /// resource entry that matches `uri` names the upstream asked.
    ///
    /// # Errors
    /// [`CallError::Refused`] when no entry allows the URI, [`CallError::Upstream`] when the
    /// upstream fails, [`CallError::Broker`] when the decision or outcome cannot be recorded
    /// (an allowed read whose decision cannot be recorded is never made).
    pub async fn read_resource<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        uri: &str,
        upstreams: Arc<U>,
    ) -> Result<Value, CallError> {
        let read = Read::of_resource(ctx, uri, EventKind::ResourceRead, "resources/read");
        self.run_read(ctx, read, upstreams).await
    }

    /// Subscribes to one resource's updates through the template and the audit log, like a
    /// read of it; the upstream is asked to send `notifications/resources/updated` for it.
    ///
    /// # Errors
    /// As [`Broker::read_resource`].
    pub async fn subscribe_resource<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        uri: &str,
        upstreams: Arc<U>,
    ) -> Result<Value, CallError> {
        let read = Read::of_resource(
            ctx,
            uri,
            EventKind::ResourceSubscribe,
            "resources/subscribe",
        );
        self.run_read(ctx, read, upstreams).await
    }

    /// Gets one prompt through the template and the audit log: `name` as the agent knows
    /// it (`upstream__prompt`, or its own name on an upstream exposed without a prefix).
    ///
    /// # Errors
    /// As [`Broker::read_resource`]; [`Reason::PromptNotAllowed`] when no prompt pattern of
    /// the template allows it. `round`: what a stateless-era agent sends again when it retries
    /// a get that needed input, passed on.
    pub async fn get_prompt<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        name: &str,
        arguments: Option<Value>,
        round: Option<&crate::Round>,
        upstreams: Arc<U>,
    ) -> Result<Value, CallError> {
        let canonical = ctx.canonical_tool(name).into_owned();
        let allowed = ctx
            .snapshot()
            .templates
            .get(ctx.template())
            .is_some_and(|t| t.spec.allows_prompt(&canonical));
        let parsed = ExposedTool::parse(&canonical).ok().filter(|_| allowed);
        let mut params = json!({ "name": parsed.as_ref().map_or("", |p| p.tool.as_str()) });
        if let Some(a) = arguments {
            params["arguments"] = a;
        }
        // A retried multi-round get carries the agent's answers and the upstream's state.
        if let (Some(r), Some(p)) = (round, params.as_object_mut()) {
            r.add_to(p);
        }
        let read = Read {
            kind: EventKind::PromptGet,
            target: canonical,
            upstream: parsed.map(|p| p.upstream),
            method: "prompts/get",
            params,
            refused: Reason::PromptNotAllowed,
        };
        self.run_read(ctx, read, upstreams).await
    }

    /// Asks for completions of a prompt's or a resource template's argument
    /// (`completion/complete`), through the template and the audit log like a prompt get or a
    /// resource read of what `params.ref` names.
    ///
    /// # Errors
    /// As [`Broker::get_prompt`] and [`Broker::read_resource`].
    pub async fn complete<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        mut params: Value,
        upstreams: Arc<U>,
    ) -> Result<Value, CallError> {
        let kind = params
            .pointer("/ref/type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let template = ctx.snapshot().templates.get(ctx.template());
        let (target, upstream, refused) = if kind == "ref/prompt" {
            let name = params
                .pointer("/ref/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let canonical = ctx.canonical_tool(name).into_owned();
            let allowed = template.is_some_and(|t| t.spec.allows_prompt(&canonical));
            let parsed = ExposedTool::parse(&canonical).ok().filter(|_| allowed);
            if let Some(p) = &parsed {
                // The upstream knows the prompt by its own name.
                params["ref"]["name"] = Value::String(p.tool.clone());
            }
            (
                canonical,
                parsed.map(|p| p.upstream),
                Reason::PromptNotAllowed,
            )
        } else {
            let uri = params
                .pointer("/ref/uri")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let upstream = (kind == "ref/resource")
                .then(|| ctx.resource_upstream(&uri))
                .flatten()
                .map(str::to_owned);
            (uri, upstream, Reason::ResourceNotAllowed)
        };
        let read = Read {
            kind: EventKind::Completion,
            target,
            upstream,
            method: "completion/complete",
            params,
            refused,
        };
        self.run_read(ctx, read, upstreams).await
    }

    /// The read pipeline, on a task of its own once started: a client that hangs up cannot
    /// stop it between asking the upstream and recording the outcome.
    async fn run_read<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        read: Read,
        upstreams: Arc<U>,
    ) -> Result<Value, CallError> {
        let broker = self.clone();
        let ctx = ctx.clone();
        self.to_completion("read pipeline", async move {
            broker.read_stages(&ctx, read, upstreams.as_ref()).await
        })
        .await
        .unwrap_or_else(|e| Err(CallError::Broker(e)))
    }

    /// The read pipeline's stages: decide, commit, ask, redact, taint, finish.
    async fn read_stages<U: Upstreams>(
        &self,
        ctx: &TaskContext,
        read: Read,
        upstreams: &U,
    ) -> Result<Value, CallError> {
        let started = Instant::now();
        let mut e = ctx.event(read.kind);
        e.call_id = Some(new_id("read_"));
        e.tool = Some(truncate(&read.target, MAX_READ_FIELD).into_owned());
        e.policy_version = Some(ctx.snapshot().policy_version);
        let spec = read
            .upstream
            .as_deref()
            .and_then(|u| ctx.snapshot().upstreams.get(u));
        let Some(up) = spec else {
            // Not allowed (or the upstream it names is gone): refused, recorded.
            let message = format!(
                "`{}` is not allowed by this task's template",
                custos_core::text::for_display(&read.target, 200)
            );
            e.decision = Some(Decision::Deny);
            e.reason = Some(read.refused);
            e.outcome = Some(Outcome::NotCalled);
            e.detail = Some(Detail::Refusal {
                message: message.clone(),
                approval_id: None,
            });
            self.record(e).await?;
            return Err(CallError::Refused(custos_policy::Refusal {
                reason: read.refused,
                message,
                tier: None,
                upstream: None,
                approval: None,
            }));
        };
        e.upstream = Some(up.spec.name.clone());
        e.decision = Some(Decision::Allow);
        e.tier = Some(Tier::T2);
        e.reason = Some(Reason::Permitted);
        self.record(e.clone()).await?;
        let result = match self.connection(ctx, &up.spec).await {
            Ok(conn) => {
                let r = upstreams.request(&conn, read.method, read.params).await;
                crate::call::redact(&conn, r)
            }
            Err(err) => Err(err),
        };
        // Taint: an upstream whose every tool is untrusted (`untrusted: ["*"]`) is untrusted
        // in what it serves as resources and prompts too; the taint is recorded before the
        // agent sees the content, or the content is withheld.
        let result = match result {
            Ok(v) if up.spec.untrusted.iter().any(|p| p == "*") && !ctx.tainted() => {
                match self.mark_tainted(ctx, &read.target).await {
                    Ok(()) => Ok(v),
                    Err(err) => {
                        tracing::error!(task = %ctx.task_id(), error = %err, "taint not recorded; read withheld");
                        Err(UpstreamError::Failed(
                            up.spec.name.clone(),
                            "result withheld: the task's taint could not be recorded".into(),
                        ))
                    }
                }
            }
            other => other,
        };
        e.kind = EventKind::ReadResult;
        e.decision = None;
        e.reason = None;
        e.outcome = Some(match &result {
            Ok(_) => Outcome::Ok,
            Err(err) => err.outcome(),
        });
        e.latency_us = Some(i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX));
        if let Err(err) = &result {
            e.detail = Some(Detail::UpstreamError {
                message: truncate(&err.to_string(), 1024).into_owned(),
            });
        }
        tracing::info!(agent = %ctx.agent(), task = %ctx.task_id(), target = %custos_core::text::for_display(&read.target, 200), upstream = %up.spec.name, method = read.method, "read allowed");
        self.record_after(e).await?;
        result.map_err(CallError::Upstream)
    }
}

/// One read on its way through [`Broker::run_read`].
struct Read {
    kind: EventKind,
    /// The URI or the prompt's name (as policy names it).
    target: String,
    /// The upstream the template names for it; none: not allowed.
    upstream: Option<String>,
    method: &'static str,
    params: Value,
    refused: Reason,
}

impl Read {
    /// `method` on resource `uri`, of the upstream the task's template names for it.
    fn of_resource(ctx: &TaskContext, uri: &str, kind: EventKind, method: &'static str) -> Self {
        Self {
            kind,
            target: uri.to_owned(),
            upstream: ctx.resource_upstream(uri).map(str::to_owned),
            method,
            params: json!({ "uri": uri }),
            refused: Reason::ResourceNotAllowed,
        }
    }
}

/// Every item of one upstream's `listing`, page by page (bounded).
async fn list_all<U: Upstreams>(
    upstreams: &U,
    conn: &crate::call::Connection<'_>,
    listing: Listing,
) -> Result<Vec<Value>, UpstreamError> {
    let mut out = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let params = match cursor.take() {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let mut result = upstreams.request(conn, listing.method(), params).await?;
        if let Some(i) = conn.injection() {
            i.redact_json(&mut result);
        }
        if let Some(Value::Array(items)) = result.get_mut(listing.key()).map(Value::take) {
            out.extend(items);
        }
        match result.get("nextCursor") {
            Some(c) if !c.is_null() => cursor = Some(c.clone()),
            _ => break,
        }
    }
    Ok(out)
}
