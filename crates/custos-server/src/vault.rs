//! The Vault-compatible credential API, for agents that do not speak MCP: Vault's clients
//! (`hvac`, the `vault` CLI, `VAULT_ADDR` + `VAULT_TOKEN`) work unchanged with the task token
//! as the Vault token.
//!
//! Differences from the rest of the API, on purpose, because Vault's clients expect them:
//! errors are `{"errors": ["..."]}`; an authentication failure is 403 `permission denied`
//! (Vault's answer to a bad token), not 401; an unknown lease is 400 `invalid lease`. Lease ids
//! are Vault-style, `database/creds/<role>/lease_…`; the bare `lease_…` is accepted too.
//! Leases are not renewable in this version (`renewable: false`).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use custos_broker::{BrokerError, TaskContext};
use custos_core::clock::rfc3339;
use custos_crypto::PresentedToken;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{AppState, Peer};

/// An error as Vault writes it.
#[derive(Debug)]
pub struct VaultError {
    status: StatusCode,
    message: String,
}

impl VaultError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn permission_denied() -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission denied")
    }
}

impl From<BrokerError> for VaultError {
    fn from(e: BrokerError) -> Self {
        let status = match &e {
            BrokerError::Unauthenticated => return Self::permission_denied(),
            BrokerError::Forbidden(_) => StatusCode::FORBIDDEN,
            // Vault answers an unknown role or lease with 400.
            BrokerError::NotFound(_) | BrokerError::Invalid(_) | BrokerError::Conflict(_) => {
                StatusCode::BAD_REQUEST
            }
            BrokerError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            BrokerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // What Vault answers when the database refuses.
            BrokerError::CredentialUnavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &e {
            BrokerError::Unavailable(what) => format!("{what} unavailable; request refused"),
            BrokerError::NotFound(m) if m == "lease not found" => "invalid lease".to_owned(),
            other => other.to_string(),
        };
        Self::new(status, message)
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "errors": [self.message] }))).into_response()
    }
}

/// The task token: `X-Vault-Token`, else `Authorization: Bearer`.
fn task_token(headers: &HeaderMap) -> Option<PresentedToken> {
    if let Some(t) = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(PresentedToken::new(t));
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(PresentedToken::from_authorization)
}

async fn authenticate(
    s: &AppState,
    peer: Peer,
    headers: &HeaderMap,
) -> Result<TaskContext, VaultError> {
    let token = task_token(headers).ok_or_else(VaultError::permission_denied)?;
    Ok(s.broker
        .authenticate_task_token(&token, peer.source())
        .await?)
}

/// Vault's lease id for a lease of `role`.
fn vault_lease_id(role: &str, id: &str) -> String {
    format!("database/creds/{role}/{id}")
}

fn request_id() -> String {
    custos_crypto::new_id("req_")
}

#[derive(Serialize)]
struct Creds<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct Secret<T: Serialize> {
    request_id: String,
    lease_id: String,
    lease_duration: i64,
    renewable: bool,
    data: T,
    wrap_info: Option<Value>,
    warnings: Option<Value>,
    auth: Option<Value>,
}

