//! OAuth: the token endpoint (RFC 8693 exchange), JWKS and the metadata documents.

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use custos_broker::{
    JWT_TOKEN_TYPE, TASK_ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, TokenRequest, TokenResponse,
};
use serde_json::{Value, json};

use crate::error::{ApiError, body_error};
use crate::{AppState, Peer};

/// `GET /.well-known/jwks.json`
pub async fn jwks(State(s): State<AppState>) -> Json<Value> {
    Json(s.broker.tokens().jwks())
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414)
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

/// `GET /.well-known/oauth-protected-resource` (RFC 9728)
pub async fn protected_resource(State(s): State<AppState>) -> Json<Value> {
    let issuer = s.broker.tokens().issuer().trim_end_matches('/');
    Json(json!({
        "resource": s.broker.tokens().audience(),
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "resource_signing_alg_values_supported": ["EdDSA"],
    }))
}

/// `POST /oauth/token`: an agent's assertion and a task id in, a task token out.
pub async fn token(
    State(s): State<AppState>,
    peer: Peer,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let Form(req) = form.map_err(|e| body_error(e.status(), e.body_text()))?;
    Ok(Json(s.broker.exchange(&req, peer.source()).await?))
}
