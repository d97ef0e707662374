//! Custos on PostgreSQL, as replicas run it: two servers sharing one database (and, as
//! documented, one signing key, admin token and public URL) serve the same agents, tasks and
//! audit chain.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, fixture_yaml};

#[test]
fn two_replicas_share_one_postgresql_database() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(custos_test_support::fresh_pg_db());
    let args = [
        "--database-url",
        db.url(),
        "--public-url",
        "http://custos.example",
    ];
    let a = TestServer::start_with(&args);
    let b_dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(b_dir.path().join("data")).expect("mkdir");
    for f in ["signing-key.pem", "admin.token"] {
        std::fs::copy(a.data_dir().join(f), b_dir.path().join("data").join(f)).expect("copy");
    }
    let b = TestServer::start_in(b_dir, &args);
    let health: Value = reqwest::blocking::get(format!("{}/healthz", b.addr))
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(health["store"], "postgres");

    let (key, public) = a.keygen("agent-a");
    a.apply(&fixture_yaml("agent-a", &public, "5s"));
    assert_eq!(
        b.cli_json(&["get", "agents", "--json"])[0]["resource"]["name"],
        "agent-a",
        "B reads what A applied"
    );
    let task = a.start_task("agent-a", "fx-all");
    let token = b.task_token(&task, &key);

    // The token works at both replicas; each call is one record in the one chain.
    for (s, n) in [(&a, 1), (&b, 2)] {
        let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
        let sid = mcp.initialize();
        let r = mcp.call(
            &sid,
            "tools/call",
            json!({"name": "fx__echo", "arguments": {"replica": n}}),
        );
        assert_eq!(
            r.body["result"]["content"][0]["text"],
            format!("{{\"replica\": {n}}}"),
            "{}",
            r.body
        );
        let r = mcp.call(
            &sid,
            "tools/call",
            json!({"name": "fx__wipe", "arguments": {}}),
        );
        assert_eq!(r.body["error"]["data"]["reason"], "tier4_denied");
    }

    // Suspending through A reaches B within its cache TTL (1 s).
    assert!(a.cli(&["agent", "suspend", "agent-a"]).status.success());
    let mcp_b = RawMcp::new(&b.mcp_url(), Some(&token));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = mcp_b.post(
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}),
            &[],
        );
        if r.status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still accepts a suspended agent's token"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    for s in [&a, &b] {
        let v = s.cli_json(&["audit", "verify", "--json"]);
        assert_eq!(v["ok"], true, "{v}");
    }
    let trace = a.cli_json(&["audit", "trace", &task, "--json"]);
    let calls = trace["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == "tool_call")
        .count();
    assert_eq!(calls, 4, "{trace}");
    drop(a);
    drop(b);
    drop(db);
}
