//! The MCP server agents talk to, independent of the HTTP framework: the edge turns an HTTP
//! request into an [`McpRequest`] and writes back the [`GatewayReply`].
//!
//! Era is chosen per request from `MCP-Protocol-Version`: absent or a handshake version is the
//! session era (`initialize`, `Mcp-Session-Id`); `2026-07-28` is the stateless era
//! (`server/discover`, `_meta` on every request, `Mcp-Method`/`Mcp-Name` headers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custos_broker::{
    Broker, BrokerError, CallChannel, CallError, ClientCaps, ClientRefusal, ClientRequest, Listing,
    LogLevel, Notice, NoticeKind, Round, Source, TaskContext, UpstreamError,
};
use custos_core::Reason;
use custos_crypto::{StateSeal, new_id};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::jsonrpc::{
    self, META_CAPABILITIES, META_LOG_LEVEL, META_SERVER_INFO, META_VERSION, Message,
};
use crate::sessions::{MAX_SUBSCRIPTIONS, SessionMetrics, SessionState, Sessions};
use crate::upstream::UpstreamPool;
use crate::{HANDSHAKE_VERSIONS, MODERN_VERSION};

/// The HTTP verb of a request to the MCP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpVerb {
    /// A JSON-RPC message.
    Post,
    /// An SSE stream request (not offered: 405).
    Get,
    /// End a session.
    Delete,
}

/// What the gateway reads from one HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct McpRequest<'a> {
    /// The verb.
    pub verb: McpVerb,
    /// `Authorization`.
    pub authorization: Option<&'a str>,
    /// `Mcp-Session-Id`.
    pub session_id: Option<&'a str>,
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<&'a str>,
    /// `Mcp-Method`.
    pub mcp_method: Option<&'a str>,
    /// `Mcp-Name`.
    pub mcp_name: Option<&'a str>,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// `Origin`.
    pub origin: Option<&'a str>,
    /// `Host` (or the HTTP/2 authority).
    pub host: Option<&'a str>,
    /// The client's address, when the edge knows it.
    pub peer: Option<std::net::IpAddr>,
    /// `Accept`.
    pub accept: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// What to send back.
#[derive(Debug)]
pub struct GatewayReply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// A JSON body, or none.
    pub body: Option<Value>,
    /// Instead of `body`: JSON-RPC messages to send as a `text/event-stream`, ending with the
    /// response (a call that reports progress).
    pub events: Option<tokio::sync::mpsc::Receiver<Value>>,
}

/// How often a call whose client asked for progress (`_meta.progressToken`) is reported on
/// while it runs or waits for an approval.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl GatewayReply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
            events: None,
        }
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
            events: None,
        }
    }

    fn stream(events: tokio::sync::mpsc::Receiver<Value>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: None,
            events: Some(events),
        }
    }

    fn rpc_error(status: u16, id: &Value, code: i64, message: &str, data: Option<Value>) -> Self {
        Self::json(status, jsonrpc::error(id, code, message, data))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Era {
    Session,
    Modern,
}

/// Who sent a request, as far as answering it goes.
#[derive(Debug, Clone, Copy)]
struct Caller<'a> {
    /// Its session (empty in the stateless era): what `notifications/cancelled` is scoped to.
    scope: &'a str,
    era: Era,
    /// The lowest log level it wants messages of; none: no log messages.
    log_level: Option<LogLevel>,
    /// What its client can be asked on the call's stream (sessions only).
    caps: ClientCaps,
}

/// How long a task-scoped upstream connection may go unused before it is stopped: long enough
/// that a task still at work keeps its process (and what the process holds).
const TASK_CONNECTION_IDLE: Duration = Duration::from_secs(3600);

/// How often idle task-scoped connections are looked for.
const TASK_CONNECTION_SWEEP: Duration = Duration::from_secs(60);

/// The agent-facing MCP server.
pub struct McpGateway {
    broker: Broker,
    upstreams: Arc<UpstreamPool>,
    sessions: Arc<Mutex<Sessions>>,
    resource_metadata: String,
    own_origin: String,
    /// `host[:port]` of the public URL: the `Host` a client must name, besides loopback names.
    own_authority: String,
    /// Tool calls in flight, by (task, session, request id): what `notifications/cancelled`
    /// cancels.
    inflight: Arc<Mutex<HashMap<String, CancellationToken>>>,
    /// Requests relayed from upstreams to agents, waiting for the agent's answer, by (task,
    /// session, the id Custos gave the request).
    client_answers: ClientAnswers,
    /// Seals the state of multi-round calls handed to agents.
    seal: Arc<StateSeal>,
}

type ClientAnswers = Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<ClientAnswer>>>>;
type ClientAnswer = Result<Value, ClientRefusal>;

/// The longest URI a session may subscribe to (what it stores and matches updates against).
const MAX_SUBSCRIBED_URI: usize = 2048;

/// Requests of the agent's client queued per call before more are refused.
const REQUEST_QUEUE: usize = 8;

/// The most tool calls in flight that can be cancelled at once; beyond, calls run uncancellable.
const MAX_INFLIGHT: usize = 10_000;

/// Removes a call from the in-flight table when it ends.
struct InflightGuard {
    table: Arc<Mutex<HashMap<String, CancellationToken>>>,
    key: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

fn inflight_key(task: &str, scope: &str, id: &Value) -> String {
    format!("{task}\u{0}{scope}\u{0}{id}")
}

impl std::fmt::Debug for McpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpGateway").finish_non_exhaustive()
    }
}

/// The one protocol version with JSON-RPC batches.
const BATCH_VERSION: &str = "2025-03-26";
/// Most messages in one batch.
const MAX_BATCH: usize = 64;

/// Tools per `tools/list` page.
const TOOLS_PAGE: usize = 100;

/// One page of a tool list: from the offset the cursor names (an opaque `t<offset>`), at most
/// [`TOOLS_PAGE`], and the cursor of the next page when there is one.
fn page_of<T>(
    mut tools: Vec<T>,
    cursor: Option<&Value>,
) -> Result<(Vec<T>, Option<String>), &'static str> {
    let start = match cursor {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => c
            .strip_prefix('t')
            .filter(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n > 0 && n < tools.len())
            .ok_or("Invalid params: unknown cursor")?,
        Some(_) => return Err("Invalid params: cursor must be a string"),
    };
    let end = start.saturating_add(TOOLS_PAGE).min(tools.len());
    let next = (end < tools.len()).then(|| format!("t{end}"));
    tools.truncate(end);
    Ok((tools.split_off(start), next))
}

/// The JSON-RPC code of a refused call: a tool this task cannot see (not in its template, no
/// such upstream, not a valid name) is an unknown tool, `-32602` as the MCP specification
/// says; a visible tool refused by policy (Tier 4, an approval needed) is `-32010`.
fn refusal_code(reason: Reason) -> i64 {
    match reason {
        Reason::ToolNotAllowed
        | Reason::InvalidToolName
        | Reason::UnknownUpstream
        | Reason::ResourceNotAllowed
        | Reason::PromptNotAllowed => jsonrpc::INVALID_PARAMS,
        // The upstream could not even list its tools to check the called one: the same error
        // as an upstream that fails the call.
        Reason::UpstreamFailed => jsonrpc::UPSTREAM_FAILED,
        _ => jsonrpc::DENIED,
    }
}

fn missing_session() -> GatewayReply {
    GatewayReply::rpc_error(
        400,
        &Value::Null,
        jsonrpc::INVALID_REQUEST,
        "Bad Request: Missing session ID",
        None,
    )
}

