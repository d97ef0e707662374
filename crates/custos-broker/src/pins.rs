//! Tool pinning: the definition an operator approved for each upstream tool (name, title,
//! description, schemas, annotations — what a model reads) is pinned by its digest. A tool
//! whose definition later differs — an upstream that changed under the agents, the "rug
//! pull" — is hidden from `tools/list` and refused (`tool_changed`) until an operator
//! approves the upstream again; the change is recorded once, with both digests.
//!
//! Modes ([`PinMode`]): `approve` (an upstream's tools are hidden until `custos upstream
//! approve`), `first-use` (a tool is pinned the first time it is seen: the `--dev` default,
//! where apply is the approval), `off`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use custos_audit::{AuditEvent, Detail, EventKind};
use custos_core::operator::Permission;
use custos_core::{Reason, UpstreamSpec};
use custos_policy::{Refusal, Verdict};

use crate::call::{TaskContext, Upstreams};
use crate::{Broker, BrokerError, Operator};

/// The most tool names one `tools_pinned` record lists per kind of change.
const MAX_NAMED: usize = 32;

/// How upstream tools are pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinMode {
    /// An upstream's tools are hidden and refused until an operator approves the upstream.
    #[default]
    Approve,
    /// A tool is pinned the first time it is seen; later changes are hidden and refused.
    FirstUse,
    /// No pinning.
    Off,
}

/// What pinning says about one tool definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PinStatus {
    /// Its definition is the approved one (or pinning is off).
    Pinned,
    /// Nobody approved it yet.
    Unapproved,
    /// It differs from the approved one.
    Changed,
}

/// The pins, cached and re-read when older than the cache TTL (another replica may pin).
#[derive(Default)]
pub(crate) struct PinCache {
    inner: RwLock<Option<(i64, Pins)>>,
}

/// Pinned digests by (upstream, tool).
type Pins = Arc<HashMap<(String, String), String>>;

/// The outcome of approving an upstream.
#[derive(Debug, Clone)]
pub struct PinnedUpstream {
    /// The upstream.
    pub upstream: String,
    /// Every tool now pinned, with its digest.
    pub tools: Vec<(String, String)>,
    /// Tools whose pinned definition this changed.
    pub changed: Vec<String>,
    /// Tools no longer served whose pins were dropped.
    pub dropped: Vec<String>,
}

impl Broker {
    async fn pins(&self) -> Result<Pins, BrokerError> {
        let now = self.now();
        let ttl = i64::try_from(self.inner.config.cache_ttl.as_millis()).unwrap_or(i64::MAX);
        if let Ok(g) = self.inner.pins.inner.read()
            && let Some((at, map)) = g.as_ref()
            && now - at <= ttl
        {
            return Ok(map.clone());
        }
        let map: HashMap<(String, String), String> = self
            .inner
            .store
            .list_pins()
            .await?
            .into_iter()
            .map(|p| ((p.upstream, p.tool), p.digest))
            .collect();
        let map = Arc::new(map);
        if let Ok(mut g) = self.inner.pins.inner.write() {
            *g = Some((now, map.clone()));
        }
        Ok(map)
    }

    fn forget_pins(&self) {
        if let Ok(mut g) = self.inner.pins.inner.write() {
            *g = None;
        }
    }

