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

/// The server's metrics.
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    requests: Family<RequestLabels, Counter>,
    registry: Arc<Registry>,
}

impl ServerMetrics {
    /// Builds the registry with the server's and the broker's metrics.
    pub fn new(broker: &custos_broker::BrokerMetrics) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "custos_http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        broker.register(&mut registry);
        Self {
            requests,
            registry: Arc::new(registry),
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