fn unknown_session() -> GatewayReply {
    GatewayReply::rpc_error(
        404,
        &Value::Null,
        jsonrpc::INVALID_REQUEST,
        "Session not found",
        None,
    )
}

fn server_info() -> Value {
    json!({ "name": "custos", "version": env!("CARGO_PKG_VERSION") })
}

fn modern_status(code: i64) -> u16 {
    match code {
        jsonrpc::PARSE_ERROR
        | jsonrpc::INVALID_REQUEST
        | jsonrpc::INVALID_PARAMS
        | jsonrpc::HEADER_MISMATCH
        | -32021
        | jsonrpc::UNSUPPORTED_VERSION => 400,
        jsonrpc::METHOD_NOT_FOUND => 404,
        _ => 200,
    }
}

/// Decodes an `Mcp-Name` header value (`=?base64?…?=` when not plain ASCII).
fn decode_header_value(v: &str) -> Option<String> {
    use base64::Engine as _;
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(v.to_owned()),
    }
}

/// `host[:port]` of a URL.
fn authority_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// Whether a `Host` value names this server: its public URL's authority, or a loopback name
/// (with any port). Anything else is a request for another name resolved to this address —
/// DNS rebinding — and is refused.
fn host_allowed(host: &str, own_authority: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == own_authority || is_loopback_origin(&format!("http://{host}"))
}

