//! Both MCP protocol eras on the agent side, on the wire: the 2025-11-25 session era
//! (initialize, `Mcp-Session-Id`) and the 2026-07-28 stateless era (`server/discover`,
//! `_meta` on every request, `Mcp-Method`/`Mcp-Name` headers).

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, fixture_yaml};

fn client() -> (TestServer, RawMcp) {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-a");
    s.apply(&fixture_yaml("agent-a", &public, "5s"));
    let task = s.start_task("agent-a", "fx-all");
    let token = s.task_token(&task, &key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
    (s, mcp)
}

fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}})
}

fn modern(
    mcp: &RawMcp,
    method: &str,
    mut params: Value,
    name: Option<&str>,
) -> super::support::RawReply {
    if params.get("_meta").is_none() {
        params["_meta"] = meta();
    }
    let mut headers = vec![
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    if let Some(n) = name {
        headers.push(("mcp-name", n));
    }
    mcp.post(
        &json!({"jsonrpc":"2.0","id":"r1","method":method,"params":params}),
        &headers,
    )
}

#[test]
fn stateless_era_discover_list_and_call() {
    let (_s, mcp) = client();
    let r = modern(&mcp, "server/discover", json!({}), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.body["result"];
    assert_eq!(d["supportedVersions"], json!(["2026-07-28"]));
    assert_eq!(
        (
            d["resultType"].as_str(),
            d["cacheScope"].as_str(),
            d["ttlMs"].as_i64()
        ),
        (Some("complete"), Some("private"), Some(0))
    );
    assert_eq!(
        d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "custos"
    );
    assert!(
        !r.headers.contains_key("mcp-session-id"),
        "no sessions in the stateless era"
    );

    let r = modern(&mcp, "tools/list", json!({}), None);
    let mut names: Vec<&str> = r.body["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        vec![
            "fx__ask",
            "fx__bump",
            "fx__crash",
            "fx__echo",
            "fx__fail",
            "fx__grow",
            "fx__hang",
            "fx__ns.tool/v2",
            "fx__progress",
            "fx__publish",
            "fx__sleep",
            "fx__touch",
            "fx__whoami"
        ],
        "tier 4 wipe and the unexposable `bad name` are absent; `.` and `/` pass as the \
         specification allows"
    );
    assert_eq!(r.body["result"]["resultType"], "complete");

    let r = modern(
        &mcp,
        "tools/call",
        json!({"name": "fx__echo", "arguments": {"x": 1}}),
        Some("fx__echo"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["result"]["content"][0]["text"], "{\"x\": 1}");
    // A tool named with `.` and `/` is called under its own name.
    let r = modern(
        &mcp,
        "tools/call",
        json!({"name": "fx__ns.tool/v2", "arguments": {"y": 2}}),
        Some("fx__ns.tool/v2"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["result"]["content"][0]["text"], "{\"y\": 2}");
    assert_eq!(r.body["result"]["resultType"], "complete");
    assert_eq!(r.body["id"], "r1");

    let r = modern(
        &mcp,
        "tools/call",
        json!({"name": "fx__wipe", "arguments": {}}),
        Some("fx__wipe"),
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_i64()),
        (200, Some(-32010))
    );
    assert_eq!(r.body["error"]["data"]["reason"], "tier4_denied");
    let r = modern(
        &mcp,
        "tools/call",
        json!({"name": "fx__publish", "arguments": {}}),
        Some("fx__publish"),
    );
    assert_eq!(r.body["error"]["data"]["reason"], "approval_pending");
    assert!(
        r.body["error"]["data"]["approval_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("apr_")),
        "a held call names its approval request: {}",
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("approval")
    );
}

#[test]
fn stateless_era_validation() {
    let (_s, mcp) = client();
    let cases: Vec<(super::support::RawReply, u16, i64)> = vec![
        (
            mcp.post(
                &json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta": meta()}}),
                &[
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/call"),
                ],
            ),
            400,
            -32020,
        ),
        (
            mcp.post(
                &json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}),
                &[
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/list"),
                ],
            ),
            400,
            -32602,
        ),
        (
            modern(
                &mcp,
                "tools/call",
                json!({"name": "fx__echo"}),
                Some("fx__whoami"),
            ),
            400,
            -32020,
        ),
        (
            modern(&mcp, "tools/call", json!({"name": "fx__echo"}), None),
            400,
            -32020,
        ),
        (
            mcp.post(
                &json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta": meta()}}),
                &[
                    ("mcp-protocol-version", "2099-01-01"),
                    ("mcp-method", "tools/list"),
                ],
            ),
            400,
            -32022,
        ),
        (modern(&mcp, "initialize", json!({}), None), 404, -32601),
        (modern(&mcp, "ping", json!({}), None), 404, -32601),
    ];
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!(
            (r.status, r.body["error"]["code"].as_i64()),
            (*status, Some(*code)),
            "case {i}: {}",
            r.body
        );
    }
    assert_eq!(
        cases[4].0.body["error"]["data"]["supported"],
        json!(["2026-07-28"])
    );
    // A base64-encoded Mcp-Name matches its decoded value.
    let r = modern(
        &mcp,
        "tools/call",
        json!({"name": "fx__echo", "arguments": {}}),
        Some("=?base64?ZnhfX2VjaG8=?="),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Notifications are accepted without an answer.
    let r = mcp.post(
        &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"_meta": meta()}}),
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "notifications/cancelled"),
        ],
    );
    assert_eq!(r.status, 202);
}

