//! The JSON API under `/v1/`, plus health and metrics.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use custos_broker::{Operator, StartTask};
use custos_core::{Kind, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, body_error};
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
fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned())
}

fn kind(s: &str) -> Result<Kind, ApiError> {
    Kind::parse(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown kind `{s}`: use upstream, template or agent"),
        )
    })
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| body_error(e.status(), e.body_text()))
}

/// `POST /v1/apply` with a (multi-document) YAML body.
pub async fn apply(
    State(s): State<AppState>,
    Op(op): Op,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|e| body_error(e.status(), e.body_text()))?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body is not UTF-8 text",
        )
    })?;
    let outcome = s.broker.apply(&op, text).await?;
    Ok(Json(json!(outcome)))
}

fn resource_json(row: &custos_store::ResourceRow) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert("kind".into(), row.kind.clone().into());
    if let Value::Object(spec) = &row.spec {
        doc.extend(spec.clone());
    }
    json!({
        "resource": doc,
        "version": row.version,
        "updated_at": custos_core::clock::rfc3339(row.updated_at),
        "updated_by": row.updated_by,
    })
}

/// `GET /v1/resources/{kind}`
pub async fn list_resources(
    State(s): State<AppState>,
    Op(op): Op,
    Path(k): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rows = s.broker.get(&op, kind(&k)?, None).await?;
    Ok(Json(Value::Array(rows.iter().map(resource_json).collect())))
}

/// `GET /v1/resources/{kind}/{name}`
pub async fn get_resource(
    State(s): State<AppState>,
    Op(op): Op,
    Path((k, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let rows = s.broker.get(&op, kind(&k)?, Some(&name)).await?;
    let row = rows
        .first()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found"))?;
    Ok(Json(resource_json(row)))
}

/// `DELETE /v1/resources/{kind}/{name}`
pub async fn delete_resource(
    State(s): State<AppState>,
    Op(op): Op,
    Path((k, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.broker.delete(&op, kind(&k)?, &name).await?)))
}

/// The body of `POST /v1/operators`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOperator {
    name: String,
    role: String,
}

/// `POST /v1/operators`: the token is in the answer, once.
pub async fn create_operator(
    State(s): State<AppState>,
    Op(op): Op,
    body: Result<Json<CreateOperator>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(json!(created))))
}

/// `GET /v1/operators`
pub async fn list_operators(
    State(s): State<AppState>,
    Op(op): Op,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.broker.list_operators(&op).await?)))
}

/// `POST /v1/agents/{name}/suspend`
pub async fn suspend_agent(
    State(s): State<AppState>,
    Op(op): Op,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.broker.set_agent_suspended(&op, &name, true).await?;
    Ok(Json(json!({ "name": name, "suspended": true })))
}

/// `POST /v1/agents/{name}/resume`
pub async fn resume_agent(
    State(s): State<AppState>,
    Op(op): Op,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.broker.set_agent_suspended(&op, &name, false).await?;
    Ok(Json(json!({ "name": name, "suspended": false })))
}

fn task_json(t: &custos_store::TaskRow) -> Value {
    let mut v = json!(t);
    v["task_id"] = t.id.clone().into();
    v["expires"] = custos_core::clock::rfc3339(t.expires_at).into();
    v
}

/// `POST /v1/tasks`
pub async fn start_task(
    State(s): State<AppState>,
    Op(op): Op,
    body: Result<Json<StartTask>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let task = s.broker.start_task(&op, json_body(body)?).await?;
    Ok((StatusCode::CREATED, Json(task_json(&task))))
}

/// Filters for `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
pub struct TaskFilter {
    agent: Option<String>,
}

/// `GET /v1/tasks`
pub async fn list_tasks(
    State(s): State<AppState>,
    Op(op): Op,
    Query(f): Query<TaskFilter>,
) -> Result<Json<Value>, ApiError> {
    let tasks = s.broker.list_tasks(&op, f.agent.as_deref()).await?;
    Ok(Json(Value::Array(tasks.iter().map(task_json).collect())))
}

/// `GET /v1/tasks/{id}`
pub async fn get_task(
    State(s): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(task_json(&s.broker.get_task(&op, &id).await?)))
}

/// `POST /v1/tasks/{id}/end`
pub async fn end_task(
    State(s): State<AppState>,
    Op(op): Op,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(task_json(&s.broker.end_task(&op, &id).await?)))
}

/// `GET /v1/audit/verify`: re-reads every stored record.
pub async fn verify_audit(State(s): State<AppState>, Op(op): Op) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.broker.verify_audit(&op).await?)))
}

/// `GET /v1/audit/trace/{task}`
pub async fn trace_task(
    State(s): State<AppState>,
    Op(op): Op,
    Path(task): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(s.broker.trace(&op, &task).await?))
}

/// `GET /v1/openapi.json`
pub async fn openapi() -> Response {
    (
        [("content-type", "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// `GET /healthz`: 200 when the store answers.
pub async fn healthz(State(s): State<AppState>) -> Response {
    match s.broker.store().ping().await {
        Ok(()) => {
            Json(json!({ "status": "ok", "store": s.broker.store().backend() })).into_response()
        }
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
pub async fn metrics(
    State(s): State<AppState>,
    peer: Peer,
    headers: axum::http::HeaderMap,
) -> Response {
    let full = match bearer(&headers) {
        None => false,
        Some(token) => match s.broker.authenticate_operator(&token, peer.source()).await {
            Ok(op) if op.role.allows(custos_core::operator::Permission::Audit) => true,
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
