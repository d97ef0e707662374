//! Hostile input stays bounded: an upstream flooding its stderr cannot grow the server's
//! memory, and deeply nested YAML is refused at once without stalling the server.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::support::{RawMcp, TestServer, custos_bin, fixture};

/// The resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024
}

fn flood_yaml(agent: &str, public_key: &str) -> String {
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        r#"kind: Upstream
name: flood
command: [python3, "{script}"]
timeout: 120s
tiers: {{ flood: 1 }}
---
kind: Template
name: flood
ttl: 10m
tools: [flood__flood]
---
kind: Agent
name: {agent}
owner: test@example.com
archetype: automation
templates: [flood]
public_key: |
{indented}"#,
        script = fixture("stderr_flood.py").display()
    )
}

#[test]
fn an_upstream_flooding_stderr_without_newlines_does_not_grow_the_server() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-f");
    s.apply(&flood_yaml("agent-f", &public));
    let task = s.start_task("agent-f", "flood");
    let token = s.task_token(&task, &key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();

    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "flood__flood", "arguments": {"mb": 300}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["result"]["content"][0]["text"], "flooded 300 MB",
        "the call succeeds: {}",
        r.body
    );
    // The child wrote its answer only after all 300 MB went through the pipe, so the server
    // has read them all by now.
    let rss = rss_mib(s.pid());
    eprintln!("server resident memory after the flood: {rss} MiB");
    assert!(
        rss < 150,
        "the server holds {rss} MiB after an upstream wrote 300 MB of stderr"
    );
    // The line is still logged, cut short.
    let log = s.log();
    assert!(
        log.contains(&format!("{} [truncated]", "x".repeat(500))),
        "no truncated stderr line in the log"
    );
    assert!(
        !log.contains(&"x".repeat(501)),
        "more than 500 characters of one line logged"
    );
    // The upstream still works.
    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "flood__flood", "arguments": {"mb": 1}}),
    );
    assert_eq!(r.body["result"]["content"][0]["text"], "flooded 1 MB");
}

#[test]
fn deeply_nested_yaml_is_refused_at_once_and_the_server_keeps_answering() {
    let s = TestServer::start();
    let path = s.dir.path().join("deep.yaml");
    // 100 000 levels in 200 KB, under a mapping key: the shape that costs the YAML parser
    // quadratic time (a bare top-level `[[[` is cut short by its recursion limit).
    let deep = format!(
        "kind: Template\nname: t\ntools: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    std::fs::write(&path, deep).expect("write");
    let mut apply = Command::new(custos_bin())
        .args(["apply", "-f", path.to_str().expect("utf-8")])
        .env("CUSTOS_ADDR", &s.addr)
        .env("CUSTOS_TOKEN", &s.admin_token)
        .current_dir(s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run custos apply");
    // A generous bound: the point is that the server does not stall for minutes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while apply.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = apply.kill();
            let _ = apply.wait();
            panic!("`custos apply` of deeply nested YAML did not finish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = apply.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "deeply nested YAML accepted");
    assert!(
        stderr.contains("document 1: YAML nested deeper than 64 levels"),
        "unclear error: {stderr}"
    );

    let health = reqwest::blocking::Client::new()
        .get(format!("{}/healthz", s.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(
        s.cli_json(&["get", "templates", "--json"]),
        json!([]),
        "nothing applied"
    );
}