fn is_loopback_origin(origin: &str) -> bool {
    let host = origin.split("://").nth(1).unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl McpGateway {
    /// A gateway for `broker`, calling upstreams through `upstreams`.
    pub fn new(broker: Broker, upstreams: Arc<UpstreamPool>, metrics: SessionMetrics) -> Self {
        let issuer = broker.tokens().issuer().trim_end_matches('/').to_owned();
        let sessions = Arc::new(Mutex::new(Sessions::new(metrics)));
        // A task that ends takes its sessions and its task-scoped upstream connections with it.
        let mut ends = broker.task_ends();
        let mut changes = upstreams.tool_changes();
        let mut updates = upstreams.resource_updates();
        let table = sessions.clone();
        let pool = upstreams.clone();
        let announcer = broker.clone();
        broker.spawn_supervised(async move {
            use tokio::sync::broadcast::error::RecvError;
            let mut sweep = tokio::time::interval(TASK_CONNECTION_SWEEP);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    end = ends.recv() => match end {
                        Ok(task) => {
                            table
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .close_task(&task);
                            pool.end_task(&task).await;
                        }
                        // Missed ends: those sessions still fail authentication, and expire
                        // idle; so do those connections, by the sweep below.
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    },
                    // Expired tasks are not announced: their connections go once idle.
                    _ = sweep.tick() => pool.stop_idle_task_connections(TASK_CONNECTION_IDLE).await,
                    updated = updates.recv() => match updated {
                        Ok((upstream, uri)) => {
                            let streams = table
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .subscribed_streams(&upstream, &uri);
                            let note = notification(
                                "notifications/resources/updated",
                                json!({ "uri": uri }),
                            );
                            for tx in streams {
                                let _ = tx.try_send(note.clone());
                            }
                        }
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    },
                    changed = changes.recv() => match changed {
                        Ok(upstream) => announce_tools_changed(&announcer, &table, &upstream).await,
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    },
                }
            }
        });
        Self {
            resource_metadata: format!("{issuer}/.well-known/oauth-protected-resource"),
            own_authority: authority_of(&issuer).to_ascii_lowercase(),
            own_origin: issuer,
            broker,
            upstreams,
            sessions,
            inflight: Arc::default(),
            client_answers: Arc::default(),
            seal: Arc::new(StateSeal::new()),
        }
    }

    /// Registers a tool call as in flight: its cancellation token, and the guard that takes it
    /// off the table when the call ends.
    fn track_call(
        &self,
        ctx: &TaskContext,
        scope: &str,
        id: &Value,
    ) -> (CancellationToken, Option<InflightGuard>) {
        let token = CancellationToken::new();
        let key = inflight_key(ctx.task_id(), scope, id);
        let mut table = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.len() >= MAX_INFLIGHT || table.contains_key(&key) {
            return (token, None);
        }
        table.insert(key.clone(), token.clone());
        let guard = InflightGuard {
            table: self.inflight.clone(),
            key,
        };
        (token, Some(guard))
    }

    /// `notifications/cancelled`: cancels the named call of this task and session, if it is
    /// still in flight (a call already answered, or another task's, is not found).
    fn cancel_call(&self, ctx: &TaskContext, scope: &str, params: Option<&Value>) {
        let Some(request_id) = params.and_then(|p| p.get("requestId")) else {
            return;
        };
        let key = inflight_key(ctx.task_id(), scope, request_id);
        let token = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(t) = token {
            tracing::info!(task = %ctx.task_id(), "tool call cancelled by the agent");
            t.cancel();
        }
    }

    /// An agent's answer to a request relayed to it: handed to the upstream waiting for it
    /// (an answer to no request of this task's session is dropped).
    fn client_answered(&self, ctx: &TaskContext, scope: &str, msg: &Value) {
        let Some(id) = msg.get("id") else { return };
        let key = inflight_key(ctx.task_id(), scope, id);
        let waiting = self
            .client_answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        let Some(waiting) = waiting else {
            tracing::debug!(task = %ctx.task_id(), "an answer to no relayed request; dropped");
            return;
        };
        let answer = match (msg.get("result"), msg.get("error")) {
            (Some(result), _) => Ok(result.clone()),
            (None, Some(e)) => {
                let (code, message, data) = jsonrpc::error_parts(e);
                Err(ClientRefusal {
                    code: code.unwrap_or(jsonrpc::INTERNAL_ERROR),
                    message,
                    data,
                })
            }
            (None, None) => return,
        };
        let _ = waiting.send(answer);
    }

    /// `GET /mcp` in a session: the client's standalone event stream, on which Custos
    /// announces `notifications/tools/list_changed` when an upstream its template reaches says
    /// its tools changed. One per session (a new one replaces the old); it ends with the
    /// session. Outside a session, or for a client that accepts no event stream: 405.
    fn standalone_stream(&self, ctx: &TaskContext, req: &McpRequest<'_>) -> GatewayReply {
        let not_offered = || GatewayReply {
            status: 405,
            headers: vec![("allow", "POST, DELETE".into())],
            body: None,
            events: None,
        };
        if req.session_id.is_none() || !accepts_stream(req) {
            return not_offered();
        }
        let state = match self.session_of(ctx, req) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        if state.version.is_empty() {
            return not_offered();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(NOTICE_QUEUE);
        let attached = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .attach_stream(req.session_id.unwrap_or(""), ctx.task_id(), tx);
        if !attached {
            return unknown_session();
        }
        GatewayReply::stream(rx)
    }

    /// `resources/subscribe` (decided and recorded like a read, then asked of the upstream;
    /// updates come on the session's standalone stream) or `resources/unsubscribe` (ended
    /// here: the upstream's subscription may serve other sessions of a shared connection).
    async fn subscription(
        &self,
        ctx: &TaskContext,
        scope: &str,
        id: &Value,
        method: &str,
        uri: &str,
    ) -> Value {
        if method == "resources/unsubscribe" {
            self.sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .unsubscribe(scope, ctx.task_id(), uri);
            return jsonrpc::result(id, json!({}));
        }
        if uri.len() > MAX_SUBSCRIBED_URI {
            return jsonrpc::error(
                id,
                jsonrpc::INVALID_PARAMS,
                &format!("Invalid params: uri longer than {MAX_SUBSCRIBED_URI} bytes"),
                None,
            );
        }
        let upstream = ctx.resource_upstream(uri).map(str::to_owned);
        let result = self
            .broker
            .subscribe_resource(ctx, uri, self.upstreams.clone())
            .await;
        if result.is_ok()
            && let Some(upstream) = upstream
            && !self
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .subscribe(scope, ctx.task_id(), &upstream, uri)
        {
            return jsonrpc::error(
                id,
                jsonrpc::INVALID_PARAMS,
                &format!("custos: at most {MAX_SUBSCRIPTIONS} subscriptions per session"),
                None,
            );
        }
        call_answer(id, result, Era::Session)
    }

    /// The upstream pool.
    pub fn upstreams(&self) -> &Arc<UpstreamPool> {
        &self.upstreams
    }

    fn unauthorized(&self) -> GatewayReply {
        GatewayReply {
            status: 401,
            headers: vec![(
                "www-authenticate",
                format!("Bearer resource_metadata=\"{}\"", self.resource_metadata),
            )],
            body: Some(
                json!({ "error": { "code": "unauthenticated", "message": "authentication required" } }),
            ),
            events: None,
        }
    }

    async fn authenticate(&self, req: &McpRequest<'_>) -> Result<TaskContext, GatewayReply> {
        let Some(token) = req
            .authorization
            .and_then(custos_crypto::PresentedToken::from_authorization)
        else {
            return Err(self.unauthorized());
        };
        match self
            .broker
            .authenticate_task_token(&token, Source(req.peer))
            .await
        {
            Ok(ctx) => Ok(ctx),
            Err(BrokerError::RateLimited) => Err(GatewayReply::json(
                429,
                json!({ "error": { "code": "rate_limited", "message": BrokerError::RateLimited.to_string() } }),
            )),
            Err(BrokerError::Unavailable(what)) => Err(GatewayReply::json(
                503,
                json!({ "error": { "code": "unavailable", "message": format!("{what} unavailable; request refused") } }),
            )),
            Err(_) => Err(self.unauthorized()),
        }
    }

    /// Handles one request to the MCP endpoint.
    pub async fn handle(&self, req: McpRequest<'_>) -> GatewayReply {
        if !req
            .host
            .is_some_and(|h| host_allowed(h, &self.own_authority))
        {
            return GatewayReply::json(
                403,
                json!({ "error": { "code": "forbidden", "message": "host not allowed" } }),
            );
        }
        if let Some(origin) = req.origin
            && origin != self.own_origin
            && !is_loopback_origin(origin)
        {
            return GatewayReply::json(
                403,
                json!({ "error": { "code": "forbidden", "message": "origin not allowed" } }),
            );
        }
        match req.verb {
            McpVerb::Get => {
                let ctx = match self.authenticate(&req).await {
                    Ok(c) => c,
                    Err(r) => return r,
                };
                self.standalone_stream(&ctx, &req)
            }
            McpVerb::Delete => {
                let ctx = match self.authenticate(&req).await {
                    Ok(c) => c,
                    Err(r) => return r,
                };
                let Some(sid) = req.session_id else {
                    return missing_session();
                };
                let removed = self
                    .sessions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .close(sid, ctx.task_id());
                if removed {
                    GatewayReply::empty(200)
                } else {
                    unknown_session()
                }
            }
            McpVerb::Post => {
                let ctx = match self.authenticate(&req).await {
                    Ok(c) => c,
                    Err(r) => return r,
                };
                self.post(&ctx, &req).await
            }
        }
    }

    async fn post(&self, ctx: &TaskContext, req: &McpRequest<'_>) -> GatewayReply {
        let null = Value::Null;
        if let Some(ct) = req.content_type
            && !ct
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        {
            return GatewayReply::rpc_error(
                415,
                &null,
                jsonrpc::INVALID_REQUEST,
                "Content-Type must be application/json",
                None,
            );
        }
        let msg: Value = match serde_json::from_slice(req.body) {
            Ok(v) => v,
            Err(e) => {
                return GatewayReply::rpc_error(
                    400,
                    &null,
                    jsonrpc::PARSE_ERROR,
                    &format!("Parse error: {e}"),
                    None,
                );
            }
        };
        let era = match req.protocol_version {
            None => Era::Session,
            Some(v) if HANDSHAKE_VERSIONS.contains(&v) => Era::Session,
            Some(_) => Era::Modern,
        };
        if let Value::Array(items) = &msg {
            return self.batch(ctx, req, era, items).await;
        }
        let parsed = match jsonrpc::classify(&msg) {
            Ok(m) => m,
            Err(why) => {
                return GatewayReply::rpc_error(400, &null, jsonrpc::INVALID_REQUEST, why, None);
            }
        };
        let (id, method, params) = match parsed {
            // In the session era a notification or response belongs to a session like any
            // request: missing is 400, unknown (or another task's) 404.
            Message::Response | Message::Notification { .. } => {
                if era == Era::Session
                    && let Err(reply) = self.session_of(ctx, req)
                {
                    return reply;
                }
                match parsed {
                    Message::Notification {
                        method: "notifications/cancelled",
                    } => self.cancel_call(ctx, req.session_id.unwrap_or(""), msg.get("params")),
                    Message::Response => {
                        self.client_answered(ctx, req.session_id.unwrap_or(""), &msg);
                    }
                    _ => {}
                }
                return GatewayReply::empty(202);
            }
            Message::Request { id, method, params } => (id, method, params),
        };
        match era {
            Era::Session => self.session_request(ctx, req, id, method, params).await,
            Era::Modern => self.modern_request(ctx, req, id, method, params).await,
        }
    }

    /// A JSON-RPC batch: part of the 2025-03-26 protocol only, so accepted only in a session
    /// that negotiated it. Each message is handled as if sent alone, in order; the answer is
    /// the array of responses to its requests (202 when it held none).
    async fn batch(
        &self,
        ctx: &TaskContext,
        req: &McpRequest<'_>,
        era: Era,
        items: &[Value],
    ) -> GatewayReply {
        let null = Value::Null;
        let refuse =
            |why: &str| GatewayReply::rpc_error(400, &null, jsonrpc::INVALID_REQUEST, why, None);
        if era != Era::Session {
            return refuse("batches are not part of this protocol version");
        }
        let version = match self.session_of(ctx, req) {
            Ok(s) => s.version,
            Err(reply) => return reply,
        };
        if version != BATCH_VERSION {
            return refuse("batches need a session that negotiated 2025-03-26");
        }
        if items.is_empty() || items.len() > MAX_BATCH {
            return refuse("a batch holds 1 to 64 messages");
        }
        let mut answers = Vec::new();
        for item in items {
            match jsonrpc::classify(item) {
                Err(why) => {
                    answers.push(jsonrpc::error(&null, jsonrpc::INVALID_REQUEST, why, None))
                }
                Ok(Message::Response | Message::Notification { .. }) => {}
                Ok(Message::Request {
                    id,
                    method: "initialize",
                    ..
                }) => {
                    answers.push(jsonrpc::error(
                        id,
                        jsonrpc::INVALID_REQUEST,
                        "initialize cannot be part of a batch",
                        None,
                    ));
                }
                Ok(Message::Request { id, method, params }) => {
                    // Each answer goes into the batch's array: none is streamed.
                    let single = McpRequest {
                        accept: None,
                        ..*req
                    };
                    let reply = self.session_request(ctx, &single, id, method, params).await;
                    if let Some(body) = reply.body {
                        answers.push(body);
                    }
                }
            }
        }
        if answers.is_empty() {
            GatewayReply::empty(202)
        } else {
            GatewayReply::json(200, Value::Array(answers))
        }
    }

    /// The session a session-era message belongs to, touched (its idle timer restarts); its
    /// negotiated version. Missing: 400; unknown, expired or another task's: 404; a
    /// `MCP-Protocol-Version` header other than the negotiated version: 400.
    fn session_of(
        &self,
        ctx: &TaskContext,
        req: &McpRequest<'_>,
    ) -> Result<SessionState, GatewayReply> {
        let Some(sid) = req.session_id else {
            return Err(missing_session());
        };
        let state = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .use_session(sid, ctx.task_id(), self.broker.clock().now_ms())
            .filter(|s| !s.version.is_empty())
            .ok_or_else(unknown_session)?;
        match req.protocol_version {
            Some(v) if v != state.version => Err(GatewayReply::rpc_error(
                400,
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                &format!(
                    "Bad Request: MCP-Protocol-Version does not match the session's negotiated version `{}`",
                    state.version
                ),
                None,
            )),
            _ => Ok(state),
        }
    }

    async fn session_request(
        &self,
        ctx: &TaskContext,
        req: &McpRequest<'_>,
        id: &Value,
        method: &str,
        params: Option<&Value>,
    ) -> GatewayReply {
        if method == "initialize" {
            let asked = params
                .and_then(|p| p.get("protocolVersion"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let version = if HANDSHAKE_VERSIONS.contains(&asked) {
                asked
            } else {
                HANDSHAKE_VERSIONS[0]
            };
            let sid = new_id("mcps_");
            self.sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .open(
                    sid.clone(),
                    (ctx.task_id(), ctx.template()),
                    version,
                    ClientCaps::from_capabilities(params.and_then(|p| p.get("capabilities"))),
                    self.broker.clock().now_ms(),
                );
            let result = json!({
                "protocolVersion": version,
                "capabilities": { "tools": { "listChanged": true }, "logging": {}, "resources": { "subscribe": true }, "prompts": {}, "completions": {} },
                "serverInfo": server_info(),
                "instructions": format!("Custos gateway: tools for task {} under template {}.", ctx.task_id(), ctx.template()),
            });
            let mut reply = GatewayReply::json(200, jsonrpc::result(id, result));
            reply.headers.push(("mcp-session-id", sid));
            return reply;
        }
        let session = match self.session_of(ctx, req) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let scope = req.session_id.unwrap_or("");
        let body = match method {
            "ping" => jsonrpc::result(id, json!({})),
            "resources/subscribe" | "resources/unsubscribe" => {
                let Some(uri) = params.and_then(|p| p.get("uri")).and_then(Value::as_str) else {
                    return GatewayReply::json(
                        200,
                        jsonrpc::error(
                            id,
                            jsonrpc::INVALID_PARAMS,
                            &format!("{method} needs params.uri"),
                            None,
                        ),
                    );
                };
                self.subscription(ctx, scope, id, method, uri).await
            }
            "logging/setLevel" => match params
                .and_then(|p| p.get("level"))
                .and_then(Value::as_str)
                .and_then(LogLevel::parse)
            {
                Some(level) => {
                    self.sessions
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .set_log_level(scope, ctx.task_id(), level);
                    jsonrpc::result(id, json!({}))
                }
                None => jsonrpc::error(
                    id,
                    jsonrpc::INVALID_PARAMS,
                    "Invalid params: level must be one of debug, info, notice, warning, error, critical, alert, emergency",
                    None,
                ),
            },
            "tools/call" => {
                return self
                    .tool_call(
                        ctx,
                        req,
                        Caller {
                            scope,
                            era: Era::Session,
                            log_level: Some(session.log_level),
                            caps: session.caps,
                        },
                        id,
                        params,
                    )
                    .await;
            }
            _ => self.dispatch(ctx, id, method, params, Era::Session).await,
        };
        answered(Era::Session, body)
    }

    async fn modern_request(
        &self,
        ctx: &TaskContext,
        req: &McpRequest<'_>,
        id: &Value,
        method: &str,
        params: Option<&Value>,
    ) -> GatewayReply {
        let fail = |code: i64, message: &str, data: Option<Value>| {
            GatewayReply::rpc_error(modern_status(code), id, code, message, data)
        };
        let header_version = req.protocol_version.unwrap_or_default();
        if header_version != MODERN_VERSION {
            return fail(
                jsonrpc::UNSUPPORTED_VERSION,
                "Unsupported protocol version",
                Some(json!({ "supported": [MODERN_VERSION], "requested": header_version })),
            );
        }
        if req.mcp_method != Some(method) {
            return fail(
                jsonrpc::HEADER_MISMATCH,
                "mcp-method header does not match the request body's method",
                None,
            );
        }
        // The target of these requests is named in `Mcp-Name` too, and must be the body's.
        let named = match method {
            "tools/call" | "prompts/get" => Some("name"),
            "resources/read" => Some("uri"),
            _ => None,
        };
        if let Some(key) = named {
            let body_name = params.and_then(|p| p.get(key)).and_then(Value::as_str);
            let header_name = req.mcp_name.and_then(decode_header_value);
            if body_name.is_none() || header_name.as_deref() != body_name {
                return fail(
                    jsonrpc::HEADER_MISMATCH,
                    &format!("mcp-name header does not match the request body's {key}"),
                    None,
                );
            }
        }
        let meta = params
            .and_then(|p| p.get("_meta"))
            .and_then(Value::as_object);
        let meta_version = meta
            .and_then(|m| m.get(META_VERSION))
            .and_then(Value::as_str);
        if meta_version.is_none() || meta.and_then(|m| m.get(META_CAPABILITIES)).is_none() {
            return fail(
                jsonrpc::INVALID_PARAMS,
                "params._meta must be an object carrying the required 'io.modelcontextprotocol/protocolVersion' and 'io.modelcontextprotocol/clientCapabilities' envelope keys",
                None,
            );
        }
        if meta_version != Some(header_version) {
            return fail(
                jsonrpc::HEADER_MISMATCH,
                "MCP-Protocol-Version header does not match params._meta",
                None,
            );
        }
        let body = match method {
            "server/discover" => jsonrpc::result(
                id,
                json!({
                    "supportedVersions": [MODERN_VERSION],
                    "capabilities": { "tools": { "listChanged": false }, "resources": {}, "prompts": {}, "completions": {} },
                    "resultType": "complete",
                    "ttlMs": 0,
                    "cacheScope": "private",
                    "_meta": { META_SERVER_INFO: server_info() },
                }),
            ),
            "tools/call" => {
                let level = modern_log_level(params);
                return self
                    .tool_call(
                        ctx,
                        req,
                        Caller {
                            scope: "",
                            era: Era::Modern,
                            log_level: level,
                            caps: ClientCaps::default(),
                        },
                        id,
                        params,
                    )
                    .await;
            }
            _ => self.dispatch(ctx, id, method, params, Era::Modern).await,
        };
        answered(Era::Modern, body)
    }

    /// A `tools/call`, in either era. The call runs to its end (and its records are written)
    /// whether or not the client keeps listening. A client that accepts an event stream gets
    /// one as soon as there is something to tell it before the answer: the upstream's
    /// progress and log messages about the call, and, when it asked for progress, a
    /// `notifications/progress` of Custos's own every [`PROGRESS_EVERY`] while the call waits
    /// for a human approval or the upstream has reported none; otherwise the answer is plain
    /// JSON, as for a client that accepts no stream.
    async fn tool_call(
        &self,
        ctx: &TaskContext,
        req: &McpRequest<'_>,
        caller: Caller<'_>,
        id: &Value,
        params: Option<&Value>,
    ) -> GatewayReply {
        let Caller {
            scope,
            era,
            log_level,
            caps,
        } = caller;
        let (name, arguments) = match call_params(id, params) {
            Ok(p) => p,
            Err(error) => return answered(era, error),
        };
        let rounds = Rounds {
            seal: self.seal.clone(),
            context: format!("{}\u{0}{}", ctx.task_id(), ctx.canonical_tool(&name)),
            era,
        };
        let round = match rounds.open(params) {
            Ok(r) => r,
            Err(why) => {
                return answered(era, jsonrpc::error(id, jsonrpc::INVALID_PARAMS, &why, None));
            }
        };
        let (cancel, guard) = self.track_call(ctx, scope, id);
        let upstreams = self.upstreams.clone();
        if !accepts_stream(req) {
            let mut channel = CallChannel::new(cancel);
            if let Some(r) = round {
                channel = channel.with_round(r);
            }
            let result = self
                .broker
                .call_tool(ctx.clone(), name, arguments, upstreams, channel)
                .await;
            return answered(era, call_answer(id, rounds.finish(result), era));
        }
        let token = progress_token(params);
        let (notices_tx, notices) = tokio::sync::mpsc::channel(NOTICE_QUEUE);
        let mut channel = CallChannel::new(cancel)
            .with_notices(notices_tx, token.is_some())
            .with_log_level(log_level);
        if let Some(r) = round {
            channel = channel.with_round(r);
        }
        let mut relay = Relay::new(&self.broker, ctx, &name, token, notices);
        // Requests of the client only for a client that can take some.
        if caps != ClientCaps::default() {
            let (requests_tx, requests) = tokio::sync::mpsc::channel(REQUEST_QUEUE);
            channel = channel.with_requests(requests_tx, caps);
            relay = relay.with_requests(
                requests,
                self.client_answers.clone(),
                &self.broker,
                ctx,
                scope,
                &name,
            );
        }
        let broker = self.broker.clone();
        let owned = ctx.clone();
        let mut call = Box::pin(async move {
            let result = broker
                .call_tool(owned, name, arguments, upstreams, channel)
                .await;
            rounds.finish(result)
        });
        let first = tokio::select! {
            biased;
            result = &mut call => {
                // Notices that came with the answer go before it, on a stream.
                let queued = relay.queued();
                if queued.is_empty() {
                    return answered(era, call_answer(id, result, era));
                }
                let (tx, rx) = tokio::sync::mpsc::channel(queued.len() + 1);
                for m in queued {
                    let _ = tx.try_send(m);
                }
                let _ = tx.try_send(call_answer(id, result, era));
                return GatewayReply::stream(rx);
            }
            first = relay.next() => first,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(NOTICE_QUEUE);
        let id = id.clone();
        // From here the call runs on a task of its own, so a client that reads slowly slows
        // only what is relayed to it, never the call.
        let mut call = tokio::spawn(call);
        tokio::spawn(async move {
            let _guard = guard;
            let mut listening = send_to_client(&tx, first).await;
            loop {
                tokio::select! {
                    biased;
                    result = &mut call => {
                        let result = result.unwrap_or_else(|_| {
                            Err(CallError::Broker(BrokerError::Unavailable("call pipeline")))
                        });
                        for m in relay.queued() {
                            listening = listening && send_to_client(&tx, m).await;
                        }
                        if listening {
                            send_to_client(&tx, call_answer(&id, result, era)).await;
                        }
                        return;
                    }
                    message = relay.next() => {
                        // A client that stopped reading gets nothing more; what the upstream
                        // sends is still drained, so the call goes on to its end.
                        listening = listening && send_to_client(&tx, message).await;
                    }
                }
            }
        });
        GatewayReply::stream(rx)
    }

    async fn dispatch(
        &self,
        ctx: &TaskContext,
        id: &Value,
        method: &str,
        params: Option<&Value>,
        era: Era,
    ) -> Value {
        match method {
            "tools/list" => match self.broker.list_tools(ctx, self.upstreams.as_ref()).await {
                Ok(tools) => {
                    let cursor = params.and_then(|p| p.get("cursor"));
                    let (tools, next) = match page_of(tools, cursor) {
                        Ok(p) => p,
                        Err(why) => {
                            return jsonrpc::error(id, jsonrpc::INVALID_PARAMS, why, None);
                        }
                    };
                    let mut result = json!({ "tools": tools });
                    if let Some(next) = next {
                        result["nextCursor"] = next.into();
                    }
                    if era == Era::Modern {
                        result["resultType"] = "complete".into();
                        result["ttlMs"] = 0.into();
                        result["cacheScope"] = "private".into();
                    }
                    jsonrpc::result(id, result)
                }
                Err(e) => broker_error(id, &e),
            },
            "resources/list" => self.listing(ctx, id, Listing::Resources, params, era).await,
            "resources/templates/list" => {
                self.listing(ctx, id, Listing::ResourceTemplates, params, era)
                    .await
            }
            "prompts/list" => self.listing(ctx, id, Listing::Prompts, params, era).await,
            "completion/complete" => {
                let Some(p) = params.filter(|p| p.get("ref").is_some_and(Value::is_object)) else {
                    return jsonrpc::error(
                        id,
                        jsonrpc::INVALID_PARAMS,
                        "completion/complete needs params.ref",
                        None,
                    );
                };
                let result = self
                    .broker
                    .complete(ctx, p.clone(), self.upstreams.clone())
                    .await;
                call_answer(id, result, era)
            }
            "resources/read" => {
                let Some(uri) = params.and_then(|p| p.get("uri")).and_then(Value::as_str) else {
                    return jsonrpc::error(
                        id,
                        jsonrpc::INVALID_PARAMS,
                        "resources/read needs params.uri",
                        None,
                    );
                };
                let result = self
                    .broker
                    .read_resource(ctx, uri, self.upstreams.clone())
                    .await;
                call_answer(id, result, era)
            }
            "prompts/get" => {
                let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
                    return jsonrpc::error(
                        id,
                        jsonrpc::INVALID_PARAMS,
                        "prompts/get needs params.name",
                        None,
                    );
                };
                let arguments = match params.and_then(|p| p.get("arguments")) {
                    None | Some(Value::Null) => None,
                    Some(a @ Value::Object(_)) => Some(a.clone()),
                    Some(_) => {
                        return jsonrpc::error(
                            id,
                            jsonrpc::INVALID_PARAMS,
                            "params.arguments must be an object",
                            None,
                        );
                    }
                };
                // A prompt can take rounds too (2026-07-28): its state is sealed for the task
                // and the prompt, apart from any tool's.
                let rounds = Rounds {
                    seal: self.seal.clone(),
                    context: format!(
                        "prompt\u{0}{}\u{0}{}",
                        ctx.task_id(),
                        ctx.canonical_tool(name)
                    ),
                    era,
                };
                let round = match rounds.open(params) {
                    Ok(r) => r,
                    Err(why) => return jsonrpc::error(id, jsonrpc::INVALID_PARAMS, &why, None),
                };
                let result = self
                    .broker
                    .get_prompt(ctx, name, arguments, round.as_ref(), self.upstreams.clone())
                    .await;
                call_answer(id, rounds.finish(result), era)
            }
            _ => jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                "Method not found",
                Some(Value::String(method.to_owned())),
            ),
        }
    }
}

impl McpGateway {
    /// One page of what the task may see of `listing`.
    async fn listing(
        &self,
        ctx: &TaskContext,
        id: &Value,
        listing: Listing,
        params: Option<&Value>,
        era: Era,
    ) -> Value {
        match self
            .broker
            .list_reads(ctx, listing, self.upstreams.as_ref())
            .await
        {
            Ok(items) => {
                let (items, next) = match page_of(items, params.and_then(|p| p.get("cursor"))) {
                    Ok(p) => p,
                    Err(why) => return jsonrpc::error(id, jsonrpc::INVALID_PARAMS, why, None),
                };
                let mut result = json!({ listing.key(): items });
                if let Some(next) = next {
                    result["nextCursor"] = next.into();
                }
                if era == Era::Modern {
                    result["resultType"] = "complete".into();
                    result["ttlMs"] = 0.into();
                    result["cacheScope"] = "private".into();
                }
                jsonrpc::result(id, result)
            }
            Err(e) => broker_error(id, &e),
        }
    }
}

/// The longest `requestState` taken back from an agent.
const MAX_REQUEST_STATE: usize = 64 * 1024;
/// The largest `inputResponses` taken from an agent, as JSON bytes.
const MAX_INPUT_RESPONSES: usize = 1024 * 1024;

/// How a 2026-07-28 multi-round call's state crosses the gateway: the upstream's
/// `requestState` is sealed for the task and the tool on its way to the agent and opened on
/// its way back, so an agent cannot forge it, alter it, or replay another task's or tool's.
struct Rounds {
    seal: Arc<StateSeal>,
    /// The task and the tool (as policy names it).
    context: String,
    era: Era,
}

impl Rounds {
    /// What the agent sent with this round (stateless era only), its `requestState` opened.
    fn open(&self, params: Option<&Value>) -> Result<Option<Round>, String> {
        let Some(p) = params.filter(|_| self.era == Era::Modern) else {
            return Ok(None);
        };
        let input_responses = match p.get("inputResponses") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_))
                if serde_json::to_vec(v).is_ok_and(|b| b.len() <= MAX_INPUT_RESPONSES) =>
            {
                Some(v.clone())
            }
            Some(_) => {
                return Err(
                    "Invalid params: inputResponses must be an object of at most 1 MiB".into(),
                );
            }
        };
        let request_state = match p.get("requestState") {
            None | Some(Value::Null) => None,
            Some(Value::String(sealed)) if sealed.len() <= MAX_REQUEST_STATE => Some(
                self.seal
                    .open(&self.context, sealed)
                    .ok_or("Invalid params: custos: requestState was not issued for this task and tool, or was altered")?
                    .to_owned(),
            ),
            Some(_) => return Err("Invalid params: requestState must be a string".into()),
        };
        let client_capabilities = p
            .get("_meta")
            .and_then(|m| m.get(META_CAPABILITIES))
            .and_then(Value::as_object)
            .map(|caps| {
                let kept: serde_json::Map<String, Value> = caps
                    .iter()
                    .filter(|(k, v)| {
                        matches!(k.as_str(), "sampling" | "elicitation" | "roots") && v.is_object()
                    })
                    .filter(|(_, v)| serde_json::to_vec(v).is_ok_and(|b| b.len() <= 4096))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Value::Object(kept)
            })
            // None declared: the upstream is told none, as without a round.
            .filter(|caps| caps.as_object().is_some_and(|m| !m.is_empty()));
        if input_responses.is_none() && request_state.is_none() && client_capabilities.is_none() {
            return Ok(None);
        }
        Ok(Some(Round {
            input_responses,
            request_state,
            client_capabilities,
        }))
    }

    /// The upstream's answer as the agent gets it: an input-required result's state sealed
    /// (stateless era), or, for a session, which cannot answer input requests, an error result
    /// saying so instead of a result invalid in its era.
    fn finish(&self, result: custos_broker::CallResult) -> custos_broker::CallResult {
        let Ok(mut v) = result else { return result };
        if v.get("resultType").and_then(Value::as_str) != Some("input_required") {
            return Ok(v);
        }
        match self.era {
            Era::Modern => {
                if let Some(Value::String(state)) = v.get("requestState") {
                    let sealed = self.seal.seal(&self.context, state);
                    v["requestState"] = Value::String(sealed);
                }
                Ok(v)
            }
            Era::Session => Ok(json!({
                "content": [{ "type": "text", "text": "custos: the upstream needs input from the client to go on (a 2026-07-28 multi-round call), which a 2025 session cannot give" }],
                "isError": true,
            })),
        }
    }
}

