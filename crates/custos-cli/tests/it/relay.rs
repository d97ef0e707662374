//! What an upstream tells the agent about a call before its answer — progress and log
//! messages — relayed through the gateway on the call's event stream, in both eras, from stdio
//! and HTTP upstreams, with the agent's own progress token, and never across tasks; what it
//! asks the agent's client (sampling, elicitation), and the answers; and its announcement that
//! its tool list changed.

use std::io::BufRead as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::python_client::HttpUpstream;
use super::support::{TestServer, deps, fixture, fixture_yaml};

/// A `tools/call` POSTed as a client that accepts an event stream: the content type and every
/// JSON-RPC message of the answer (one for a JSON body, each `data:` of a stream).
fn post_call(
    url: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (String, Vec<Value>) {
    post_accepting(
        url,
        token,
        "application/json, text/event-stream",
        headers,
        body,
    )
}

fn post_accepting(
    url: &str,
    token: &str,
    accept: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (String, Vec<Value>) {
    let mut req = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", accept)
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().expect("POST tools/call");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    if ct.starts_with("text/event-stream") {
        let messages = std::io::BufReader::new(resp)
            .lines()
            .map(|l| l.expect("stream line"))
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
            .map(|d| serde_json::from_str(&d).expect("JSON data"))
            .collect();
        (ct, messages)
    } else {
        (ct, vec![resp.json().expect("JSON body")])
    }
}

fn of_method<'a>(messages: &'a [Value], method: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["method"] == method).collect()
}

/// A gateway fronting the fixture upstream `fx`, task-scoped when `task_scoped`; a session-era
/// session and a task token.
fn gateway(task_scoped: bool) -> (TestServer, String, String) {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-r");
    let mut yaml = fixture_yaml("agent-r", &public, "10s");
    if task_scoped {
        yaml = yaml.replacen("name: fx\n", "name: fx\nscope: task\n", 1);
    }
    s.apply(&yaml);
    let task = s.start_task("agent-r", "fx-all");
    let token = s.task_token(&task, &key);
    let sid = super::support::RawMcp::new(&s.mcp_url(), Some(&token)).initialize();
    (s, token, sid)
}

/// Opens the session's standalone event stream (`GET /mcp`); each `data:` it carries arrives
/// on the returned channel.
fn standalone_stream(s: &TestServer, token: &str, sid: &str) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;

    let stream = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .expect("client")
        .get(s.mcp_url())
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .expect("GET /mcp");
    assert_eq!(stream.status().as_u16(), 200);
    let (told_tx, told) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data: ") {
                let _ = told_tx.send(data.to_owned());
            }
        }
    });
    told
}

fn session_call(id: u64, arguments: Value, meta: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "fx__progress", "arguments": arguments, "_meta": meta}})
}