#[test]
fn session_era_negotiation_and_termination() {
    let (_s, mcp) = client();
    for (asked, answered) in [
        ("2025-03-26", "2025-03-26"),
        ("2025-11-25", "2025-11-25"),
        ("1999-01-01", "2025-11-25"),
    ] {
        let r = mcp.post(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}), &[]);
        assert_eq!(r.body["result"]["protocolVersion"], answered);
        assert_eq!(
            r.body["result"]["capabilities"],
            json!({"tools": {"listChanged": true}, "logging": {}, "resources": {"subscribe": true}, "prompts": {}, "completions": {}})
        );
    }
    let sid = mcp.initialize();
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    assert_eq!(
        mcp.post(
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
            &h
        )
        .status,
        202
    );
    assert_eq!(mcp.call(&sid, "ping", json!({})).body["result"], json!({}));
    let del = reqwest::blocking::Client::new()
        .delete(&mcp.url)
        .bearer_auth(mcp.token.as_deref().expect("token"))
        .header("mcp-session-id", &sid)
        .send()
        .expect("delete");
    assert_eq!(del.status().as_u16(), 200);
    assert_eq!(
        mcp.call(&sid, "tools/list", json!({})).status,
        404,
        "a deleted session is gone"
    );
}

#[test]
fn session_era_messages_need_their_session_and_its_version() {
    let (_s, mcp) = client();
    let sid = mcp.initialize();
    let delete = |sid: Option<&str>| {
        let mut req = reqwest::blocking::Client::new()
            .delete(&mcp.url)
            .bearer_auth(mcp.token.as_deref().expect("token"));
        if let Some(sid) = sid {
            req = req.header("mcp-session-id", sid);
        }
        req.send().expect("delete").status().as_u16()
    };
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    // A notification (or response) names its session like a request: missing 400, unknown 404.
    assert_eq!(mcp.post(&note, &[]).status, 400, "no session id");
    assert_eq!(
        mcp.post(&note, &[("mcp-session-id", "mcps_nosuchsession")])
            .status,
        404,
        "unknown session"
    );
    let answer = json!({"jsonrpc":"2.0","id":7,"result":{}});
    assert_eq!(
        mcp.post(&answer, &[("mcp-session-id", "mcps_nosuchsession")])
            .status,
        404,
        "a response to an unknown session"
    );
    assert_eq!(mcp.post(&note, &[("mcp-session-id", &sid)]).status, 202);
    // The version header, when sent, is the one the session negotiated.
    let r = mcp.post(
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
        &[
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-03-26"),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("MCP-Protocol-Version")),
        "{}",
        r.body
    );
    // DELETE: missing 400, unknown 404, the session itself 200 and then it is gone.
    assert_eq!(delete(None), 400);
    assert_eq!(delete(Some("mcps_nosuchsession")), 404);
    assert_eq!(delete(Some(&sid)), 200);
    assert_eq!(delete(Some(&sid)), 404);
}

#[test]
fn a_request_naming_another_host_is_refused() {
    let (s, mcp) = client();
    let port = s.addr.rsplit(':').next().expect("port").to_owned();
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1 names its own host.
    for host in ["evil.example".to_owned(), format!("evil.example:{port}")] {
        let r = mcp.post(
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}),
            &[("host", host.as_str())],
        );
        assert_eq!(r.status, 403, "{host}: {}", r.body);
        assert_eq!(r.body["error"]["message"], "host not allowed");
    }
    // Loopback names and the server's own address are fine.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = mcp.post(
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}),
            &[("host", host.as_str())],
        );
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
}

