//! A stdio upstream: a child process speaking newline-delimited JSON-RPC. Started on first
//! use, restarted on the next call after it dies or hangs, stopped on shutdown.

use std::collections::HashMap;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use custos_broker::{CallChannel, Injection, NoticeKind, UpstreamError};
use custos_core::{InjectTarget, StdioCommand};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, oneshot};

use super::{Era, discover_params, initialize_params, into_result, negotiated, offers_modern};
use crate::jsonrpc;

/// The longest line accepted from an upstream (16 MiB): a bigger message kills the connection.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// How much of one stderr line is logged, in characters.
const STDERR_LOGGED_CHARS: usize = 500;

/// How many bytes of one stderr line are kept for the log (enough for
/// [`STDERR_LOGGED_CHARS`] characters of any UTF-8); the rest of the line is discarded.
const STDERR_KEPT_BYTES: usize = STDERR_LOGGED_CHARS * 4;

/// The size of one read from an upstream's stderr.
const STDERR_CHUNK: usize = 64 * 1024;

/// Environment passed to children: enough to run, nothing of Custos's own.
const PASSED_ENV: [&str; 7] = ["PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "TZ"];

/// A request waiting for its answer, and where the upstream's notifications about it go.
struct Waiting {
    answer: oneshot::Sender<Value>,
    channel: Option<CallChannel>,
}

type Pending = Arc<std::sync::Mutex<HashMap<i64, Waiting>>>;

struct Conn {
    stdin: Mutex<ChildStdin>,
    child: Mutex<Child>,
    pending: Pending,
    next_id: AtomicI64,
    alive: Arc<AtomicBool>,
    era: std::sync::Mutex<Era>,
}

impl Conn {
    /// Stops the process and everything it started (its process group): SIGTERM, then
    /// SIGKILL after a short grace period. Wrappers such as `npx` leave their real server as a
    /// grandchild, which killing the child alone would orphan.
    async fn kill(&self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        self.alive.store(false, Ordering::SeqCst);
        let mut child = self.child.lock().await;
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        if let Some(pg) = group {
            let _ = killpg(pg, Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_millis(500), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        }
        if let Some(pg) = group {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }

    async fn send(&self, msg: &Value) -> Result<(), std::io::Error> {
        let mut line = msg.to_string();
        line.push('\n');
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    }

    async fn call(
        &self,
        name: &str,
        method: &str,
        mut params: Option<Value>,
        timeout: Duration,
        channel: Option<&CallChannel>,
    ) -> Result<Value, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        if let Some(c) = channel {
            let era = self.era.lock().map(|e| e.clone()).unwrap_or(Era::Modern);
            super::ask_for(&mut params, id, Some(c), &era);
        }
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                id,
                Waiting {
                    answer: tx,
                    channel: channel.filter(|c| c.relays()).cloned(),
                },
            );
        }
        let msg = jsonrpc::request(id, method, params);
        if let Err(e) = self.send(&msg).await {
            self.forget(id);
            self.alive.store(false, Ordering::SeqCst);
            return Err(UpstreamError::Failed(
                name.to_owned(),
                format!("write failed: {e}"),
            ));
        }
        let answer = tokio::time::timeout(timeout, rx);
        let answer = match channel {
            None => answer.await,
            Some(c) => tokio::select! {
                a = answer => a,
                () = c.cancel().cancelled() => {
                    // The upstream is told; its late answer, if any, finds no one waiting.
                    self.forget(id);
                    let note = jsonrpc::notification(
                        "notifications/cancelled",
                        Some(serde_json::json!({ "requestId": id, "reason": "cancelled by the agent" })),
                    );
                    let _ = self.send(&note).await;
                    return Err(UpstreamError::Cancelled(name.to_owned()));
                }
            },
        };
        match answer {
            Ok(Ok(response)) => into_result(name, response),
            Ok(Err(_)) => Err(UpstreamError::Failed(
                name.to_owned(),
                "the process exited".into(),
            )),
            Err(_) => {
                self.forget(id);
                Err(UpstreamError::Timeout(name.to_owned(), timeout))
            }
        }
    }

    fn forget(&self, id: i64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }
}