#[test]
fn upstream_progress_and_log_messages_reach_the_agent_under_its_own_token() {
    let (s, token, sid) = gateway(true);
    let headers = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (ct, messages) = post_call(
        &s.mcp_url(),
        &token,
        &headers,
        &session_call(
            5,
            json!({"steps": 3}),
            json!({"progressToken": "agent-tok"}),
        ),
    );
    assert!(ct.starts_with("text/event-stream"), "{ct}: {messages:?}");
    let (answer, before) = messages.split_last().expect("messages");
    assert_eq!(answer["id"], 5, "the answer comes last: {messages:?}");
    assert_eq!(answer["result"]["content"][0]["text"], "progressed 3");
    let progress = of_method(before, "notifications/progress");
    assert_eq!(progress.len(), 3, "{messages:?}");
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(
            p["params"],
            json!({"progressToken": "agent-tok", "progress": i + 1, "total": 3,
                   "message": format!("step {}", i + 1)}),
            "the agent's token, the upstream's values"
        );
    }
    let logs = of_method(before, "notifications/message");
    assert_eq!(logs.len(), 1, "{messages:?}");
    assert_eq!(
        logs[0]["params"],
        json!({"level": "info", "logger": "fixture", "data": "did 3 steps"})
    );
    assert_eq!(
        before.len(),
        4,
        "nothing else (the upstream's progress for a token it was not given goes nowhere): \
         {messages:?}"
    );

    // Without a progress token, the log message still comes on a stream; without
    // accepting a stream, the answer is plain JSON.
    let (ct, messages) = post_call(
        &s.mcp_url(),
        &token,
        &headers,
        &session_call(6, json!({"steps": 2}), json!({})),
    );
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert_eq!(of_method(&messages, "notifications/progress").len(), 0);
    assert_eq!(of_method(&messages, "notifications/message").len(), 1);
    let (ct, messages) = post_accepting(
        &s.mcp_url(),
        &token,
        "application/json",
        &headers,
        &session_call(7, json!({"steps": 2}), json!({"progressToken": 1})),
    );
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["result"]["content"][0]["text"], "progressed 2");

    // `logging/setLevel` raises the level for the session's calls; a level that is not one
    // is refused.
    let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&token));
    let r = mcp.call(&sid, "logging/setLevel", json!({"level": "loud"}));
    assert_eq!(r.body["error"]["code"], -32602, "{}", r.body);
    let r = mcp.call(&sid, "logging/setLevel", json!({"level": "error"}));
    assert_eq!(r.body["result"], json!({}), "{}", r.body);
    let (_, messages) = post_call(
        &s.mcp_url(),
        &token,
        &headers,
        &session_call(11, json!({"steps": 1}), json!({"progressToken": "p"})),
    );
    assert_eq!(of_method(&messages, "notifications/progress").len(), 1);
    assert_eq!(
        of_method(&messages, "notifications/message").len(),
        0,
        "an info message is below the session's level: {messages:?}"
    );

    // The stateless era: progress as asked; log messages only when asked for, and at the
    // level asked for.
    let meta = |extra: Value| {
        let mut m = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                           "io.modelcontextprotocol/clientCapabilities": {}});
        m.as_object_mut()
            .expect("meta")
            .extend(extra.as_object().cloned().unwrap_or_default());
        m
    };
    let modern = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "fx__progress"),
    ];
    let (_, messages) = post_call(
        &s.mcp_url(),
        &token,
        &modern,
        &session_call(8, json!({"steps": 2}), meta(json!({"progressToken": 9}))),
    );
    assert_eq!(of_method(&messages, "notifications/progress").len(), 2);
    assert_eq!(
        of_method(&messages, "notifications/message").len(),
        0,
        "not asked for: {messages:?}"
    );
    assert_eq!(
        messages.last().expect("answer")["result"]["resultType"],
        "complete"
    );
    let (_, messages) = post_call(
        &s.mcp_url(),
        &token,
        &modern,
        &session_call(
            9,
            json!({"steps": 1}),
            meta(json!({"io.modelcontextprotocol/logLevel": "info"})),
        ),
    );
    assert_eq!(of_method(&messages, "notifications/message").len(), 1);
    let (ct, messages) = post_call(
        &s.mcp_url(),
        &token,
        &modern,
        &session_call(
            10,
            json!({"steps": 1}),
            meta(json!({"io.modelcontextprotocol/logLevel": "warning"})),
        ),
    );
    assert!(
        ct.starts_with("application/json"),
        "an info message is below warning: nothing to stream: {messages:?}"
    );
}

#[test]
fn log_messages_of_an_upstream_shared_by_tasks_are_not_relayed() {
    // A stdio server's log messages name no request: on a connection serving every task,
    // one could be about another task's call.
    let (s, token, sid) = gateway(false);
    let headers = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (_, messages) = post_call(
        &s.mcp_url(),
        &token,
        &headers,
        &session_call(5, json!({"steps": 2}), json!({"progressToken": "t"})),
    );
    assert_eq!(of_method(&messages, "notifications/progress").len(), 2);
    assert_eq!(
        of_method(&messages, "notifications/message").len(),
        0,
        "{messages:?}"
    );
    let (ct, messages) = post_call(
        &s.mcp_url(),
        &token,
        &headers,
        &session_call(6, json!({"steps": 2}), json!({})),
    );
    assert!(ct.starts_with("application/json"), "{messages:?}");
}

