//! The one error type at the HTTP boundary: a status, a stable code and a message.
//! Internal failures become a generic message; the detail goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use custos_broker::BrokerError;

use crate::response::{ErrorBody, ErrorDetail};

/// An API error, rendered as `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Human message (never a secret, never an internal detail).
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 401 without detail.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "authentication required",
        )
    }
}

/// The HTTP status of a broker error, for the API and the web pages alike.
pub(crate) fn status_of(e: &BrokerError) -> StatusCode {
    match e {
        BrokerError::Unauthenticated => StatusCode::UNAUTHORIZED,
        BrokerError::Forbidden(_) => StatusCode::FORBIDDEN,
        BrokerError::NotFound(_) => StatusCode::NOT_FOUND,
        BrokerError::Invalid(_) => StatusCode::BAD_REQUEST,
        BrokerError::Conflict(_) => StatusCode::CONFLICT,
        BrokerError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        BrokerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        BrokerError::CredentialUnavailable(_) => StatusCode::BAD_GATEWAY,
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        if matches!(e, BrokerError::Unauthenticated) {
            return Self::unauthenticated();
        }
        let status = status_of(&e);
        let message = match &e {
            BrokerError::Unavailable(what) => format!("{what} unavailable; request refused"),
            other => other.to_string(),
        };
        Self::new(status, e.code(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.to_owned(),
                    message: self.message,
                },
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Maps a body-extraction failure (too large, wrong type, unreadable) to an [`ApiError`].
pub fn body_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "payload_too_large", "request body too large")
    } else {
        ApiError::new(status, "invalid_request", text)
    }
}
