//! Real clients, real upstreams: the Python `mcp` SDK client (in each of its three modes) talks
//! to the gateway, which talks to three real MCP servers — the filesystem server (node, stdio,
//! session era only), `mcp-server-time` (stdio, both eras) and `fixtures/http_upstream.py` (the
//! SDK's own Streamable HTTP server, both eras), whose request log shows what reached it.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::{TestServer, deps, fixture};

/// `fixtures/http_upstream.py`, running on a free loopback port; killed on drop.
pub(super) struct HttpUpstream {
    child: Child,
    pub(super) url: String,
    log: PathBuf,
}

impl HttpUpstream {
    pub(super) fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    pub(super) fn start_with(dir: &Path, extra: &[&str]) -> Self {
        let log = dir.join(format!("http-upstream-requests{}.jsonl", extra.len()));
        let stderr = std::fs::File::create(dir.join("http-upstream.stderr")).expect("stderr file");
        let mut child = Command::new(&deps().python)
            .arg(fixture("http_upstream.py"))
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start http_upstream.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line.trim().to_owned());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) if url.starts_with("http://127.0.0.1:") => Self { child, url, log },
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "http_upstream.py did not start ({other:?}): {}",
                    std::fs::read_to_string(dir.join("http-upstream.stderr")).unwrap_or_default()
                );
            }
        }
    }

    /// The raw request log.
    fn raw_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every HTTP request the upstream received, one JSON object each.
    pub(super) fn requests(&self) -> Vec<Value> {
        self.raw_log()
            .lines()
            .map(|l| serde_json::from_str(l).expect("request log line is JSON"))
            .collect()
    }

    /// The tool names of every `tools/call` that reached the upstream.
    fn called_tools(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r["rpc"] == "tools/call")
            .map(|r| r["tool"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway with three upstreams, a template over them and a task token.
struct World {
    server: TestServer,
    upstream: HttpUpstream,
    /// The filesystem server's only allowed directory.
    files: PathBuf,
    token: String,
}

const HELLO: &str = "hello from custos\nsecond line\n";

/// Exactly what the template lets the agent see: tier-4 tools and tools outside the template
/// are not listed (tier-3 tools in the template are listed; calling them is refused).
const LISTED: [&str; 5] = [
    "clock__get_current_time",
    "files__read_text_file",
    "files__write_file",
    "web__add",
    "web__shout",
];

fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("quote")
}

fn world() -> World {
    let server = TestServer::start();
    let files = server.dir.path().join("files");
    std::fs::create_dir(&files).expect("files dir");
    let files = files.canonicalize().expect("canonical files dir");
    std::fs::write(files.join("hello.txt"), HELLO).expect("hello.txt");
    let upstream = HttpUpstream::start(server.dir.path());
    let (key, public_key) = server.keygen("e2e-agent");
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    let d = deps();
    let yaml = format!(
        r#"kind: Upstream
name: files
command: [{node}, {fs_server}, {files}]
timeout: 60s
tiers: {{ read_text_file: 1, list_directory: 1, write_file: 3, move_file: 4 }}
default_tier: 2
---
kind: Upstream
name: clock
command: [{time_server}, --local-timezone, UTC]
timeout: 60s
tiers: {{ get_current_time: 1, convert_time: 1 }}
default_tier: 3
---
kind: Upstream
name: web
url: {url}
timeout: 60s
tiers: {{ add: 1, reverse: 1, shout: 3, delete_everything: 4 }}
default_tier: 3
---
kind: Template
name: e2e
ttl: 10m
tools: [files__read_text_file, files__write_file, files__move_file, clock__get_current_time,
        web__add, web__shout, web__delete_everything]
---
kind: Agent
name: e2e-agent
owner: test@example.com
archetype: automation
templates: [e2e]
public_key: |
{indented}"#,
        node = q(&d.node),
        fs_server = q(&d.fs_server),
        files = q(files.to_str().expect("utf-8")),
        time_server = q(&d.time_server),
        url = q(&upstream.url),
    );
    server.apply(&yaml);
    let task = server.start_task("e2e-agent", "e2e");
    let token = server.task_token(&task, &key);
    World {
        server,
        upstream,
        files,
        token,
    }
}

/// Runs `fixtures/mcp_client.py` (the SDK client) once; returns its JSON answer and the
/// protocol version it negotiated with the gateway.
fn sdk(w: &World, mode: &str, args: &[&str]) -> (Value, String) {
    let out = Command::new(&deps().python)
        .arg(fixture("mcp_client.py"))
        .args([w.server.mcp_url().as_str(), w.token.as_str(), mode])
        .args(args)
        .output()
        .expect("run mcp_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mcp_client.py {mode} {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        w.server.log()
    );
    let answer = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("mcp_client.py {mode} {args:?} printed no JSON: {stdout}"));
    let version = stderr
        .lines()
        .find_map(|l| l.strip_prefix("protocol_version="))
        .unwrap_or_else(|| panic!("mcp_client.py printed no protocol version: {stderr}"))
        .to_owned();
    (answer, version)
}