/// The name and arguments of a `tools/call`, or the JSON-RPC error for malformed ones.
fn call_params(id: &Value, params: Option<&Value>) -> Result<(String, Value), Value> {
    let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Err(jsonrpc::error(
            id,
            jsonrpc::INVALID_PARAMS,
            "tools/call needs params.name",
            None,
        ));
    };
    let arguments = match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(jsonrpc::error(
                id,
                jsonrpc::INVALID_PARAMS,
                "params.arguments must be an object",
                None,
            ));
        }
    };
    Ok((name.to_owned(), arguments))
}

/// The JSON-RPC answer to one `tools/call`.
fn call_answer(id: &Value, result: custos_broker::CallResult, era: Era) -> Value {
    match result {
        Ok(result) => jsonrpc::result(id, adapt_result(result, era)),
        Err(CallError::Refused(refusal)) => {
            let mut data = json!({ "reason": refusal.reason });
            if let Some(approval) = &refusal.approval {
                data["approval_id"] = json!(approval);
            }
            jsonrpc::error(
                id,
                refusal_code(refusal.reason),
                &format!("custos: {}", refusal.message),
                Some(data),
            )
        }
        Err(CallError::Upstream(UpstreamError::Rpc {
            code,
            message,
            data,
            ..
        })) => jsonrpc::error(id, code, &message, data.map(|d| *d)),
        Err(CallError::Upstream(e)) => jsonrpc::error(
            id,
            jsonrpc::UPSTREAM_FAILED,
            &format!("custos: {e}"),
            Some(json!({ "reason": Reason::UpstreamFailed })),
        ),
        Err(CallError::Broker(e)) => broker_error(id, &e),
    }
}