/// One stdio upstream.
pub struct StdioUpstream {
    name: String,
    command: StdioCommand,
    timeout: Duration,
    /// Credentials put into the process's environment and arguments, and cut out of what it
    /// writes to stderr.
    injection: Option<Arc<Injection>>,
    /// Whether log messages go to the one call in flight: only on a connection that serves
    /// one task, where they cannot be another task's.
    relay_logs: bool,
    /// What the connection claims, which era it may use, and where announcements go.
    connect: super::ConnectAs,
    conn: Mutex<Slot>,
}

/// The running process, if any; once stopped, none is started again.
#[derive(Default)]
struct Slot {
    conn: Option<Arc<Conn>>,
    stopped: bool,
}

impl StdioUpstream {
    /// An upstream that runs `command` when first used.
    pub fn new(name: &str, command: StdioCommand, timeout: Duration) -> Self {
        Self {
            name: name.to_owned(),
            command,
            timeout,
            injection: None,
            relay_logs: false,
            connect: super::ConnectAs::default(),
            conn: Mutex::new(Slot::default()),
        }
    }

    /// The same upstream, connected as `connect` says (what it claims the client can do,
    /// whether it must use the 2025 handshake, where its announcements go).
    #[must_use]
    pub fn connecting_as(mut self, connect: super::ConnectAs) -> Self {
        self.connect = connect;
        self
    }

    /// The same upstream, relaying the server's log messages and its requests of the client
    /// to the one call in flight when `relay` (a connection that serves one task: they cannot
    /// be another task's).
    #[must_use]
    pub fn relaying_logs(mut self, relay: bool) -> Self {
        self.relay_logs = relay;
        self
    }

    /// The same upstream, its processes started with `injection`'s credentials: environment
    /// variables set, arguments appended after the command's own, in the order listed.
    #[must_use]
    pub fn with_injection(mut self, injection: Option<Arc<Injection>>) -> Self {
        self.injection = injection;
        self
    }

    /// Sends one request, starting (or restarting) the process if needed. A timeout kills
    /// the process, so the next call starts a fresh one.
    ///
    /// # Errors
    /// [`UpstreamError`] when the process cannot start, dies, hangs or answers with an error.
    pub async fn request(
        &self,
        method: &str,
        params: Option<Value>,
    ) -> Result<Value, UpstreamError> {
        self.request_cancellable(method, params, None).await
    }

    /// [`StdioUpstream::request`] for a call the agent is waiting on: cancelled (the upstream
    /// told) when the channel's cancellation fires first, the upstream's notifications about
    /// it relayed into the channel.
    ///
    /// # Errors
    /// As [`StdioUpstream::request`], and [`UpstreamError::Cancelled`].
    pub async fn request_cancellable(
        &self,
        method: &str,
        params: Option<Value>,
        channel: Option<&CallChannel>,
    ) -> Result<Value, UpstreamError> {
        let conn = self.connection().await?;
        let era = conn
            .era
            .lock()
            .map(|e| e.clone())
            .unwrap_or(Era::Session(String::new()));
        let result = conn
            .call(
                &self.name,
                method,
                era.wrap_params(params),
                self.timeout,
                channel,
            )
            .await;
        if let Err(UpstreamError::Timeout(..)) = &result {
            tracing::warn!(upstream = %self.name, method, "upstream timed out; restarting it");
            conn.kill().await;
        }
        result
    }

