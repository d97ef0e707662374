//! The broker's metrics: decisions, authentication failures, upstream latency.
//! Names and labels are defined here and nowhere else.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    tier: String,
    reason: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    subject: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0, 30.0,
    ])
}

/// Counters and histograms the broker updates.
#[derive(Clone, Debug)]
pub struct BrokerMetrics {
    decisions: Family<DecisionLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    upstream_latency: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self {
            decisions: Family::default(),
            auth_failures: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl BrokerMetrics {
    /// Registers every metric under `custos_`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "custos_decisions",
            "Tool-call decisions by decision, tier, reason and outcome",
            self.decisions.clone(),
        );
        registry.register(
            "custos_auth_failures",
            "Refused authentications by subject and reason",
            self.auth_failures.clone(),
        );
        registry.register(
            "custos_upstream_latency_seconds",
            "Time upstreams took to answer tool calls",
            self.upstream_latency.clone(),
        );
    }

    pub(crate) fn decision(
        &self,
        decision: &'static str,
        tier: Option<u8>,
        reason: &'static str,
        outcome: &'static str,
    ) {
        let tier = tier.map_or_else(|| "none".to_owned(), |t| t.to_string());
        self.decisions
            .get_or_create(&DecisionLabels {
                decision,
                tier,
                reason,
                outcome,
            })
            .inc();
    }

    pub(crate) fn auth_failure(&self, subject: &str, reason: &str) {
        self.auth_failures
            .get_or_create(&AuthLabels {
                subject: subject.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn upstream_latency(&self, upstream: &str, seconds: f64) {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .observe(seconds);
    }
}
