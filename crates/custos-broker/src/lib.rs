//! The broker: the use cases that compose the domain crates — apply the registry, authenticate
//! operators and agents, start and end tasks, issue task tokens, and run one tool call through
//! the pipeline. Edges (HTTP, MCP, CLI) call the broker; nothing here knows about HTTP or MCP.

mod approvals;
mod audit;
mod auth_failures;
mod call;
mod error;
mod explain;
mod inject;
mod leases;
mod metrics;
mod open;
mod operators;
mod pins;
mod reads;
mod registry;
mod relay;
mod secrets;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use custos_audit::{AuditEvent, AuditLog, Detail, EventKind};
use custos_core::Clock;
use custos_core::Reason;
use custos_crypto::TokenIssuer;
use custos_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use approvals::{ApprovalConfig, ApprovalContext, ApprovalEvent, RecentCall};
pub use call::{
    CallError, CallResult, Connection, ListedTool, TaskContext, UpstreamError, Upstreams,
};
pub use custos_audit::VerifyReport;
pub use custos_policy::{PermittedCall, Refusal};
pub use custos_store::Answer;
pub use error::BrokerError;
pub use explain::CallExplanation;
pub use inject::{Injected, Injection};
pub use leases::{CredentialEnv, IssuedLease, LEASE_ID_PREFIX, parse_lease_id};
pub use metrics::BrokerMetrics;
pub use open::{Durability, OpenError};
pub use operators::{CreatedOperator, Operator};
pub use pins::{PinMode, PinnedUpstream};
pub use reads::Listing;
pub use registry::{ApplyOutcome, CredentialRoleEntry, Snapshot};
pub use relay::{
    CallChannel, ClientCaps, ClientMethod, ClientRefusal, ClientRequest, LogLevel,
    MAX_CLIENT_REQUEST, MAX_NOTICE, Notice, NoticeKind, Round,
};
pub use secrets::MAX_STATIC_SECRET;
pub use tasks::{
    JWT_TOKEN_TYPE, StartTask, TASK_ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, TokenRequest,
    TokenResponse,
};

/// Settings the broker needs.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The issuer URL (this Custos), e.g. `http://127.0.0.1:8470`.
    pub issuer: String,
    /// The longest a task token lives (at most 15 minutes).
    pub max_token_ttl: Duration,
    /// How long cached task state is trusted before it is re-read (bounds staleness across
    /// replicas; changes made through this process take effect at once).
    pub cache_ttl: Duration,
    /// How long failed authentications are summed before their audit record is written.
    pub auth_failure_window: Duration,
    /// Failed authentications from one source in one window past which its requests are
    /// refused (429) before any token is checked.
    pub auth_failure_limit: u64,
    /// Where credential roles' `connection_env` variables are read (the process environment).
    pub credential_env: CredentialEnv,
    /// Whether the reconciler runs (at start and every few minutes), removing this
    /// installation's principals that no live lease covers. Off is the safe mode after
    /// restoring the store from a backup, which would otherwise revoke credentials issued
    /// since the backup.
    pub revoke_on_start: bool,
    /// Held calls and approvals.
    pub approvals: ApprovalConfig,
    /// How upstream tool definitions are pinned.
    pub tool_pinning: PinMode,
    /// The key-encryption key static secrets are sealed under; without one, static roles
    /// cannot be written or minted.
    pub kek: Option<Arc<custos_crypto::Kek>>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8470".to_owned(),
            max_token_ttl: Duration::from_secs(900),
            cache_ttl: Duration::from_secs(1),
            auth_failure_window: Duration::from_secs(10),
            auth_failure_limit: 200,
            credential_env: CredentialEnv::default(),
            revoke_on_start: true,
            approvals: ApprovalConfig::default(),
            tool_pinning: PinMode::default(),
            kek: None,
        }
    }
}

impl BrokerConfig {
    /// The audience of task tokens: the MCP endpoint.
    pub fn audience(&self) -> String {
        format!("{}/mcp", self.issuer.trim_end_matches('/'))
    }
}

