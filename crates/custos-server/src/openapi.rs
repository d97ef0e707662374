//! The OpenAPI document of the HTTP surface, generated from the handlers' `#[utoipa::path]`
//! descriptions and the types they take and answer with; served at `/v1/openapi.json`.
//! [`crate::routes`] builds the router and the document's paths from one list.

use std::sync::LazyLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's fixed parts: info, tags and security schemes. Paths and schemas come from
/// the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custos API",
        description = "Identity broker and MCP gateway for AI agents. Errors are \
            {\"error\":{\"code\",\"message\"}}; authentication failures say nothing about why."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "registry", description = "Upstreams, templates and agents"),
        (name = "operators", description = "The humans and systems that run Custos"),
        (name = "agents", description = "Suspending and resuming agents"),
        (name = "tasks", description = "Tasks: one run of work by one agent for one initiator"),
        (name = "credentials", description = "Just-in-time credential leases; the Vault-compatible paths \
            answer errors as Vault does, `{\"errors\": [..]}`"),
        (name = "policy", description = "Explaining decisions"),
        (name = "approvals", description = "Held Tier 3 calls, each bound to one exact call"),
        (name = "audit", description = "The hash-chained audit trail"),
        (name = "oauth", description = "Task tokens (RFC 8693) and metadata"),
        (name = "mcp", description = "The MCP endpoint for agents"),
        (name = "meta", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut operator = Http::new(HttpAuthScheme::Bearer);
        operator.description = Some("custos_op_… operator token".to_owned());
        components.add_security_scheme("operatorToken", SecurityScheme::Http(operator));
        let mut task = Http::new(HttpAuthScheme::Bearer);
        task.bearer_format = Some("JWT".to_owned());
        task.description = Some("EdDSA task token from /oauth/token".to_owned());
        components.add_security_scheme("taskToken", SecurityScheme::Http(task));
    }
}

/// The whole document: the fixed parts and every route's description.
pub fn document() -> utoipa::openapi::OpenApi {
    // The body timeout shapes no part of the document.
    let mut doc = crate::routes(std::time::Duration::from_secs(30)).into_openapi();
    // A catch-all segment is `{*name}` to the router, `{name}` in OpenAPI.
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    doc
}

/// The document as JSON, generated once.
pub fn document_json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        document().to_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI document does not serialise");
            "{}".to_owned()
        })
    });
    &JSON
}