/// `GET /v1/database/creds/{role}`: mints a credential of `role` for the token's task.
#[utoipa::path(
    get,
    path = "/v1/database/creds/{role}",
    tag = "credentials",
    summary = "Mint a database credential for the task (Vault-compatible)",
    security(("taskToken" = [])),
    params(
        ("role" = String, Path, description = "a credential role the task's template lists"),
        ("X-Vault-Token" = Option<String>, Header, description = "the task token (or `Authorization: Bearer`)"),
    ),
    responses(
        (status = 200, description = "Vault's secret shape: `lease_id`, `lease_duration` (seconds), `renewable` (false), `data.username`, `data.password`", body = Object),
        (status = 400, description = "unknown role, or the task has no time left: `{\"errors\": [..]}`", body = Object),
        (status = 403, description = "`permission denied` (bad token), or the template does not allow the role", body = Object),
        (status = 429, description = "too many failed authentications", body = Object),
        (status = 500, description = "the engine is not configured or its server refused; nothing was left behind", body = Object),
        (status = 503, description = "a dependency is unavailable; refused", body = Object),
    )
)]
pub async fn creds(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path(role): Path<String>,
) -> Result<Response, VaultError> {
    let ctx = authenticate(&s, peer, &headers).await?;
    let issued = s.broker.issue_lease(&ctx, &role).await?;
    let lease = &issued.lease;
    let body = Secret {
        request_id: request_id(),
        lease_id: vault_lease_id(&lease.role, &lease.id),
        lease_duration: (lease.expires_at - lease.created_at).div_euclid(1000),
        renewable: false,
        data: Creds {
            username: &lease.principal,
            password: issued.password.expose_secret(),
        },
        wrap_info: None,
        warnings: None,
        auth: None,
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        "cache-control",
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// The body of `PUT /v1/sys/leases/lookup` and `/revoke`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LeaseRequest {
    /// `database/creds/<role>/lease_…` (or the bare `lease_…`).
    lease_id: String,
}

fn lease_request(body: Result<Json<LeaseRequest>, JsonRejection>) -> Result<String, VaultError> {
    body.map(|Json(b)| b.lease_id)
        .map_err(|e| VaultError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// `PUT /v1/sys/leases/lookup`: a lease of the token's task.
#[utoipa::path(
    put,
    path = "/v1/sys/leases/lookup",
    tag = "credentials",
    summary = "Look up a lease of the task (Vault-compatible)",
    security(("taskToken" = [])),
    request_body = LeaseRequest,
    responses(
        (status = 200, description = "`data`: `id`, `issue_time`, `expire_time`, `last_renewal`, `renewable`, `ttl` (seconds)", body = Object),
        (status = 400, description = "`invalid lease`: none, or another task's", body = Object),
        (status = 403, description = "`permission denied`", body = Object),
    )
)]
pub async fn lookup(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Json<LeaseRequest>, JsonRejection>,
) -> Result<Json<Value>, VaultError> {
    let ctx = authenticate(&s, peer, &headers).await?;
    let lease = s
        .broker
        .lookup_own_lease(&ctx, &lease_request(body)?)
        .await?;
    let now = s.broker.clock().now_ms();
    let live = matches!(
        lease.state,
        custos_core::LeaseState::Active | custos_core::LeaseState::Pending
    );
    let ttl = if live {
        (lease.expires_at - now).max(0).div_euclid(1000)
    } else {
        0
    };
    Ok(Json(json!({
        "request_id": request_id(),
        "lease_id": "",
        "lease_duration": 0,
        "renewable": false,
        "data": {
            "id": vault_lease_id(&lease.role, &lease.id),
            "issue_time": rfc3339(lease.created_at),
            "expire_time": rfc3339(lease.expires_at),
            "last_renewal": null,
            "renewable": false,
            "ttl": ttl,
        },
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    })))
}

/// `PUT /v1/sys/leases/revoke`: revokes a lease of the token's task; 204.
#[utoipa::path(
    put,
    path = "/v1/sys/leases/revoke",
    tag = "credentials",
    summary = "Revoke a lease of the task (Vault-compatible)",
    security(("taskToken" = [])),
    request_body = LeaseRequest,
    responses(
        (status = 204, description = "revoked (also when it already was)"),
        (status = 400, description = "`invalid lease`: none, or another task's", body = Object),
        (status = 403, description = "`permission denied`", body = Object),
        (status = 500, description = "the engine failed; revocation is retried in the background", body = Object),
    )
)]
pub async fn revoke(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Json<LeaseRequest>, JsonRejection>,
) -> Result<StatusCode, VaultError> {
    let ctx = authenticate(&s, peer, &headers).await?;
    s.broker
        .revoke_own_lease(&ctx, &lease_request(body)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