    async fn connection(&self) -> Result<Arc<Conn>, UpstreamError> {
        let mut slot = self.conn.lock().await;
        if slot.stopped {
            // Stopped (its task ended or its spec changed) while this request was on its way.
            return Err(UpstreamError::Failed(
                self.name.clone(),
                "the connection was stopped".into(),
            ));
        }
        if let Some(c) = slot.conn.as_ref()
            && c.alive.load(Ordering::SeqCst)
        {
            return Ok(c.clone());
        }
        if let Some(old) = slot.conn.take() {
            old.kill().await;
        }
        let conn = self.spawn().await?;
        slot.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn spawn(&self) -> Result<Arc<Conn>, UpstreamError> {
        let fail = |m: String| UpstreamError::Failed(self.name.clone(), m);
        let (program, args) = (self.command.program(), self.command.args());
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .env_clear();
        for key in PASSED_ENV {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        for injected in self.injection.iter().flat_map(|i| i.values()) {
            match &injected.target {
                InjectTarget::Env(name) => {
                    cmd.env(name, injected.value.expose_secret());
                }
                InjectTarget::Arg => {
                    cmd.arg(injected.value.expose_secret());
                }
                // Refused on apply for a stdio upstream.
                InjectTarget::Header { .. } => {}
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot start `{program}`: {e}")))?;
        let stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        let stderr = child.stderr.take();
        tracing::info!(upstream = %self.name, pid = child.id(), "upstream process started");

        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let conn = Arc::new(Conn {
            stdin: Mutex::new(stdin),
            child: Mutex::new(child),
            pending: pending.clone(),
            next_id: AtomicI64::new(1),
            alive: alive.clone(),
            era: std::sync::Mutex::new(Era::Session(String::new())),
        });
        tokio::spawn(read_loop(
            self.name.clone(),
            stdout,
            pending,
            alive,
            Arc::downgrade(&conn),
            ReadLoop {
                relay_logs: self.relay_logs,
                tools_changed: self.connect.announcer.clone(),
            },
        ));
        if let Some(stderr) = stderr {
            tokio::spawn(drain_stderr(
                self.name.clone(),
                stderr,
                self.injection.clone(),
            ));
        }

        // Prefer the stateless era; fall back to the handshake on the same process. Requests
        // of the client need the session era's back-channel: a connection that claims the
        // client can answer some goes straight to the handshake.
        let probe = if self.connect.may_use_stateless() {
            conn.call(
                &self.name,
                "server/discover",
                Some(discover_params()),
                self.timeout,
                None,
            )
            .await
        } else {
            Ok(serde_json::json!({}))
        };
        let era = match probe {
            Ok(r) if offers_modern(&r) => Era::Modern,
            Ok(_) | Err(UpstreamError::Rpc { .. }) => {
                let init = conn
                    .call(
                        &self.name,
                        "initialize",
                        Some(initialize_params(self.connect.caps)),
                        self.timeout,
                        None,
                    )
                    .await;
                let version = match init {
                    Ok(r) => negotiated(&r, &self.name),
                    Err(e) => Err(e),
                };
                match version {
                    Ok(v) => {
                        let _ = conn
                            .send(&jsonrpc::notification("notifications/initialized", None))
                            .await;
                        Era::Session(v)
                    }
                    Err(e) => {
                        conn.kill().await;
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                conn.kill().await;
                return Err(e);
            }
        };
        tracing::info!(upstream = %self.name, version = era.version(), "upstream connected");
        if let Ok(mut g) = conn.era.lock() {
            *g = era;
        }
        Ok(conn)
    }

    /// Stops the process (killed and reaped before this returns); none is started again.
    pub async fn shutdown(&self) {
        let mut slot = self.conn.lock().await;
        slot.stopped = true;
        if let Some(c) = slot.conn.take() {
            c.kill().await;
        }
    }
}

/// Reads an upstream's stderr to its end and logs each line at debug level, so a chatty child
/// never blocks on a full pipe.
// INVARIANT: memory stays bounded by `STDERR_CHUNK + STDERR_KEPT_BYTES` whatever the child
// writes: a line longer than that is logged once, truncated, and the rest of it is dropped
// until the next newline.
async fn drain_stderr(
    name: String,
    mut stderr: impl tokio::io::AsyncRead + Unpin,
    injection: Option<Arc<Injection>>,
) {
    let mut chunk = vec![0u8; STDERR_CHUNK];
    let mut line = StderrLine {
        injection,
        ..StderrLine::default()
    };
    loop {
        let n = match stderr.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(upstream = %name, error = %e, "upstream stderr failed");
                break;
            }
        };
        for text in line.push(&chunk[..n]) {
            tracing::debug!(upstream = %name, line = %text, "upstream stderr");
        }
    }
    if let Some(text) = line.finish() {
        tracing::debug!(upstream = %name, line = %text, "upstream stderr");
    }
}

/// The start of the stderr line being read, at most [`STDERR_KEPT_BYTES`] of it.
#[derive(Default)]
struct StderrLine {
    kept: Vec<u8>,
    /// The line outgrew `kept` and was logged already: drop bytes until the next newline.
    skipping: bool,
    /// Credentials injected into the process, cut out of each line before it is escaped or
    /// truncated (either would leave a part of one behind).
    injection: Option<Arc<Injection>>,
}

impl StderrLine {
    /// Takes the next bytes read and returns the lines to log, each already truncated and
    /// escaped.
    fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let (part, rest) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            if !self.skipping {
                let room = STDERR_KEPT_BYTES - self.kept.len();
                if part.len() > room {
                    self.kept.extend_from_slice(&part[..room]);
                    out.push(self.take(true));
                    self.skipping = true;
                } else {
                    self.kept.extend_from_slice(part);
                }
            }
            if newline.is_some() {
                if !self.skipping {
                    out.push(self.take(false));
                }
                self.skipping = false;
            }
            bytes = rest;
        }
        out
    }

    /// The unterminated last line, if any, when the stream ends.
    fn finish(&mut self) -> Option<String> {
        (!self.skipping && !self.kept.is_empty()).then(|| self.take(false))
    }

    /// The kept line as loggable text: at most [`STDERR_LOGGED_CHARS`] characters, control
    /// characters escaped so a child cannot forge log lines or terminal sequences.
    fn take(&mut self, truncated: bool) -> String {
        let kept = self.kept.strip_suffix(b"\r").unwrap_or(&self.kept);
        let text = String::from_utf8_lossy(kept);
        let text = match &self.injection {
            Some(i) => std::borrow::Cow::Owned(i.redactor().redact(&text).into_owned()),
            None => text,
        };
        let mut out = String::new();
        let mut chars = text.chars();
        for c in chars.by_ref().take(STDERR_LOGGED_CHARS) {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        if truncated || chars.next().is_some() {
            out.push_str(" [truncated]");
        }
        self.kept.clear();
        out
    }
}

async fn read_loop(
    name: String,
    stdout: tokio::process::ChildStdout,
    pending: Pending,
    alive: Arc<AtomicBool>,
    conn: std::sync::Weak<Conn>,
    opts: ReadLoop,
) {
    let ReadLoop {
        relay_logs,
        tools_changed,
    } = opts;
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => break,
            Ok(_) if buf.len() > MAX_LINE => {
                tracing::warn!(upstream = %name, "upstream sent an oversized message; restarting it");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "upstream stdout failed");
                break;
            }
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
            tracing::debug!(upstream = %name, "non-JSON line from upstream ignored");
            continue;
        };
        let is_response = msg.get("method").is_none()
            && (msg.get("result").is_some() || msg.get("error").is_some());
        if is_response {
            let Some(id) = msg.get("id").and_then(Value::as_i64) else {
                continue;
            };
            let waiting = pending.lock().ok().and_then(|mut p| p.remove(&id));
            if let Some(w) = waiting {
                let _ = w.answer.send(msg);
            }
        } else if let (Some(id), Some(method)) =
            (msg.get("id"), msg.get("method").and_then(Value::as_str))
        {
            // A request from the upstream: ping answered here; a request of the client relayed
            // to the call it must be about, on its own task (the agent may take a while, and
            // this loop reads the answers of other calls meanwhile).
            let channel = relay_logs.then(|| sole_call(&pending)).flatten();
            let (id, method, params) = (id.clone(), method.to_owned(), msg.get("params").cloned());
            let conn = conn.clone();
            tokio::spawn(async move {
                let answer =
                    super::answer_for_client(&id, &method, params.as_ref(), channel.as_ref()).await;
                if let Some(c) = conn.upgrade() {
                    let _ = c.send(&answer).await;
                }
            });
        } else if let Some(method) = msg.get("method").and_then(Value::as_str) {
            tools_changed.notified(method, msg.get("params"));
            relay_notice(&pending, method, msg.get("params"), relay_logs).await;
        }
    }
    alive.store(false, Ordering::SeqCst);
    // Dropping the senders tells every waiting caller the process is gone.
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
    tracing::warn!(upstream = %name, "upstream process exited");
}

