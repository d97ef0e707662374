//! `scope: task` upstreams: a process per task, stopped when the task ends; `scope: shared`
//! (the default): one process for every task.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, fixture, fixture_yaml};

/// `fx` (shared) from the harness, plus `fxt`: the same fixture server with `scope: task`.
fn scoped_yaml(public_key: &str, timeout: &str) -> String {
    let base = fixture_yaml("agent-a", public_key, "5s")
        .replace(r#"tools: ["fx__*"]"#, r#"tools: ["fx__*", "fxt__*"]"#);
    format!(
        r#"{base}---
kind: Upstream
name: fxt
command: [python3, "{script}"]
scope: task
timeout: {timeout}
tiers: {{ whoami: 2, echo: 1 }}
"#,
        script = fixture("stdio_fixture.py").display()
    )
}

/// A session for a fresh task of `agent-a` under `fx-all`: (client, session id, task id).
fn session(s: &TestServer, key: &std::path::Path) -> (RawMcp, String, String) {
    let task = s.start_task("agent-a", "fx-all");
    let token = s.task_token(&task, key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    (mcp, sid, task)
}

/// The pid of the process that answered `tool` (the fixture's `whoami`).
fn pid(mcp: &RawMcp, sid: &str, tool: &str) -> i32 {
    let r = mcp.call(sid, "tools/call", json!({"name": tool, "arguments": {}}));
    assert_eq!(r.status, 200, "{tool}: {}", r.body);
    let text = r.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{tool} gave no text: {}", r.body));
    let who: Value = serde_json::from_str(text).expect("whoami json");
    who["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .expect("pid")
}

fn running(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits up to 10 s for `pid` to be gone (killed and reaped: a zombie still has `/proc/<pid>`).
fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn task_scoped_upstreams_get_a_process_per_task_stopped_when_the_task_ends() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-a");
    s.apply(&scoped_yaml(&public, "5s"));
    // The API shows `scope` where it was set, and nothing new where it was not.
    let ups = s.cli_json(&["get", "upstreams", "--json"]);
    let by_name = |n: &str| {
        ups.as_array()
            .expect("list")
            .iter()
            .map(|u| &u["resource"])
            .find(|u| u["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no upstream {n} in {ups}"))
    };
    assert_eq!(by_name("fxt")["scope"], "task", "{ups}");
    assert!(by_name("fx").get("scope").is_none(), "{ups}");

    let (a, sid_a, task_a) = session(&s, &key);
    let (b, sid_b, _task_b) = session(&s, &key);

    let a_task = pid(&a, &sid_a, "fxt__whoami");
    let b_task = pid(&b, &sid_b, "fxt__whoami");
    assert_ne!(
        a_task, b_task,
        "two tasks on a task-scoped upstream share a process"
    );
    assert_eq!(
        pid(&a, &sid_a, "fxt__whoami"),
        a_task,
        "a task keeps its process"
    );
    let a_shared = pid(&a, &sid_a, "fx__whoami");
    let b_shared = pid(&b, &sid_b, "fx__whoami");
    assert_eq!(a_shared, b_shared, "a shared upstream serves every task");
    // tools/list reaches the task's own connection too.
    let list = a.call(&sid_a, "tools/list", json!({}));
    let names: Vec<&str> = list.body["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"fxt__whoami"), "{names:?}");
    assert_eq!(pid(&a, &sid_a, "fxt__whoami"), a_task);

    // Ending task A stops its process, and only its process.
    let out = s.cli(&["task", "end", &task_a]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        gone(a_task),
        "task A's upstream process {a_task} outlived the task"
    );
    assert!(running(b_task), "task B's process stopped with task A");
    assert!(running(a_shared), "the shared process stopped with a task");
    assert_eq!(pid(&b, &sid_b, "fxt__whoami"), b_task);
    assert_eq!(pid(&b, &sid_b, "fx__whoami"), b_shared);

    // A changed upstream replaces its task connections, as it does shared ones.
    s.apply(&scoped_yaml(&public, "6s"));
    let b_new = pid(&b, &sid_b, "fxt__whoami");
    assert_ne!(b_new, b_task, "a changed upstream kept its old process");
    assert!(
        gone(b_task),
        "the old process {b_task} of a changed upstream still runs"
    );
    assert_eq!(
        pid(&b, &sid_b, "fx__whoami"),
        b_shared,
        "an unchanged upstream was restarted"
    );
}

#[test]
fn a_bad_scope_is_refused_naming_the_field() {
    let s = TestServer::start();
    let (_, public) = s.keygen("agent-a");
    let yaml = scoped_yaml(&public, "5s").replace("scope: task", "scope: tenant");
    let path = s.dir.path().join("bad-scope.yaml");
    std::fs::write(&path, &yaml).expect("write");
    let out = s.cli(&["apply", "-f", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad scope was accepted");
    assert!(
        stderr.contains(
            "(Upstream `fxt`): field `scope`: unknown scope `tenant`, expected `shared` or `task`"
        ),
        "{stderr}"
    );
    assert_eq!(s.cli_json(&["get", "upstreams", "--json"]), json!([]));
}
