//! Bad input gets a clear answer and loses nothing: malformed YAML, garbage JSON-RPC,
//! oversized bodies, dead, hanging and crashing upstreams.

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, fixture_yaml};

fn session(s: &TestServer, yaml_timeout: &str, template: &str) -> (RawMcp, String, String) {
    let (key, public) = s.keygen("agent-a");
    s.apply(&fixture_yaml("agent-a", &public, yaml_timeout));
    let task = s.start_task("agent-a", template);
    let token = s.task_token(&task, &key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    (mcp, sid, task)
}

fn call(mcp: &RawMcp, sid: &str, tool: &str, args: Value) -> Value {
    let r = mcp.call(sid, "tools/call", json!({"name": tool, "arguments": args}));
    assert_eq!(r.status, 200, "{tool}: {}", r.body);
    r.body
}

#[test]
fn malformed_yaml_names_the_document_and_field_and_applies_nothing() {
    let s = TestServer::start();
    let (_, public) = s.keygen("agent-a");
    let good = fixture_yaml("agent-a", &public, "5s");
    let cases = [
        (
            good.replace(
                "archetype: automation",
                "archetype: automation\nnickname: x",
            ),
            "document 4 (Agent `agent-a`): unknown field `nickname`",
        ),
        (
            good.replace(
                "ttl: 10m\ntools: [fx__echo]",
                "ttl: soon\ntools: [fx__echo]",
            ),
            "document 3 (Template `fx-echo`): field `ttl`",
        ),
        (
            good.replace("templates: [fx-all, fx-echo]", "templates: [fx-all, nope]"),
            "template `nope` does not exist",
        ),
        (
            good.replace(
                "-----BEGIN PUBLIC KEY-----\n",
                "-----BEGIN PUBLIC KEY-----\n  AAAA\n",
            ),
            "field `public_key`",
        ),
        (
            format!("{good}---\nkind: Template\nname: [unclosed\n"),
            "invalid YAML",
        ),
        (
            "kind: Secret\nname: x\n".to_owned(),
            "unknown kind `Secret`",
        ),
    ];
    for (yaml, needle) in cases {
        let path = s.dir.path().join("bad.yaml");
        std::fs::write(&path, &yaml).expect("write");
        let out = s.cli(&["apply", "-f", path.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {yaml}");
        assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
        for kind in ["upstreams", "templates", "agents"] {
            assert_eq!(
                s.cli_json(&["get", kind, "--json"]),
                json!([]),
                "{needle}: nothing applied"
            );
        }
    }
    // An oversized apply is refused with a JSON error and 413.
    let big = "#".repeat(2 * 1024 * 1024);
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/v1/apply", s.addr))
        .bearer_auth(&s.admin_token)
        .body(big)
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().expect("json error");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Re-applying the same file changes nothing and bumps no version.
    let first = s.apply(&good);
    let again = s.apply(&good);
    assert!(
        first["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .all(|c| c["op"] == "created")
    );
    assert!(
        again["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .all(|c| c["op"] == "unchanged" && c["version"] == 1)
    );
    let changed = s.apply(&good.replace("timeout: 5s", "timeout: 6s"));
    let up = changed["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["kind"] == "Upstream")
        .cloned()
        .expect("upstream");
    assert_eq!(
        (up["op"].as_str(), up["version"].as_i64()),
        (Some("updated"), Some(2))
    );
}

#[test]
fn garbage_json_rpc_and_oversized_bodies_get_clear_errors() {
    let s = TestServer::start();
    let (mcp, sid, _) = session(&s, "5s", "fx-all");
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let r = mcp.post_raw(b"{not json", &h);
    assert_eq!(
        (r.status, r.body["error"]["code"].as_i64()),
        (400, Some(-32700)),
        "{}",
        r.body
    );
    for bad in [
        &b"[]"[..],
        b"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"x\"}",
        b"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"x\"}",
        b"42",
    ] {
        let r = mcp.post_raw(bad, &h);
        assert_eq!(
            (r.status, r.body["error"]["code"].as_i64()),
            (400, Some(-32600)),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let r = mcp.call(&sid, "subscriptions/listen", json!({}));
    assert_eq!(r.body["error"]["code"], -32601, "not offered: {}", r.body);
    let r = mcp.call(&sid, "resources/read", json!({}));
    assert_eq!(r.body["error"]["code"], -32602, "no uri: {}", r.body);
    let r = mcp.call(&sid, "tools/call", json!({"arguments": {}}));
    assert_eq!(r.body["error"]["code"], -32602);
    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__echo", "arguments": [1]}),
    );
    assert_eq!(r.body["error"]["code"], -32602);
    let r = mcp.call(&sid, "tools/call", json!({"name": "no-separator"}));
    assert_eq!(r.body["error"]["data"]["reason"], "invalid_tool_name");
    // Missing and unknown sessions.
    let r = mcp.post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}), &[]);
    assert_eq!(r.status, 400);
    let r = mcp.call("mcps_unknown", "tools/list", json!({}));
    assert_eq!(r.status, 404);
    // Oversized MCP body.
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"fx__echo\",\"arguments\":{{\"x\":\"{}\"}}}}}}",
        "a".repeat(5 * 1024 * 1024)
    );
    assert_eq!(mcp.post_raw(big.as_bytes(), &h).status, 413);
    // Wrong content type, GET, and a foreign Origin.
    let r = reqwest::blocking::Client::new()
        .post(s.mcp_url())
        .bearer_auth(mcp.token.as_deref().expect("token"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .expect("post");
    assert_eq!(r.status().as_u16(), 415);
    let r = reqwest::blocking::Client::new()
        .get(s.mcp_url())
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 401, "a stream needs a task token too");
    let r = reqwest::blocking::Client::new()
        .get(s.mcp_url())
        .bearer_auth(mcp.token.as_deref().unwrap_or_default())
        .header("accept", "text/event-stream")
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 405, "no stream outside a session");
    let r = mcp.post(
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
        &[h[0], h[1], ("origin", "https://evil.example")],
    );
    assert_eq!(r.status, 403);
    // The server is still fine and the same session still works.
    assert_eq!(
        call(&mcp, &sid, "fx__echo", json!({"a": 1}))["result"]["content"][0]["text"],
        "{\"a\": 1}"
    );
    assert!(s.cli(&["audit", "verify"]).status.success());
}

#[test]
fn dead_hanging_and_crashing_upstreams_answer_with_errors_and_are_restarted() {
    let s = TestServer::start();
    let (mcp, sid, task) = session(&s, "2s", "fx-all");
    let pid = |v: &Value| -> i64 {
        let text = v["result"]["content"][0]["text"].as_str().expect("text");
        serde_json::from_str::<Value>(text).expect("json")["pid"]
            .as_i64()
            .expect("pid")
    };
    let who = call(&mcp, &sid, "fx__whoami", json!({}));
    let first = pid(&who);
    // The child's environment holds nothing of Custos's own: the harness starts the server
    // with RUST_LOG set, and that must not reach the upstream (python3 may be a pyenv shim,
    // which adds PYENV_* variables of its own).
    let env =
        serde_json::from_str::<Value>(who["result"]["content"][0]["text"].as_str().expect("text"))
            .expect("json")["env"]
            .clone();
    let keys: Vec<&str> = env
        .as_array()
        .expect("env")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(keys.contains(&"PATH"), "{keys:?}");
    for k in &keys {
        assert!(
            !k.starts_with("CUSTOS") && !k.starts_with("RUST") && !k.starts_with("CARGO"),
            "leaked env var {k}"
        );
    }

    let started = std::time::Instant::now();
    let hung = call(&mcp, &sid, "fx__hang", json!({}));
    assert_eq!(hung["error"]["code"], -32011, "{hung}");
    assert!(
        hung["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("did not answer within 2s"),
        "{hung}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let second = pid(&call(&mcp, &sid, "fx__whoami", json!({})));
    assert_ne!(first, second, "a hung upstream is restarted");

    let crashed = call(&mcp, &sid, "fx__crash", json!({}));
    assert_eq!(crashed["error"]["code"], -32011, "{crashed}");
    let third = pid(&call(&mcp, &sid, "fx__whoami", json!({})));
    assert_ne!(second, third, "a crashed upstream is restarted");

    let trace = s.cli_json(&["audit", "trace", &task, "--json"]);
    let outcomes: Vec<(String, String)> = trace["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == "tool_result")
        .map(|r| {
            (
                r["tool"].as_str().unwrap_or("").to_owned(),
                r["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("fx__hang".into(), "timeout".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("fx__crash".into(), "upstream_failed".into())),
        "{outcomes:?}"
    );

    // An upstream whose program does not exist.
    s.apply("kind: Upstream\nname: ghost\ncommand: [/nonexistent/mcp-server]\ntiers: {x: 1}\n---\nkind: Template\nname: ghostly\nttl: 5m\ntools: [ghost__x]\n");
    let yaml = s.cli_json(&["get", "agent", "agent-a", "-o", "json"]);
    let mut agent = yaml["resource"].clone();
    agent["templates"] = json!(["fx-all", "fx-echo", "ghostly"]);
    let text = serde_json::to_string(&agent).expect("json");
    s.apply(&text);
    let gtask = s.start_task("agent-a", "ghostly");
    let gtoken = s.task_token(&gtask, &s.dir.path().join("agent-a.key"));
    let g = RawMcp::new(&s.mcp_url(), Some(&gtoken));
    let gsid = g.initialize();
    let listed = g.call(&gsid, "tools/list", json!({}));
    assert_eq!(
        listed.body["result"]["tools"],
        json!([]),
        "a dead upstream lists nothing, and the list still answers"
    );
    let dead = call(&g, &gsid, "ghost__x", json!({}));
    assert_eq!(dead["error"]["code"], -32011);
    assert!(
        dead["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("cannot start"),
        "{dead}"
    );
    assert!(s.cli(&["audit", "verify"]).status.success());
}

#[test]
fn an_upstream_error_reaches_the_agent_with_its_data_when_small() {
    let s = TestServer::start();
    let (mcp, sid, task) = session(&s, "5s", "fx-all");
    let r = call(
        &mcp,
        &sid,
        "fx__fail",
        json!({"data": {"field": "path", "hint": "absolute"}}),
    );
    assert_eq!(r["error"]["code"], -32000, "{r}");
    assert_eq!(r["error"]["message"], "it failed");
    assert_eq!(
        r["error"]["data"],
        json!({"field": "path", "hint": "absolute"})
    );
    // Data past 4 KiB is dropped, the error itself kept.
    let r = call(&mcp, &sid, "fx__fail", json!({"data": "x".repeat(5000)}));
    assert_eq!(r["error"]["code"], -32000, "{r}");
    assert!(r["error"].get("data").is_none(), "{r}");
    // The audit trail records a tool error, never the data.
    let trace = s.cli_json(&["audit", "trace", &task, "--json"]).to_string();
    assert!(trace.contains("tool_error"), "{trace}");
    assert!(!trace.contains("absolute"), "{trace}");
}