    /// The pin status of one definition an upstream serves; with first-use pinning an unseen
    /// tool is pinned here, and a changed one is recorded (once) here.
    pub(crate) async fn pin_status(
        &self,
        ctx: &TaskContext,
        upstream: &str,
        tool: &str,
        digest: &str,
    ) -> Result<PinStatus, BrokerError> {
        let mode = self.inner.config.tool_pinning;
        if mode == PinMode::Off {
            return Ok(PinStatus::Pinned);
        }
        let key = (upstream.to_owned(), tool.to_owned());
        let pinned = self.pins().await?.get(&key).cloned();
        match pinned {
            Some(p) if p == digest => Ok(PinStatus::Pinned),
            Some(p) => {
                let now = self.now();
                if self
                    .inner
                    .store
                    .note_tool_change(upstream, tool, digest, now)
                    .await?
                {
                    let mut e = ctx.event(EventKind::ToolChanged);
                    e.upstream = Some(upstream.to_owned());
                    e.tool = Some(tool.to_owned());
                    e.reason = Some(Reason::ToolChanged);
                    e.detail = Some(Detail::ToolChanged {
                        upstream: upstream.to_owned(),
                        tool: tool.to_owned(),
                        pinned_digest: p,
                        observed_digest: digest.to_owned(),
                    });
                    self.record(e).await?;
                    tracing::warn!(upstream = %upstream, tool = %custos_core::text::escape_unsafe(tool), "an upstream tool's definition changed since it was approved: hidden and refused until `custos upstream approve`");
                }
                Ok(PinStatus::Changed)
            }
            None if mode == PinMode::FirstUse => {
                if self
                    .inner
                    .store
                    .pin_tool_first_use(upstream, tool, digest, self.now())
                    .await?
                {
                    self.forget_pins();
                    // The pin is on record before the definition is served or called.
                    let mut e = ctx.event(EventKind::ToolPinned);
                    e.upstream = Some(upstream.to_owned());
                    e.tool = Some(tool.to_owned());
                    e.detail = Some(Detail::ToolPinned {
                        upstream: upstream.to_owned(),
                        tool: tool.to_owned(),
                        digest: digest.to_owned(),
                    });
                    self.record(e).await?;
                    return Ok(PinStatus::Pinned);
                }
                // Another call pinned it a moment ago: compare with what it pinned.
                self.forget_pins();
                match self.pins().await?.get(&key) {
                    Some(p) if *p == digest => Ok(PinStatus::Pinned),
                    _ => Ok(PinStatus::Changed),
                }
            }
            None => Ok(PinStatus::Unapproved),
        }
    }

