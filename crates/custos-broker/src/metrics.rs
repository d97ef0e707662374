//! The broker's metrics: decisions, authentication failures, upstream latency.
//! Names and labels are defined here and nowhere else.

use custos_core::{Decision, Outcome, Reason, Tier};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    tier: &'static str,
    reason: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    subject: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublicDecisionLabels {
    decision: &'static str,
    tier: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApprovalLabels {
    state: &'static str,
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

/// Counters and histograms the broker updates, in two views: the full one (reasons and
/// upstream names) for operators, and a coarse one for anyone who can reach `/metrics`, which
/// must not tell an outsider whether a task exists, which agent owns it, or which upstreams
/// there are.
#[derive(Clone, Debug)]
pub struct BrokerMetrics {
    decisions: Family<DecisionLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    upstream_latency: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    public_decisions: Family<PublicDecisionLabels, Counter>,
    public_auth_failures: Family<SubjectLabels, Counter>,
    public_upstream_latency: Histogram,
    lease_revoke_failures: Counter,
    approvals: Family<ApprovalLabels, Counter>,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self {
            decisions: Family::default(),
            auth_failures: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            public_decisions: Family::default(),
            public_auth_failures: Family::default(),
            public_upstream_latency: latency_histogram(),
            lease_revoke_failures: Counter::default(),
            approvals: Family::default(),
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
        registry.register(
            "custos_lease_revoke_failures",
            "Credential leases whose revocation gave up after its retries (marked failed)",
            self.lease_revoke_failures.clone(),
        );
        registry.register(
            "custos_approvals",
            "Approval requests written (pending) and answered (approved, denied)",
            self.approvals.clone(),
        );
    }

    /// Registers the coarse view under the same names: no reasons, no upstream names.
    pub fn register_public(&self, registry: &mut Registry) {
        registry.register(
            "custos_decisions",
            "Tool-call decisions by decision, tier and outcome",
            self.public_decisions.clone(),
        );
        registry.register(
            "custos_auth_failures",
            "Refused authentications by subject",
            self.public_auth_failures.clone(),
        );
        registry.register(
            "custos_upstream_latency_seconds",
            "Time upstreams took to answer tool calls",
            self.public_upstream_latency.clone(),
        );
    }

    pub(crate) fn decision(
        &self,
        decision: Decision,
        tier: Option<Tier>,
        reason: Reason,
        outcome: Outcome,
    ) {
        let tier = match tier {
            None => "none",
            Some(Tier::T1) => "1",
            Some(Tier::T2) => "2",
            Some(Tier::T3) => "3",
            Some(Tier::T4) => "4",
        };
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: decision.as_str(),
                tier,
                reason: reason.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.public_decisions
            .get_or_create(&PublicDecisionLabels {
                decision: decision.as_str(),
                tier,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub(crate) fn approval(&self, state: custos_core::ApprovalState) {
        self.approvals
            .get_or_create(&ApprovalLabels {
                state: state.as_str(),
            })
            .inc();
    }

    pub(crate) fn lease_revoke_failed(&self) {
        self.lease_revoke_failures.inc();
    }

    pub(crate) fn auth_failure(&self, subject: &str, reason: Reason) {
        self.auth_failures
            .get_or_create(&AuthLabels {
                subject: subject.to_owned(),
                reason: reason.as_str(),
            })
            .inc();
        self.public_auth_failures
            .get_or_create(&SubjectLabels {
                subject: subject.to_owned(),
            })
            .inc();
    }

    pub(crate) fn upstream_latency(&self, upstream: &str, seconds: f64) {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .observe(seconds);
        self.public_upstream_latency.observe(seconds);
    }
}
