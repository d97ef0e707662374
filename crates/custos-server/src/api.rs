//! The JSON API under `/v1/`, plus health and metrics. Each handler extracts, calls one broker
//! method and maps the domain result to its body in [`crate::response`]; its
//! `#[utoipa::path]` is what the OpenAPI document says about it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use custos_broker::{Operator, StartTask};
use custos_core::{Kind, Role};
use custos_crypto::PresentedToken;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, body_error};
use crate::response::{
    ApplyBody, ApprovalBody, ChangeBody, CreatedOperatorBody, ErrorBody, ExplanationBody,
    HealthBody, LeaseBody, OperatorBody, PinnedUpstreamBody, ResourceBody, RoleBody,
    StaticSecretBody, SuspensionBody, TaskBody, VerifyBody,
};
use crate::{AppState, Peer};

/// An authenticated operator, from `Authorization: Bearer custos_op_…`.
pub struct Op(pub Operator);

impl FromRequestParts<AppState> for Op {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(ApiError::unauthenticated)?;
        let peer = Peer::from_request_parts(parts, state)
            .await
            .unwrap_or(Peer(None));
        Ok(Op(state
            .broker
            .authenticate_operator(&token, peer.source())
            .await?))
    }
}

/// The bearer token of `Authorization: Bearer …`, if any.
fn bearer(headers: &axum::http::HeaderMap) -> Option<PresentedToken> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(PresentedToken::from_authorization)
}

fn kind(s: &str) -> Result<Kind, ApiError> {
    Kind::parse(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown kind `{s}`: use upstream, credentialrole, template, policy or agent"),
        )
    })
}

/// A task id from a path: one that cannot be a task id is an unknown task.
fn task_id(s: &str) -> Result<custos_core::TaskId, ApiError> {
    custos_core::TaskId::parse(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("task `{}` not found", custos_core::text::for_display(s, 64)),
        )
    })
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| body_error(e.status(), e.body_text()))
}

/// `POST /v1/apply` with a (multi-document) YAML body.
#[utoipa::path(
    post,
    path = "/v1/apply",
    tag = "registry",
    summary = "Apply resources (multi-document YAML, all or nothing)",
    security(("operatorToken" = [])),
    request_body(
        content = String,
        content_type = "application/yaml",
        description = "One resource per document, each with a `kind`"
    ),
    responses(
        (status = 200, description = "applied", body = ApplyBody),
        (status = 400, description = "a document is invalid; nothing was applied", body = ErrorBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn apply(
    State(s): State<AppState>,
    Op(op): Op,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApplyBody>, ApiError> {
    let body = body.map_err(|e| body_error(e.status(), e.body_text()))?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body is not UTF-8 text",
        )
    })?;
    let outcome = s.broker.apply(&op, text).await?;
    Ok(Json(ApplyBody {
        changes: outcome.changes.into_iter().map(ChangeBody::from).collect(),
    }))
}

/// `GET /v1/resources/{kind}`
#[utoipa::path(
    get,
    path = "/v1/resources/{kind}",
    tag = "registry",
    summary = "List resources of a kind",
    security(("operatorToken" = [])),
    params(("kind" = String, Path, description = "upstream, credentialrole, template, policy or agent (plural accepted)")),
    responses(
        (status = 200, description = "every resource of the kind", body = Vec<ResourceBody>),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown kind", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn list_resources(
    State(s): State<AppState>,
    Op(op): Op,
    Path(k): Path<String>,
) -> Result<Json<Vec<ResourceBody>>, ApiError> {
    let resources = s.broker.get(&op, kind(&k)?, None).await?;
    Ok(Json(
        resources.into_iter().map(ResourceBody::from).collect(),
    ))
}