/// The Python SDK's client, through the gateway, calling a tool of the SDK's own HTTP server
/// that reports progress and logs: it sees both, in each of its modes.
#[test]
fn the_python_sdk_sees_an_http_upstreams_progress_and_logs() {
    let s = TestServer::start();
    let upstream = HttpUpstream::start(s.dir.path());
    let (key, public) = s.keygen("agent-p");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    s.apply(&format!(
        "kind: Upstream\nname: web\nurl: {}\ntimeout: 60s\ntiers: {{ count: 1 }}\n---\n\
         kind: Template\nname: counting\nttl: 10m\ntools: [web__count]\n---\n\
         kind: Agent\nname: agent-p\nowner: test@example.com\narchetype: automation\n\
         templates: [counting]\npublic_key: |\n{indented}",
        upstream.url
    ));
    for mode in ["legacy", "2026-07-28"] {
        let task = s.start_task("agent-p", "counting");
        let token = s.task_token(&task, &key);
        let out = std::process::Command::new(&deps().python)
            .arg(fixture("mcp_client.py"))
            .args([
                &s.mcp_url(),
                &token,
                mode,
                "call-progress",
                "web__count",
                r#"{"steps": 4}"#,
            ])
            .output()
            .expect("run mcp_client.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "[{mode}] {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("[{mode}] no JSON ({e}): {stdout}"));
        assert_eq!(v["ok"]["content"][0]["text"], "counted 4", "[{mode}] {v}");
        let progress = v["progress"].as_array().cloned().unwrap_or_default();
        let expected: Vec<Value> = (1..=4)
            .map(|i| json!({"progress": f64::from(i), "total": 4.0, "message": format!("step {i} of 4")}))
            .collect();
        assert_eq!(progress, expected, "[{mode}] {v}");
        assert_eq!(
            v["logs"],
            json!([{"level": "info", "data": "counted to 4"}]),
            "[{mode}] {v}"
        );
    }
    drop(upstream);
}

/// The Python SDK's client, declaring sampling and elicitation, answers an elicitation and a
/// sampling request the SDK's own HTTP server makes during a tool call, relayed through the
/// gateway; each relayed request is an audit record of the task. A client that declared
/// neither is not asked: the upstream is refused, and nothing is relayed.
#[test]
fn the_python_sdk_answers_an_upstreams_elicitation_and_sampling_requests() {
    let s = TestServer::start();
    let upstream = HttpUpstream::start(s.dir.path());
    let (key, public) = s.keygen("agent-q");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    s.apply(&format!(
        "kind: Upstream\nname: web\nurl: {}\ntimeout: 60s\ntiers: {{ ask_user: 1, ask_llm: 1 }}\n---\n\
         kind: Template\nname: asking\nttl: 10m\ntools: [web__ask_user, web__ask_llm]\n---\n\
         kind: Agent\nname: agent-q\nowner: test@example.com\narchetype: automation\n\
         templates: [asking]\npublic_key: |\n{indented}",
        upstream.url
    ));
    let sdk = |task: &str, action: &str, tool: &str, args: &str| {
        let token = s.task_token(task, &key);
        let out = std::process::Command::new(&deps().python)
            .arg(fixture("mcp_client.py"))
            .args([&s.mcp_url(), &token, "legacy", action, tool, args])
            .output()
            .expect("run mcp_client.py");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("no JSON ({e}): {stdout}"))
    };
    let task = s.start_task("agent-q", "asking");
    let v = sdk(
        &task,
        "call-answering",
        "web__ask_user",
        r#"{"question": "Deploy now?"}"#,
    );
    assert_eq!(
        v["ok"]["content"][0]["text"], "the user said: yes (user)",
        "{v}"
    );
    assert_eq!(
        v["asked"],
        json!([{"method": "elicitation/create", "message": "Deploy now?"}])
    );
    let v = sdk(
        &task,
        "call-answering",
        "web__ask_llm",
        r#"{"prompt": "What is six times seven?"}"#,
    );
    assert_eq!(
        v["ok"]["content"][0]["text"], "the model said: 42 (model)",
        "{v}"
    );
    assert_eq!(
        v["asked"],
        json!([{"method": "sampling/createMessage", "message": "What is six times seven?"}])
    );
    let relayed = |task: &str| -> Vec<(String, String)> {
        s.cli_json(&["audit", "trace", task, "--json"])["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["kind"] == "client_request")
            .map(|r| {
                (
                    r["tool"].as_str().unwrap_or_default().to_owned(),
                    r["detail"]["method"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        relayed(&task),
        [
            ("web__ask_user".to_owned(), "elicitation/create".to_owned()),
            (
                "web__ask_llm".to_owned(),
                "sampling/createMessage".to_owned()
            )
        ]
    );

    // A client that declared no such capability: its connection claims none either, the
    // upstream cannot ask, and nothing is relayed.
    let other = s.start_task("agent-q", "asking");
    let v = sdk(
        &other,
        "call",
        "web__ask_user",
        r#"{"question": "Deploy now?"}"#,
    );
    assert!(
        v["ok"]["isError"] == true || v.get("error").is_some(),
        "the upstream could not ask: {v}"
    );
    assert!(relayed(&other).is_empty());
    drop(upstream);
}

/// On the wire: a stdio server that serves one task asks the client during a call; the agent,
/// whose client declared `sampling`, gets the request on the call's stream under an id of
/// Custos's own, POSTs its answer in its session, and the call's answer carries what the
/// server got back. On a connection shared by tasks the request names no call: refused.
#[test]
fn a_request_of_the_client_goes_to_the_agent_and_its_answer_back_to_the_upstream() {
    use std::io::BufRead as _;

    for task_scoped in [true, false] {
        let (s, token, _) = gateway(task_scoped);
        let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&token));
        let r = mcp.post(
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
                "protocolVersion":"2025-11-25","capabilities":{"sampling":{}},
                "clientInfo":{"name":"test","version":"0"}}}),
            &[],
        );
        let sid = r.headers["mcp-session-id"].clone();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let post = |body: Value| {
            http.post(s.mcp_url())
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", sid.as_str())
                .header("mcp-protocol-version", "2025-11-25")
                .body(body.to_string())
                .send()
                .expect("POST")
        };
        let resp = post(json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
            "params":{"name":"fx__ask","arguments":{"prompt":"six times seven?"}}}));
        let mut messages = Vec::new();
        let sse = resp.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"));
        for line in std::io::BufReader::new(resp).lines() {
            let line = line.expect("line");
            let data = if sse {
                match line.strip_prefix("data: ") {
                    Some(d) => d.to_owned(),
                    None => continue,
                }
            } else {
                line
            };
            let m: Value = serde_json::from_str(&data).expect("JSON");
            if m["method"] == "sampling/createMessage" {
                let id = m["id"].as_str().expect("string id").to_owned();
                assert!(id.starts_with("custos-req-"), "{m}");
                assert_eq!(
                    m["params"]["messages"][0]["content"]["text"],
                    "six times seven?"
                );
                let r = post(json!({"jsonrpc":"2.0","id":id,"result":{
                    "role":"assistant","content":{"type":"text","text":"42"},"model":"m"}}));
                assert_eq!(r.status().as_u16(), 202);
            }
            messages.push(m);
        }
        let answer = messages.last().expect("answer");
        assert_eq!(answer["id"], 3, "{messages:?}");
        let got: Value = serde_json::from_str(
            answer["result"]["content"][0]["text"]
                .as_str()
                .expect("text"),
        )
        .expect("the server's reply as JSON");
        if task_scoped {
            assert_eq!(got["result"]["content"]["text"], "42", "{messages:?}");
        } else {
            assert_eq!(messages.len(), 1, "nothing relayed: {messages:?}");
            assert_eq!(got["error"]["code"], -32601, "refused: {got}");
        }
    }
}

