//! OAuth: the token endpoint (RFC 8693 exchange), JWKS and the metadata documents.

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use custos_broker::{JWT_TOKEN_TYPE, TASK_ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, TokenRequest};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::error::{ApiError, body_error};
use crate::response::{ErrorBody, TokenBody};
use crate::{AppState, Peer};

/// `GET /.well-known/jwks.json`
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "oauth",
    summary = "Task-token signing keys (JWKS)",
    responses((status = 200, description = "a JWK set", body = Object))
)]
pub async fn jwks(State(s): State<AppState>) -> Json<Value> {
    Json(s.broker.tokens().jwks())
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414)
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "oauth",
    summary = "OAuth authorization-server metadata (RFC 8414)",
    responses((status = 200, description = "the metadata", body = Object))
)]
pub async fn authorization_server(State(s): State<AppState>) -> Json<Value> {
    let issuer = s.broker.tokens().issuer().trim_end_matches('/');
    Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": [TOKEN_EXCHANGE_GRANT],
        "token_endpoint_auth_methods_supported": ["none"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "response_types_supported": [],
        "custos_subject_token_types_supported": [TASK_ID_TOKEN_TYPE],
        "custos_actor_token_types_supported": [JWT_TOKEN_TYPE],
    }))
}

fn protected_resource_metadata(s: &AppState) -> Json<Value> {
    let issuer = s.broker.tokens().issuer().trim_end_matches('/');
    Json(json!({
        "resource": s.broker.tokens().audience(),
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "resource_signing_alg_values_supported": ["EdDSA"],
    }))
}

/// `GET /.well-known/oauth-protected-resource` (RFC 9728)
#[utoipa::path(
    get,
    path = "/.well-known/oauth-protected-resource",
    tag = "oauth",
    summary = "Protected-resource metadata for /mcp (RFC 9728)",
    responses((status = 200, description = "the metadata", body = Object))
)]
pub async fn protected_resource(State(s): State<AppState>) -> Json<Value> {
    protected_resource_metadata(&s)
}

/// `GET /.well-known/oauth-protected-resource/mcp` (RFC 9728, the path-suffixed form)
#[utoipa::path(
    get,
    path = "/.well-known/oauth-protected-resource/mcp",
    tag = "oauth",
    summary = "Protected-resource metadata for /mcp (RFC 9728, path form)",
    responses((status = 200, description = "the metadata", body = Object))
)]
pub async fn protected_resource_mcp(State(s): State<AppState>) -> Json<Value> {
    protected_resource_metadata(&s)
}

// The broker's `TokenRequest` as the wire carries it; every field defaults, so a missing one
// reaches the broker empty and it answers what is wrong.
/// An RFC 8693 token-exchange request.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = TokenExchange)]
pub struct TokenForm {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    #[serde(default)]
    grant_type: String,
    /// The task id.
    #[serde(default)]
    subject_token: String,
    /// `urn:custos:params:oauth:token-type:task-id`.
    #[serde(default)]
    subject_token_type: String,
    /// The agent's assertion: an EdDSA JWT with iss = sub = the agent's name or its key's JWK
    /// thumbprint, aud = the issuer, exp - iat ≤ 300 s, and a single-use jti.
    #[serde(default)]
    actor_token: String,
    /// `urn:ietf:params:oauth:token-type:jwt`.
    #[serde(default)]
    actor_token_type: String,
    /// Optional; when given, this server's MCP endpoint.
    #[serde(default)]
    resource: Option<String>,
    /// Optional; when given, this server's MCP endpoint.
    #[serde(default)]
    audience: Option<String>,
}

impl From<TokenForm> for TokenRequest {
    fn from(f: TokenForm) -> Self {
        TokenRequest {
            grant_type: f.grant_type,
            subject_token: f.subject_token,
            subject_token_type: f.subject_token_type,
            actor_token: f.actor_token,
            actor_token_type: f.actor_token_type,
            resource: f.resource,
            audience: f.audience,
        }
    }
}

/// `POST /oauth/token`: an agent's assertion and a task id in, a task token out.
#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth",
    summary = "RFC 8693 token exchange: the agent's assertion and a task id for a task token",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "a task token", body = TokenBody),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 401, description = "authentication failed (no detail)", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn token(
    State(s): State<AppState>,
    peer: Peer,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Json<TokenBody>, ApiError> {
    let Form(req) = form.map_err(|e| body_error(e.status(), e.body_text()))?;
    let req = TokenRequest::from(req);
    Ok(Json(s.broker.exchange(&req, peer.source()).await?.into()))
}