/// `GET /v1/resources/{kind}/{name}`
#[utoipa::path(
    get,
    path = "/v1/resources/{kind}/{name}",
    tag = "registry",
    summary = "Get one resource",
    security(("operatorToken" = [])),
    params(
        ("kind" = String, Path, description = "upstream, credentialrole, template, policy or agent (plural accepted)"),
        ("name" = String, Path, description = "resource name"),
    ),
    responses(
        (status = 200, description = "the resource", body = ResourceBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown kind or resource", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn get_resource(
    State(s): State<AppState>,
    Op(op): Op,
    Path((k, name)): Path<(String, String)>,
) -> Result<Json<ResourceBody>, ApiError> {
    let resource = s
        .broker
        .get(&op, kind(&k)?, Some(&name))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found"))?;
    Ok(Json(resource.into()))
}

/// `DELETE /v1/resources/{kind}/{name}`
#[utoipa::path(
    delete,
    path = "/v1/resources/{kind}/{name}",
    tag = "registry",
    summary = "Delete one resource",
    security(("operatorToken" = [])),
    params(
        ("kind" = String, Path, description = "upstream, credentialrole, template, policy or agent (plural accepted)"),
        ("name" = String, Path, description = "resource name"),
    ),
    responses(
        (status = 200, description = "deleted", body = ChangeBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown kind or resource", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn delete_resource(
    State(s): State<AppState>,
    Op(op): Op,
    Path((k, name)): Path<(String, String)>,
) -> Result<Json<ChangeBody>, ApiError> {
    Ok(Json(s.broker.delete(&op, kind(&k)?, &name).await?.into()))
}

/// The body of `POST /v1/operators`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOperator {
    /// Lowercase letters, digits and `-`.
    name: String,
    /// The role.
    #[schema(value_type = RoleBody)]
    role: String,
}

/// `POST /v1/operators`: the token is in the answer, once.
#[utoipa::path(
    post,
    path = "/v1/operators",
    tag = "operators",
    summary = "Create an operator; the token is in the answer, once",
    security(("operatorToken" = [])),
    request_body = CreateOperator,
    responses(
        (status = 201, description = "created", body = CreatedOperatorBody),
        (status = 400, description = "invalid name or role", body = ErrorBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn create_operator(
    State(s): State<AppState>,
    Op(op): Op,
    body: Result<Json<CreateOperator>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedOperatorBody>), ApiError> {
    let req = json_body(body)?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "unknown role `{}`: use admin, initiator, approver or auditor",
                req.role
            ),
        )
    })?;
    let created = s.broker.create_operator(&op, &req.name, role).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedOperatorBody {
            name: created.name,
            role: created.role.into(),
            token: created.token,
        }),
    ))
}