#[test]
fn tools_list_pages_take_only_cursors_the_gateway_gave() {
    let (_s, mcp) = client();
    let sid = mcp.initialize();
    let all = mcp.call(&sid, "tools/list", json!({}));
    assert_eq!(all.status, 200, "{}", all.body);
    // A short list is one page: no next cursor.
    assert!(
        all.body["result"].get("nextCursor").is_none(),
        "{}",
        all.body
    );
    for cursor in [json!("t999"), json!("garbage"), json!(7)] {
        let r = mcp.call(&sid, "tools/list", json!({ "cursor": cursor }));
        assert_eq!(r.body["error"]["code"], -32602, "{cursor}: {}", r.body);
    }
}

#[test]
fn batches_work_only_in_a_session_that_negotiated_2025_03_26() {
    let (_s, mcp) = client();
    let open = |version: &str| {
        let r = mcp.post(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}), &[]);
        assert_eq!(r.body["result"]["protocolVersion"], version);
        r.headers.get("mcp-session-id").expect("session").clone()
    };
    let old = open("2025-03-26");
    let batch = json!([
        {"jsonrpc":"2.0","id":"a","method":"ping"},
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"fx__echo","arguments":{"n":1}}},
        {"jsonrpc":"2.0","id":"c","method":"initialize","params":{}},
        {"not":"json-rpc"},
        {"jsonrpc":"2.0","id":"d","method":"tools/call","params":{"name":"fx__echo","arguments":{"n":2},"_meta":{"progressToken":"p"}}}
    ]);
    let r = mcp.post(&batch, &[("mcp-session-id", &old)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let answers = r.body.as_array().expect("an array of answers");
    assert_eq!(
        answers.len(),
        5,
        "one per request and one for the bad message: {}",
        r.body
    );
    // A call asking for progress is answered in the batch too, not streamed.
    assert_eq!(answers[4]["id"], "d");
    assert!(answers[4]["result"]["content"].is_array(), "{}", answers[4]);
    assert_eq!(answers[0], json!({"jsonrpc":"2.0","id":"a","result":{}}));
    assert_eq!(answers[1]["id"], "b");
    assert!(answers[1]["result"]["content"].is_array(), "{}", answers[1]);
    assert_eq!(answers[2]["id"], "c");
    assert_eq!(answers[2]["error"]["code"], -32600);
    assert_eq!(answers[3]["id"], Value::Null);
    // Notifications only: accepted, nothing to answer.
    let r = mcp.post(
        &json!([{"jsonrpc":"2.0","method":"notifications/initialized"}]),
        &[("mcp-session-id", &old)],
    );
    assert_eq!(r.status, 202);
    // Empty, or in a session of a version without batches: refused.
    assert_eq!(
        mcp.post(&json!([]), &[("mcp-session-id", &old)]).status,
        400
    );
    let new = open("2025-11-25");
    let r = mcp.post(
        &json!([{"jsonrpc":"2.0","id":1,"method":"ping"}]),
        &[("mcp-session-id", &new)],
    );
    assert_eq!(r.status, 400, "{}", r.body);
}