/// Tells the sessions whose template reaches `upstream`, on their standalone streams, that
/// their tool list changed (a client that does not read gets no more of it).
async fn announce_tools_changed(broker: &Broker, sessions: &Mutex<Sessions>, upstream: &str) {
    let Ok(snap) = broker.snapshot().await else {
        return;
    };
    let streams = sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .streams(|template| {
            snap.templates
                .get(template)
                .is_some_and(|t| t.spec.may_reach(upstream))
        });
    let note = notification("notifications/tools/list_changed", json!({}));
    for tx in streams {
        let _ = tx.try_send(note.clone());
    }
}

/// Whether the client accepts an event stream as the answer to its request.
fn accepts_stream(req: &McpRequest<'_>) -> bool {
    req.accept
        .is_some_and(|a| a.to_ascii_lowercase().contains("text/event-stream"))
}

/// The progress token of a request that asked for progress.
fn progress_token(params: Option<&Value>) -> Option<Value> {
    let token = params?.get("_meta")?.get("progressToken")?;
    // The specification allows a string or an integer; anything else is not a token.
    let valid = match token {
        Value::String(t) => !t.is_empty() && t.len() <= 256,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    };
    valid.then(|| token.clone())
}

/// The lowest log level a stateless-era request opts in to (`_meta`; none without: no log
/// messages).
fn modern_log_level(params: Option<&Value>) -> Option<LogLevel> {
    params?
        .get("_meta")?
        .get(META_LOG_LEVEL)?
        .as_str()
        .and_then(LogLevel::parse)
}