/// What the read loop does besides answering calls.
struct ReadLoop {
    /// Whether log messages and requests of the client go to the one call in flight.
    relay_logs: bool,
    /// Marked when the process says its tool list changed.
    tools_changed: super::Announcer,
}

/// The channel of the one call in flight, if exactly one is and it relays.
fn sole_call(pending: &Pending) -> Option<CallChannel> {
    let p = pending.lock().ok()?;
    if p.len() != 1 {
        return None;
    }
    p.values().next()?.channel.clone()
}

/// Relays a notification from the upstream to the call it is about: progress by its token
/// (the request id this client gave the upstream), a log message to the one call in flight
/// when `logs` (a stdio server's log messages name no request; with more than one in flight,
/// or on a connection shared by tasks, none can be told apart, and it is not relayed).
async fn relay_notice(pending: &Pending, method: &str, params: Option<&Value>, logs: bool) {
    let (kind, channel) = {
        let Ok(p) = pending.lock() else { return };
        let (kind, waiting) = match method {
            "notifications/progress" => {
                let token = params
                    .and_then(|p| p.get("progressToken"))
                    .and_then(Value::as_i64);
                (NoticeKind::Progress, token.and_then(|t| p.get(&t)))
            }
            "notifications/message" if logs && p.len() == 1 => (NoticeKind::Log, p.values().next()),
            _ => return,
        };
        (kind, waiting.and_then(|w| w.channel.clone()))
    };
    if let (Some(channel), Some(params)) = (channel, params) {
        channel.notify(kind, params.clone()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_split_across_reads_are_joined() {
        let mut line = StderrLine::default();
        assert!(line.push(b"hel").is_empty());
        assert_eq!(line.push(b"lo\r\nwor"), vec!["hello".to_owned()]);
        assert_eq!(
            line.push(b"ld\n\n"),
            vec!["world".to_owned(), String::new()]
        );
        assert_eq!(line.finish(), None);
        line.push(b"no newline at the end");
        assert_eq!(line.finish().as_deref(), Some("no newline at the end"));
    }

    #[test]
    fn a_stderr_line_without_end_is_logged_once_and_not_kept() {
        let mut line = StderrLine::default();
        let mut logged = Vec::new();
        for _ in 0..1000 {
            logged.extend(line.push(&[b'x'; 4096]));
            assert!(line.kept.len() <= STDERR_KEPT_BYTES);
        }
        assert_eq!(logged.len(), 1, "one truncated entry for the whole line");
        assert_eq!(
            logged[0],
            format!("{} [truncated]", "x".repeat(STDERR_LOGGED_CHARS))
        );
        assert_eq!(line.finish(), None, "the rest of the line is dropped");
        assert_eq!(line.push(b"tail\nnext\n"), vec!["next".to_owned()]);
    }

    #[test]
    fn stderr_control_characters_are_escaped() {
        let mut line = StderrLine::default();
        assert_eq!(
            line.push(b"\x1b[31mred\tx\n"),
            vec!["\\u{1b}[31mred\\tx".to_owned()]
        );
    }
}
