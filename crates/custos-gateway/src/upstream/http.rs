//! An HTTP upstream (Streamable HTTP), in either protocol era, answering with JSON or SSE.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use custos_broker::{CallChannel, Injection, NoticeKind, UpstreamError};
use custos_core::InjectTarget;
use futures_util::StreamExt as _;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Era, discover_params, initialize_params, into_result, negotiated, offers_modern};
use crate::{MODERN_VERSION, jsonrpc};

/// The largest response body accepted from an upstream.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Session {
    era: Era,
    id: Option<String>,
}

/// One HTTP upstream.
pub struct HttpUpstream {
    name: String,
    /// Parsed once: parsing (with IDNA host processing) on every request costs CPU.
    url: Result<reqwest::Url, String>,
    timeout: Duration,
    client: reqwest::Client,
    session: Mutex<Option<Session>>,
    next_id: AtomicI64,
    /// Credential headers sent with every request (marked sensitive: never logged).
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// What the connection claims, which era it may use, and where announcements go.
    connect: super::ConnectAs,
    /// The task reading the session's standalone event stream, if one is open.
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

enum Reply {
    Message(Value),
    Accepted,
    Status(u16, Option<Value>),
}

impl HttpUpstream {
    /// An upstream at `url`.
    pub fn new(name: &str, url: &str, timeout: Duration, client: reqwest::Client) -> Self {
        Self {
            name: name.to_owned(),
            url: reqwest::Url::parse(url).map_err(|e| e.to_string()),
            timeout,
            client,
            session: Mutex::new(None),
            next_id: AtomicI64::new(1),
            headers: Vec::new(),
            connect: super::ConnectAs::default(),
            listener: std::sync::Mutex::new(None),
        }
    }

    /// The same upstream, connected as `connect` says (what it claims the client can do,
    /// whether it must use the 2025 handshake, where its announcements go).
    #[must_use]
    pub fn connecting_as(mut self, connect: super::ConnectAs) -> Self {
        self.connect = connect;
        self
    }

    /// The same upstream, each request carrying `injection`'s credentials as headers
    /// (`prefix` + value).
    ///
    /// # Errors
    /// A message naming the header whose value cannot be sent in a header.
    pub fn with_injection(mut self, injection: Option<&Injection>) -> Result<Self, String> {
        for injected in injection.iter().flat_map(|i| i.values()) {
            if let InjectTarget::Header { name, prefix } = &injected.target {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a header name"))?;
                let mut value = http::HeaderValue::from_str(&format!(
                    "{prefix}{}",
                    injected.value.expose_secret()
                ))
                .map_err(|_| {
                    format!("the credential for header `{name}` cannot be sent in a header")
                })?;
                value.set_sensitive(true);
                self.headers.push((name, value));
            }
        }
        Ok(self)
    }

    /// `req` with the credential headers.
    fn credentials(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        for (name, value) in &self.headers {
            req = req.header(name.clone(), value.clone());
        }
        req
    }

    fn fail(&self, m: impl Into<String>) -> UpstreamError {
        UpstreamError::Failed(self.name.clone(), m.into())
    }

    /// Sends one request, negotiating the era first if needed, and re-negotiating once if the
    /// upstream forgot the session.
    ///
    /// # Errors
    /// [`UpstreamError`] when the upstream is unreachable, too slow, or answers with an error.
    pub async fn request(
        &self,
        method: &str,
        params: Option<Value>,
    ) -> Result<Value, UpstreamError> {
        self.request_cancellable(method, params, None).await
    }

