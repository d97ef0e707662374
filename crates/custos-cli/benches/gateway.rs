//! The latency Custos adds to an allowed `tools/call`, and calls per second.
//!
//! ```text
//! cargo bench -p custos-cli --bench gateway
//! ```
//!
//! One process holds a minimal HTTP MCP upstream (axum, stateless 2026-07-28 era, `echo`
//! answers at once) and the benchmark client (one `reqwest::Client`). The release `custos`
//! binary runs beside it on a fresh data directory, in `--dev` mode, with durable audit (every
//! allowed call's record committed before the answer). The client calls the upstream directly
//! and through the gateway, alternating call by call so both see the same machine.
//!
//! Reported: sequential p50/p99 per target and the added latency (gateway minus direct, per
//! round, median over rounds); the gateway process's CPU time and context switches per call
//! (from `/proc`, steadier than wall-clock figures on a shared machine); closed-loop calls/s
//! at several concurrencies, with p50/p99 and CPU per call. Every answer is checked (a
//! successful `tools/call` result), and at the end the audit chain must verify and hold at
//! least one record per answered call.
//!
//! Knobs (environment): `BENCH_N` sequential calls per target per round (default 2000),
//! `BENCH_ROUNDS` rounds (default 5), `BENCH_SECS` seconds per throughput run (default 2),
//! `BENCH_TP_ROUNDS` throughput runs per target and concurrency (default 3), `BENCH_CONC`
//! concurrencies (default `16,32,64`), `BENCH_DURABILITY` `process`, `power` or
//! `process,power` (default `process`), `BENCH_LIST` (N > 1: the upstream lists N tools and
//! `tools/list` latency is measured first), `BENCH_BASELINE_BIN` another `custos` binary to run
//! side by side as `baseline/…` targets (to compare two builds under the same conditions),
//! `BENCH_GATEWAY_ENV` and `BENCH_BASELINE_ENV` extra environment for either gateway process
//! (`K=V,K2=V2`, e.g. `TOKIO_WORKER_THREADS=1`), `BENCH_PROGRESS` (N > 0: a call that asks for
//! progress is answered with N `notifications/progress` on an event stream before its result,
//! and the latency each relayed notification adds is measured first).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    reason = "a benchmark binary: panics are failures, output is the point"
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

const MODERN: &str = "2026-07-28";
const SESSION_VERSION: &str = "2025-11-25";

// ---------------------------------------------------------------------------------------------
// The upstream: a minimal stateless-era MCP server.

async fn upstream_mcp(headers: HeaderMap, body: Bytes) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(id) = msg.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response(); // a notification
    };
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    if headers.get("mcp-method").and_then(|v| v.to_str().ok()) != Some(method) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"jsonrpc":"2.0","id":id,"error":{"code":-32020,"message":"mcp-method mismatch"}})),
        )
            .into_response();
    }
    let result = match method {
        "server/discover" => json!({
            "supportedVersions": [MODERN],
            "capabilities": { "tools": {} },
            "resultType": "complete",
            "_meta": { "io.modelcontextprotocol/serverInfo": { "name": "bench-echo", "version": "1" } },
        }),
        "tools/list" => json!({ "tools": listed_tools(), "resultType": "complete" }),
        "tools/call" => {
            let text = msg
                .pointer("/params/arguments/text")
                .cloned()
                .unwrap_or(Value::Null);
            let result = json!({ "content": [{ "type": "text", "text": text }], "isError": false, "resultType": "complete" });
            if let Some(token) = msg.pointer("/params/_meta/progressToken") {
                return progress_stream(&id, token, result);
            }
            result
        }
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"Method not found"}})),
            )
                .into_response();
        }
    };
    axum::Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

/// `BENCH_PROGRESS` progress notifications, then the result, as one event stream.
fn progress_stream(id: &Value, token: &Value, result: Value) -> Response {
    let n: u64 = env_or("BENCH_PROGRESS", 0);
    let mut body = String::new();
    for i in 1..=n {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                          "params": {"progressToken": token, "progress": i, "total": n}});
        body.push_str(&format!("event: message\ndata: {note}\n\n"));
    }
    let answer = json!({ "jsonrpc": "2.0", "id": id, "result": result });
    body.push_str(&format!("event: message\ndata: {answer}\n\n"));
    ([("content-type", "text/event-stream")], body).into_response()
}

