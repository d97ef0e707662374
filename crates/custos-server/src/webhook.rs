//! The approvals webhook: every approval request written (and every answer) is POSTed as JSON
//! to the operator's URL, so a chat bot or a pager can ask a human. Delivery runs beside the
//! calls and never holds one up: a slow or dead receiver costs a log line, never a decision.
//!
//! Each POST carries `X-Custos-Timestamp` (Unix seconds) and, when a secret is configured,
//! `X-Custos-Signature: sha256=<hex HMAC-SHA-256 of "<timestamp>.<body>">`, so a receiver can
//! check that it came from this Custos and is fresh.

use std::time::Duration;

use custos_broker::{ApprovalEvent, Broker};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use zeroize::Zeroizing;

use crate::response::ApprovalBody;

/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per event (with 1 s, 2 s, 4 s … between them).
const ATTEMPTS: u32 = 4;

/// Where approval notifications go.
#[derive(Clone)]
pub struct WebhookConfig {
    url: String,
    secret: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A webhook URL often carries its own secret (chat webhooks do): never printed.
        f.debug_struct("WebhookConfig")
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// A webhook to `url`, which must be an absolute `http://` or `https://` URL.
    ///
    /// # Errors
    /// A message saying what is wrong with the URL (without repeating it: it may hold a
    /// secret).
    pub fn new(url: &str, secret: Option<Zeroizing<Vec<u8>>>) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err("must be an http:// or https:// URL with a host".into());
        }
        if secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err("the signing secret is empty".into());
        }
        Ok(Self {
            url: url.to_owned(),
            secret,
        })
    }
}

/// Delivers the broker's approval events to the webhook until the broker stops.
pub(crate) async fn run(broker: Broker, config: WebhookConfig) {
    let mut events = broker.approval_events();
    let client = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the approvals webhook client cannot be built; no notifications");
            return;
        }
    };
    let page = format!(
        "{}/ui/approvals",
        broker.config().issuer.trim_end_matches('/')
    );
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "the approvals webhook fell behind; notifications dropped"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let (kind, approval) = match event {
            ApprovalEvent::Requested(a) => ("approval.requested", a),
            ApprovalEvent::Answered(a) => ("approval.answered", a),
        };
        let id = approval.id.to_string();
        let text = summary(kind, &approval, &page);
        let body = json!({
            "type": kind,
            "text": text,
            "approval": ApprovalBody::from(approval.clone()),
            "page": page,
        })
        .to_string();
        // One event at a time, in order; each delivery bounded by its attempts.
        if deliver(&client, &config, kind, &id, body).await
            && kind == "approval.requested"
            && let Err(e) = broker.record_approval_notified(&approval, "webhook").await
        {
            tracing::warn!(approval = %id, error = %e, "the webhook delivery could not be recorded");
        }
    }
}

/// A one-line summary for chat (Slack's and compatible webhooks show `text`), values from
/// outside bounded and escaped as Slack asks.
fn summary(kind: &str, a: &custos_core::Approval, page: &str) -> String {
    // Slack's escaping: `&`, `<` and `>` (which would otherwise make links and mentions).
    let clean = |s: &str| -> String {
        custos_core::text::for_display(s, 120)
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    match kind {
        "approval.requested" => format!(
            "Approval needed: agent {} wants to call {} (tier {}) for {}, task {}. Approve or deny: {page}",
            clean(&a.agent),
            clean(&a.tool),
            a.tier,
            clean(&a.initiator),
            a.task
        ),
        _ => format!(
            "Approval {} for {} (task {}) was {} by {}.",
            a.id,
            clean(&a.tool),
            a.task,
            a.state.as_str(),
            clean(a.decided_by.as_deref().unwrap_or("nobody"))
        ),
    }
}

/// Delivers one event; `true` once the receiver accepted it.
async fn deliver(
    client: &reqwest::Client,
    config: &WebhookConfig,
    kind: &str,
    id: &str,
    body: String,
) -> bool {
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let mut req = client
            .post(&config.url)
            .header("content-type", "application/json")
            .header("x-custos-event", kind)
            .header("x-custos-timestamp", &timestamp);
        if let Some(secret) = &config.secret {
            let signed = format!("{timestamp}.{body}");
            let mac = custos_crypto::digest::hmac_sha256_hex(secret, signed.as_bytes());
            req = req.header("x-custos-signature", format!("sha256={mac}"));
        }
        match req.body(body.clone()).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(approval = %id, kind, "approval webhook delivered");
                return true;
            }
            Ok(r) => {
                tracing::warn!(approval = %id, kind, status = r.status().as_u16(), attempt, "approval webhook refused");
            }
            Err(e) => {
                tracing::warn!(approval = %id, kind, error = %e.without_url(), attempt, "approval webhook unreachable");
            }
        }
    }
    tracing::error!(approval = %id, kind, "approval webhook gave up after {ATTEMPTS} attempts");
    false
}
