//! HTTP metrics and the Prometheus registry. Names and labels are defined here.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// Why the listener closed a connection at once.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusedReason {
    /// The global connection cap was reached.
    GlobalCap,
    /// The source address had its cap of connections open.
    IpCap,
}

impl RefusedReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GlobalCap => "global_cap",
            Self::IpCap => "ip_cap",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// The server's metrics, in a full registry (for operators) and a public one (anyone who
/// reaches `/metrics`: no reasons, no upstream names).
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    requests: Family<RequestLabels, Counter>,
    connections_open: Gauge,
    connections_refused: Family<RefusedLabels, Counter>,
    full: Arc<Registry>,
    public: Arc<Registry>,
}

impl ServerMetrics {
    /// Builds the registry with the server's and the broker's metrics.
    pub fn new(
        broker: &custos_broker::BrokerMetrics,
        sessions: &custos_gateway::SessionMetrics,
    ) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let connections_open = Gauge::default();
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        let mut full = Registry::default();
        let mut public = Registry::default();
        for r in [&mut full, &mut public] {
            r.register(
                "custos_http_requests",
                "HTTP requests by method, route and status",
                requests.clone(),
            );
            r.register(
                "custos_connections_open",
                "TCP connections currently open",
                connections_open.clone(),
            );
            r.register(
                "custos_connections_refused",
                "TCP connections closed at accept because a connection cap was reached",
                connections_refused.clone(),
            );
            sessions.register(r);
        }
        broker.register(&mut full);
        broker.register_public(&mut public);
        Self {
            requests,
            connections_open,
            connections_refused,
            full: Arc::new(full),
            public: Arc::new(public),
        }
    }

    /// Counts one request.
    pub fn request(&self, method: &str, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// Counts a connection the listener accepted and keeps.
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// Counts the end of a connection counted by [`Self::connection_opened`].
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Counts a connection closed at once because a cap was reached.
    pub fn connection_refused(&self, reason: RefusedReason) {
        self.connections_refused
            .get_or_create(&RefusedLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The Prometheus text exposition: the full view, or the public one.
    pub fn render(&self, full: bool) -> String {
        let registry = if full { &self.full } else { &self.public };
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
            out.clear();
        }
        out
    }
}
