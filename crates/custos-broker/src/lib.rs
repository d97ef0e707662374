//! The broker: the use cases that compose the domain crates — apply the registry, authenticate
//! operators and agents, start and end tasks, issue task tokens, and run one tool call through
//! the pipeline. Edges (HTTP, MCP, CLI) call the broker; nothing here knows about HTTP or MCP.

mod audit;
mod call;
mod error;
mod metrics;
mod operators;
mod registry;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use custos_audit::{AuditEvent, AuditLog};
use custos_core::Clock;
use custos_crypto::TokenIssuer;
use custos_store::Store;

pub use call::{CallError, CallResult, TaskContext, UpstreamError, Upstreams};
pub use error::BrokerError;
pub use metrics::BrokerMetrics;
pub use operators::{CreatedOperator, Operator};
pub use registry::{ApplyOutcome, Snapshot};
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
    tokens: TokenIssuer,
    clock: Arc<dyn Clock>,
    config: BrokerConfig,
    registry: registry::RegistryCache,
    tasks: tasks::TaskCache,
    verified: tasks::VerifiedTokens,
    metrics: BrokerMetrics,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("issuer", &self.inner.config.issuer)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Builds a broker over a store and audit log, loading the registry.
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
        let registry = registry::RegistryCache::load(&store, clock.now_ms()).await?;
        let tasks = tasks::TaskCache::new(config.cache_ttl);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                audit,
                tokens,
                clock,
                config,
                registry,
                tasks,
                verified: tasks::VerifiedTokens::new(),
                metrics: BrokerMetrics::default(),
            }),
        })
    }

    /// The token issuer (JWKS, issuer, audience).
    pub fn tokens(&self) -> &TokenIssuer {
        &self.inner.tokens
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
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

    /// Records an authentication failure. The reason goes to the audit log and metrics,
    /// never to the caller.
    pub async fn record_auth_failure(
        &self,
        subject: &str,
        reason: &str,
        agent: Option<&str>,
    ) -> BrokerError {
        self.inner.metrics.auth_failure(subject, reason);
        tracing::info!(subject, reason, agent, "authentication failed");
        let mut e = AuditEvent::new("auth_failure");
        e.agent = agent.map(str::to_owned);
        e.decision = Some("deny".into());
        e.reason = Some(format!("{subject}: {reason}"));
        if let Err(err) = self.record(e).await {
            return err;
        }
        BrokerError::Unauthenticated
    }
}
