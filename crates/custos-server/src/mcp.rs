//! The MCP endpoint: turns HTTP into an [`McpRequest`] for the gateway and back.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use custos_gateway::{GatewayReply, McpRequest, McpVerb};
use serde_json::json;

use crate::{AppState, Peer};

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn render(reply: GatewayReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match (reply.events, reply.body) {
        (Some(events), _) => event_stream(events),
        (None, Some(body)) => (status, axum::Json(body)).into_response(),
        (None, None) => status.into_response(),
    };
    for (name, value) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }
    resp
}

/// The most bytes of events written in one frame: messages already queued go out together
/// (one write, not one per message), up to this.
const FRAME_BYTES: usize = 64 * 1024;

/// JSON-RPC messages as a `text/event-stream` (one `message` event each); it ends after the
/// last message.
fn event_stream(events: tokio::sync::mpsc::Receiver<serde_json::Value>) -> Response {
    use std::fmt::Write as _;
    let stream = futures_util::stream::unfold(events, |mut rx| async move {
        let msg = rx.recv().await?;
        let mut frame = String::new();
        let _ = write!(frame, "event: message\ndata: {msg}\n\n");
        while frame.len() < FRAME_BYTES
            && let Ok(next) = rx.try_recv()
        {
            let _ = write!(frame, "event: message\ndata: {next}\n\n");
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), rx))
    });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}

async fn handle(
    s: &AppState,
    verb: McpVerb,
    peer: Option<std::net::IpAddr>,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let req = McpRequest {
        // HTTP/1 names the host in `Host`; HTTP/2 in the request's authority.
        host: header(headers, "host").or_else(|| uri.authority().map(|a| a.as_str())),
        verb,
        authorization: header(headers, "authorization"),
        session_id: header(headers, "mcp-session-id"),
        protocol_version: header(headers, "mcp-protocol-version"),
        mcp_method: header(headers, "mcp-method"),
        mcp_name: header(headers, "mcp-name"),
        content_type: header(headers, "content-type"),
        origin: header(headers, "origin"),
        accept: header(headers, "accept"),
        peer,
        body,
    };
    render(s.gateway.handle(req).await)
}

/// `POST /mcp`
#[utoipa::path(
    post,
    path = "/mcp",
    tag = "mcp",
    summary = "MCP Streamable HTTP (2025-11-25 sessions and 2026-07-28 stateless era)",
    security(("taskToken" = [])),
    request_body(content = Object, content_type = "application/json", description = "a JSON-RPC message"),
    responses(
        (status = 200, description = "JSON-RPC response"),
        (status = 202, description = "notification accepted"),
        (status = 400, description = "JSON-RPC error"),
        (status = 401, description = "authentication required (no detail)"),
        (status = 404, description = "unknown session or method"),
        (status = 413, description = "body too large"),
        (status = 415, description = "not application/json"),
    )
)]
pub async fn post(
    State(s): State<AppState>,
    peer: Peer,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(b) => handle(&s, McpVerb::Post, peer.0, &uri, &headers, &b).await,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => (
            StatusCode::PAYLOAD_TOO_LARGE,
            axum::Json(json!({ "jsonrpc": "2.0", "id": null, "error": { "code": -32600, "message": "request body too large" } })),
        )
            .into_response(),
        Err(e) => (e.status(), axum::Json(json!({ "error": { "code": "invalid_request", "message": e.body_text() } }))).into_response(),
    }
}

/// `GET /mcp` (no server-initiated stream: 405)
#[utoipa::path(
    get,
    path = "/mcp",
    tag = "mcp",
    summary = "No server-initiated stream",
    responses((status = 405, description = "method not allowed"))
)]
pub async fn get(
    State(s): State<AppState>,
    peer: Peer,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    handle(&s, McpVerb::Get, peer.0, &uri, &headers, &[]).await
}

/// `DELETE /mcp` ends a session.
#[utoipa::path(
    delete,
    path = "/mcp",
    tag = "mcp",
    summary = "End a session",
    security(("taskToken" = [])),
    responses(
        (status = 200, description = "ended"),
        (status = 404, description = "unknown session"),
    )
)]
pub async fn delete(
    State(s): State<AppState>,
    peer: Peer,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    handle(&s, McpVerb::Delete, peer.0, &uri, &headers, &[]).await
}
