//! The MCP server agents talk to, independent of the HTTP framework: the edge turns an HTTP
//! request into an [`McpRequest`] and writes back the [`GatewayReply`].
//!
//! Era is chosen per request from `MCP-Protocol-Version`: absent or a handshake version is the
//! session era (`initialize`, `Mcp-Session-Id`); `2026-07-28` is the stateless era
//! (`server/discover`, `_meta` on every request, `Mcp-Method`/`Mcp-Name` headers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custos_broker::{Broker, BrokerError, CallError, Source, TaskContext, UpstreamError};
use custos_core::Reason;
use custos_crypto::new_id;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::jsonrpc::{self, META_CAPABILITIES, META_SERVER_INFO, META_VERSION, Message};
use crate::sessions::{SessionMetrics, Sessions};
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
}

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
        Reason::ToolNotAllowed | Reason::InvalidToolName | Reason::UnknownUpstream => {
            jsonrpc::INVALID_PARAMS
        }
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
        let table = sessions.clone();
        let pool = upstreams.clone();
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
            McpVerb::Get => GatewayReply {
                status: 405,
                headers: vec![("allow", "POST, DELETE".into())],
                body: None,
                events: None,
            },
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
                if let Message::Notification {
                    method: "notifications/cancelled",
                } = parsed
                {
                    self.cancel_call(ctx, req.session_id.unwrap_or(""), msg.get("params"));
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
            Ok(v) => v,
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
    fn session_of(&self, ctx: &TaskContext, req: &McpRequest<'_>) -> Result<String, GatewayReply> {
        let Some(sid) = req.session_id else {
            return Err(missing_session());
        };
        let version = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .use_session(sid, ctx.task_id(), self.broker.clock().now_ms())
            .filter(|v| !v.is_empty())
            .ok_or_else(unknown_session)?;
        match req.protocol_version {
            Some(v) if v != version => Err(GatewayReply::rpc_error(
                400,
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                &format!(
                    "Bad Request: MCP-Protocol-Version does not match the session's negotiated version `{version}`"
                ),
                None,
            )),
            _ => Ok(version),
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
                    ctx.task_id(),
                    version,
                    self.broker.clock().now_ms(),
                );
            let result = json!({
                "protocolVersion": version,
                "capabilities": { "tools": { "listChanged": false } },
                "serverInfo": server_info(),
                "instructions": format!("Custos gateway: tools for task {} under template {}.", ctx.task_id(), ctx.template()),
            });
            let mut reply = GatewayReply::json(200, jsonrpc::result(id, result));
            reply.headers.push(("mcp-session-id", sid));
            return reply;
        }
        if let Err(reply) = self.session_of(ctx, req) {
            return reply;
        }
        if method == "tools/call"
            && let Some(token) = progress_token(req, params)
        {
            return self.streamed_call(
                ctx,
                req.session_id.unwrap_or(""),
                id,
                params,
                Era::Session,
                token,
            );
        }
        let body = match method {
            "ping" => jsonrpc::result(id, json!({})),
            _ => {
                self.dispatch(
                    ctx,
                    req.session_id.unwrap_or(""),
                    id,
                    method,
                    params,
                    Era::Session,
                )
                .await
            }
        };
        let status = if body
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
            == Some(jsonrpc::UNAVAILABLE)
        {
            503
        } else {
            200
        };
        GatewayReply::json(status, body)
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
        if method == "tools/call" {
            let body_name = params.and_then(|p| p.get("name")).and_then(Value::as_str);
            let header_name = req.mcp_name.and_then(decode_header_value);
            if body_name.is_none() || header_name.as_deref() != body_name {
                return fail(
                    jsonrpc::HEADER_MISMATCH,
                    "mcp-name header does not match the request body's name",
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
        if method == "tools/call"
            && let Some(token) = progress_token(req, params)
        {
            return self.streamed_call(ctx, "", id, params, Era::Modern, token);
        }
        let body = match method {
            "server/discover" => jsonrpc::result(
                id,
                json!({
                    "supportedVersions": [MODERN_VERSION],
                    "capabilities": { "tools": { "listChanged": false } },
                    "resultType": "complete",
                    "ttlMs": 0,
                    "cacheScope": "private",
                    "_meta": { META_SERVER_INFO: server_info() },
                }),
            ),
            _ => {
                self.dispatch(ctx, "", id, method, params, Era::Modern)
                    .await
            }
        };
        let code = body
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64);
        let status = match code {
            Some(jsonrpc::UNAVAILABLE) => 503,
            Some(c) => modern_status(c),
            None => 200,
        };
        GatewayReply::json(status, body)
    }

    /// A `tools/call` whose client asked for progress: answered as an event stream that
    /// carries a `notifications/progress` every [`PROGRESS_EVERY`] while the call runs or
    /// waits for a human approval, then the response. The call runs to its end whether or
    /// not the client keeps listening.
    fn streamed_call(
        &self,
        ctx: &TaskContext,
        scope: &str,
        id: &Value,
        params: Option<&Value>,
        era: Era,
        token: Value,
    ) -> GatewayReply {
        let (name, arguments) = match call_params(id, params) {
            Ok(p) => p,
            Err(error) => return GatewayReply::json(200, error),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let (cancel, guard) = self.track_call(ctx, scope, id);
        let broker = self.broker.clone();
        let upstreams = self.upstreams.clone();
        let ctx = ctx.clone();
        let id = id.clone();
        let mut approvals = broker.approval_events();
        tokio::spawn(async move {
            let task = ctx.task_id().to_owned();
            let tool = name.clone();
            let _guard = guard;
            let call = broker.call_tool(ctx, name, arguments, upstreams, cancel);
            tokio::pin!(call);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut waiting_on: Option<String> = None;
            let mut sent = 0u64;
            loop {
                tokio::select! {
                    result = &mut call => {
                        let _ = tx.send(call_answer(&id, result, era)).await;
                        return;
                    }
                    event = approvals.recv() => {
                        if let Ok(custos_broker::ApprovalEvent::Requested(a)) = event
                            && a.task.as_str() == task
                            && a.tool == tool
                        {
                            waiting_on = Some(a.id.to_string());
                        }
                    }
                    _ = tick.tick() => {
                        sent += 1;
                        let message = match &waiting_on {
                            Some(a) => format!("custos: waiting for a human to answer approval {a}"),
                            None => "custos: the call is still running".to_owned(),
                        };
                        let progress = json!({
                            "jsonrpc": "2.0",
                            "method": "notifications/progress",
                            "params": { "progressToken": token, "progress": sent, "message": message },
                        });
                        // A client that stopped listening: the call still runs to its end.
                        let _ = tx.try_send(progress);
                    }
                }
            }
        });
        GatewayReply::stream(rx)
    }

    async fn dispatch(
        &self,
        ctx: &TaskContext,
        scope: &str,
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
            "tools/call" => {
                let (name, arguments) = match call_params(id, params) {
                    Ok(p) => p,
                    Err(error) => return error,
                };
                let (cancel, _guard) = self.track_call(ctx, scope, id);
                let result = self
                    .broker
                    .call_tool(ctx.clone(), name, arguments, self.upstreams.clone(), cancel)
                    .await;
                call_answer(id, result, era)
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

/// The progress token of a request that asked for progress and accepts an event stream.
fn progress_token(req: &McpRequest<'_>, params: Option<&Value>) -> Option<Value> {
    let accepts_stream = req
        .accept
        .is_some_and(|a| a.to_ascii_lowercase().contains("text/event-stream"));
    let token = params?.get("_meta")?.get("progressToken")?;
    // The specification allows a string or an integer; anything else is not a token.
    let valid = match token {
        Value::String(t) => !t.is_empty() && t.len() <= 256,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    };
    (accepts_stream && valid).then(|| token.clone())
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
    fn header_values_decode() {
        assert_eq!(decode_header_value("add").as_deref(), Some("add"));
        assert_eq!(decode_header_value("=?base64?w6k=?=").as_deref(), Some("é"));
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }
}