/// The HTTP answer carrying one JSON-RPC answer: 503 when Custos could not decide or record,
/// and in the stateless era the status its error code calls for.
fn answered(era: Era, body: Value) -> GatewayReply {
    let code = body
        .get("error")
        .and_then(|e| e.get("code"))
        .and_then(Value::as_i64);
    let status = match (code, era) {
        (Some(jsonrpc::UNAVAILABLE), _) => 503,
        (Some(c), Era::Modern) => modern_status(c),
        _ => 200,
    };
    GatewayReply::json(status, body)
}

/// How many messages for the agent are queued per call.
const NOTICE_QUEUE: usize = 64;

/// How long a message for the agent waits for room in its stream before the client is
/// taken to have stopped reading.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

/// Queues a message on a call's stream to the agent; false when the client stopped reading.
async fn send_to_client(tx: &tokio::sync::mpsc::Sender<Value>, message: Value) -> bool {
    tx.send_timeout(message, CLIENT_WAIT).await.is_ok()
}

/// The messages for the agent about one call in flight, before its answer: the upstream's
/// notices, and Custos's own progress while the call is held or the upstream reports none.
struct Relay {
    token: Option<Value>,
    notices: tokio::sync::mpsc::Receiver<Notice>,
    /// Custos's own progress, for a client that asked for progress: a tick, and the approval
    /// requests that say what the call waits for.
    own_progress: Option<OwnProgress>,
    waiting_on: Option<String>,
    /// Progress notifications Custos sent of its own.
    own: u64,
    /// Whether the upstream reported progress: Custos's own then stops, and the upstream's
    /// are shifted by `own` so the values the agent sees keep increasing.
    upstream_reports: bool,
    /// The upstream's requests of the agent's client, and where their answers are awaited.
    requests: Option<RelayedRequests>,
}

