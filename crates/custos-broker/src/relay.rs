//! What a running tool call exchanges with the agent besides its answer: the agent's
//! cancellation, the notifications the upstream sends about the call (progress, log
//! messages) on their way to the agent, and the requests the upstream makes of the agent's
//! client while the call runs (sampling, elicitation, roots) and their answers.
//!
//! The gateway makes a [`CallChannel`] for each call and hands it to
//! [`Broker::call_tool`](crate::Broker::call_tool); the broker passes it to the upstream client
//! made for the call's connection, with that connection's injected credentials attached, so a
//! notice is scrubbed of them before it is queued for the agent, the same as the result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::inject::Injection;

/// The largest notice relayed to the agent, as JSON bytes: bigger ones are dropped (and
/// counted), so an upstream cannot make the gateway buffer without bound.
pub const MAX_NOTICE: usize = 64 * 1024;

/// What kind of notification an upstream sent about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// `notifications/progress`: its params without the upstream's `progressToken` (the
    /// gateway puts the agent's own back).
    Progress,
    /// `notifications/message`: a log message.
    Log,
}

impl NoticeKind {
    /// The JSON-RPC method.
    pub fn method(self) -> &'static str {
        match self {
            NoticeKind::Progress => "notifications/progress",
            NoticeKind::Log => "notifications/message",
        }
    }
}

/// An MCP log level (RFC 5424 severities), lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `debug`.
    Debug,
    /// `info`.
    Info,
    /// `notice`.
    Notice,
    /// `warning`.
    Warning,
    /// `error`.
    Error,
    /// `critical`.
    Critical,
    /// `alert`.
    Alert,
    /// `emergency`.
    Emergency,
}

impl LogLevel {
    const ALL: [(LogLevel, &'static str); 8] = [
        (LogLevel::Debug, "debug"),
        (LogLevel::Info, "info"),
        (LogLevel::Notice, "notice"),
        (LogLevel::Warning, "warning"),
        (LogLevel::Error, "error"),
        (LogLevel::Critical, "critical"),
        (LogLevel::Alert, "alert"),
        (LogLevel::Emergency, "emergency"),
    ];

    /// The level a name names, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(l, _)| *l)
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(l, _)| *l == self)
            .map_or("debug", |(_, n)| n)
    }
}

/// What the agent's client declared it can do for a server (its `initialize` capabilities):
/// only these are claimed to an upstream on its behalf, and only these requests are relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClientCaps {
    /// `sampling`.
    pub sampling: bool,
    /// `elicitation`.
    pub elicitation: bool,
    /// `roots`.
    pub roots: bool,
}

impl ClientCaps {
    /// From an `initialize` request's `capabilities`.
    pub fn from_capabilities(caps: Option<&Value>) -> Self {
        let has = |k: &str| caps.and_then(|c| c.get(k)).is_some_and(Value::is_object);
        Self {
            sampling: has("sampling"),
            elicitation: has("elicitation"),
            roots: has("roots"),
        }
    }

    /// As `initialize` capabilities for an upstream.
    pub fn to_capabilities(self) -> Value {
        let mut out = serde_json::Map::new();
        if self.sampling {
            out.insert("sampling".into(), Value::Object(serde_json::Map::new()));
        }
        if self.elicitation {
            out.insert("elicitation".into(), Value::Object(serde_json::Map::new()));
        }
        if self.roots {
            out.insert("roots".into(), Value::Object(serde_json::Map::new()));
        }
        Value::Object(out)
    }

    fn allows(self, method: ClientMethod) -> bool {
        match method {
            ClientMethod::Sampling => self.sampling,
            ClientMethod::Elicitation => self.elicitation,
            ClientMethod::Roots => self.roots,
        }
    }
}

/// A request a server may make of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMethod {
    /// `sampling/createMessage`.
    Sampling,
    /// `elicitation/create`.
    Elicitation,
    /// `roots/list`.
    Roots,
}

impl ClientMethod {
    /// The method a name names, if it is one of these.
    pub fn parse(method: &str) -> Option<Self> {
        match method {
            "sampling/createMessage" => Some(Self::Sampling),
            "elicitation/create" => Some(Self::Elicitation),
            "roots/list" => Some(Self::Roots),
            _ => None,
        }
    }

