//! The call pipeline's promises, on the wire: a permitted call's decision is durable before
//! the upstream is called, and its outcome is recorded whatever the client does.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, fixture_yaml, sql_exec as sql};

fn session(s: &TestServer) -> (RawMcp, String, String, String) {
    let (key, public) = s.keygen("agent-a");
    s.apply(&fixture_yaml("agent-a", &public, "10s"));
    let task = s.start_task("agent-a", "fx-all");
    let token = s.task_token(&task, &key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    (mcp, sid, task, token)
}

/// Sends one `tools/call` over a raw connection and hangs up after `linger` without reading
/// the answer.
fn call_and_hang_up(
    s: &TestServer,
    token: &str,
    sid: &str,
    tool: &str,
    args: Value,
    linger: Duration,
) {
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": tool, "arguments": args}}).to_string();
    let host = s.addr.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).expect("connect");
    write!(
        conn,
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Mcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-11-25\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    conn.flush().expect("flush");
    std::thread::sleep(linger);
    drop(conn);
}

fn records(s: &TestServer, task: &str) -> Vec<Value> {
    s.cli_json(&["audit", "trace", task, "--json"])["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The call ids of `tool`'s decision records (`tool_call`, allowed) and result records.
fn calls(records: &[Value], tool: &str) -> (Vec<String>, Vec<(String, String)>) {
    let of = |kind: &str| {
        records
            .iter()
            .filter(move |r| r["kind"] == kind && r["tool"] == tool)
            .cloned()
            .collect::<Vec<_>>()
    };
    let decided = of("tool_call")
        .iter()
        .filter(|r| r["decision"] == "allow")
        .map(|r| r["call_id"].as_str().expect("call id").to_owned())
        .collect();
    let results = of("tool_result")
        .iter()
        .map(|r| {
            (
                r["call_id"].as_str().expect("call id").to_owned(),
                r["outcome"].as_str().expect("outcome").to_owned(),
            )
        })
        .collect();
    (decided, results)
}

/// Polls until `done` holds for the task's records, at most `within`.
fn wait_for(
    s: &TestServer,
    task: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let r = records(s, task);
        if done(&r) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_call_whose_client_hangs_up_mid_call_is_recorded_to_its_end() {
    let s = TestServer::start();
    let (_mcp, sid, task, token) = session(&s);
    call_and_hang_up(
        &s,
        &token,
        &sid,
        "fx__sleep",
        json!({"secs": 1.5}),
        Duration::from_millis(300),
    );
    let r = wait_for(&s, &task, Duration::from_secs(10), |r| {
        !calls(r, "fx__sleep").1.is_empty()
    });
    let (decided, results) = calls(&r, "fx__sleep");
    assert_eq!(decided.len(), 1, "one decision record: {r:#?}");
    assert_eq!(
        results,
        [(decided[0].clone(), "ok".to_owned())],
        "the result is recorded under the decision's call id although nobody waited for it"
    );
    let decision_seq = r.iter().position(|x| x["call_id"] == decided[0].as_str());
    let result_seq = r.iter().rposition(|x| x["call_id"] == decided[0].as_str());
    assert!(decision_seq < result_seq, "decision first, then result");
    assert!(s.cli(&["audit", "verify"]).status.success());
}

#[test]
fn fast_calls_abandoned_at_once_all_leave_their_records() {
    let s = TestServer::start();
    let (mcp, sid, task, token) = session(&s);
    // Start the upstream first, so the abandoned calls race only the hang-up.
    let warm = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__echo", "arguments": {}}),
    );
    assert_eq!(warm.status, 200, "{}", warm.body);
    let dir = s.dir.path().join("marks");
    std::fs::create_dir_all(&dir).expect("dir");
    for i in 0..10u64 {
        let path = dir.join(format!("m{i}"));
        // Hang up within a few milliseconds of sending: the window that lost records before.
        call_and_hang_up(
            &s,
            &token,
            &sid,
            "fx__touch",
            json!({"path": path}),
            Duration::from_millis(i * 2),
        );
    }
    // Whatever reached the upstream (a marker exists) has its decision and its result.
    let r = wait_for(&s, &task, Duration::from_secs(10), |r| {
        let (decided, results) = calls(r, "fx__touch");
        decided.len() == results.len() && marks(&dir) <= results.len()
    });
    let (decided, results) = calls(&r, "fx__touch");
    let executed = marks(&dir);
    assert!(executed > 0, "no call reached the upstream at all");
    assert_eq!(
        decided.len(),
        results.len(),
        "every decision has its result: {r:#?}"
    );
    assert!(
        results.len() >= executed,
        "{executed} calls ran but only {} results were recorded",
        results.len()
    );
    for (id, outcome) in &results {
        assert!(decided.contains(id), "result {id} without a decision");
        assert_eq!(outcome, "ok");
    }
}

fn marks(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn the_upstream_is_never_reached_without_a_committed_decision() {
    let s = TestServer::start();
    let (mcp, sid, task, _token) = session(&s);
    let touch = |name: &str| {
        let path = s.dir.path().join(name);
        let r = mcp.call(
            &sid,
            "tools/call",
            json!({"name": "fx__touch", "arguments": {"path": path}}),
        );
        (r, path.exists())
    };

    // The store refuses the decision record: the call is refused and never made.
    sql(
        &s,
        "CREATE TRIGGER down BEFORE INSERT ON audit_log WHEN NEW.kind = 'tool_call' \
         BEGIN SELECT RAISE(ABORT, 'store down'); END",
    );
    let (r, ran) = touch("before-decision");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["data"]["reason"], "unavailable");
    assert!(
        !ran,
        "the upstream was called without a committed decision record"
    );
    sql(&s, "DROP TRIGGER down");

    // The store fails after the decision: the call ran under its committed decision, and its
    // outcome (written behind the answer, so an allowed call waits for one commit) is missing
    // from the trail, which says so: a decision without a result. The failure is logged.
    sql(
        &s,
        "CREATE TRIGGER down BEFORE INSERT ON audit_log WHEN NEW.kind = 'tool_result' \
         BEGIN SELECT RAISE(ABORT, 'store down'); END",
    );
    let (r, ran) = touch("after-decision");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(ran, "a committed decision lets the call run");
    let logged = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        s.log().contains("audit append failed")
    });
    assert!(logged, "the lost outcome is logged: {}", s.log());
    sql(&s, "DROP TRIGGER down");
    let (decided, results) = calls(&records(&s, &task), "fx__touch");
    assert_eq!(decided.len(), 1, "the decision is on record");
    assert!(results.is_empty(), "{results:?}");

    // With the store back, calls are decided, made and recorded again.
    let (r, ran) = touch("store-back");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(ran);
    assert!(s.cli(&["audit", "verify"]).status.success());
}

#[test]
fn a_cancelled_call_is_cancelled_upstream_and_recorded() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-c");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("notifications.jsonl");
    s.apply(&format!(
        "kind: Upstream\nname: fx\ncommand: [python3, \"{}\", --log-notifications, \"{}\"]\ntiers: {{ sleep: 1 }}\n---\n\
         kind: Template\nname: fx-sleep\nttl: 10m\ntools: [fx__sleep]\n---\n\
         kind: Agent\nname: agent-c\nowner: test@example.com\narchetype: automation\ntemplates: [fx-sleep]\npublic_key: |\n{indented}",
        super::support::fixture("stdio_fixture.py").display(),
        log.display()
    ));
    let task = s.start_task("agent-c", "fx-sleep");
    let token = s.task_token(&task, &key);
    let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();

    // A long call, then the agent cancels it by its request id.
    let (url, t, session) = (s.mcp_url(), token.clone(), sid.clone());
    let call = std::thread::spawn(move || {
        let m = super::support::RawMcp::new(&url, Some(&t));
        m.post(
            &json!({"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call",
                    "params": {"name": "fx__sleep", "arguments": {"secs": 4}}}),
            &[
                ("mcp-session-id", session.as_str()),
                ("mcp-protocol-version", "2025-11-25"),
            ],
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    let r = mcp.post(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": "slow-1", "reason": "the user pressed stop"}}),
        &[
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ],
    );
    assert_eq!(r.status, 202);
    let answer = call.join().expect("the call");
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cancelled")),
        "the cancelled call is not answered with its result: {}",
        answer.body
    );
    // The upstream was told, with its own id for the request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let forwarded = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("notifications/cancelled")) {
            break serde_json::from_str::<Value>(line).expect("JSON");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream never heard of the cancel"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(forwarded["params"]["requestId"].is_i64(), "{forwarded}");
    // The trail says so.
    let trace = s.cli_json(&["audit", "trace", &task, "--json"]);
    assert!(
        trace["records"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["kind"] == "tool_result" && r["outcome"] == "cancelled")),
        "{trace}"
    );
    // Cancelling what is not in flight (or another session's request) changes nothing.
    let r = mcp.post(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "nope"}}),
        &[
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ],
    );
    assert_eq!(r.status, 202);
    let ok = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__sleep", "arguments": {"secs": 0}}),
    );
    assert_eq!(
        ok.body["result"]["content"][0]["text"], "slept",
        "{}",
        ok.body
    );
}