/// The requests relayed to the agent during one call.
struct RelayedRequests {
    /// The tool called, as policy names it.
    tool: String,
    rx: tokio::sync::mpsc::Receiver<ClientRequest>,
    table: ClientAnswers,
    broker: Broker,
    ctx: TaskContext,
    scope: String,
    /// The table keys of this call's requests, taken off when the call ends.
    keys: Vec<String>,
}

impl Drop for RelayedRequests {
    fn drop(&mut self) {
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for k in &self.keys {
            t.remove(k);
        }
    }
}

impl RelayedRequests {
    /// The request as the agent gets it, once it is on record and its answer awaited; none
    /// when it cannot be recorded (it is refused, and the upstream told).
    async fn forward(&mut self, request: ClientRequest) -> Option<Value> {
        if let Err(e) = self
            .broker
            .record_client_request(&self.ctx, &self.tool, request.method)
            .await
        {
            tracing::warn!(task = %self.ctx.task_id(), error = %e, "a request of the client could not be recorded; refused");
            let _ = request.answer.send(Err(ClientRefusal {
                code: jsonrpc::UNAVAILABLE,
                message: "custos: audit unavailable; refused".into(),
                data: None,
            }));
            return None;
        }
        let id = Value::String(new_id("custos-req-"));
        let key = inflight_key(self.ctx.task_id(), &self.scope, &id);
        {
            let mut t = self
                .table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if t.len() >= MAX_INFLIGHT {
                let _ = request.answer.send(Err(ClientRefusal {
                    code: jsonrpc::INTERNAL_ERROR,
                    message: "custos: too many requests waiting for agents".into(),
                    data: None,
                }));
                return None;
            }
            t.insert(key.clone(), request.answer);
        }
        self.keys.push(key);
        Some(
            json!({ "jsonrpc": "2.0", "id": id, "method": request.method.method(), "params": request.params }),
        )
    }
}

