//! The HTTP edge: the JSON API under `/v1/`, OAuth endpoints and metadata, the MCP endpoint,
//! health and metrics. Handlers are thin: extract, call one broker method, map the result.

mod api;
pub mod body;
mod error;
pub mod listener;
mod mcp;
mod metrics;
mod oauth;
pub mod openapi;
mod response;
pub mod serve;
mod ui;
mod vault;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use custos_broker::Broker;
use custos_gateway::McpGateway;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use metrics::{RefusedReason, ServerMetrics};
pub use serve::{ServeConfig, run};

/// The largest body the JSON API accepts.
pub const API_BODY_LIMIT: usize = 1024 * 1024;
/// The largest body the MCP endpoint accepts.
pub const MCP_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The broker.
    pub broker: Broker,
    /// The MCP gateway.
    pub gateway: Arc<McpGateway>,
    /// Metrics.
    pub metrics: ServerMetrics,
    /// How long a client has to send a request's body once its headers are in.
    pub body_timeout: Duration,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The client's address, when the listener recorded it (`ConnectInfo`); absent when the
/// router is driven without a socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl Peer {
    /// As the broker names a source.
    pub fn source(self) -> custos_broker::Source {
        custos_broker::Source(self.0)
    }
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    state
        .metrics
        .request(&method, &route, resp.status().as_u16());
    resp
}

/// Every route with its OpenAPI description: the router and the document are built from this
/// one list, so the document names every route served and nothing else.
fn routes(body_timeout: Duration) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(api::apply))
        .routes(routes!(api::list_resources))
        .routes(routes!(api::get_resource, api::delete_resource))
        .routes(routes!(api::create_operator, api::list_operators))
        .routes(routes!(api::suspend_agent))
        .routes(routes!(api::resume_agent))
        .routes(routes!(api::start_task, api::list_tasks))
        .routes(routes!(api::get_task))
        .routes(routes!(api::end_task))
        .routes(routes!(api::list_leases))
        .routes(routes!(api::revoke_lease))
        .routes(routes!(api::put_secret))
        .routes(routes!(api::list_secrets))
        .routes(routes!(api::list_approvals))
        .routes(routes!(api::get_approval))
        .routes(routes!(api::approve))
        .routes(routes!(api::deny))
        .routes(routes!(api::explain))
        .routes(routes!(api::approve_upstream))
        .routes(routes!(vault::creds))
        .routes(routes!(vault::lookup))
        .routes(routes!(vault::revoke))
        .routes(routes!(vault::renew))
        .routes(routes!(vault::revoke_prefix))
        .routes(routes!(api::verify_audit))
        .routes(routes!(api::trace_task))
        .routes(routes!(api::openapi))
        .routes(routes!(api::healthz))
        .routes(routes!(api::metrics))
        .routes(routes!(oauth::jwks))
        .routes(routes!(oauth::authorization_server))
        .routes(routes!(oauth::protected_resource))
        .routes(routes!(oauth::protected_resource_mcp))
        .routes(routes!(oauth::token))
        .layer(middleware::from_fn_with_state(
            body::BodyLimits {
                max_bytes: API_BODY_LIMIT,
                timeout: body_timeout,
                shape: body::ErrorShape::Api,
            },
            body::read_within,
        ))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ));
    let mcp = OpenApiRouter::new()
        .routes(routes!(mcp::post, mcp::get, mcp::delete))
        .layer(middleware::from_fn_with_state(
            body::BodyLimits {
                max_bytes: MCP_BODY_LIMIT,
                timeout: body_timeout,
                shape: body::ErrorShape::JsonRpc,
            },
            body::read_within,
        ))
        .layer(DefaultBodyLimit::max(MCP_BODY_LIMIT));
    api.merge(mcp)
}

/// The whole HTTP surface. Public so tests can drive it without a socket.
pub fn router(state: AppState) -> Router {
    let (routes, _document) = routes(state.body_timeout).split_for_parts();
    let ui = ui::router(state.clone());
    routes
        .with_state(state.clone())
        .merge(ui)
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(state, count_requests))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

#[cfg(test)]
mod openapi_tests;