/// The upstream's tools: `echo`, plus `BENCH_LIST - 1` more (`tool_1`, …) when `BENCH_LIST`
/// asks for a long list (the `tools/list` measurement).
fn listed_tools() -> Value {
    static TOOLS: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let n: usize = env_or("BENCH_LIST", 1).max(1);
            let schema = json!({ "type": "object", "properties": { "text": { "type": "string" } } });
            let mut tools = vec![json!({ "name": "echo", "description": "Returns its text.", "inputSchema": schema })];
            for i in 1..n {
                tools.push(json!({
                    "name": format!("tool_{i}"),
                    "description": "A tool of the long list: read the file at the given path and return its contents.",
                    "inputSchema": { "type": "object", "properties": { "path": { "type": "string" } } },
                    "annotations": { "readOnlyHint": true },
                }));
            }
            Value::Array(tools)
        })
        .clone()
}

async fn start_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route("/mcp", post(upstream_mcp));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/mcp"), handle)
}

// ---------------------------------------------------------------------------------------------
// The gateway: the release `custos` binary.

mod common;
use common::Gateway;

/// Registers the upstream, a template and an agent; starts a task; returns its token.
fn provision(g: &Gateway, upstream_url: &str) -> String {
    let yaml = format!(
        "kind: Upstream\nname: bench\nurl: {upstream_url}\ntimeout: 10s\ntiers:\n  echo: 1\ndefault_tier: 1\n\
         ---\nkind: Template\nname: bench\nttl: 30m\ntools: [\"bench__*\"]\n\
         ---\nkind: Agent\nname: bench-agent\nowner: bench@example.com\narchetype: internal-ops\n\
         templates: [bench]\npublic_key_file: agent.pub\n"
    );
    g.task_token(&yaml, "bench-agent", "bench")
}

// ---------------------------------------------------------------------------------------------
// The client: one reqwest client, one request shape, three targets.

#[derive(Clone)]
struct Target {
    label: String,
    url: String,
    tool: &'static str,
    /// The bearer token (sent to the upstream too, so both requests have the same shape).
    token: Arc<str>,
    /// `Some(session id)`: the session era; `None`: the stateless era.
    session: Option<String>,
    /// The gateway process, or `None` for direct calls.
    pid: Option<String>,
    /// Successful calls (through a gateway, each must have an audit record).
    ok: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
}