    /// [`HttpUpstream::request`] for a call the agent is waiting on: abandoned when the
    /// channel's cancellation fires first (the upstream is then sent `notifications/cancelled`
    /// for the request in flight); the upstream's notifications about it, on the response's
    /// event stream, relayed into the channel.
    ///
    /// # Errors
    /// As [`HttpUpstream::request`], and [`UpstreamError::Cancelled`].
    pub async fn request_cancellable(
        &self,
        method: &str,
        params: Option<Value>,
        channel: Option<&CallChannel>,
    ) -> Result<Value, UpstreamError> {
        let in_flight = std::sync::atomic::AtomicI64::new(-1);
        let work = async {
            for attempt in 0..2 {
                let session = self.session().await?;
                let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                in_flight.store(id, Ordering::SeqCst);
                let mut sent = session.era.wrap_params(params.clone());
                super::ask_for(&mut sent, id, channel, &session.era);
                let msg = jsonrpc::request(id, method, sent);
                let relay = channel.filter(|c| c.relays());
                match self
                    .post_raw(&session, &msg, method, params.as_ref(), relay)
                    .await?
                    .0
                {
                    Reply::Message(m) => return into_result(&self.name, m),
                    Reply::Status(404, _) if session.id.is_some() && attempt == 0 => {
                        tracing::info!(upstream = %self.name, "upstream session expired; reconnecting");
                        *self.session.lock().await = None;
                    }
                    Reply::Status(_, Some(m)) if m.get("error").is_some() => {
                        return into_result(&self.name, m);
                    }
                    Reply::Status(s, _) => return Err(self.fail(format!("HTTP status {s}"))),
                    Reply::Accepted => return Err(self.fail("answered a request with 202")),
                }
            }
            Err(self.fail("session could not be re-established"))
        };
        let bounded = tokio::time::timeout(self.timeout, work);
        let outcome = match channel {
            None => bounded.await,
            Some(c) => tokio::select! {
                r = bounded => r,
                () = c.cancel().cancelled() => {
                    let id = in_flight.load(Ordering::SeqCst);
                    if id >= 0
                        && let Ok(session) = self.session().await
                    {
                        let note = jsonrpc::notification(
                            "notifications/cancelled",
                            Some(serde_json::json!({ "requestId": id, "reason": "cancelled by the agent" })),
                        );
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            self.post(&session, &note, "notifications/cancelled", None),
                        )
                        .await;
                    }
                    return Err(UpstreamError::Cancelled(self.name.clone()));
                }
            },
        };
        match outcome {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(self.name.clone(), self.timeout)),
        }
    }

    async fn session(&self) -> Result<Session, UpstreamError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let probe = Session {
            era: Era::Modern,
            id: None,
        };
        // Requests of the client need the session era's back-channel: a connection that
        // claims the client can answer some does not offer the stateless era.
        let modern = if self.connect.may_use_stateless() {
            let discover = jsonrpc::request(0, "server/discover", Some(discover_params()));
            match self
                .post(&probe, &discover, "server/discover", None)
                .await?
            {
                Reply::Message(m) => m.get("result").is_some_and(offers_modern),
                _ => false,
            }
        } else {
            false
        };
        let session = if modern {
            probe
        } else {
            let init =
                jsonrpc::request(0, "initialize", Some(initialize_params(self.connect.caps)));
            let fresh = Session {
                era: Era::Session(String::new()),
                id: None,
            };
            let (reply, sid) = self
                .post_raw(&fresh, &init, "initialize", None, None)
                .await?;
            let result = match reply {
                Reply::Message(m) => into_result(&self.name, m)?,
                Reply::Status(s, _) => {
                    return Err(self.fail(format!("initialize answered HTTP {s}")));
                }
                Reply::Accepted => return Err(self.fail("initialize answered 202")),
            };
            let version = negotiated(&result, &self.name)?;
            let s = Session {
                era: Era::Session(version),
                id: sid,
            };
            let note = jsonrpc::notification("notifications/initialized", None);
            let _ = self
                .post(&s, &note, "notifications/initialized", None)
                .await?;
            s
        };
        tracing::info!(upstream = %self.name, version = session.era.version(), "upstream connected");
        if session.id.is_some() {
            self.listen(&session);
        }
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn post(
        &self,
        s: &Session,
        msg: &Value,
        method: &str,
        params: Option<&Value>,
    ) -> Result<Reply, UpstreamError> {
        Ok(self.post_raw(s, msg, method, params, None).await?.0)
    }

    /// Posts one message; a response on an event stream is read to the answer, the
    /// notifications before it relayed into `relay`.
    async fn post_raw(
        &self,
        s: &Session,
        msg: &Value,
        method: &str,
        params: Option<&Value>,
        relay: Option<&CallChannel>,
    ) -> Result<(Reply, Option<String>), UpstreamError> {
        let url = self
            .url
            .clone()
            .map_err(|e| self.fail(format!("request failed: invalid URL: {e}")))?;
        let mut req = self
            .credentials(self.client.post(url))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(msg.to_string());
        match &s.era {
            Era::Modern => {
                req = req
                    .header("mcp-protocol-version", MODERN_VERSION)
                    .header("mcp-method", method);
                // The stateless era names the target of these requests in a header too.
                let named = match method {
                    "tools/call" | "prompts/get" => Some("name"),
                    "resources/read" => Some("uri"),
                    _ => None,
                };
                if let Some(name) = named
                    .and_then(|k| params.and_then(|p| p.get(k)))
                    .and_then(Value::as_str)
                {
                    req = req.header("mcp-name", header_value(name));
                }
            }
            Era::Session(v) => {
                if !v.is_empty() {
                    req = req.header("mcp-protocol-version", v.as_str());
                }
                if let Some(id) = &s.id {
                    req = req.header("mcp-session-id", id.as_str());
                }
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.fail(format!("request failed: {}", e.without_url())))?;
        let status = resp.status().as_u16();
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if status == 202 {
            return Ok((Reply::Accepted, sid));
        }
        let want_id = msg.get("id").cloned();
        let body = if is_sse {
            self.read_sse(s, resp, want_id.as_ref(), relay).await?
        } else {
            let bytes = self.read_body(resp).await?;
            if bytes.is_empty() {
                None
            } else {
                serde_json::from_slice::<Value>(&bytes).ok()
            }
        };
        if (200..300).contains(&status) {
            match body {
                Some(m) => Ok((Reply::Message(m), sid)),
                None => Err(self.fail("empty or unreadable response")),
            }
        } else {
            Ok((Reply::Status(status, body), sid))
        }
    }

    async fn read_body(&self, resp: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| self.fail(format!("read failed: {}", e.without_url())))?;
            if out.len() + chunk.len() > MAX_BODY {
                return Err(self.fail("response too large"));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Reads server-sent events until the response to `want_id` arrives. Notifications on the
    /// stream are about that request: relayed into `relay`. Requests from the upstream are
    /// answered: `ping` here, requests of the client by the agent, through `relay`.
    async fn read_sse(
        &self,
        session: &Session,
        resp: reqwest::Response,
        want_id: Option<&Value>,
        relay: Option<&CallChannel>,
    ) -> Result<Option<Value>, UpstreamError> {
        let mut buf: Vec<u8> = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| self.fail(format!("read failed: {}", e.without_url())))?;
            buf.extend_from_slice(&chunk);
            if buf.len() > MAX_BODY {
                return Err(self.fail("response too large"));
            }
            // Complete events are read in place, and the buffer shifted once per chunk: an
            // event stream of many small events costs one pass, not one copy per event.
            let mut start = 0;
            while let Some((len, total)) = event_end(&buf[start..]) {
                let data = event_data(&String::from_utf8_lossy(&buf[start..start + len]));
                start += total;
                let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                match (msg.get("method").and_then(Value::as_str), msg.get("id")) {
                    (None, id) if want_id.is_none() || id == want_id => return Ok(Some(msg)),
                    (None, _) => {}
                    (Some(method), Some(id)) => {
                        let answer =
                            super::answer_for_client(id, method, msg.get("params"), relay).await;
                        self.answer_upstream(session, &answer).await;
                    }
                    (Some(method), None) => {
                        self.connect.announcer.notified(method, msg.get("params"));
                        relay_notice(relay, want_id, method, msg.get("params")).await;
                    }
                }
            }
            buf.drain(..start);
        }
        Ok(None)
    }

    /// Listens on session `s`'s standalone event stream (GET) for what the upstream announces
    /// outside any call: a changed tool list, an updated resource. Ends when the upstream ends
    /// or refuses the stream (a server without one answers 405), or the connection stops.
    fn listen(&self, s: &Session) {
        let (Ok(url), Some(id)) = (self.url.clone(), s.id.clone()) else {
            return;
        };
        let req = self
            .credentials(self.client.get(url))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", s.era.version());
        let announcer = self.connect.announcer.clone();
        let name = self.name.clone();
        let task = tokio::spawn(async move {
            let Ok(resp) = req.send().await else { return };
            if !resp.status().is_success() {
                tracing::debug!(upstream = %name, status = resp.status().as_u16(), "upstream offers no event stream of its own");
                return;
            }
            let mut buf: Vec<u8> = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.extend_from_slice(&chunk);
                if buf.len() > MAX_BODY {
                    break;
                }
                let mut start = 0;
                while let Some((len, total)) = event_end(&buf[start..]) {
                    let data = event_data(&String::from_utf8_lossy(&buf[start..start + len]));
                    start += total;
                    if let Ok(msg) = serde_json::from_str::<Value>(&data)
                        && msg.get("id").is_none()
                        && let Some(method) = msg.get("method").and_then(Value::as_str)
                    {
                        announcer.notified(method, msg.get("params"));
                    }
                }
                buf.drain(..start);
            }
            tracing::debug!(upstream = %name, "upstream event stream ended");
        });
        if let Ok(mut slot) = self.listener.lock()
            && let Some(old) = slot.replace(task)
        {
            old.abort();
        }
    }

    /// Sends the answer to a request the upstream sent on a response stream.
    async fn answer_upstream(&self, session: &Session, answer: &Value) {
        // Boxed: posting reads a response, which can hold a request again.
        let post = Box::pin(self.post(session, answer, "", None));
        let _ = tokio::time::timeout(Duration::from_secs(5), post).await;
    }

    /// Ends the session (best effort).
    pub async fn shutdown(&self) {
        if let Some(task) = self.listener.lock().ok().and_then(|mut l| l.take()) {
            task.abort();
        }
        let s = self.session.lock().await.take();
        if let (Some(Session { id: Some(id), era }), Ok(url)) = (s, self.url.clone()) {
            let _ = self
                .credentials(self.client.delete(url))
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", era.version())
                .timeout(Duration::from_secs(2))
                .send()
                .await;
        }
    }
}