    /// The JSON-RPC method.
    pub fn method(self) -> &'static str {
        match self {
            Self::Sampling => "sampling/createMessage",
            Self::Elicitation => "elicitation/create",
            Self::Roots => "roots/list",
        }
    }
}

/// An upstream's request of the agent's client, on its way to the agent; `answer` takes the
/// agent's result, or the error to give the upstream.
#[derive(Debug)]
pub struct ClientRequest {
    /// Which.
    pub method: ClientMethod,
    /// Its params, scrubbed of injected credentials.
    pub params: Value,
    /// Where the answer goes.
    pub answer: tokio::sync::oneshot::Sender<Result<Value, ClientRefusal>>,
}

/// A JSON-RPC error for the upstream, in answer to its request of the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRefusal {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
    /// Its data (the agent's own, when the agent answered with an error).
    pub data: Option<Value>,
}

impl ClientRefusal {
    fn new(code: i64, message: &str) -> Self {
        Self {
            code,
            message: message.to_owned(),
            data: None,
        }
    }
}

/// The largest request of the client relayed to the agent, as JSON bytes.
pub const MAX_CLIENT_REQUEST: usize = 1024 * 1024;

/// One notification from the upstream about a call in flight.
#[derive(Debug, Clone)]
pub struct Notice {
    /// Which.
    pub kind: NoticeKind,
    /// Its params, scrubbed of injected credentials.
    pub params: Value,
}

/// The agent's side of one running call.
#[derive(Debug, Clone, Default)]
pub struct CallChannel {
    cancel: CancellationToken,
    notices: Option<mpsc::Sender<Notice>>,
    progress: bool,
    /// The lowest log level the agent wants messages of, when it named one.
    log_level: Option<LogLevel>,
    /// Only progress, without its message, is relayed (the call's content would taint the
    /// task, and the taint is recorded only once the result is in).
    numbers_only: bool,
    injection: Option<Arc<Injection>>,
    dropped: Arc<AtomicU64>,
    requests: Option<mpsc::Sender<ClientRequest>>,
    caps: ClientCaps,
    round: Option<Arc<Round>>,
}

/// What a 2026-07-28 agent sends again when it retries a call that needed input (a
/// multi-round call): its answers to the upstream's input requests and the upstream's state,
/// passed to the upstream with the call; and the capabilities its client declares in `_meta`.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// `inputResponses`.
    pub input_responses: Option<Value>,
    /// `requestState`, as the upstream gave it (unsealed by the gateway).
    pub request_state: Option<String>,
    /// The `clientCapabilities` of the request's `_meta`, when it declares any.
    pub client_capabilities: Option<Value>,
}

impl Round {
    /// Puts the agent's answers and the upstream's state into the params of the request that
    /// retries the round.
    pub fn add_to(&self, params: &mut serde_json::Map<String, Value>) {
        if let Some(answers) = &self.input_responses {
            params.insert("inputResponses".into(), answers.clone());
        }
        if let Some(state) = &self.request_state {
            params.insert("requestState".into(), state.clone().into());
        }
    }
}