    /// The pinning stage: a permitted or held call goes on only if the definition the task's
    /// connection serves for its tool is the approved one.
    pub(crate) async fn pinned<'a, U: Upstreams>(
        &self,
        ctx: &TaskContext,
        verdict: Verdict<'a>,
        upstreams: &U,
    ) -> Result<Verdict<'a>, BrokerError> {
        if self.inner.config.tool_pinning == PinMode::Off {
            return Ok(verdict);
        }
        let (upstream, tool, tier) = match &verdict {
            Verdict::Permit(p) => (p.upstream(), p.tool(), p.tier()),
            Verdict::Hold(h) => (h.upstream(), h.tool(), h.tier()),
            Verdict::Deny(_) => return Ok(verdict),
        };
        let refuse = |reason: Reason, message: String| {
            Verdict::Deny(Refusal {
                reason,
                message,
                tier: Some(tier),
                upstream: Some(upstream.name.clone()),
                approval: None,
            })
        };
        let found = match self.connection(ctx, upstream).await {
            Ok(conn) => upstreams.find_tool(&conn, &tool.tool).await,
            Err(e) => Err(e),
        };
        let listed = match found {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Ok(refuse(
                    Reason::ToolChanged,
                    format!("tool `{tool}` is not among the tools its upstream serves now"),
                ));
            }
            Err(e) => {
                return Ok(refuse(
                    Reason::UpstreamFailed,
                    format!("tool `{tool}` cannot be checked against its pinned definition: {e}"),
                ));
            }
        };
        Ok(
            match self
                .pin_status(ctx, &upstream.name, &tool.tool, &listed.digest)
                .await?
            {
                PinStatus::Pinned => verdict,
                PinStatus::Changed => refuse(
                    Reason::ToolChanged,
                    format!(
                        "tool `{tool}` changed since an operator approved it; refused until its upstream is approved again"
                    ),
                ),
                PinStatus::Unapproved => refuse(
                    Reason::ToolNotApproved,
                    format!(
                        "the tools of upstream `{}` have not been approved by an operator yet",
                        upstream.name
                    ),
                ),
            },
        )
    }

    /// Approves an upstream's tools as it serves them now: each definition is pinned, pins of
    /// tools it no longer serves are dropped, and one `tools_pinned` record names what changed.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] without the admin role, [`BrokerError::NotFound`] for an
    /// unknown upstream, [`BrokerError::Unavailable`] when the upstream cannot list its tools.
    pub async fn approve_upstream<U: Upstreams>(
        &self,
        op: &Operator,
        name: &str,
        upstreams: std::sync::Arc<U>,
    ) -> Result<PinnedUpstream, BrokerError> {
        op.require(Permission::Administer)?;
        // On a task of its own: the pins and their record are written whether or not the
        // operator waits for them.
        let (broker, op, name) = (self.clone(), op.clone(), name.to_owned());
        self.to_completion("upstream approval", async move {
            broker.pin_now(&op, &name, upstreams.as_ref()).await
        })
        .await?
    }

    async fn pin_now<U: Upstreams>(
        &self,
        op: &Operator,
        name: &str,
        upstreams: &U,
    ) -> Result<PinnedUpstream, BrokerError> {
        let snap = self.snapshot().await?;
        let spec: &UpstreamSpec = &snap
            .upstreams
            .get(name)
            .ok_or_else(|| BrokerError::NotFound(format!("upstream `{name}` not found")))?
            .spec;
        // A connection of its own (for a per-task upstream, one that is stopped right after).
        let scope = custos_crypto::new_id("pin_");
        let listed = upstreams
            .list_tools(&Self::unowned_connection(spec, &scope))
            .await;
        let _ = self.inner.task_ends.send(scope);
        let listed = listed.map_err(|e| {
            tracing::warn!(upstream = %name, error = %e, "upstream could not list its tools for approval");
            BrokerError::Unavailable("the upstream")
        })?;
        // Only tools that can be exposed are pinned: a name from the upstream is bounded (and
        // checked) before it is stored.
        let mut tools: Vec<(String, String)> = listed
            .iter()
            .filter_map(|t| Some((t.name()?, t)))
            .filter(|(n, _)| custos_core::ExposedTool::expose(name, n).is_some())
            .map(|(n, t)| (n.to_owned(), t.digest.clone()))
            .collect();
        tools.sort();
        tools.dedup_by(|a, b| a.0 == b.0);
        let before: HashMap<String, String> = self
            .inner
            .store
            .list_pins()
            .await?
            .into_iter()
            .filter(|p| p.upstream == name)
            .map(|p| (p.tool, p.digest))
            .collect();
        let changed: Vec<String> = tools
            .iter()
            .filter(|(t, d)| before.get(t).is_some_and(|old| old != d))
            .map(|(t, _)| t.clone())
            .collect();
        let dropped: Vec<String> = before
            .keys()
            .filter(|t| !tools.iter().any(|(n, _)| n == *t))
            .cloned()
            .collect();
        let mut e = AuditEvent::new(EventKind::ToolsPinned);
        e.actor = Some(op.name.clone());
        e.upstream = Some(name.to_owned());
        e.policy_version = Some(snap.policy_version);
        e.detail = Some(Detail::ToolsPinned {
            upstream: name.to_owned(),
            tools: u64::try_from(tools.len()).unwrap_or(u64::MAX),
            changed: changed.iter().take(MAX_NAMED).cloned().collect(),
            dropped: dropped.iter().take(MAX_NAMED).cloned().collect(),
        });
        // Recorded before the pins change: the trail never lacks an approval that took effect.
        self.record(e).await?;
        self.inner
            .store
            .pin_upstream(name, &tools, &op.name, self.now())
            .await?;
        self.forget_pins();
        tracing::info!(upstream = %name, tools = tools.len(), changed = changed.len(), operator = %op.name, "upstream tools approved and pinned");
        Ok(PinnedUpstream {
            upstream: name.to_owned(),
            tools,
            changed,
            dropped,
        })
    }
}
