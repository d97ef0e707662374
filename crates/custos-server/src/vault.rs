//! The Vault-compatible credential API, for agents that do not speak MCP: Vault's clients
//! (`hvac`, the `vault` CLI, `VAULT_ADDR` + `VAULT_TOKEN`) work unchanged with the task token
//! as the Vault token.
//!
//! Differences from the rest of the API, on purpose, because Vault's clients expect them:
//! errors are `{"errors": ["..."]}`; an authentication failure is 403 `permission denied`
//! (Vault's answer to a bad token), not 401; an unknown lease is 400 `invalid lease`. Lease ids
//! are Vault-style, `database/creds/<role>/lease_…`; the bare `lease_…` is accepted too.
//! Active leases are renewable (`sys/leases/renew`, within the role's `max_ttl` and the task);
//! `sys/leases/revoke-prefix/<prefix>` takes an operator's token (admin), as in Vault it takes
//! a privileged one.

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

/// Vault's response envelope: `request_id`, `lease_id`, `lease_duration` (seconds),
/// `renewable`, `data`, and the `wrap_info`, `warnings` and `auth` Vault's clients expect.
#[derive(Serialize)]
pub struct Secret<T: Serialize> {
    request_id: String,
    lease_id: String,
    lease_duration: i64,
    renewable: bool,
    data: T,
    wrap_info: Option<Value>,
    warnings: Option<Value>,
    auth: Option<Value>,
}

impl<T: Serialize> Secret<T> {
    /// Vault's response envelope around `data`.
    fn new(lease_id: String, lease_duration: i64, renewable: bool, data: T) -> Self {
        Self {
            request_id: request_id(),
            lease_id,
            lease_duration,
            renewable,
            data,
            wrap_info: None,
            warnings: None,
            auth: None,
        }
    }
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
        (status = 200, description = "Vault's secret shape: `lease_id`, `lease_duration` (seconds), `renewable` (false for a `jwt` role, whose token cannot be extended), `data.username`, `data.password` (a `jwt` role: the signed token)", body = Object),
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
    let body = Secret::new(
        vault_lease_id(&lease.role, &lease.id),
        (lease.expires_at - lease.created_at).div_euclid(1000),
        renewable(lease),
        Creds {
            username: &lease.principal,
            password: issued.password.expose_secret(),
        },
    );
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        "cache-control",
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// Whether a lease's engine can extend it (a signed token's expiry is part of the token).
fn renewable(lease: &custos_core::Lease) -> bool {
    lease.engine != custos_core::CredentialEngine::Jwt.as_str()
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
) -> Result<Json<Secret<Value>>, VaultError> {
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
    Ok(Json(Secret::new(
        String::new(),
        0,
        false,
        json!({
            "id": vault_lease_id(&lease.role, &lease.id),
            "issue_time": rfc3339(lease.created_at),
            "expire_time": rfc3339(lease.expires_at),
            "last_renewal": lease.renewed_at.map(rfc3339),
            "renewable": lease.state == custos_core::LeaseState::Active && renewable(&lease),
            "ttl": ttl,
        }),
    )))
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

/// The body of `PUT /v1/sys/leases/renew`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RenewRequest {
    /// `database/creds/<role>/lease_…` (or the bare `lease_…`).
    lease_id: String,
    /// The TTL asked for from now: seconds as a number, or a duration (`"90s"`, `"15m"`,
    /// `"1h"`); the role's `default_ttl` when absent or null.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    increment: Option<Value>,
}

/// An increment as Vault takes it: seconds, as a number or a string, or a duration.
fn increment(v: Option<&Value>) -> Result<Option<std::time::Duration>, VaultError> {
    let bad = || {
        VaultError::new(
            StatusCode::BAD_REQUEST,
            "increment must be a number of seconds or a duration such as \"15m\"",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|s| Some(std::time::Duration::from_secs(s)))
            .ok_or_else(bad),
        Some(Value::String(t)) => match t.parse::<u64>() {
            Ok(secs) => Ok(Some(std::time::Duration::from_secs(secs))),
            Err(_) => custos_core::parse_duration(t).map(Some).map_err(|_| bad()),
        },
        Some(_) => Err(bad()),
    }
}

/// `PUT /v1/sys/leases/renew`: renews a lease of the token's task.
#[utoipa::path(
    put,
    path = "/v1/sys/leases/renew",
    tag = "credentials",
    summary = "Renew a lease of the task (Vault-compatible)",
    security(("taskToken" = [])),
    request_body = RenewRequest,
    responses(
        (status = 200, description = "`lease_id`, `renewable`, `lease_duration`: seconds left after the renewal (never beyond the role's `max_ttl` from issue, nor the task)", body = Object),
        (status = 400, description = "`invalid lease`, a lease that is not active, or a bad increment", body = Object),
        (status = 403, description = "`permission denied`, or the task is not active", body = Object),
        (status = 500, description = "the engine failed; the lease keeps its old expiry", body = Object),
    )
)]
pub async fn renew(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Json<RenewRequest>, JsonRejection>,
) -> Result<Json<Secret<Value>>, VaultError> {
    let ctx = authenticate(&s, peer, &headers).await?;
    let Json(body) = body.map_err(|e| VaultError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let increment = increment(body.increment.as_ref())?;
    let lease = s
        .broker
        .renew_own_lease(&ctx, &body.lease_id, increment)
        .await?;
    let left = (lease.expires_at - s.broker.clock().now_ms())
        .max(0)
        .div_euclid(1000);
    Ok(Json(Secret::new(
        vault_lease_id(&lease.role, &lease.id),
        left,
        true,
        Value::Null,
    )))
}

/// `PUT /v1/sys/leases/revoke-prefix/{prefix}`: an operator (admin) revokes every live lease
/// under a path prefix; 204.
#[utoipa::path(
    put,
    path = "/v1/sys/leases/revoke-prefix/{*prefix}",
    tag = "credentials",
    summary = "Revoke every lease under a prefix (Vault-compatible; operators only)",
    security(("operatorToken" = [])),
    params(
        ("prefix" = String, Path, description = "`database/`, `database/creds/<role>`, or a whole lease id: matched segment by segment"),
        ("X-Vault-Token" = Option<String>, Header, description = "an admin operator's token (or `Authorization: Bearer`)"),
    ),
    responses(
        (status = 204, description = "revoked (a lease whose server failed is retried in the background)"),
        (status = 400, description = "a prefix outside `database/creds/`", body = Object),
        (status = 403, description = "`permission denied`: not an admin operator's token", body = Object),
    )
)]
pub async fn revoke_prefix(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path(prefix): Path<String>,
) -> Result<StatusCode, VaultError> {
    let token = task_token(&headers).ok_or_else(VaultError::permission_denied)?;
    let op = s
        .broker
        .authenticate_operator(&token, peer.source())
        .await
        .map_err(|_| VaultError::permission_denied())?;
    s.broker
        .revoke_lease_prefix(&op, &prefix)
        .await
        .map_err(|e| match e {
            BrokerError::Forbidden(_) => VaultError::permission_denied(),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}
