//! HTTP metrics and the Prometheus registry. Names and labels are defined here.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// The server's metrics, in a full registry (for operators) and a public one (anyone who
/// reaches `/metrics`: no reasons, no upstream names).
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    requests: Family<RequestLabels, Counter>,
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
        let mut full = Registry::default();
        let mut public = Registry::default();
        for r in [&mut full, &mut public] {
            r.register(
                "custos_http_requests",
                "HTTP requests by method, route and status",
                requests.clone(),
            );
            sessions.register(r);
        }
        broker.register(&mut full);
        broker.register_public(&mut public);
        Self {
            requests,
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