impl Relay {
    fn new(
        broker: &Broker,
        ctx: &TaskContext,
        tool: &str,
        token: Option<Value>,
        notices: tokio::sync::mpsc::Receiver<Notice>,
    ) -> Self {
        let own_progress = token.is_some().then(|| {
            let start = tokio::time::Instant::now() + PROGRESS_EVERY;
            let mut tick = tokio::time::interval_at(start, PROGRESS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            OwnProgress {
                tick,
                approvals: broker.approval_events(),
                task: ctx.task_id().to_owned(),
                tool: ctx.canonical_tool(tool).into_owned(),
            }
        });
        Self {
            token,
            notices,
            own_progress,
            waiting_on: None,
            own: 0,
            upstream_reports: false,
            requests: None,
        }
    }

    /// The same relay, passing the upstream's requests of the client in `rx` on to the agent
    /// (each recorded first) and keeping where their answers are awaited in `table`.
    fn with_requests(
        mut self,
        rx: tokio::sync::mpsc::Receiver<ClientRequest>,
        table: ClientAnswers,
        broker: &Broker,
        ctx: &TaskContext,
        scope: &str,
        tool: &str,
    ) -> Self {
        self.requests = Some(RelayedRequests {
            tool: ctx.canonical_tool(tool).into_owned(),
            rx,
            table,
            broker: broker.clone(),
            ctx: ctx.clone(),
            scope: scope.to_owned(),
            keys: Vec::new(),
        });
        self
    }

    /// The next message for the agent (waits until there is one).
    async fn next(&mut self) -> Value {
        loop {
            let ticking = !self.upstream_reports;
            let (tick, approvals) = match self.own_progress.as_mut() {
                Some(o) => (
                    futures_util::future::Either::Left(o.tick.tick()),
                    futures_util::future::Either::Left(o.approvals.recv()),
                ),
                None => (
                    futures_util::future::Either::Right(std::future::pending()),
                    futures_util::future::Either::Right(std::future::pending()),
                ),
            };
            tokio::select! {
                notice = self.notices.recv() => match notice {
                    Some(n) => {
                        if let Some(m) = self.relayed(n) {
                            return m;
                        }
                    }
                    // The call is over: its answer comes next.
                    None => std::future::pending::<()>().await,
                },
                request = next_request(&mut self.requests) => {
                    if let Some(r) = self.requests.as_mut()
                        && let Some(m) = r.forward(request).await
                    {
                        return m;
                    }
                }
                event = approvals => {
                    if let Ok(custos_broker::ApprovalEvent::Requested(a)) = event
                        && let Some(o) = &self.own_progress
                        && a.task.as_str() == o.task
                        && a.tool == o.tool
                    {
                        self.waiting_on = Some(a.id.to_string());
                    }
                }
                _ = tick, if ticking => {
                    self.own += 1;
                    let message = match &self.waiting_on {
                        Some(a) => format!("custos: waiting for a human to answer approval {a}"),
                        None => "custos: the call is still running".to_owned(),
                    };
                    return notification(
                        NoticeKind::Progress.method(),
                        json!({ "progressToken": self.token, "progress": self.own, "message": message }),
                    );
                }
            }
        }
    }

    /// The notices already queued, as the agent gets them (the call is over: they go before
    /// its answer).
    fn queued(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(n) = self.notices.try_recv() {
            out.extend(self.relayed(n));
        }
        out
    }

    /// An upstream notice as the agent gets it: progress under the agent's own token.
    fn relayed(&mut self, notice: Notice) -> Option<Value> {
        let params = match notice.kind {
            NoticeKind::Progress => {
                let params = progress_for_agent(notice.params, self.token.clone()?, self.own)?;
                self.upstream_reports = true;
                params
            }
            NoticeKind::Log => notice.params,
        };
        Some(notification(notice.kind.method(), params))
    }
}

/// The next request of the client from the upstream (pending while there is none, or none
/// can come).
async fn next_request(requests: &mut Option<RelayedRequests>) -> ClientRequest {
    match requests {
        Some(r) => match r.rx.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// An upstream's progress params as the agent gets them: under the agent's `token`, and
/// shifted by the `own` progress notifications Custos sent before (so the values the agent
/// sees keep increasing, as the specification requires). None when they carry no number.
fn progress_for_agent(mut params: Value, token: Value, own: u64) -> Option<Value> {
    let obj = params.as_object_mut()?;
    if !obj.get("progress").is_some_and(Value::is_number) {
        return None;
    }
    if own > 0 {
        for key in ["progress", "total"] {
            if let Some(v) = obj.get_mut(key)
                && let Some(n) = v.as_f64()
            {
                // Progress values and counts are small: f64 holds them exactly.
                #[allow(clippy::cast_precision_loss)]
                let shifted = n + own as f64;
                if let Some(x) = serde_json::Number::from_f64(shifted) {
                    *v = Value::Number(x);
                }
            }
        }
    }
    obj.insert("progressToken".into(), token);
    Some(params)
}

struct OwnProgress {
    tick: tokio::time::Interval,
    approvals: tokio::sync::broadcast::Receiver<custos_broker::ApprovalEvent>,
    /// The task and the tool (as policy names it) whose approval request the call waits on.
    task: String,
    tool: String,
}

fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

fn broker_error(id: &Value, e: &BrokerError) -> Value {
    match e {
        BrokerError::Unavailable(what) => jsonrpc::error(
            id,
            jsonrpc::UNAVAILABLE,
            &format!("custos: {what} unavailable; refused"),
            Some(json!({ "reason": Reason::Unavailable })),
        ),
        other => jsonrpc::error(
            id,
            jsonrpc::INTERNAL_ERROR,
            &format!("custos: {other}"),
            None,
        ),
    }
}

/// Makes an upstream's tool result fit the agent's era.
fn adapt_result(mut result: Value, era: Era) -> Value {
    if let Some(obj) = result.as_object_mut() {
        match era {
            Era::Modern => {
                obj.entry("resultType").or_insert_with(|| "complete".into());
            }
            Era::Session => {
                obj.remove("resultType");
                if obj.get("structuredContent").is_some_and(|s| !s.is_object()) {
                    obj.remove("structuredContent");
                }
                if let Some(Value::Object(meta)) = obj.get_mut("_meta") {
                    meta.remove(META_SERVER_INFO);
                }
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_lists_come_in_pages_and_bad_cursors_are_refused() {
        let tools: Vec<usize> = (0..250).collect();
        let (first, next) = page_of(tools.clone(), None).expect("first");
        assert_eq!(
            (first.len(), first[0], next.as_deref()),
            (100, 0, Some("t100"))
        );
        let (second, next) = page_of(tools.clone(), Some(&json!("t100"))).expect("second");
        assert_eq!(
            (second[0], second.len(), next.as_deref()),
            (100, 100, Some("t200"))
        );
        let (last, next) = page_of(tools.clone(), Some(&json!("t200"))).expect("last");
        assert_eq!((last.len(), last[49], next), (50, 249, None));
        let (small, next) = page_of(vec![1, 2, 3], Some(&Value::Null)).expect("small");
        assert_eq!((small, next), (vec![1, 2, 3], None));
        for bad in [
            json!("t0"),
            json!("t250"),
            json!("t-1"),
            json!("x100"),
            json!("t"),
            json!("t9999999999"),
            json!(100),
        ] {
            assert!(page_of(tools.clone(), Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        let own = authority_of("https://custos.example.com:8443");
        assert_eq!(own, "custos.example.com:8443");
        assert_eq!(authority_of("http://127.0.0.1:8470"), "127.0.0.1:8470");
        assert!(host_allowed("custos.example.com:8443", own));
        assert!(host_allowed("CUSTOS.example.com:8443", own));
        assert!(host_allowed("127.0.0.1:8470", own));
        assert!(host_allowed("localhost", own));
        assert!(host_allowed("[::1]:9", own));
        assert!(!host_allowed("custos.example.com", own), "another port");
        assert!(!host_allowed("evil.example:8443", own));
        assert!(!host_allowed("127.0.0.1.evil.example", own));
    }

    #[test]
    fn origins() {
        assert!(is_loopback_origin("http://127.0.0.1:8470"));
        assert!(is_loopback_origin("http://localhost"));
        assert!(is_loopback_origin("http://[::1]:3000"));
        assert!(!is_loopback_origin("https://evil.example"));
        assert!(!is_loopback_origin("http://127.0.0.1.evil.example"));
    }

    #[test]
    fn results_adapt_to_era() {
        let r = json!({"content": [], "resultType": "complete", "structuredContent": [1]});
        let legacy = adapt_result(r.clone(), Era::Session);
        assert!(legacy.get("resultType").is_none() && legacy.get("structuredContent").is_none());
        let modern = adapt_result(json!({"content": []}), Era::Modern);
        assert_eq!(modern["resultType"], "complete");
    }

    #[test]
    fn relayed_progress_takes_the_agents_token_and_keeps_increasing() {
        let up = json!({"progressToken": 17, "progress": 1, "total": 4, "message": "m"});
        assert_eq!(
            progress_for_agent(up.clone(), json!("agent"), 0),
            Some(json!({"progressToken": "agent", "progress": 1, "total": 4, "message": "m"}))
        );
        // After two progress notifications of Custos's own (an approval wait).
        assert_eq!(
            progress_for_agent(up, json!(5), 2),
            Some(json!({"progressToken": 5, "progress": 3.0, "total": 6.0, "message": "m"}))
        );
        assert_eq!(
            progress_for_agent(json!({"progress": "x"}), json!(1), 0),
            None
        );
        assert_eq!(progress_for_agent(json!([1]), json!(1), 0), None);
    }

    #[test]
    fn multi_round_state_is_sealed_for_its_task_and_tool() {
        let seal = Arc::new(StateSeal::new());
        let rounds = |context: &str, era| Rounds {
            seal: seal.clone(),
            context: context.into(),
            era,
        };
        let a = rounds("task_a\u{0}fx__ask", Era::Modern);
        let asked = a
            .finish(Ok(
                json!({"resultType": "input_required", "requestState": "s1", "inputRequests": {}}),
            ))
            .expect("result");
        let sealed = asked["requestState"].as_str().expect("state").to_owned();
        assert_ne!(
            sealed, "s1",
            "the agent never sees the upstream's state as is"
        );
        let back = json!({"name": "fx__ask", "requestState": sealed, "inputResponses": {"q": {}}});
        let round = a.open(Some(&back)).expect("opens").expect("a round");
        assert_eq!(round.request_state.as_deref(), Some("s1"));
        assert!(round.input_responses.is_some());
        // Another task, another tool, an altered or a made-up state: refused.
        for other in [
            rounds("task_b\u{0}fx__ask", Era::Modern),
            rounds("task_a\u{0}fx__other", Era::Modern),
        ] {
            assert!(other.open(Some(&back)).is_err());
        }
        for bad in [
            json!({"requestState": "s1"}),
            json!({"requestState": 7}),
            json!({"inputResponses": [1]}),
        ] {
            assert!(a.open(Some(&bad)).is_err(), "{bad}");
        }
        // A session cannot answer input requests: it is told so, in its own era's terms.
        let session = rounds("task_a\u{0}fx__ask", Era::Session);
        let told = session
            .finish(Ok(
                json!({"resultType": "input_required", "requestState": "s1"}),
            ))
            .expect("result");
        assert_eq!(told["isError"], true);
        assert!(
            told["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("2025 session"))
        );
        assert!(
            session.open(Some(&back)).expect("ignored").is_none(),
            "not part of a session"
        );
    }

    #[test]
    fn header_values_decode() {
        assert_eq!(decode_header_value("add").as_deref(), Some("add"));
        assert_eq!(decode_header_value("=?base64?w6k=?=").as_deref(), Some("é"));
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }
}