/// `GET /v1/operators`
#[utoipa::path(
    get,
    path = "/v1/operators",
    tag = "operators",
    summary = "List operators (never tokens)",
    security(("operatorToken" = [])),
    responses(
        (status = 200, description = "every operator", body = Vec<OperatorBody>),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn list_operators(
    State(s): State<AppState>,
    Op(op): Op,
) -> Result<Json<Vec<OperatorBody>>, ApiError> {
    let operators = s.broker.list_operators(&op).await?;
    Ok(Json(
        operators.into_iter().map(OperatorBody::from).collect(),
    ))
}

/// `POST /v1/agents/{name}/suspend`
#[utoipa::path(
    post,
    path = "/v1/agents/{name}/suspend",
    tag = "agents",
    summary = "Suspend an agent: its tokens are refused at once",
    security(("operatorToken" = [])),
    params(("name" = String, Path, description = "agent name")),
    responses(
        (status = 200, description = "suspended", body = SuspensionBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown agent", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn suspend_agent(
    State(s): State<AppState>,
    Op(op): Op,
    Path(name): Path<String>,
) -> Result<Json<SuspensionBody>, ApiError> {
    Ok(Json(
        s.broker.set_agent_suspended(&op, &name, true).await?.into(),
    ))
}

/// `POST /v1/agents/{name}/resume`
#[utoipa::path(
    post,
    path = "/v1/agents/{name}/resume",
    tag = "agents",
    summary = "Resume a suspended agent",
    security(("operatorToken" = [])),
    params(("name" = String, Path, description = "agent name")),
    responses(
        (status = 200, description = "resumed", body = SuspensionBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown agent", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn resume_agent(
    State(s): State<AppState>,
    Op(op): Op,
    Path(name): Path<String>,
) -> Result<Json<SuspensionBody>, ApiError> {
    Ok(Json(
        s.broker
            .set_agent_suspended(&op, &name, false)
            .await?
            .into(),
    ))
}

/// The body of `POST /v1/tasks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = StartTask)]
pub struct StartTaskBody {
    /// The agent that will do the work.
    agent: String,
    /// The template it works under.
    template: String,
    /// The initiator: the human or event on whose behalf.
    on_behalf_of: String,
    /// Why.
    #[serde(default)]
    purpose: Option<String>,
    /// How long the task may live, e.g. `30m`; at most the template's ttl (the default).
    #[serde(default)]
    ttl: Option<String>,
}

impl From<StartTaskBody> for StartTask {
    fn from(b: StartTaskBody) -> Self {
        StartTask {
            agent: b.agent,
            template: b.template,
            on_behalf_of: b.on_behalf_of,
            purpose: b.purpose,
            ttl: b.ttl,
        }
    }
}

/// `POST /v1/tasks`
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    summary = "Start a task",
    security(("operatorToken" = [])),
    request_body = StartTaskBody,
    responses(
        (status = 201, description = "started", body = TaskBody),
        (status = 400, description = "unknown or suspended agent, template not allowed, ttl too long", body = ErrorBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn start_task(
    State(s): State<AppState>,
    Op(op): Op,
    body: Result<Json<StartTaskBody>, JsonRejection>,
) -> Result<(StatusCode, Json<TaskBody>), ApiError> {
    let task = s.broker.start_task(&op, json_body(body)?.into()).await?;
    Ok((StatusCode::CREATED, Json(task.into())))
}

/// Filters for `GET /v1/tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskFilter {
    /// Only this agent's tasks.
    agent: Option<String>,
}

/// `GET /v1/tasks`
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    summary = "List recent tasks, newest first",
    security(("operatorToken" = [])),
    params(TaskFilter),
    responses(
        (status = 200, description = "up to 500 tasks", body = Vec<TaskBody>),
        (status = 400, description = "invalid filter", body = ErrorBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn list_tasks(
    State(s): State<AppState>,
    Op(op): Op,
    Query(f): Query<TaskFilter>,
) -> Result<Json<Vec<TaskBody>>, ApiError> {
    let tasks = s.broker.list_tasks(&op, f.agent.as_deref()).await?;
    Ok(Json(tasks.into_iter().map(TaskBody::from).collect()))
}

/// `GET /v1/tasks/{id}`
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    summary = "Get one task",
    security(("operatorToken" = [])),
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "the task", body = TaskBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown task", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn get_task(
    State(s): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> Result<Json<TaskBody>, ApiError> {
    Ok(Json(s.broker.get_task(&op, &task_id(&id)?).await?.into()))
}

/// `POST /v1/tasks/{id}/end`
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/end",
    tag = "tasks",
    summary = "End a task at once",
    security(("operatorToken" = [])),
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "ended", body = TaskBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown task", body = ErrorBody),
        (status = 409, description = "already ended", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn end_task(
    State(s): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> Result<Json<TaskBody>, ApiError> {
    Ok(Json(s.broker.end_task(&op, &task_id(&id)?).await?.into()))
}

/// Filters for `GET /v1/leases`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaseFilter {
    /// Only this task's leases.
    task: Option<String>,
    /// Only leases marked failed (a mint that failed, or a revocation that gave up).
    #[serde(default)]
    failed: bool,
}

/// `GET /v1/leases`
#[utoipa::path(
    get,
    path = "/v1/leases",
    tag = "credentials",
    summary = "List credential leases, newest first (never passwords)",
    security(("operatorToken" = [])),
    params(LeaseFilter),
    responses(
        (status = 200, description = "up to 1000 leases", body = Vec<LeaseBody>),
        (status = 400, description = "invalid filter", body = ErrorBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "`task` cannot be a task id", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn list_leases(
    State(s): State<AppState>,
    Op(op): Op,
    Query(f): Query<LeaseFilter>,
) -> Result<Json<Vec<LeaseBody>>, ApiError> {
    let task = f.task.as_deref().map(task_id).transpose()?;
    let leases = s.broker.list_leases(&op, task.as_ref(), f.failed).await?;
    Ok(Json(leases.into_iter().map(LeaseBody::from).collect()))
}

/// `POST /v1/leases/{id}/revoke`
#[utoipa::path(
    post,
    path = "/v1/leases/{id}/revoke",
    tag = "credentials",
    summary = "Revoke a lease now (also retries one marked failed)",
    security(("operatorToken" = [])),
    params(("id" = String, Path, description = "lease id (`lease_…`, or Vault's `database/creds/<role>/lease_…`)")),
    responses(
        (status = 200, description = "revoked", body = LeaseBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown lease", body = ErrorBody),
        (status = 409, description = "already revoked", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 502, description = "the engine failed; revocation is retried in the background", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn revoke_lease(
    State(s): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> Result<Json<LeaseBody>, ApiError> {
    Ok(Json(s.broker.revoke_lease(&op, &id).await?.into()))
}

/// The body of `PUT /v1/secrets/{role}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The value (1 byte to 64 KiB of text); sealed at rest, never returned.
    #[schema(value_type = String)]
    #[serde(deserialize_with = "secret_string")]
    value: secrecy::SecretString,
}

fn secret_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<secrecy::SecretString, D::Error> {
    let text = zeroize::Zeroizing::new(String::deserialize(d)?);
    Ok(secrecy::SecretString::from(text.as_str()))
}

/// `PUT /v1/secrets/{role}`
#[utoipa::path(
    put,
    path = "/v1/secrets/{role}",
    tag = "credentials",
    summary = "Store the value of a static credential role (sealed at rest; never returned)",
    security(("operatorToken" = [])),
    params(("role" = String, Path, description = "a credential role with `engine: static`")),
    request_body = PutSecret,
    responses(
        (status = 200, description = "stored", body = StaticSecretBody),
        (status = 400, description = "not a static role, or an empty or oversized value", body = ErrorBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this (admin only)", body = ErrorBody),
        (status = 404, description = "unknown credential role", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 502, description = "no key-encryption key is configured", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn put_secret(
    State(s): State<AppState>,
    Op(op): Op,
    Path(role): Path<String>,
    body: Result<Json<PutSecret>, JsonRejection>,
) -> Result<Json<StaticSecretBody>, ApiError> {
    let req = json_body(body)?;
    Ok(Json(
        s.broker
            .put_static_secret(&op, &role, req.value)
            .await?
            .into(),
    ))
}

/// `GET /v1/secrets`
#[utoipa::path(
    get,
    path = "/v1/secrets",
    tag = "credentials",
    summary = "The static secrets stored: roles and when, never values",
    security(("operatorToken" = [])),
    responses(
        (status = 200, description = "by role", body = Vec<StaticSecretBody>),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn list_secrets(
    State(s): State<AppState>,
    Op(op): Op,
) -> Result<Json<Vec<StaticSecretBody>>, ApiError> {
    let all = s.broker.list_static_secrets(&op).await?;
    Ok(Json(all.into_iter().map(StaticSecretBody::from).collect()))
}

/// Filters for `GET /v1/approvals`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalFilter {
    /// Every state, not only those waiting for an answer.
    #[serde(default)]
    all: bool,
    /// Only this task's.
    task: Option<String>,
}

/// An approval id from a path: one that cannot be an approval id is an unknown approval.
fn approval_id(s: &str) -> Result<custos_core::ApprovalId, ApiError> {
    custos_core::ApprovalId::parse(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "approval `{}` not found",
                custos_core::text::for_display(s, 64)
            ),
        )
    })
}

/// `GET /v1/approvals`
#[utoipa::path(
    get,
    path = "/v1/approvals",
    tag = "approvals",
    summary = "List approval requests, newest first: pending only, or all",
    security(("operatorToken" = [])),
    params(ApprovalFilter),
    responses(
        (status = 200, description = "up to 500 approvals", body = Vec<ApprovalBody>),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "only approvers, auditors and admins see approvals", body = ErrorBody),
        (status = 404, description = "`task` cannot be a task id", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn list_approvals(
    State(s): State<AppState>,
    Op(op): Op,
    Query(f): Query<ApprovalFilter>,
) -> Result<Json<Vec<ApprovalBody>>, ApiError> {
    let task = f.task.as_deref().map(task_id).transpose()?;
    let list = s.broker.list_approvals(&op, f.all, task.as_ref()).await?;
    Ok(Json(list.into_iter().map(ApprovalBody::from).collect()))
}

/// `GET /v1/approvals/{id}`
#[utoipa::path(
    get,
    path = "/v1/approvals/{id}",
    tag = "approvals",
    summary = "One approval request",
    security(("operatorToken" = [])),
    params(("id" = String, Path, description = "approval id (`apr_…`)")),
    responses(
        (status = 200, description = "the approval", body = ApprovalBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "only approvers, auditors and admins see approvals", body = ErrorBody),
        (status = 404, description = "unknown approval", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn get_approval(
    State(s): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> Result<Json<ApprovalBody>, ApiError> {
    Ok(Json(
        s.broker.get_approval(&op, &approval_id(&id)?).await?.into(),
    ))
}

/// `POST /v1/approvals/{id}/approve`
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/approve",
    tag = "approvals",
    summary = "Approve a held call: the identical call may then run once",
    security(("operatorToken" = [])),
    params(("id" = String, Path, description = "approval id (`apr_…`)")),
    responses(
        (status = 200, description = "approved", body = ApprovalBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "not an approver, or the task's initiator or starter (separation of duties)", body = ErrorBody),
        (status = 404, description = "unknown approval", body = ErrorBody),
        (status = 409, description = "already answered, or expired", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn approve(
    State(s): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> Result<Json<ApprovalBody>, ApiError> {
    let id = approval_id(&id)?;
    let a = s
        .broker
        .answer_approval(&op, &id, custos_broker::Answer::Approve, None)
        .await?;
    Ok(Json(a.into()))
}

/// The body of `POST /v1/approvals/{id}/deny`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyApproval {
    /// Why (kept with the approval and in the audit record; at most 1 KiB kept).
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/approvals/{id}/deny`
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/deny",
    tag = "approvals",
    summary = "Deny a held call",
    security(("operatorToken" = [])),
    params(("id" = String, Path, description = "approval id (`apr_…`)")),
    request_body = DenyApproval,
    responses(
        (status = 200, description = "denied", body = ApprovalBody),
        (status = 400, description = "malformed body", body = ErrorBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "not an approver, or the task's initiator or starter (separation of duties)", body = ErrorBody),
        (status = 404, description = "unknown approval", body = ErrorBody),
        (status = 409, description = "already answered, or expired", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn deny(
    State(s): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
    body: Result<Json<DenyApproval>, JsonRejection>,
) -> Result<Json<ApprovalBody>, ApiError> {
    let id = approval_id(&id)?;
    let req = json_body(body)?;
    let a = s
        .broker
        .answer_approval(&op, &id, custos_broker::Answer::Deny, req.reason.as_deref())
        .await?;
    Ok(Json(a.into()))
}

/// The body of `POST /v1/policy/explain`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The task whose call to explain.
    task: String,
    /// The exposed tool name (`upstream__tool`).
    tool: String,
    /// The call's arguments (an object; default `{}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    arguments: Option<Value>,
}

/// `POST /v1/policy/explain`
#[utoipa::path(
    post,
    path = "/v1/policy/explain",
    tag = "policy",
    summary = "What would happen to one call of a task, and why (nothing is called)",
    security(("operatorToken" = [])),
    request_body = ExplainRequest,
    responses(
        (status = 200, description = "the decision, tier, deciding policies and taint", body = ExplanationBody),
        (status = 400, description = "malformed body, or arguments that are not an object", body = ErrorBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 404, description = "unknown task", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn explain(
    State(s): State<AppState>,
    Op(op): Op,
    body: Result<Json<ExplainRequest>, JsonRejection>,
) -> Result<Json<ExplanationBody>, ApiError> {
    let req = json_body(body)?;
    let arguments = match req.arguments {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`arguments` must be a JSON object".to_owned(),
            ));
        }
    };
    let task = task_id(&req.task)?;
    Ok(Json(
        s.broker
            .explain(
                &op,
                &task,
                &req.tool,
                arguments,
                s.gateway.upstreams().as_ref(),
            )
            .await?
            .into(),
    ))
}

/// `POST /v1/upstreams/{name}/approve`
#[utoipa::path(
    post,
    path = "/v1/upstreams/{name}/approve",
    tag = "registry",
    summary = "Approve an upstream's tools: pin the definitions it serves now",
    security(("operatorToken" = [])),
    params(("name" = String, Path, description = "the upstream")),
    responses(
        (status = 200, description = "pinned", body = PinnedUpstreamBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown upstream", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "the upstream cannot list its tools, or the store is down", body = ErrorBody),
    )
)]
pub async fn approve_upstream(
    State(s): State<AppState>,
    Op(op): Op,
    Path(name): Path<String>,
) -> Result<Json<PinnedUpstreamBody>, ApiError> {
    let pinned = s
        .broker
        .approve_upstream(&op, &name, s.gateway.upstreams().clone())
        .await?;
    Ok(Json(pinned.into()))
}

/// `GET /v1/audit/verify`: re-reads every stored record.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    summary = "Re-read every stored audit record and check the hash chain",
    security(("operatorToken" = [])),
    responses(
        (status = 200, description = "the report (`ok` is false when anything is wrong)", body = VerifyBody),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn verify_audit(
    State(s): State<AppState>,
    Op(op): Op,
) -> Result<Json<VerifyBody>, ApiError> {
    Ok(Json(s.broker.verify_audit(&op).await?.into()))
}

/// `GET /v1/audit/trace/{task}`
#[utoipa::path(
    get,
    path = "/v1/audit/trace/{task}",
    tag = "audit",
    summary = "The whole chain of one task",
    security(("operatorToken" = [])),
    params(("task" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "`task` (who, for whom, which agent and template) and its `records` in order", body = Object),
        (status = 401, description = "authentication required (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not do this", body = ErrorBody),
        (status = 404, description = "unknown task", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
        (status = 503, description = "a dependency is unavailable; refused", body = ErrorBody),
    )
)]
pub async fn trace_task(
    State(s): State<AppState>,
    Op(op): Op,
    Path(task): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(s.broker.trace(&op, &task_id(&task)?).await?))
}

/// `GET /v1/openapi.json`
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    summary = "This document",
    responses((status = 200, description = "the OpenAPI document", body = Object))
)]
pub async fn openapi() -> Response {
    (
        [("content-type", "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

/// `GET /healthz`: 200 when the store answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    summary = "Health: 200 when the store answers",
    responses(
        (status = 200, description = "the store answers", body = HealthBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    )
)]
pub async fn healthz(State(s): State<AppState>) -> Response {
    match s.broker.health().await {
        Ok(()) => Json(HealthBody {
            status: "ok".to_owned(),
            store: s.broker.store_backend().to_owned(),
        })
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "store unavailable",
        )
        .into_response(),
    }
}

/// `GET /metrics` (Prometheus text). Without credentials: the public view (no reasons, no
/// upstream names). With an operator token that may audit (admin, auditor): everything.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    summary = "Prometheus metrics; with an admin or auditor token, every label",
    security((), ("operatorToken" = [])),
    responses(
        (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "a token was given and it is not valid (no detail)", body = ErrorBody),
        (status = 403, description = "the role may not see the full metrics", body = ErrorBody),
        (status = 429, description = "too many failed authentications", body = ErrorBody),
    )
)]
pub async fn metrics(
    State(s): State<AppState>,
    peer: Peer,
    headers: axum::http::HeaderMap,
) -> Response {
    let full = match bearer(&headers) {
        None => false,
        Some(token) => match s.broker.authenticate_operator(&token, peer.source()).await {
            Ok(op) if op.role().allows(custos_core::operator::Permission::Audit) => true,
            Ok(_) => {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the full metrics need the admin or auditor role",
                )
                .into_response();
            }
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(full),
    )
        .into_response()
}

/// Anything else.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