impl CallChannel {
    /// A channel that carries only the agent's cancellation: the upstream's notifications
    /// about the call are not relayed.
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            ..Self::default()
        }
    }

    /// The same channel, relaying the upstream's notifications into `tx`: progress only when
    /// `progress` (the agent asked for it with a progress token), log messages only once a
    /// level is asked for ([`CallChannel::with_log_level`]).
    #[must_use]
    pub fn with_notices(mut self, tx: mpsc::Sender<Notice>, progress: bool) -> Self {
        self.notices = Some(tx);
        self.progress = progress;
        self
    }

    /// The same channel, asking for log messages at `level` and above (a stateless-era
    /// upstream sends none unless asked).
    #[must_use]
    pub fn with_log_level(mut self, level: Option<LogLevel>) -> Self {
        self.log_level = level;
        self
    }

    /// The same channel, relaying the upstream's requests of the client into `tx`, for the
    /// capabilities the agent's client declared.
    #[must_use]
    pub fn with_requests(mut self, tx: mpsc::Sender<ClientRequest>, caps: ClientCaps) -> Self {
        self.requests = Some(tx);
        self.caps = caps;
        self
    }

    /// What the agent's client can be asked (none when requests are not relayed): the
    /// capabilities to claim to the upstream for this call.
    pub fn caps(&self) -> ClientCaps {
        if self.requests.is_some() {
            self.caps
        } else {
            ClientCaps::default()
        }
    }

    /// Relays an upstream's request of the client to the agent and waits for the answer.
    ///
    /// # Errors
    /// The [`ClientRefusal`] to answer the upstream with: a method that is not a client's, a
    /// capability the agent's client did not declare, a request too big, content withheld until
    /// the task's taint is recorded, an agent not reading or gone, or the agent's own error.
    pub async fn ask(&self, method: &str, mut params: Value) -> Result<Value, ClientRefusal> {
        const METHOD_NOT_FOUND: i64 = -32601;
        let Some(m) = ClientMethod::parse(method) else {
            return Err(ClientRefusal::new(METHOD_NOT_FOUND, "Method not found"));
        };
        let Some(tx) = self.requests.as_ref().filter(|_| self.caps.allows(m)) else {
            return Err(ClientRefusal::new(
                METHOD_NOT_FOUND,
                "the client did not declare this capability",
            ));
        };
        if self.numbers_only {
            return Err(ClientRefusal::new(
                -32603,
                "custos: withheld: the result of this tool taints the task, and the taint is recorded only once the call is answered",
            ));
        }
        if serde_json::to_vec(&params).map_or(true, |b| b.len() > MAX_CLIENT_REQUEST) {
            return Err(ClientRefusal::new(
                -32602,
                "custos: request too large to relay",
            ));
        }
        if let Some(i) = &self.injection {
            i.redact_json(&mut params);
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        tx.try_send(ClientRequest {
            method: m,
            params,
            answer,
        })
        .map_err(|_| ClientRefusal::new(-32603, "custos: the agent is not reading"))?;
        answered.await.unwrap_or_else(|_| {
            Err(ClientRefusal::new(
                -32603,
                "custos: the agent did not answer",
            ))
        })
    }

    /// The same channel, carrying what a stateless-era agent sends with a call round.
    #[must_use]
    pub fn with_round(mut self, round: Round) -> Self {
        self.round = Some(Arc::new(round));
        self
    }

    /// What the agent sent with this call round, if anything.
    pub fn round(&self) -> Option<&Round> {
        self.round.as_deref()
    }

    /// The lowest log level asked for, when notices are relayed.
    pub fn log_level(&self) -> Option<LogLevel> {
        self.log_level.filter(|_| self.notices.is_some())
    }

    /// The agent's cancellation of the call.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the agent wants the upstream's progress: the upstream client then asks the
    /// upstream for it (`_meta.progressToken`, a token of the client's own).
    pub fn wants_progress(&self) -> bool {
        self.progress && self.notices.is_some()
    }

    /// Whether the upstream's notifications are relayed at all.
    pub fn relays(&self) -> bool {
        self.notices.is_some()
    }

    /// Notices the agent did not get: too big, the agent too slow to read them, or content
    /// withheld until the taint is recorded.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The channel for one call on a connection carrying `injection`'s credentials.
    pub(crate) fn for_call(&self, injection: Option<&Arc<Injection>>, taints: bool) -> Self {
        let mut c = self.clone();
        c.injection = injection.cloned();
        c.numbers_only = taints;
        c
    }

    /// Queues a notice for the agent, scrubbed of injected credentials. Waits while the queue
    /// is full (the upstream's messages are then read as fast as the gateway relays them; the
    /// gateway drains the queue whether or not the agent reads); one that is too big is
    /// dropped, and so is every notice once the gateway stopped relaying.
    pub async fn notify(&self, kind: NoticeKind, mut params: Value) {
        let Some(tx) = &self.notices else { return };
        let lost = || {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        };
        match kind {
            NoticeKind::Progress if !self.progress => return,
            // Not asked for, or below the level asked for: not wanted, not lost.
            NoticeKind::Log
                if self.log_level.is_none_or(|min| {
                    params
                        .get("level")
                        .and_then(Value::as_str)
                        .and_then(LogLevel::parse)
                        .is_some_and(|l| l < min)
                }) =>
            {
                return;
            }
            NoticeKind::Log if self.numbers_only => return lost(),
            _ => {}
        }
        if let Some(obj) = params.as_object_mut() {
            obj.remove("progressToken");
            if self.numbers_only {
                obj.remove("message");
            }
        } else {
            return lost();
        }
        if serde_json::to_vec(&params).map_or(true, |b| b.len() > MAX_NOTICE) {
            return lost();
        }
        if let Some(i) = &self.injection {
            i.redact_json(&mut params);
        }
        if tx.send(Notice { kind, params }).await.is_err() {
            lost();
        }
    }
}