/// Calls a tool and returns the successful result, asserting it is not a refusal or error.
fn call_ok(w: &World, mode: &str, tool: &str, args: &Value) -> Value {
    let (v, _) = sdk(w, mode, &["call", tool, &args.to_string()]);
    let ok = v
        .get("ok")
        .unwrap_or_else(|| panic!("[{mode}] {tool} was refused: {v}"))
        .clone();
    assert_ne!(ok["isError"], true, "[{mode}] {tool} failed upstream: {ok}");
    ok
}

/// Calls a tool and asserts the gateway refused it with the Custos error and `reason`.
fn call_refused(w: &World, mode: &str, tool: &str, args: &Value, reason: &str) {
    let (v, _) = sdk(w, mode, &["call", tool, &args.to_string()]);
    let err = v
        .get("error")
        .unwrap_or_else(|| panic!("[{mode}] {tool} should be refused ({reason}), got {v}"));
    // A tool the task cannot see is an unknown tool (-32602); a visible one policy refuses
    // is Custos's -32010.
    let code = if matches!(
        reason,
        "tool_not_allowed" | "invalid_tool_name" | "unknown_upstream"
    ) {
        -32602
    } else {
        -32010
    };
    assert_eq!(err["code"], code, "[{mode}] {tool}: {err}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("custos: ")),
        "[{mode}] {tool}: {err}"
    );
    assert_eq!(err["data"]["reason"], reason, "[{mode}] {tool}: {err}");
}