/// An upstream that announces its tool list changed (`notifications/tools/list_changed`) is
/// listed again: the new tool is there on the next `tools/list`, and callable; and the
/// agent's standalone stream (`GET /mcp` in its session) is told.
#[test]
fn a_changed_tool_list_is_read_again() {
    let (s, token, sid) = gateway(false);
    let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&token));
    let told = standalone_stream(&s, &token, &sid);
    let names = |r: &Value| -> Vec<String> {
        r["result"]["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    };
    let before = mcp.call(&sid, "tools/list", json!({})).body;
    assert!(
        !names(&before).contains(&"fx__grown".to_owned()),
        "{before}"
    );
    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__grow", "arguments": {}}),
    );
    assert_eq!(
        r.body["result"]["content"][0]["text"], "grown",
        "{}",
        r.body
    );
    let note: Value = serde_json::from_str(
        &told
            .recv_timeout(Duration::from_secs(20))
            .expect("the standalone stream is told"),
    )
    .expect("JSON");
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    let after = mcp.call(&sid, "tools/list", json!({})).body;
    assert!(names(&after).contains(&"fx__grown".to_owned()), "{after}");
    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__grown", "arguments": {"x": 1}}),
    );
    assert_eq!(
        r.body["result"]["content"][0]["text"], "{\"x\": 1}",
        "{}",
        r.body
    );
}