/// Relays a notification from a response's event stream: progress when it carries the token
/// this client gave the request (its id), a log message as it is.
async fn relay_notice(
    relay: Option<&CallChannel>,
    request: Option<&Value>,
    method: &str,
    params: Option<&Value>,
) {
    let (Some(channel), Some(params)) = (relay, params) else {
        return;
    };
    let kind = match method {
        "notifications/progress" if params.get("progressToken") == request => NoticeKind::Progress,
        "notifications/message" => NoticeKind::Log,
        _ => return,
    };
    channel.notify(kind, params.clone()).await;
}

/// `Mcp-Name` values that are not plain visible ASCII are sent base64-encoded.
fn header_value(name: &str) -> String {
    use base64::Engine as _;
    let plain = !name.is_empty()
        && name.bytes().all(|b| (0x21..0x7f).contains(&b))
        && !name.starts_with("=?");
    if plain {
        name.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name)
        )
    }
}

/// Splits the first complete SSE event (ended by a blank line) off the buffer.
/// Where the first complete SSE event in `buf` ends (a blank line: `\n\n`, `\r\n\r\n` or
/// `\r\r`): the event's length, and its length with the blank line.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            Some((i, i + 2))
        } else if rest.starts_with(b"\r\n\r\n") {
            Some((i, i + 4))
        } else {
            None
        }
    })
}

/// The `data:` lines of one SSE event, joined with newlines.
fn event_data(event: &str) -> String {
    event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split() {
        let buf = b"event: message\r\ndata: {\"a\":1}\r\n\r\n: ping\n\ndata: x";
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (len, total) = event_end(buf).expect("first");
        assert_eq!(event_data(&text(&buf[..len])), "{\"a\":1}");
        let rest = &buf[total..];
        let (len, total) = event_end(rest).expect("second");
        assert_eq!(event_data(&text(&rest[..len])), "");
        assert!(event_end(&rest[total..]).is_none());
        assert_eq!(event_end(b"data: 1\r\rdata: 2"), Some((7, 9)));
    }

    #[test]
    fn names_encoded_when_needed() {
        assert_eq!(header_value("add"), "add");
        assert!(header_value("é").starts_with("=?base64?"));
        assert!(header_value("a b").starts_with("=?base64?"));
    }
}