/// The broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    audit: AuditLog,
    tokens: Arc<TokenIssuer>,
    clock: Arc<dyn Clock>,
    config: BrokerConfig,
    registry: registry::RegistryCache,
    tasks: tasks::TaskCache,
    verified: tasks::VerifiedTokens,
    metrics: BrokerMetrics,
    /// Work that must run to its end (tool calls in flight, the failure summaries): drained
    /// on shutdown.
    background: TaskTracker,
    /// Tells background loops to finish.
    stopping: CancellationToken,
    auth_failures: auth_failures::AuthFailures,
    /// Tasks that ended, for the edges that hold something per task (sessions, connections).
    task_ends: tokio::sync::broadcast::Sender<String>,
    /// Tasks expiring up to this time (Unix ms) have been announced on `task_ends`; held
    /// while announcing, so each expiry is announced once.
    expiry_announced: tokio::sync::Mutex<i64>,
    /// Credential engines, per role.
    engines: leases::Engines,
    /// Credentials of task connections to upstreams that take them.
    injections: inject::Injections,
    /// This installation's lease scope: the first characters of its lease ids.
    lease_scope: String,
    /// Woken when this process answers an approval, so held calls re-read theirs at once.
    approval_answers: tokio::sync::Notify,
    /// Pinned tool definitions.
    pins: pins::PinCache,
    /// Approval requests written and answered here, for the edges that notify people.
    approval_events: tokio::sync::broadcast::Sender<ApprovalEvent>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("issuer", &self.inner.config.issuer)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Builds a broker over a store and audit log, loading the registry. The edges use
    /// [`Broker::open`], which opens both from a database URL.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be read.
    pub async fn new(
        store: Store,
        audit: AuditLog,
        tokens: TokenIssuer,
        clock: Arc<dyn Clock>,
        config: BrokerConfig,
    ) -> Result<Self, BrokerError> {
        let now = clock.now_ms();
        let registry = registry::RegistryCache::load(&store, now).await?;
        let tasks = tasks::TaskCache::new(config.cache_ttl);
        let auth_failures = auth_failures::AuthFailures::new(config.auth_failure_limit);
        let scope_candidate = custos_crypto::new_id("");
        let lease_scope = store
            .lease_scope(&scope_candidate[..leases::LEASE_SCOPE_LEN])
            .await?;
        let revoke_on_start = config.revoke_on_start;
        let broker = Self {
            inner: Arc::new(Inner {
                store,
                audit,
                tokens: Arc::new(tokens),
                clock,
                config,
                registry,
                tasks,
                verified: tasks::VerifiedTokens::new(),
                metrics: BrokerMetrics::default(),
                background: TaskTracker::new(),
                stopping: CancellationToken::new(),
                auth_failures,
                task_ends: tokio::sync::broadcast::channel(1024).0,
                expiry_announced: tokio::sync::Mutex::new(now),
                engines: leases::Engines::default(),
                injections: inject::Injections::default(),
                lease_scope,
                approval_answers: tokio::sync::Notify::new(),
                approval_events: tokio::sync::broadcast::channel(1024).0,
                pins: pins::PinCache::default(),
            }),
        };
        let flusher = broker.clone();
        broker
            .inner
            .background
            .spawn(async move { flusher.summarise_auth_failures().await });
        let watcher = broker.clone();
        broker.spawn_supervised(async move { watcher.watch_task_expiry().await });
        let ends = broker.task_ends();
        let lease_watcher = broker.clone();
        broker
            .spawn_supervised(async move { lease_watcher.watch_task_ends_for_leases(ends).await });
        let expirer = broker.clone();
        broker.spawn_supervised(async move { expirer.watch_lease_expiry().await });
        if revoke_on_start {
            let reconciler = broker.clone();
            broker.spawn_supervised(async move { reconciler.run_reconciler().await });
        } else {
            tracing::warn!(
                "the lease reconciler is off (--no-revoke-on-start): principals no live lease covers are left alone"
            );
        }
        Ok(broker)
    }

    /// The token issuer (JWKS, issuer, audience).
    pub fn tokens(&self) -> &TokenIssuer {
        &self.inner.tokens
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// The broker's metrics, to register with the server's registry.
    pub fn metrics(&self) -> &BrokerMetrics {
        &self.inner.metrics
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Waits for every call in flight to finish (their records written), writes the pending
    /// failure summaries, then drains the audit log. Later calls are refused.
    pub async fn shutdown(&self) {
        self.inner.stopping.cancel();
        self.inner.background.close();
        self.inner.background.wait().await;
        self.inner.audit.close().await;
    }

    /// Runs `work` under the broker's supervision until it ends or the broker shuts down;
    /// shutdown waits for it.
    pub fn spawn_supervised<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stopping = self.inner.stopping.clone();
        self.inner.background.spawn(async move {
            tokio::select! {
                () = stopping.cancelled() => {}
                () = work => {}
            }
        });
    }

    /// Runs `work` to its end, tracked by the broker, whether or not the caller still waits:
    /// a client hanging up drops the caller's future, never the work that acts (a tool call,
    /// a mint, a revocation), so what it does is always finished and recorded. It runs on the
    /// caller's task while the caller waits (no hand-off to another thread), and moves to a
    /// task of its own only if the caller goes away. Shutdown waits for it.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] naming `what` if the work panicked.
    pub(crate) async fn to_completion<T, F>(
        &self,
        what: &'static str,
        work: F,
    ) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        custos_audit::to_end(self.inner.background.track_future(work))
            .await
            .map_err(|_| {
                tracing::error!(what, "supervised work failed");
                BrokerError::Unavailable(what)
            })
    }

    /// The ids of tasks as they end: ended by an operator, or expired (announced within about
    /// a second of their expiry by every replica). A receiver that lags misses ids; holders of
    /// per-task state should also expire it on their own.
    pub fn task_ends(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.task_ends.subscribe()
    }

    /// Approval requests as they are written and answered by this process (a notifier, such
    /// as the webhook, subscribes). A receiver that falls more than 1024 events behind misses
    /// the oldest and is told so.
    pub fn approval_events(&self) -> tokio::sync::broadcast::Receiver<ApprovalEvent> {
        self.inner.approval_events.subscribe()
    }

    /// Appends an audit record, failing closed.
    pub(crate) async fn record(&self, event: AuditEvent) -> Result<(), BrokerError> {
        self.inner
            .audit
            .append(event)
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(error = %e, "audit unavailable");
                BrokerError::Unavailable("audit log")
            })
    }

    /// Queues a record that completes an already committed one (a call's outcome), without
    /// waiting for its commit.
    pub(crate) async fn record_after(&self, event: AuditEvent) -> Result<(), BrokerError> {
        self.inner.audit.enqueue(event).await.map_err(|e| {
            tracing::error!(error = %e, "audit unavailable");
            BrokerError::Unavailable("audit log")
        })
    }

    /// Refuses a source that failed to authenticate too often in this window, before any
    /// token it sends is checked.
    ///
    /// # Errors
    /// [`BrokerError::RateLimited`] for such a source.
    pub fn check_source(&self, source: Source) -> Result<(), BrokerError> {
        let failures = &self.inner.auth_failures;
        if failures.may_limit() && failures.limited(&source.to_string()) {
            self.inner.metrics.auth_failure("any", Reason::RateLimited);
            return Err(BrokerError::RateLimited);
        }
        Ok(())
    }

    /// Counts an authentication failure; the reason goes to metrics and, summed per source and
    /// reason over a window, to the audit log, never to the caller. Returns the error to
    /// answer with.
    pub fn record_auth_failure(
        &self,
        subject: &str,
        reason: Reason,
        agent: Option<&str>,
        source: Source,
    ) -> BrokerError {
        self.inner.metrics.auth_failure(subject, reason);
        tracing::info!(subject, reason = %reason, agent, source = %source, "authentication failed");
        self.inner.auth_failures.note(
            &source.to_string(),
            subject,
            reason,
            agent,
            self.inner.clock.now_ms(),
        );
        BrokerError::Unauthenticated
    }

    /// Writes one record per (source, subject, reason) each window, until shutdown (which
    /// writes the last window's).
    async fn summarise_auth_failures(&self) {
        let window = self.inner.config.auth_failure_window;
        loop {
            let stop = tokio::select! {
                () = self.inner.stopping.cancelled() => true,
                () = tokio::time::sleep(window) => false,
            };
            self.write_auth_failures().await;
            if stop {
                return;
            }
        }
    }

    /// Writes the current window's failure sums now (also called by tests and at shutdown).
    pub async fn write_auth_failures(&self) {
        for (key, sum) in self.inner.auth_failures.take() {
            let mut e = AuditEvent::new(EventKind::AuthFailures);
            e.agent = sum.agent;
            e.decision = Some(custos_core::Decision::Deny);
            e.reason = Some(key.reason);
            e.detail = Some(Detail::AuthFailures {
                subject: key.subject,
                source: key.source,
                count: sum.count,
                first_at: sum.first_at,
                last_at: sum.last_at,
            });
            if let Err(err) = self.record(e).await {
                tracing::error!(error = %err, "failed authentications could not be recorded");
            }
        }
    }
}

/// Where a request came from: the client's address, when the edge knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Source(pub Option<std::net::IpAddr>);

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("unknown"),
        }
    }
}