/// Resources and prompts through the template: a task lists and reads only the URIs its
/// template's resource entries allow and gets only the prompts it names; a read outside is
/// refused. Both are audit records, the allowed one with its outcome.
#[test]
fn resources_and_prompts_are_read_only_as_the_template_allows() {
    let s = TestServer::start();
    let upstream = HttpUpstream::start(s.dir.path());
    let (key, public) = s.keygen("agent-d");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    s.apply(&format!(
        "kind: Upstream\nname: web\nurl: {}\ntimeout: 60s\ntiers: {{ add: 1 }}\n---\n\
         kind: Template\nname: reader\nttl: 10m\ntools: [web__add]\n\
         resources: [{{upstream: web, uri: \"docs://*\"}}]\nprompts: [web__review]\n---\n\
         kind: Agent\nname: agent-d\nowner: test@example.com\narchetype: automation\n\
         templates: [reader]\npublic_key: |\n{indented}",
        upstream.url
    ));
    let task = s.start_task("agent-d", "reader");
    let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&s.task_token(&task, &key)));
    let sid = mcp.initialize();

    let listed = mcp.call(&sid, "resources/list", json!({})).body;
    let uris: Vec<&str> = listed["result"]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uri"].as_str())
        .collect();
    assert_eq!(uris, ["docs://readme"], "{listed}");
    let r = mcp
        .call(&sid, "resources/read", json!({"uri": "docs://readme"}))
        .body;
    assert_eq!(r["result"]["contents"][0]["text"], "read me first", "{r}");
    let r = mcp
        .call(&sid, "resources/read", json!({"uri": "secret://keys"}))
        .body;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(r["error"]["data"]["reason"], "resource_not_allowed", "{r}");
    assert!(
        !upstream.requests().iter().any(|q| q["body"]
            .as_str()
            .is_some_and(|b| b.contains("secret://keys"))),
        "the refused read never reached the upstream"
    );

    let prompts = mcp.call(&sid, "prompts/list", json!({})).body;
    assert_eq!(
        prompts["result"]["prompts"][0]["name"], "web__review",
        "{prompts}"
    );
    let r = mcp
        .call(
            &sid,
            "prompts/get",
            json!({"name": "web__review", "arguments": {"topic": "the plan"}}),
        )
        .body;
    assert!(r.to_string().contains("Please review the plan."), "{r}");
    let r = mcp
        .call(&sid, "prompts/get", json!({"name": "web__other"}))
        .body;
    assert_eq!(r["error"]["data"]["reason"], "prompt_not_allowed", "{r}");

    let records = s.cli_json(&["audit", "trace", &task, "--json"])["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let of = |kind: &str| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| {
                (
                    r["tool"].as_str().unwrap_or_default().to_owned(),
                    r["decision"]
                        .as_str()
                        .or(r["outcome"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        of("resource_read"),
        [
            ("docs://readme".to_owned(), "allow".to_owned()),
            ("secret://keys".to_owned(), "deny".to_owned())
        ]
    );
    assert_eq!(
        of("prompt_get"),
        [
            ("web__review".to_owned(), "allow".to_owned()),
            ("web__other".to_owned(), "deny".to_owned())
        ]
    );
    assert_eq!(of("read_result").len(), 2, "{records:?}");
    assert!(
        of("task_tainted").is_empty(),
        "a trusted upstream does not taint"
    );

    // What an upstream marked wholly untrusted serves as a resource taints the task, on
    // record before the agent has it.
    s.apply(&format!(
        "kind: Upstream\nname: webu\nurl: {}\ntimeout: 60s\nuntrusted: [\"*\"]\n---\n\
         kind: Template\nname: untrusted-reader\nttl: 10m\ntools: [webu__add]\n\
         resources: [{{upstream: webu, uri: \"docs://*\"}}]\n---\n\
         kind: Agent\nname: agent-d\nowner: test@example.com\narchetype: automation\n\
         templates: [reader, untrusted-reader]\npublic_key: |\n{indented}",
        upstream.url
    ));
    let tainted = s.start_task("agent-d", "untrusted-reader");
    let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&s.task_token(&tainted, &key)));
    let sid = mcp.initialize();
    let r = mcp
        .call(&sid, "resources/read", json!({"uri": "docs://readme"}))
        .body;
    assert_eq!(r["result"]["contents"][0]["text"], "read me first", "{r}");
    let trace = s.cli_json(&["audit", "trace", &tainted, "--json"]);
    let kinds: Vec<&str> = trace["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    let at = |k: &str| kinds.iter().position(|x| *x == k);
    assert!(
        at("task_tainted").is_some() && at("task_tainted") < at("read_result"),
        "tainted before the read's outcome: {kinds:?}"
    );
    drop(upstream);
}

/// A subscription to a resource the template allows: decided and recorded like a read, and
/// the upstream's `notifications/resources/updated` for it reaches the session's standalone
/// stream; one the template does not allow is refused.
#[test]
fn a_subscribed_resources_updates_reach_the_sessions_stream() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-s");
    let yaml = fixture_yaml("agent-s", &public, "10s").replacen(
        "tools: [\"fx__*\"]\n",
        "tools: [\"fx__*\"]\nresources: [{upstream: fx, uri: \"fx://counter\"}]\n",
        1,
    );
    s.apply(&yaml);
    let task = s.start_task("agent-s", "fx-all");
    let token = s.task_token(&task, &key);
    let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    let told = standalone_stream(&s, &token, &sid);

    let long = format!("fx://{}", "x".repeat(3000));
    let r = mcp.call(&sid, "resources/subscribe", json!({"uri": long}));
    assert_eq!(
        r.body["error"]["code"], -32602,
        "an overlong URI is not kept: {}",
        r.body
    );
    let r = mcp.call(&sid, "resources/subscribe", json!({"uri": "fx://secret"}));
    assert_eq!(
        r.body["error"]["data"]["reason"], "resource_not_allowed",
        "{}",
        r.body
    );
    let r = mcp.call(&sid, "resources/subscribe", json!({"uri": "fx://counter"}));
    assert_eq!(r.body["result"], json!({}), "{}", r.body);
    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__bump", "arguments": {}}),
    );
    assert_eq!(
        r.body["result"]["content"][0]["text"], "bumped",
        "{}",
        r.body
    );
    let note: Value = serde_json::from_str(
        &told
            .recv_timeout(Duration::from_secs(20))
            .expect("the update reaches the stream"),
    )
    .expect("JSON");
    assert_eq!(
        note,
        json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "fx://counter"}})
    );
    // Unsubscribed: the next update is not sent.
    let r = mcp.call(
        &sid,
        "resources/unsubscribe",
        json!({"uri": "fx://counter"}),
    );
    assert_eq!(r.body["result"], json!({}), "{}", r.body);
    mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__bump", "arguments": {}}),
    );
    assert!(told.recv_timeout(Duration::from_secs(2)).is_err());

    let kinds: Vec<(String, String)> = s.cli_json(&["audit", "trace", &task, "--json"])["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "resource_subscribe")
        .map(|r| {
            (
                r["tool"].as_str().unwrap_or_default().to_owned(),
                r["decision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("fx://secret".to_owned(), "deny".to_owned()),
            ("fx://counter".to_owned(), "allow".to_owned())
        ]
    );
}

/// What an HTTP upstream announces on its session's own event stream (which Custos listens
/// on) reaches the agent: here a changed tool list, sent by the SDK's own server outside any
/// call's response.
#[test]
fn an_http_upstreams_own_stream_is_listened_to() {
    let s = TestServer::start();
    // Session era only: the stateless era has no stream of the session's own.
    let upstream = HttpUpstream::start_with(s.dir.path(), &["--legacy-only"]);
    let (key, public) = s.keygen("agent-l");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    s.apply(&format!(
        "kind: Upstream\nname: web\nurl: {}\ntimeout: 60s\ntiers: {{ announce_tools: 1 }}\n---\n\
         kind: Template\nname: listening\nttl: 10m\ntools: [web__announce_tools]\n---\n\
         kind: Agent\nname: agent-l\nowner: test@example.com\narchetype: automation\n\
         templates: [listening]\npublic_key: |\n{indented}",
        upstream.url
    ));
    let task = s.start_task("agent-l", "listening");
    let token = s.task_token(&task, &key);
    let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    // The first call connects Custos to the upstream (and opens its stream).
    let r = mcp.call(&sid, "tools/list", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let told = standalone_stream(&s, &token, &sid);
    // The upstream's own stream may open a moment after the session: retry the call until
    // the announcement comes through (each call makes one).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let note = loop {
        let r = mcp.call(
            &sid,
            "tools/call",
            json!({"name": "web__announce_tools", "arguments": {}}),
        );
        assert_eq!(
            r.body["result"]["content"][0]["text"], "announced",
            "{}",
            r.body
        );
        if let Ok(data) = told.recv_timeout(Duration::from_secs(2)) {
            break serde_json::from_str::<Value>(&data).expect("JSON");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing came through the upstream's stream"
        );
    };
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    drop(upstream);
}
