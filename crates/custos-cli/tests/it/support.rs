//! The test harness: a `custos serve --dev` process on a free loopback port, its admin token,
//! a CLI runner with the right environment, and the external MCP servers tests use.

#![allow(
    dead_code,
    reason = "each test module uses a different part of the harness"
)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The debug `custos` binary cargo built for these tests.
pub fn custos_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_custos"))
}

/// The binary [`TestServer`] runs as the server: [`custos_bin`], or the build named by
/// `CUSTOS_TEST_SERVER_BIN` (to check that a regression test fails against an older build;
/// the CLI commands of the tests stay this build's).
pub fn server_bin() -> PathBuf {
    std::env::var_os("CUSTOS_TEST_SERVER_BIN").map_or_else(custos_bin, PathBuf::from)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Paths of the external MCP servers and SDK, installed by `scripts/install-test-deps.sh`
/// (run here if the environment does not already name them).
pub struct Deps {
    /// Python with the `mcp` SDK.
    pub python: String,
    /// The `mcp-server-time` executable.
    pub time_server: String,
    /// node.
    pub node: String,
    /// The filesystem server's entry script.
    pub fs_server: String,
    /// `@modelcontextprotocol/server-postgres`'s entry script.
    pub pg_server: String,
    /// Debian's Chromium.
    pub chromium: String,
    /// Its ChromeDriver.
    pub chromedriver: String,
    /// Node 22 (the conformance suite's).
    pub node22: String,
    /// The MCP conformance suite's entry script.
    pub conformance: String,
    /// The suite's reference server, its packages installed.
    pub conformance_server: String,
}

pub fn deps() -> &'static Deps {
    static DEPS: OnceLock<Deps> = OnceLock::new();
    DEPS.get_or_init(|| {
        let mut vars: HashMap<String, String> = HashMap::new();
        for k in [
            "CUSTOS_PY",
            "CUSTOS_TIME_SERVER",
            "CUSTOS_NODE",
            "CUSTOS_FS_SERVER",
            "CUSTOS_PG_SERVER",
            "CUSTOS_CHROMIUM",
            "CUSTOS_CHROMEDRIVER",
            "CUSTOS_NODE22",
            "CUSTOS_CONFORMANCE",
            "CUSTOS_CONFORMANCE_SERVER",
        ] {
            if let Ok(v) = std::env::var(k) {
                vars.insert(k.to_owned(), v);
            }
        }
        if vars.len() < 10 {
            let out = Command::new("bash")
                .arg(repo_root().join("scripts/install-test-deps.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/install-test-deps.sh");
            assert!(
                out.status.success(),
                "scripts/install-test-deps.sh failed: the external MCP servers are required"
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((k, v)) = line.split_once('=') {
                    vars.insert(k.to_owned(), v.trim_matches('\'').to_owned());
                }
            }
        }
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} not set by install-test-deps.sh"))
        };
        Deps {
            python: get("CUSTOS_PY"),
            time_server: get("CUSTOS_TIME_SERVER"),
            node: get("CUSTOS_NODE"),
            fs_server: get("CUSTOS_FS_SERVER"),
            pg_server: get("CUSTOS_PG_SERVER"),
            chromium: get("CUSTOS_CHROMIUM"),
            chromedriver: get("CUSTOS_CHROMEDRIVER"),
            node22: get("CUSTOS_NODE22"),
            conformance: get("CUSTOS_CONFORMANCE"),
            conformance_server: get("CUSTOS_CONFORMANCE_SERVER"),
        }
    })
}

/// A running `custos serve --dev`.
pub struct TestServer {
    child: Child,
    /// Its temporary directory (data dir is `dir/data`).
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The admin operator token.
    pub admin_token: String,
    log: PathBuf,
}