impl crate::Broker {
    /// Records that an upstream's request of the agent's client, made while `ctx` called
    /// `tool`, is relayed: before it reaches the agent. Unrecorded, it is not relayed.
    ///
    /// # Errors
    /// [`crate::BrokerError`] when the audit log cannot take the record.
    pub async fn record_client_request(
        &self,
        ctx: &crate::TaskContext,
        tool: &str,
        method: ClientMethod,
    ) -> Result<(), crate::BrokerError> {
        let mut e = ctx.event(custos_audit::EventKind::ClientRequest);
        e.tool = Some(custos_core::text::truncate(tool, 128).into_owned());
        e.detail = Some(custos_audit::Detail::ClientRequest {
            method: method.method().to_owned(),
        });
        self.record(e).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn notices_are_bounded_and_progress_needs_asking() {
        let (tx, mut rx) = mpsc::channel(2);
        let quiet = CallChannel::new(CancellationToken::new()).with_notices(tx.clone(), false);
        quiet
            .notify(
                NoticeKind::Progress,
                json!({"progressToken": 7, "progress": 1}),
            )
            .await;
        quiet
            .notify(NoticeKind::Log, json!({"level": "emergency", "data": "x"}))
            .await;
        assert!(rx.try_recv().is_err(), "progress and logs nobody asked for");
        assert_eq!(quiet.dropped(), 0, "not wanted is not lost");
        let quiet = quiet.with_log_level(Some(LogLevel::Debug));
        quiet
            .notify(
                NoticeKind::Log,
                json!({"level": "info", "data": "x".repeat(MAX_NOTICE)}),
            )
            .await;
        assert_eq!(quiet.dropped(), 1, "too big");

        let c = CallChannel::new(CancellationToken::new())
            .with_notices(tx, true)
            .with_log_level(Some(LogLevel::Debug));
        c.notify(
            NoticeKind::Progress,
            json!({"progressToken": 7, "progress": 1, "message": "m"}),
        )
        .await;
        let n = rx.try_recv().expect("relayed");
        assert_eq!(
            n.params,
            json!({"progress": 1, "message": "m"}),
            "token taken off"
        );
        c.notify(NoticeKind::Log, json!({"level": "info", "data": 1}))
            .await;
        c.notify(NoticeKind::Log, json!({"level": "info", "data": 2}))
            .await;
        // A full queue waits for room.
        let waiting = c.notify(NoticeKind::Log, json!({"level": "info", "data": 3}));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting)
                .await
                .is_err()
        );
        assert_eq!(rx.recv().await.expect("first").params["data"], 1);
        waiting.await;
        assert_eq!(c.dropped(), 0);
        c.notify(NoticeKind::Log, json!("not an object")).await;
        assert_eq!(c.dropped(), 1);
        let _ = rx.try_recv();
        let _ = rx.try_recv();
        let warn = c.clone().with_log_level(LogLevel::parse("warning"));
        warn.notify(NoticeKind::Log, json!({"level": "info", "data": "below"}))
            .await;
        warn.notify(NoticeKind::Log, json!({"level": "error", "data": "above"}))
            .await;
        assert_eq!(rx.try_recv().expect("error").params["data"], "above");
        assert!(rx.try_recv().is_err(), "info is below warning");
        assert_eq!(
            LogLevel::parse("emergency").map(LogLevel::as_str),
            Some("emergency")
        );
        assert_eq!(LogLevel::parse("loud"), None);

        let tainting = c.for_call(None, true);
        let _ = rx.try_recv();
        let _ = rx.try_recv();
        tainting
            .notify(NoticeKind::Log, json!({"level": "info", "data": "secret"}))
            .await;
        tainting
            .notify(
                NoticeKind::Progress,
                json!({"progress": 2, "message": "content"}),
            )
            .await;
        assert_eq!(
            rx.try_recv().expect("progress").params,
            json!({"progress": 2})
        );
        assert!(
            rx.try_recv().is_err(),
            "no log content before the taint is recorded"
        );
    }
}