impl Client {
    /// A JSON-RPC request of `method`; in the stateless era its params carry the `_meta`
    /// envelope.
    fn body(target: &Target, id: u64, method: &str, mut params: Value) -> String {
        if target.session.is_none() {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": { "name": "bench", "version": "1" },
            });
        }
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string()
    }

    /// Sends one request with the target's era headers; the status, the parsed answer, and
    /// the time from sending to the last byte.
    async fn exchange(
        &self,
        target: &Target,
        method: &'static str,
        body: String,
    ) -> Result<(u16, Value, Duration), String> {
        let started = Instant::now();
        let mut req = self
            .http
            .post(&target.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(&*target.token)
            .body(body);
        req = match &target.session {
            Some(sid) => req
                .header("mcp-session-id", sid.as_str())
                .header("mcp-protocol-version", SESSION_VERSION),
            None if method == "tools/call" => req
                .header("mcp-protocol-version", MODERN)
                .header("mcp-method", method)
                .header("mcp-name", target.tool),
            None => req
                .header("mcp-protocol-version", MODERN)
                .header("mcp-method", method),
        };
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok((status, v, elapsed))
    }

    /// One `tools/list`; `Ok(elapsed)` when it lists at least `min` tools.
    async fn list(&self, target: &Target, id: u64, min: usize) -> Result<Duration, String> {
        let body = Self::body(target, id, "tools/list", json!({}));
        let (_, v, elapsed) = self.exchange(target, "tools/list", body).await?;
        let listed = v
            .pointer("/result/tools")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if listed < min {
            return Err(format!("listed {listed} tools, expected {min}: {v}"));
        }
        Ok(elapsed)
    }

    /// One `tools/call`; `Ok(elapsed)` when the answer is a successful result.
    async fn call(&self, target: &Target, id: u64) -> Result<Duration, String> {
        let params = json!({ "name": target.tool, "arguments": { "text": "hello, custos" } });
        let body = Self::body(target, id, "tools/call", params);
        let (status, v, elapsed) = self.exchange(target, "tools/call", body).await?;
        if status != 200 || v.pointer("/result/content/0/text").is_none() {
            return Err(format!("HTTP {status}: {v}"));
        }
        target.ok.fetch_add(1, Ordering::Relaxed);
        Ok(elapsed)
    }

    /// One `tools/call` asking for progress; `Ok(elapsed)` when the answer is an event stream
    /// of `notices` progress notifications under the client's token, then the result.
    async fn call_progress(
        &self,
        target: &Target,
        id: u64,
        notices: usize,
    ) -> Result<Duration, String> {
        let params = json!({ "name": target.tool, "arguments": { "text": "hello, custos" },
                             "_meta": { "progressToken": "bench" } });
        let mut body: Value =
            serde_json::from_str(&Self::body(target, id, "tools/call", params)).unwrap();
        if target.session.is_none() {
            body["params"]["_meta"]["progressToken"] = "bench".into();
        }
        let started = Instant::now();
        let mut req = self
            .http
            .post(&target.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(&*target.token)
            .body(body.to_string());
        req = match &target.session {
            Some(sid) => req
                .header("mcp-session-id", sid.as_str())
                .header("mcp-protocol-version", SESSION_VERSION),
            None => req
                .header("mcp-protocol-version", MODERN)
                .header("mcp-method", "tools/call")
                .header("mcp-name", target.tool),
        };
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        let messages: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim_start()).ok())
            .collect();
        let progress = messages
            .iter()
            .filter(|m| {
                m["method"] == "notifications/progress" && m["params"]["progressToken"] == "bench"
            })
            .count();
        let answered = messages
            .last()
            .is_some_and(|m| m.pointer("/result/content/0/text").is_some());
        if progress != notices || !answered {
            return Err(format!(
                "{progress} of {notices} notifications; {text:.300}"
            ));
        }
        target.ok.fetch_add(1, Ordering::Relaxed);
        Ok(elapsed)
    }

    async fn initialize(&self, url: &str, token: &str) -> String {
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .body(
                json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":SESSION_VERSION,"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "initialize failed");
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .unwrap()
            .to_owned();
        let _ = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .header("mcp-session-id", sid.as_str())
            .header("mcp-protocol-version", SESSION_VERSION)
            .body(json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string())
            .send()
            .await
            .unwrap();
        sid
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short vector"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median_f(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

#[allow(clippy::cast_precision_loss, reason = "nanoseconds to milliseconds")]
fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Per round and target: (p50, p99) in ms.
struct SeqRound {
    p50: Vec<f64>,
    p99: Vec<f64>,
}

/// `tools/list` of `tools` tools, one at a time, targets alternating: p50 and p99 per target
/// and what the gateway adds (medians over 5 rounds of 500).
async fn list_latency(client: &Client, targets: &[Target], tools: usize) {
    // A page is 100 tools; the gateway lists at most that many per answer.
    let min = tools.min(100);
    let mut id = 5_000_000u64;
    for _ in 0..100 {
        for t in targets {
            id += 1;
            client.list(t, id, min).await.unwrap();
        }
    }
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut p99s: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..5 {
        let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(500); targets.len()];
        for i in 0..500 {
            for k in 0..targets.len() {
                let t = (i + k) % targets.len();
                id += 1;
                let d = client.list(&targets[t], id, min).await.unwrap();
                samples[t].push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            }
        }
        for (t, s) in samples.iter_mut().enumerate() {
            s.sort_unstable();
            p50s[t].push(ms(percentile(s, 50.0)));
            p99s[t].push(ms(percentile(s, 99.0)));
        }
    }
    println!("tools/list of {tools} upstream tools (ms, median over 5 rounds of 500):");
    let direct = median_f(&mut p50s[0].clone());
    for (t, tg) in targets.iter().enumerate() {
        let p50 = median_f(&mut p50s[t]);
        let p99 = median_f(&mut p99s[t]);
        println!(
            "  {:<20} p50 {p50:.3}  p99 {p99:.3}  added p50 {:.3}",
            tg.label,
            p50 - direct
        );
    }
}