impl TestServer {
    /// Starts a server with a fresh data directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `serve` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra)
    }

    /// Starts a server with extra `serve` arguments and environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in_with_env(dir, extra, env)
    }

    /// Starts a server over an existing directory (for restart tests).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_in_with_env(dir, extra, &[])
    }

    /// Starts a server over an existing directory with extra environment variables.
    pub fn start_in_with_env(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let mut child = Command::new(server_bin())
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            // Failed authentications are summed per window; a short one lets tests see them
            // (an environment variable, so builds without the option still start).
            .env("CUSTOS_AUTH_FAILURE_WINDOW", "1s")
            // A held call is answered `approval_pending` at once unless a test asks for a
            // hold (`--approval-hold`, which overrides this).
            .env("CUSTOS_APPROVAL_HOLD", "0s")
            // An empty registry, not the default tier bundle, unless a test asks for it.
            .env("CUSTOS_EMPTY", "true")
            .args(extra)
            .env("RUST_LOG", "info,custos_gateway=debug")
            .env_remove("CUSTOS_TOKEN")
            .env_remove("CUSTOS_ADDR")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start custos serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).expect("log file");
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write as _;
                let _ = writeln!(file, "{line}");
                if !sent && let Some(rest) = line.strip_prefix("custos listening on ") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let admin_token = std::fs::read_to_string(data.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned();
        Self {
            child,
            dir,
            addr,
            admin_token,
            log,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir().join("custos.db")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this server with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.admin_token, args)
    }

    /// Runs the CLI with a given operator token.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(custos_bin())
            .args(args)
            .env("CUSTOS_ADDR", &self.addr)
            .env("CUSTOS_TOKEN", token)
            .current_dir(self.dir.path())
            .output()
            .expect("run custos")
    }

    /// Runs the CLI, asserts success, and parses its stdout as JSON.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "custos {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "custos {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Applies YAML text (written to a file in the test directory).
    pub fn apply(&self, yaml: &str) -> Value {
        let path = self
            .dir
            .path()
            .join(format!("apply-{}.yaml", fastrand_suffix()));
        std::fs::write(&path, yaml).expect("write yaml");
        self.cli_json(&["apply", "-f", path.to_str().expect("utf-8 path"), "--json"])
    }

    /// Generates an agent key in the test directory; returns (key path, public key PEM).
    pub fn keygen(&self, name: &str) -> (PathBuf, String) {
        let path = self.dir.path().join(format!("{name}.key"));
        let v = self.cli_json(&[
            "agent",
            "keygen",
            "--out",
            path.to_str().expect("utf-8"),
            "--json",
        ]);
        (
            path,
            v["public_key"].as_str().expect("public_key").to_owned(),
        )
    }

    /// Starts a task and returns its id.
    pub fn start_task(&self, agent: &str, template: &str) -> String {
        let v = self.cli_json(&[
            "task",
            "start",
            "--agent",
            agent,
            "--template",
            template,
            "--on-behalf-of",
            "alice@example.com",
            "--json",
        ]);
        v["task_id"].as_str().expect("task_id").to_owned()
    }

    /// Exchanges the agent key for a task token.
    pub fn task_token(&self, task: &str, key: &Path) -> String {
        let v = self.cli_json(&[
            "task",
            "token",
            "--task",
            task,
            "--agent-key",
            key.to_str().expect("utf-8"),
            "--json",
        ]);
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// The MCP endpoint URL.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.addr)
    }

    /// Stops the server with SIGTERM and waits.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fastrand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs `work` (which opens a second connection to a server's database) to its end.
fn on_database<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(work)
}

fn database_url(s: &TestServer) -> String {
    format!("sqlite:{}", s.db_path().display())
}

/// Runs SQL statements on a server's database file from a second connection; the first
/// column of the first row of the last statement, when it is an integer.
pub fn sql(s: &TestServer, statements: &str) -> Option<i64> {
    on_database(custos_test_support::tamper::sql_at(
        &database_url(s),
        statements,
    ))
}

/// Runs SQL (several statements, triggers allowed) on a server's database file from a second
/// connection.
pub fn sql_exec(s: &TestServer, statements: &str) {
    on_database(custos_test_support::tamper::exec_at(
        &database_url(s),
        statements,
    ));
}

