//! Request bodies arrive whole, within a deadline, or the request is answered without them.
//!
//! Header timeouts do not cover a client that sends its headers promptly and then trickles the
//! body a byte at a time: without a deadline it holds a connection and a handler for as long as
//! it likes. Every request's body is read here, to its size limit and within
//! `--body-timeout` of its headers, before any handler runs;
//! a body that is late gets 408, one that is too large 413, and the connection is closed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::json;

/// How an answer without a body is shaped: the JSON API's error or a JSON-RPC error.
#[derive(Debug, Clone, Copy)]
pub enum ErrorShape {
    /// `{"error": {"code", "message"}}`.
    Api,
    /// `{"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message"}}`.
    JsonRpc,
}

/// The limits one group of routes reads its bodies under.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Most bytes.
    pub max_bytes: usize,
    /// Longest time from the end of the headers to the end of the body.
    pub timeout: Duration,
    /// How refusals are written.
    pub shape: ErrorShape,
}

fn refuse(shape: ErrorShape, status: StatusCode, code: &str, message: &str) -> Response {
    let body = match shape {
        ErrorShape::Api => json!({ "error": { "code": code, "message": message } }),
        ErrorShape::JsonRpc => {
            json!({ "jsonrpc": "2.0", "id": null, "error": { "code": -32600, "message": message } })
        }
    };
    // The rest of a late or oversized body is never read: the connection cannot be reused.
    (status, [(header::CONNECTION, "close")], axum::Json(body)).into_response()
}

/// Middleware: buffers the request body under `limits`, then runs the handler with it.
pub async fn read_within(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let collect = Limited::new(body, limits.max_bytes).collect();
    let bytes = match tokio::time::timeout(limits.timeout, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(
                limits.shape,
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body too large",
            );
        }
        Ok(Err(_)) => {
            return refuse(
                limits.shape,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
            );
        }
        Err(_) => {
            tracing::debug!(timeout = ?limits.timeout, "request body not received in time");
            return refuse(
                limits.shape,
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "request body not received in time",
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
