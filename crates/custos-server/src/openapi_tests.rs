//! The OpenAPI document: its snapshot, list endpoints described as arrays, and every route the
//! router serves (path and method) described.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::openapi::document;
use crate::serve::{ServeConfig, build};

fn document_value() -> Value {
    serde_json::to_value(document()).expect("the document serialises")
}

#[test]
fn the_document_matches_its_snapshot() {
    insta::with_settings!({
        snapshot_path => "../tests/snapshots",
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_json_snapshot!("openapi", document_value());
    });
}

#[test]
fn the_served_document_is_the_generated_one() {
    let served: Value =
        serde_json::from_str(crate::openapi::document_json()).expect("served document is JSON");
    assert_eq!(served, document_value());
    assert_eq!(served["openapi"], "3.1.0");
}

#[test]
fn list_endpoints_are_described_as_arrays() {
    let doc = document_value();
    for path in ["/v1/resources/{kind}", "/v1/operators", "/v1/tasks"] {
        let schema =
            &doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        assert_eq!(schema["type"], "array", "GET {path}: {schema}");
        assert!(
            schema["items"]["$ref"].is_string(),
            "GET {path}: items name their schema: {schema}"
        );
    }
}

/// The paths the router matches, read from its `Debug` output (axum offers no other listing):
/// those of its `path_router`, not of the `fallback_router` (`/` and a catch-all).
fn served_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let start = debug.find("path_router:").expect("a path router");
    let end = debug.find("fallback_router:").expect("a fallback router");
    assert!(start < end, "unexpected `Debug` of axum's Router: {debug}");
    let mut paths = BTreeSet::new();
    let mut rest = &debug[start..end];
    while let Some(at) = rest.find("RouteId(") {
        rest = &rest[at..];
        // `RouteId(3): "/v1/tasks"`
        if let Some(open) = rest.find(": \"") {
            let after = &rest[open + 3..];
            if let Some(close) = after.find('"') {
                paths.insert(after[..close].to_owned());
            }
        }
        rest = &rest["RouteId(".len()..];
    }
    // The web pages under /ui are HTML for people, not part of the API document.
    paths.retain(|p| p.starts_with('/') && !p.starts_with("/ui"));
    // A catch-all segment is `{*name}` to the router, `{name}` in the document.
    paths.into_iter().map(|p| p.replace("{*", "{")).collect()
}

fn concrete(path: &str) -> String {
    path.replace("{kind}", "agent")
        .replace("{name}", "x")
        .replace("{id}", "task_x")
        .replace("{task}", "task_x")
}

#[tokio::test]
async fn every_route_served_is_described() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServeConfig::dev(dir.path().to_owned());
    let built = build(&config, "127.0.0.1:8470".parse().expect("addr"))
        .await
        .expect("server builds");
    let broker = built.state.broker.clone();
    let router = crate::router(built.state);

    let doc = document_value();
    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(p, ops)| {
            let methods = ops
                .as_object()
                .expect("operations")
                .keys()
                .map(|m| m.to_uppercase())
                .collect();
            (p.clone(), methods)
        })
        .collect();

    let served = served_paths(&router);
    assert!(served.len() >= 20, "paths read from the router: {served:?}");
    let documented_paths: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(served, documented_paths, "served paths vs documented paths");

    for path in &served {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let req = Request::builder()
                .method(method.clone())
                .uri(concrete(path))
                .body(Body::empty())
                .expect("request");
            let resp = router.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            assert_ne!(
                body["error"]["message"], "no such endpoint",
                "{method} {path}: the router has the path, so the fallback never answers"
            );
            let described = documented[path].contains(method.as_str());
            if status != StatusCode::METHOD_NOT_ALLOWED {
                assert!(
                    described,
                    "{method} {path} is served ({status}) but not described"
                );
            } else if described {
                // Only a handler that itself answers 405 may be described and answer it.
                let responses = &doc["paths"][path][method.as_str().to_lowercase()]["responses"];
                assert!(
                    responses.get("405").is_some(),
                    "{method} {path} is described but the router refuses the method"
                );
            }
        }
    }
    broker.shutdown().await;
    broker.close().await;
}