/// A call that streams `notices` progress notifications against a plain call, one at a time,
/// targets alternating: what each relayed notification adds (medians over 5 rounds of 200).
async fn progress_latency(client: &Client, targets: &[Target], notices: usize) {
    let mut id = 7_000_000u64;
    for _ in 0..50 {
        for t in targets {
            id += 2;
            client.call_progress(t, id, notices).await.unwrap();
            client.call(t, id + 1).await.unwrap();
        }
    }
    let mut streamed: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut plain: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..5 {
        let mut s: Vec<Vec<u64>> = vec![Vec::new(); targets.len()];
        let mut p: Vec<Vec<u64>> = vec![Vec::new(); targets.len()];
        for i in 0..200 {
            for k in 0..targets.len() {
                let t = (i + k) % targets.len();
                id += 2;
                let d = client
                    .call_progress(&targets[t], id, notices)
                    .await
                    .unwrap();
                s[t].push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                let d = client.call(&targets[t], id + 1).await.unwrap();
                p[t].push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            }
        }
        for t in 0..targets.len() {
            s[t].sort_unstable();
            p[t].sort_unstable();
            streamed[t].push(ms(percentile(&s[t], 50.0)));
            plain[t].push(ms(percentile(&p[t], 50.0)));
        }
    }
    println!(
        "a call streaming {notices} progress notifications vs a plain call (p50 ms, median over 5 rounds of 200):"
    );
    let d_streamed = median_f(&mut streamed[0].clone());
    let d_plain = median_f(&mut plain[0].clone());
    for (t, tg) in targets.iter().enumerate() {
        let st = median_f(&mut streamed[t]);
        let pl = median_f(&mut plain[t]);
        #[allow(clippy::cast_precision_loss, reason = "a count")]
        let per = ((st - d_streamed) - (pl - d_plain)) * 1000.0 / notices as f64;
        println!(
            "  {:<20} streamed {st:.3}  plain {pl:.3}  added {:.3} / {:.3}  per notification {per:.2} us",
            tg.label,
            st - d_streamed,
            pl - d_plain
        );
    }
}

/// Sequential: one call at a time, targets alternating call by call.
async fn sequential(client: &Client, targets: &[Target], n: usize, rounds: usize) -> Vec<SeqRound> {
    let mut id = 1_000_000u64;
    // Warm-up: connections, caches, the upstream session in the gateway.
    for _ in 0..300 {
        for t in targets {
            id += 1;
            client.call(t, id).await.unwrap();
        }
    }
    let mut out = Vec::new();
    for r in 0..rounds {
        let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(n); targets.len()];
        for i in 0..n {
            // Rotate the order so no target always follows the same one.
            for k in 0..targets.len() {
                let t = (i + k) % targets.len();
                id += 1;
                let d = client.call(&targets[t], id).await.unwrap();
                samples[t].push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            }
        }
        let mut round = SeqRound {
            p50: Vec::new(),
            p99: Vec::new(),
        };
        for s in &mut samples {
            s.sort_unstable();
            round.p50.push(ms(percentile(s, 50.0)));
            round.p99.push(ms(percentile(s, 99.0)));
        }
        let line: Vec<String> = targets
            .iter()
            .enumerate()
            .map(|(t, tg)| {
                format!(
                    "{} p50 {:.3} p99 {:.3}",
                    tg.label, round.p50[t], round.p99[t]
                )
            })
            .collect();
        eprintln!("  round {}: {}", r + 1, line.join(" | "));
        out.push(round);
    }
    out
}

/// One throughput run.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
    errors: u64,
    /// Gateway process CPU per call, µs.
    gw_cpu: f64,
    /// Benchmark process (client and upstream) CPU per call, µs.
    bench_cpu: f64,
}

