//! The HTTP surface: every path the OpenAPI document names is served, metadata documents
//! agree with each other, and health and metrics answer.

use serde_json::Value;

use super::support::TestServer;

#[test]
fn every_documented_operation_is_served_and_metadata_is_consistent() {
    let s = TestServer::start();
    let http = reqwest::blocking::Client::new();
    let doc: Value = http
        .get(format!("{}/v1/openapi.json", s.addr))
        .send()
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20);
    for (path, ops) in paths {
        let concrete = path
            .replace("{kind}", "agent")
            .replace("{name}", "x")
            .replace("{id}", "task_x")
            .replace("{task}", "task_x");
        for method in ops.as_object().expect("ops").keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let resp = http
                .request(m, format!("{}{concrete}", s.addr))
                .send()
                .expect("send");
            let status = resp.status().as_u16();
            let body: Value = resp.json().unwrap_or(Value::Null);
            // Served: anything but the fallback's "no such endpoint" (405 from the router means
            // the path exists but the method does not, which the document must not claim).
            assert!(
                status != 405 || (path == "/mcp" && method == "get"),
                "{method} {path} -> 405"
            );
            assert_ne!(
                body["error"]["message"], "no such endpoint",
                "{method} {path} not served"
            );
        }
    }
    let as_meta: Value = http
        .get(format!("{}/.well-known/oauth-authorization-server", s.addr))
        .send()
        .expect("get")
        .json()
        .expect("json");
    let pr_meta: Value = http
        .get(format!("{}/.well-known/oauth-protected-resource", s.addr))
        .send()
        .expect("get")
        .json()
        .expect("json");
    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", s.addr))
        .send()
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(as_meta["issuer"], s.addr.as_str());
    assert_eq!(
        as_meta["token_endpoint"],
        format!("{}/oauth/token", s.addr).as_str()
    );
    assert_eq!(pr_meta["resource"], s.mcp_url().as_str());
    assert_eq!(pr_meta["authorization_servers"][0], s.addr.as_str());
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    let health: Value = http
        .get(format!("{}/healthz", s.addr))
        .send()
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(health["status"], "ok");
    let metrics = http
        .get(format!("{}/metrics", s.addr))
        .send()
        .expect("get")
        .text()
        .expect("text");
    assert!(metrics.contains("custos_http_requests_total{"), "{metrics}");
    let r = http
        .get(format!("{}/v1/nothing-here", s.addr))
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    let body: Value = r.json().expect("json");
    assert_eq!(body["error"]["code"], "not_found");
}