/// The whole agent-side story in one client mode.
fn lists_and_calls_through_the_gateway(mode: &str) {
    let w = world();
    let expected_version = if mode == "legacy" {
        "2025-11-25"
    } else {
        "2026-07-28"
    };

    // tools/list: exactly what the template allows, across the three upstreams.
    let (listed, version) = sdk(&w, mode, &["list"]);
    assert_eq!(
        version, expected_version,
        "[{mode}] the client negotiated the wrong era with the gateway"
    );
    let mut names: Vec<String> = listed
        .as_array()
        .unwrap_or_else(|| panic!("[{mode}] list printed {listed}"))
        .iter()
        .map(|n| n.as_str().expect("tool name").to_owned())
        .collect();
    names.sort();
    assert_eq!(names, LISTED, "[{mode}] tools/list");

    // Allowed calls reach each upstream and return its real result.
    let hello = w.files.join("hello.txt");
    let r = call_ok(
        &w,
        mode,
        "files__read_text_file",
        &json!({ "path": hello.to_str().expect("utf-8") }),
    );
    assert_eq!(
        r["content"][0]["text"], HELLO,
        "[{mode}] read_text_file: {r}"
    );
    let r = call_ok(
        &w,
        mode,
        "clock__get_current_time",
        &json!({ "timezone": "UTC" }),
    );
    assert_eq!(
        r["structuredContent"]["timezone"], "UTC",
        "[{mode}] get_current_time: {r}"
    );
    assert!(
        r["structuredContent"]["datetime"]
            .as_str()
            .is_some_and(|d| d.ends_with("+00:00")),
        "[{mode}] get_current_time: {r}"
    );
    let r = call_ok(&w, mode, "web__add", &json!({ "a": 2, "b": 40 }));
    assert_eq!(r["structuredContent"]["total"], 42, "[{mode}] add: {r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("42")),
        "[{mode}] add: {r}"
    );

    // Refusals: outside the template, tier 4, tier 3 — on every upstream.
    let moved = w.files.join("moved.txt");
    let written = w.files.join("written.txt");
    call_refused(
        &w,
        mode,
        "web__reverse",
        &json!({ "text": "abc" }),
        "tool_not_allowed",
    );
    call_refused(
        &w,
        mode,
        "clock__convert_time",
        &json!({ "source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris" }),
        "tool_not_allowed",
    );
    call_refused(
        &w,
        mode,
        "files__list_directory",
        &json!({ "path": w.files.to_str().expect("utf-8") }),
        "tool_not_allowed",
    );
    call_refused(
        &w,
        mode,
        "web__delete_everything",
        &json!({}),
        "tier4_denied",
    );
    call_refused(
        &w,
        mode,
        "files__move_file",
        &json!({ "source": hello.to_str().expect("utf-8"), "destination": moved.to_str().expect("utf-8") }),
        "tier4_denied",
    );
    call_refused(
        &w,
        mode,
        "web__shout",
        &json!({ "text": "hi" }),
        "approval_pending",
    );
    call_refused(
        &w,
        mode,
        "files__write_file",
        &json!({ "path": written.to_str().expect("utf-8"), "content": "x" }),
        "approval_pending",
    );

    // What reached the upstreams: the allowed call did, the refused ones did not.
    let called = w.upstream.called_tools();
    assert!(
        called.iter().any(|t| t == "add"),
        "[{mode}] the allowed call never reached the HTTP upstream: {called:?}"
    );
    for refused in ["reverse", "delete_everything", "shout"] {
        assert!(
            !called.iter().any(|t| t == refused),
            "[{mode}] refused tool `{refused}` reached the HTTP upstream: {called:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&hello).expect("hello.txt still there"),
        HELLO
    );
    assert!(!moved.exists(), "[{mode}] the refused move_file ran");
    assert!(!written.exists(), "[{mode}] the refused write_file ran");
}

#[test]
fn sdk_client_legacy_mode_sees_and_calls_only_what_the_template_allows() {
    lists_and_calls_through_the_gateway("legacy");
}

#[test]
fn sdk_client_2026_mode_sees_and_calls_only_what_the_template_allows() {
    lists_and_calls_through_the_gateway("2026-07-28");
}

#[test]
fn sdk_client_auto_mode_sees_and_calls_only_what_the_template_allows() {
    lists_and_calls_through_the_gateway("auto");
}

#[test]
fn agent_token_never_reaches_an_upstream() {
    let w = world();
    for mode in ["legacy", "2026-07-28"] {
        let (listed, _) = sdk(&w, mode, &["list"]);
        assert!(listed.as_array().is_some_and(|l| !l.is_empty()), "{listed}");
        call_ok(&w, mode, "web__add", &json!({ "a": 1, "b": 1 }));
        call_refused(
            &w,
            mode,
            "web__delete_everything",
            &json!({}),
            "tier4_denied",
        );
    }
    let requests = w.upstream.requests();
    // Not vacuous: the gateway's requests (listing and the allowed calls) were logged.
    assert!(
        requests.iter().any(|r| r["rpc"] == "tools/list"),
        "{requests:?}"
    );
    assert!(
        w.upstream
            .called_tools()
            .iter()
            .filter(|t| *t == "add")
            .count()
            >= 2,
        "{requests:?}"
    );
    for r in &requests {
        if let Some(auth) = r["authorization"].as_str() {
            assert!(
                !auth.contains(&w.token),
                "the agent's task token reached the upstream in Authorization: {r}"
            );
        }
    }
    // Nowhere else either: no header, no body carries the token or its signature.
    let signature = w.token.rsplit('.').next().expect("token");
    assert!(signature.len() > 20, "task token is not a JWT: {}", w.token);
    let raw = w.upstream.raw_log();
    assert!(
        !raw.contains(&w.token) && !raw.contains(signature),
        "the agent's task token reached the upstream:\n{raw}"
    );
}

/// `upstream connected` lines from the server log: (upstream, version).
fn connected_versions(log: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let line = strip_ansi(line);
        if !line.contains("upstream connected") {
            continue;
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_owned())
        };
        if let (Some(u), Some(v)) = (field("upstream"), field("version")) {
            out.push((u, v));
        }
    }
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn gateway_speaks_the_newest_era_each_upstream_offers() {
    let w = world();
    // The agent speaks the session era; what the gateway speaks upstream must not follow it.
    sdk(&w, "legacy", &["list"]);
    call_ok(&w, "legacy", "web__add", &json!({ "a": 2, "b": 40 }));
    call_ok(
        &w,
        "legacy",
        "clock__get_current_time",
        &json!({ "timezone": "UTC" }),
    );
    let hello = w.files.join("hello.txt");
    call_ok(
        &w,
        "legacy",
        "files__read_text_file",
        &json!({ "path": hello.to_str().expect("utf-8") }),
    );

    let expected = [
        ("files", "2025-11-25"),
        ("clock", "2026-07-28"),
        ("web", "2026-07-28"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let connected = loop {
        let c = connected_versions(&w.server.log());
        if expected.iter().all(|(u, _)| c.iter().any(|(n, _)| n == u)) || Instant::now() > deadline
        {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (upstream, version) in expected {
        let seen: Vec<&str> = connected
            .iter()
            .filter(|(u, _)| u == upstream)
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(
            !seen.is_empty() && seen.iter().all(|v| *v == version),
            "upstream `{upstream}` should be connected at {version}, log says {seen:?}\nserver log:\n{}",
            w.server.log()
        );
    }

    // The HTTP upstream's own view: no handshake, every request in the 2026-07-28 era.
    let requests = w.upstream.requests();
    assert!(requests.iter().any(|r| r["tool"] == "add"), "{requests:?}");
    for r in &requests {
        assert_ne!(r["rpc"], "initialize", "the gateway sent a handshake: {r}");
        assert_eq!(
            r["protocol_version"], "2026-07-28",
            "a request to the HTTP upstream was not in the 2026-07-28 era: {r}"
        );
        assert!(
            r["body"]
                .as_str()
                .is_none_or(|b| b.contains("io.modelcontextprotocol/protocolVersion")),
            "a request without the 2026-07-28 envelope: {r}"
        );
    }
}

#[test]
fn http_upstream_without_the_stateless_era_gets_a_session() {
    let server = TestServer::start();
    let up = HttpUpstream::start_with(server.dir.path(), &["--legacy-only"]);
    let (key, public) = server.keygen("agent-old");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    server.apply(&format!(
        "kind: Upstream\nname: old\nurl: {}\ntiers: {{add: 1}}\n---\nkind: Template\nname: old-add\nttl: 5m\ntools: [old__add]\n---\nkind: Agent\nname: agent-old\nowner: t@example.com\narchetype: automation\ntemplates: [old-add]\npublic_key: |\n{indented}",
        up.url
    ));
    let task = server.start_task("agent-old", "old-add");
    let token = server.task_token(&task, &key);
    let mcp = super::support::RawMcp::new(&server.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    for _ in 0..2 {
        let r = mcp.call(
            &sid,
            "tools/call",
            json!({"name": "old__add", "arguments": {"a": 2, "b": 40}}),
        );
        assert_eq!(
            r.body["result"]["structuredContent"]["total"], 42,
            "{}",
            r.body
        );
    }
    let requests = up.requests();
    assert_eq!(
        requests[0]["rpc"], "server/discover",
        "the gateway probes the stateless era first: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r["rpc"] == "initialize"),
        "then falls back to the handshake: {requests:?}"
    );
    let calls: Vec<&Value> = requests
        .iter()
        .filter(|r| r["rpc"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 2);
    for c in calls {
        assert_eq!(c["protocol_version"], "2025-11-25", "{c}");
        assert!(
            c["headers"]["mcp-session-id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "calls carry the upstream session: {c}"
        );
    }
    assert!(
        connected_versions(&server.log()).contains(&("old".to_owned(), "2025-11-25".to_owned()))
    );
}