/// Closed loop: `conc` workers call `target` as fast as answers come, for `secs`.
async fn throughput(client: &Client, target: &Target, conc: usize, secs: f64) -> Run {
    let gw_pid = target.pid.as_deref().unwrap_or("0");
    let gw_before = cpu_secs(gw_pid);
    let self_before = cpu_secs("self");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..conc {
        let client = client.clone();
        let target = target.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(8192);
            let mut id = (w as u64) << 32;
            // Bounded even if `stop` were never set.
            for _ in 0..10_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                id += 1;
                match client.call(&target, id).await {
                    Ok(d) => lat.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("  {} error: {e}", target.label);
                        }
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let gw_cpu = cpu_secs(gw_pid) - gw_before;
    let bench_cpu = cpu_secs("self") - self_before;
    all.sort_unstable();
    #[allow(clippy::cast_precision_loss, reason = "a count")]
    let calls = all.len().max(1) as f64;
    Run {
        rate: calls / elapsed,
        p50: ms(percentile(&all, 50.0)),
        p99: ms(percentile(&all, 99.0)),
        errors: errors.load(Ordering::Relaxed),
        gw_cpu: gw_cpu * 1e6 / calls,
        bench_cpu: bench_cpu * 1e6 / calls,
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
/// `K=V,K2=V2` from an environment variable: extra environment for one gateway process.
fn gateway_env(var: &str) -> Vec<(String, String)> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Context switches (voluntary and not) of every thread of a process so far.
fn ctx_switches(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|st| {
            st.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown")
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_owned()))
        .unwrap_or_default();
    format!("{cpus} CPUs, {model}, MemTotal {mem}")
}

async fn bench_one(durability: &str, upstream_url: &str) {
    let n: usize = env_or("BENCH_N", 2000);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let secs: f64 = env_or("BENCH_SECS", 2.0);
    let tp_rounds: usize = env_or("BENCH_TP_ROUNDS", 3);
    let conc: Vec<usize> = std::env::var("BENCH_CONC")
        .unwrap_or_else(|_| "16,32,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    let client = Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap(),
    };
    let mut bins = vec![("gateway", PathBuf::from(env!("CARGO_BIN_EXE_custos")))];
    if let Some(b) = std::env::var_os("BENCH_BASELINE_BIN").filter(|b| !b.is_empty()) {
        bins.push(("baseline", PathBuf::from(b)));
    }
    let mut gateways = Vec::new();
    let mut targets = Vec::new();
    for (name, bin) in &bins {
        let env = gateway_env(&format!("BENCH_{}_ENV", name.to_uppercase()));
        let gw = Gateway::start(bin, durability, &env);
        let token: Arc<str> = provision(&gw, upstream_url).into();
        let url = format!("{}/mcp", gw.addr);
        let sid = client.initialize(&url, &token).await;
        let pid = gw.child.id().to_string();
        let ok = Arc::new(AtomicU64::new(0));
        if targets.is_empty() {
            // Direct calls carry the same headers (the upstream ignores the token).
            targets.push(Target {
                label: "direct".into(),
                url: upstream_url.to_owned(),
                tool: "echo",
                token: token.clone(),
                session: None,
                pid: None,
                ok: Arc::new(AtomicU64::new(0)),
            });
        }
        for (era, session) in [("session", Some(sid)), ("stateless", None)] {
            targets.push(Target {
                label: format!("{name}/{era}"),
                url: url.clone(),
                tool: "bench__echo",
                token: token.clone(),
                session,
                pid: Some(pid.clone()),
                ok: ok.clone(),
            });
        }
        gateways.push((gw, ok));
    }

    println!();
    println!("== custos gateway benchmark (audit durability: {durability}) ==");
    println!("machine: {}", machine());
    for (name, bin) in &bins {
        let env = std::env::var(format!("BENCH_{}_ENV", name.to_uppercase())).unwrap_or_default();
        println!("{name}: {} {env}", bin.display());
    }
    println!(
        "sequential: {rounds} rounds x {n} calls per target, targets alternating call by call"
    );
    // Before the CPU and context-switch counters start: only plain calls are counted.
    let progress_n: usize = env_or("BENCH_PROGRESS", 0);
    if progress_n > 0 {
        // A baseline build may predate the relay: measured on this build only.
        let relaying: Vec<Target> = targets
            .iter()
            .filter(|t| !t.label.starts_with("baseline"))
            .cloned()
            .collect();
        progress_latency(&client, &relaying, progress_n).await;
    }
    let gw_pids: Vec<String> = gateways
        .iter()
        .map(|(g, _)| g.child.id().to_string())
        .collect();
    let before: Vec<(f64, u64)> = gw_pids
        .iter()
        .map(|p| (cpu_secs(p), ctx_switches(p)))
        .collect();
    let ok_before: Vec<u64> = gateways
        .iter()
        .map(|(_, ok)| ok.load(Ordering::Relaxed))
        .collect();
    let list_n: usize = env_or("BENCH_LIST", 1);
    if list_n > 1 {
        list_latency(&client, &targets, list_n).await;
    }
    let seq = sequential(&client, &targets, n, rounds).await;
    let seq_cost: Vec<String> = gw_pids
        .iter()
        .zip(&before)
        .zip(gateways.iter().zip(&ok_before))
        .zip(&bins)
        .map(|(((p, b), ((_, ok), ok0)), (name, _))| {
            #[allow(clippy::cast_precision_loss, reason = "counts")]
            let calls = (ok.load(Ordering::Relaxed) - ok0).max(1) as f64;
            #[allow(clippy::cast_precision_loss, reason = "counts")]
            let switches = (ctx_switches(p) - b.1) as f64;
            format!(
                "{name}: {:.1} us CPU and {:.1} context switches per call",
                (cpu_secs(p) - b.0) * 1e6 / calls,
                switches / calls
            )
        })
        .collect();
    let med = |f: &dyn Fn(&SeqRound) -> f64| {
        let mut v: Vec<f64> = seq.iter().map(f).collect();
        median_f(&mut v)
    };
    println!();
    println!("sequential, gateway process: {}", seq_cost.join("; "));
    println!(
        "Sequential latency (ms), median over rounds (added and x: gateway vs direct, per round):"
    );
    println!(
        "| {:<18} | {:>8} | {:>8} | {:>11} | {:>11} | {:>9} | {:>9} |",
        "target", "p50", "p99", "added p50", "added p99", "p50 x", "p99 x"
    );
    println!(
        "|{:-<20}|{:->10}|{:->10}|{:->13}|{:->13}|{:->11}|{:->11}|",
        "", "", "", "", "", "", ""
    );
    for (t, tg) in targets.iter().enumerate() {
        let p50 = med(&|r| r.p50[t]);
        let p99 = med(&|r| r.p99[t]);
        // Added latency and ratio per round (side by side), then the median over rounds.
        let a50 = med(&|r| r.p50[t] - r.p50[0]);
        let a99 = med(&|r| r.p99[t] - r.p99[0]);
        let x50 = med(&|r| r.p50[t] / r.p50[0]);
        let x99 = med(&|r| r.p99[t] / r.p99[0]);
        println!(
            "| {:<18} | {:>8.3} | {:>8.3} | {:>11.3} | {:>11.3} | {:>9.2} | {:>9.2} |",
            tg.label, p50, p99, a50, a99, x50, x99
        );
    }

    println!();
    println!(
        "Throughput (closed loop, {secs} s per run, targets alternating run by run, median of {tp_rounds} runs):"
    );
    println!(
        "| {:>4} | {:<18} | {:>9} | {:>8} | {:>8} | {:>7} | {:>12} | {:>14} | {:>6} |",
        "conc",
        "target",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "x direct",
        "gw CPU/call",
        "bench CPU/call",
        "errors"
    );
    println!(
        "|{:->6}|{:-<20}|{:->11}|{:->10}|{:->10}|{:->10}|{:->14}|{:->16}|{:->8}|",
        "", "", "", "", "", "", "", "", ""
    );
    for &c in &conc {
        let mut res: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
        for _ in 0..tp_rounds {
            for (t, tg) in targets.iter().enumerate() {
                res[t].push(throughput(&client, tg, c, secs).await);
            }
        }
        for (t, tg) in targets.iter().enumerate() {
            let pick = |f: &dyn Fn(&Run) -> f64| {
                let mut v: Vec<f64> = res[t].iter().map(f).collect();
                median_f(&mut v)
            };
            let mut ratio: Vec<f64> = (0..tp_rounds)
                .map(|r| res[t][r].rate / res[0][r].rate)
                .collect();
            let errs: u64 = res[t].iter().map(|r| r.errors).sum();
            let gw_cpu = if tg.pid.is_some() {
                format!("{:>9.1} us", pick(&|r| r.gw_cpu))
            } else {
                "-".to_owned()
            };
            println!(
                "| {:>4} | {:<18} | {:>9.0} | {:>8.3} | {:>8.3} | {:>8.2} | {:>12} | {:>11.1} us | {:>6} |",
                c,
                tg.label,
                pick(&|r| r.rate),
                pick(&|r| r.p50),
                pick(&|r| r.p99),
                median_f(&mut ratio),
                gw_cpu,
                pick(&|r| r.bench_cpu),
                errs
            );
        }
    }
    println!();
    for ((gw, ok), (name, _)) in gateways.into_iter().zip(&bins) {
        let (chain_ok, records) = gw.audit_verify();
        let calls = ok.load(Ordering::Relaxed);
        println!(
            "{name} audit: chain verified = {chain_ok}; {records} records for {calls} answered calls (+ setup records)"
        );
        assert!(
            chain_ok && records >= calls,
            "every answered call must have its audit record"
        );
        gw.stop();
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (upstream_url, upstream) = start_upstream().await;
        let durabilities = std::env::var("BENCH_DURABILITY").unwrap_or_else(|_| "process".into());
        for d in durabilities
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            bench_one(d, &upstream_url).await;
        }
        upstream.abort();
    });
}