/// The failed authentications on record: (summary records, failures they sum).
pub fn auth_failures_on_record(s: &TestServer) -> (i64, i64) {
    let records = sql(
        s,
        "SELECT COUNT(*) FROM audit_log WHERE kind = 'auth_failures'",
    )
    .unwrap_or(0);
    let failures = sql(
        s,
        "SELECT COALESCE(SUM(json_extract(detail, '$.count')), 0) FROM audit_log WHERE kind = 'auth_failures'",
    )
    .unwrap_or(0);
    (records, failures)
}

/// A blocking MCP-over-HTTP client for raw protocol tests (JSON in, status/headers/JSON out).
pub struct RawMcp {
    /// The endpoint.
    pub url: String,
    /// The bearer token.
    pub token: Option<String>,
    http: reqwest::blocking::Client,
}

/// One raw answer.
pub struct RawReply {
    /// HTTP status.
    pub status: u16,
    /// Headers, lowercase names.
    pub headers: HashMap<String, String>,
    /// The body as JSON (Null when empty or not JSON).
    pub body: Value,
}

impl RawMcp {
    pub fn new(url: &str, token: Option<&str>) -> Self {
        Self {
            url: url.to_owned(),
            token: token.map(str::to_owned),
            http: reqwest::blocking::Client::new(),
        }
    }

    /// POSTs a raw body with extra headers.
    pub fn post_raw(&self, body: &[u8], headers: &[(&str, &str)]) -> RawReply {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_vec());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().expect("POST /mcp");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let text = resp.text().unwrap_or_default();
        RawReply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// POSTs one JSON-RPC message.
    pub fn post(&self, msg: &Value, headers: &[(&str, &str)]) -> RawReply {
        self.post_raw(msg.to_string().as_bytes(), headers)
    }

    /// Initializes a session-era session and returns its id.
    pub fn initialize(&self) -> String {
        let r = self.post(
            &serde_json::json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"0"}}}),
            &[],
        );
        assert_eq!(r.status, 200, "initialize: {}", r.body);
        r.headers.get("mcp-session-id").expect("session id").clone()
    }

    /// Sends a request in an initialized session and reads the answer as an event stream:
    /// every JSON-RPC message on it (the notifications, then the answer).
    pub fn call_streamed(&self, session: &str, method: &str, params: Value) -> Vec<Value> {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25")
            .body(
                serde_json::json!({"jsonrpc":"2.0","id":8,"method":method,"params":params})
                    .to_string(),
            );
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let text = req.send().expect("POST /mcp").text().unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("JSON data"))
            .collect()
    }

    /// Sends a request in an initialized session.
    pub fn call(&self, session: &str, method: &str, params: Value) -> RawReply {
        self.post(
            &serde_json::json!({"jsonrpc":"2.0","id":7,"method":method,"params":params}),
            &[
                ("mcp-session-id", session),
                ("mcp-protocol-version", "2025-11-25"),
            ],
        )
    }
}

/// The path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// YAML registering the fixture stdio upstream `fx`, a template over it and an agent.
pub fn fixture_yaml(agent: &str, public_key: &str, timeout: &str) -> String {
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        r#"kind: Upstream
name: fx
command: [python3, "{script}"]
timeout: {timeout}
tiers: {{ echo: 1, hang: 1, crash: 1, whoami: 2, wipe: 4, publish: 3, sleep: 1, touch: 1, fail: 1, "ns.tool/v2": 1, progress: 1, ask: 1, grow: 1, grown: 1, bump: 1 }}
default_tier: 3
---
kind: Template
name: fx-all
ttl: 10m
tools: ["fx__*"]
---
kind: Template
name: fx-echo
ttl: 10m
tools: [fx__echo]
---
kind: Agent
name: {agent}
owner: test@example.com
archetype: automation
templates: [fx-all, fx-echo]
public_key: |
{indented}"#,
        script = fixture("stdio_fixture.py").display()
    )
}
