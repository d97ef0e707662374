//! MCP clients to upstreams, created on first use and replaced when the upstream's spec
//! changes: one per upstream for a `scope: shared` upstream, one per upstream and task for a
//! `scope: task` upstream, stopped when its task ends.

mod http;
mod stdio;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use custos_broker::{
    CallChannel, ClientCaps, Connection, Injection, ListedTool, PermittedCall, UpstreamError,
    Upstreams,
};
use custos_core::{Transport, UpstreamScope, UpstreamSpec};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::jsonrpc::{self, META_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL, META_VERSION};
use crate::{HANDSHAKE_VERSIONS, MODERN_VERSION};

pub use http::HttpUpstream;
pub use stdio::StdioUpstream;

/// Which protocol era a connection to an upstream speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Era {
    /// 2026-07-28: no handshake; `_meta` on every request.
    Modern,
    /// The session era, with the negotiated version.
    Session(String),
}

impl Era {
    /// Adds what this era needs to a request's params.
    pub(crate) fn wrap_params(&self, params: Option<Value>) -> Option<Value> {
        match self {
            Era::Session(_) => params,
            Era::Modern => {
                let mut p = params.unwrap_or_else(|| json!({}));
                if let Some(obj) = p.as_object_mut() {
                    let meta = obj.entry("_meta").or_insert_with(|| json!({}));
                    if let Some(m) = meta.as_object_mut() {
                        m.insert(META_VERSION.into(), MODERN_VERSION.into());
                        m.insert(META_CAPABILITIES.into(), json!({}));
                        m.insert(META_CLIENT_INFO.into(), client_info());
                    }
                }
                Some(p)
            }
        }
    }

    /// The version string in use.
    pub fn version(&self) -> &str {
        match self {
            Era::Modern => MODERN_VERSION,
            Era::Session(v) => v,
        }
    }
}

pub(crate) fn client_info() -> Value {
    json!({ "name": "custos", "version": env!("CARGO_PKG_VERSION") })
}

/// The `server/discover` probe's params.
pub(crate) fn discover_params() -> Value {
    json!({ "_meta": { META_VERSION: MODERN_VERSION, META_CAPABILITIES: {}, META_CLIENT_INFO: client_info() } })
}

/// Whether a `server/discover` result offers the modern era.
pub(crate) fn offers_modern(result: &Value) -> bool {
    result
        .get("supportedVersions")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(MODERN_VERSION)))
}

/// The `initialize` params, claiming `caps` (what the agents this connection serves declared).
pub(crate) fn initialize_params(caps: ClientCaps) -> Value {
    json!({ "protocolVersion": HANDSHAKE_VERSIONS[0], "capabilities": caps.to_capabilities(), "clientInfo": client_info() })
}

/// The answer to a request an upstream made of the client while serving `channel`'s call:
/// `ping` answered here, the rest relayed to the agent (or refused, without a channel).
pub(crate) async fn answer_for_client(
    id: &Value,
    method: &str,
    params: Option<&Value>,
    channel: Option<&CallChannel>,
) -> Value {
    if method == "ping" {
        return jsonrpc::result(id, json!({}));
    }
    let answer = match channel {
        Some(c) => {
            c.ask(method, params.cloned().unwrap_or_else(|| json!({})))
                .await
        }
        None => Err(custos_broker::ClientRefusal {
            code: jsonrpc::METHOD_NOT_FOUND,
            message: "Method not found".into(),
            data: None,
        }),
    };
    match answer {
        Ok(result) => jsonrpc::result(id, result),
        Err(e) => jsonrpc::error(id, e.code, &e.message, e.data),
    }
}

/// Reads the negotiated version from an `initialize` result.
pub(crate) fn negotiated(result: &Value, upstream: &str) -> Result<String, UpstreamError> {
    let v = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if HANDSHAKE_VERSIONS.contains(&v) {
        Ok(v.to_owned())
    } else {
        Err(UpstreamError::Failed(
            upstream.to_owned(),
            format!("unsupported protocol version `{v}`"),
        ))
    }
}

/// Asks the upstream, in a request's `_meta`, for what the call's channel relays: progress on
/// request `id` (`progressToken` set to the id, a token of this client's own — agents' tokens
/// can collide on a shared connection; the gateway puts the agent's back on each relayed
/// notice), and in the stateless era log messages at the level asked for (no stateless-era
/// server sends any unasked).
pub(crate) fn ask_for(
    params: &mut Option<Value>,
    id: i64,
    channel: Option<&CallChannel>,
    era: &Era,
) {
    let Some(channel) = channel else { return };
    let level = channel.log_level().filter(|_| *era == Era::Modern);
    let round = channel.round().filter(|_| *era == Era::Modern);
    if !channel.wants_progress() && level.is_none() && round.is_none() {
        return;
    }
    let p = params.get_or_insert_with(|| json!({}));
    if let Some(obj) = p.as_object_mut() {
        let meta = obj.entry("_meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            if channel.wants_progress() {
                m.insert("progressToken".into(), id.into());
            }
            if let Some(l) = level {
                m.insert(META_LOG_LEVEL.into(), l.as_str().into());
            }
            if let Some(caps) = round.and_then(|r| r.client_capabilities.clone()) {
                m.insert(META_CAPABILITIES.into(), caps);
            }
        }
        // A retried multi-round call carries the agent's answers and the upstream's state.
        if let Some(r) = round {
            r.add_to(obj);
        }
    }
}

/// Splits a JSON-RPC response into its result or an [`UpstreamError::Rpc`].
pub(crate) fn into_result(upstream: &str, msg: Value) -> Result<Value, UpstreamError> {
    if let Some(err) = msg.get("error") {
        let (code, message, data) = jsonrpc::error_parts(err);
        return Err(UpstreamError::Rpc {
            upstream: upstream.to_owned(),
            code: code.unwrap_or(0),
            message,
            data: data.map(Box::new),
        });
    }
    match msg {
        Value::Object(mut m) => Ok(m.remove("result").unwrap_or(Value::Null)),
        _ => Err(UpstreamError::Failed(
            upstream.to_owned(),
            "malformed response".into(),
        )),
    }
}

enum Client {
    Stdio(StdioUpstream),
    Http(HttpUpstream),
}

impl Client {
    async fn request(&self, method: &str, params: Option<Value>) -> Result<Value, UpstreamError> {
        self.request_cancellable(method, params, None).await
    }

    async fn request_cancellable(
        &self,
        method: &str,
        params: Option<Value>,
        channel: Option<&CallChannel>,
    ) -> Result<Value, UpstreamError> {
        match self {
            Client::Stdio(c) => c.request_cancellable(method, params, channel).await,
            Client::Http(c) => c.request_cancellable(method, params, channel).await,
        }
    }

    async fn shutdown(&self) {
        match self {
            Client::Stdio(c) => c.shutdown().await,
            Client::Http(c) => c.shutdown().await,
        }
    }
}

/// What a connection does with its upstream's announcements: a changed tool list marks the
/// cached list stale and is announced by upstream name ([`UpstreamPool::tool_changes`]); an
/// updated resource is announced as (upstream, URI) ([`UpstreamPool::resource_updates`]).
#[derive(Clone)]
pub struct Announcer {
    flag: Arc<AtomicBool>,
    upstream: String,
    announce: tokio::sync::broadcast::Sender<String>,
    resources: tokio::sync::broadcast::Sender<(String, String)>,
}

/// The longest resource URI announced as updated.
const MAX_ANNOUNCED_URI: usize = 2048;

impl Announcer {
    /// The upstream said its tool list changed.
    pub fn mark(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.announce.send(self.upstream.clone());
    }

    /// The upstream said one of its resources changed (`notifications/resources/updated`).
    pub fn resource_updated(&self, params: Option<&Value>) {
        if let Some(uri) = params
            .and_then(|p| p.get("uri"))
            .and_then(Value::as_str)
            .filter(|u| u.len() <= MAX_ANNOUNCED_URI)
        {
            let _ = self.resources.send((self.upstream.clone(), uri.to_owned()));
        }
    }

    /// Handles one notification the upstream sent outside any call.
    pub(crate) fn notified(&self, method: &str, params: Option<&Value>) {
        match method {
            "notifications/tools/list_changed" => self.mark(),
            "notifications/resources/updated" => self.resource_updated(params),
            _ => {}
        }
    }
}

impl Default for Announcer {
    fn default() -> Self {
        Self {
            flag: Arc::default(),
            upstream: String::new(),
            announce: tokio::sync::broadcast::channel(1).0,
            resources: tokio::sync::broadcast::channel(1).0,
        }
    }
}

/// How a connection is made, the same for both transports: what it claims the client can
/// do, whether it must use the 2025 handshake, and where its upstream's announcements go.
#[derive(Clone, Default)]
pub struct ConnectAs {
    /// What the agents it serves declared.
    pub caps: ClientCaps,
    /// Whether it must use the 2025 handshake (resource subscriptions).
    pub handshake_only: bool,
    /// Where a changed tool list or an updated resource is told.
    pub announcer: Announcer,
}

impl ConnectAs {
    /// Whether the connection may use the stateless era: not when it claims capabilities or
    /// must use the handshake (requests of the client and subscription updates need the
    /// session's back-channel, which that era does not have).
    pub(crate) fn may_use_stateless(&self) -> bool {
        self.caps == ClientCaps::default() && !self.handshake_only
    }
}

/// Whom one connection to an upstream serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeKey {
    /// Every task (`scope: shared`).
    Shared,
    /// One task, by id (`scope: task`).
    Task(String),
}

impl ScopeKey {
    /// The key of `task`'s connection to `spec`.
    pub fn of(spec: &UpstreamSpec, task: &str) -> Self {
        match spec.scope {
            UpstreamScope::Shared => ScopeKey::Shared,
            UpstreamScope::Task => ScopeKey::Task(task.to_owned()),
        }
    }
}

/// How many ended task ids the pool remembers, so a call authenticated just before its task
/// ended cannot start a connection that nothing would stop.
const ENDED_REMEMBERED: usize = 4096;

struct Entry {
    spec: UpstreamSpec,
    /// The credentials the connection was made with: a connection with other ones (newer
    /// leases) replaces it.
    injection: Option<Arc<Injection>>,
    client: Arc<Client>,
    tools: Mutex<Option<Vec<ListedTool>>>,
    /// Set when the upstream says its tool list changed (`notifications/tools/list_changed`):
    /// the cached list is read again before it is used next.
    tools_changed: Arc<AtomicBool>,
    last_used: std::sync::Mutex<Instant>,
}

impl Entry {
    fn serves(&self, conn: &Connection<'_>) -> bool {
        self.spec == *conn.upstream()
            && self.injection.as_ref().map(|i| i.id()) == conn.injection().map(|i| i.id())
    }

    fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }
}

/// A connection's key: the upstream, whom it serves, what it claims the client can do
/// (connections for agents whose clients declared other capabilities are others), and whether
/// it must use the 2025 handshake (resource subscriptions, whose updates come on the session's
/// own stream, which the stateless era does not have).
type Key = (String, ScopeKey, ClientCaps, bool);

#[derive(Default)]
struct Entries {
    /// Connections by upstream name, scope key and claimed capabilities.
    by_key: HashMap<Key, Arc<Entry>>,
    /// The most recently ended tasks, oldest first.
    ended: VecDeque<String>,
}

impl Entries {
    /// Takes out the entries `gone` selects.
    fn take(&mut self, mut gone: impl FnMut(&Key, &Entry) -> bool) -> Vec<Arc<Entry>> {
        let mut out = Vec::new();
        self.by_key.retain(|k, e| {
            let drop = gone(k, e);
            if drop {
                out.push(e.clone());
            }
            !drop
        });
        out
    }
}

/// All upstream clients. Implements the broker's [`Upstreams`].
pub struct UpstreamPool {
    entries: Mutex<Entries>,
    http: reqwest::Client,
    /// Upstreams that said their tool list changed, by name.
    changes: tokio::sync::broadcast::Sender<String>,
    /// Resources upstreams said changed, as (upstream, URI).
    resource_changes: tokio::sync::broadcast::Sender<(String, String)>,
}

impl Default for UpstreamPool {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").finish_non_exhaustive()
    }
}

impl UpstreamPool {
    /// An empty pool.
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self {
            entries: Mutex::new(Entries::default()),
            http,
            changes: tokio::sync::broadcast::channel(64).0,
            resource_changes: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// The resources upstreams say changed, as (upstream, URI), as they say so.
    pub fn resource_updates(&self) -> tokio::sync::broadcast::Receiver<(String, String)> {
        self.resource_changes.subscribe()
    }

    /// The names of upstreams whose tool list changed, as they say so.
    pub fn tool_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// The client for `conn`, made if there is none, the spec changed, or the connection
    /// carries other credentials now.
    async fn entry(
        &self,
        conn: &Connection<'_>,
        caps: ClientCaps,
    ) -> Result<Arc<Entry>, UpstreamError> {
        self.entry_for(conn, caps, false).await
    }

    async fn entry_for(
        &self,
        conn: &Connection<'_>,
        caps: ClientCaps,
        handshake: bool,
    ) -> Result<Arc<Entry>, UpstreamError> {
        let spec = conn.upstream();
        let key = (
            spec.name.clone(),
            ScopeKey::of(spec, conn.task()),
            caps,
            handshake,
        );
        let mut g = self.entries.lock().await;
        if let Some(e) = g.by_key.get(&key)
            && e.serves(conn)
        {
            e.touch();
            return Ok(e.clone());
        }
        if let ScopeKey::Task(t) = &key.1
            && g.ended.contains(t)
        {
            return Err(UpstreamError::Failed(
                spec.name.clone(),
                "the task has ended".into(),
            ));
        }
        let entry = Arc::new(self.new_entry(conn, caps, handshake)?);
        // A changed spec replaces every connection to this upstream, whatever its scope (a
        // scope change included); new credentials replace this connection.
        let mut stale = g.take(|(name, ..), e| *name == spec.name && e.spec != *spec);
        stale.extend(g.by_key.insert(key, entry.clone()));
        drop(g);
        for old in stale {
            tokio::spawn(async move { old.client.shutdown().await });
        }
        Ok(entry)
    }

    /// A client for `conn`, not yet started (it starts on its first request).
    fn new_entry(
        &self,
        conn: &Connection<'_>,
        caps: ClientCaps,
        handshake: bool,
    ) -> Result<Entry, UpstreamError> {
        let spec = conn.upstream();
        let injection = conn.injection().cloned();
        let tools_changed = Arc::new(AtomicBool::new(false));
        let connect = ConnectAs {
            caps,
            handshake_only: handshake,
            announcer: Announcer {
                flag: tools_changed.clone(),
                upstream: spec.name.clone(),
                announce: self.changes.clone(),
                resources: self.resource_changes.clone(),
            },
        };
        let client = match &spec.transport {
            Transport::Stdio { command } => Client::Stdio(
                StdioUpstream::new(&spec.name, command.clone(), spec.call_timeout())
                    .with_injection(injection.clone())
                    .connecting_as(connect)
                    .relaying_logs(conn.one_call() || spec.scope == UpstreamScope::Task),
            ),
            Transport::Http { url } => Client::Http(
                HttpUpstream::new(
                    &spec.name,
                    url.as_str(),
                    spec.call_timeout(),
                    self.http.clone(),
                )
                .with_injection(injection.as_deref())
                .map_err(|e| UpstreamError::Failed(spec.name.clone(), e))?
                .connecting_as(connect),
            ),
        };
        Ok(Entry {
            spec: spec.clone(),
            injection,
            client: Arc::new(client),
            tools: Mutex::new(None),
            tools_changed,
            last_used: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// Stops `task`'s connections to `scope: task` upstreams (their processes are killed and
    /// reaped before this returns) and refuses to start new ones for it.
    pub async fn end_task(&self, task: &str) {
        let gone = {
            let mut g = self.entries.lock().await;
            if g.ended.len() >= ENDED_REMEMBERED {
                g.ended.pop_front();
            }
            g.ended.push_back(task.to_owned());
            g.take(|(_, scope, ..), _| matches!(scope, ScopeKey::Task(t) if t == task))
        };
        for e in gone {
            tracing::debug!(upstream = %e.spec.name, task, "task ended; stopping its upstream connection");
            e.client.shutdown().await;
        }
    }

    /// Stops task-scoped connections unused for `idle`: a task that expires is not announced
    /// the way an ended one is, and an announcement can be missed.
    pub async fn stop_idle_task_connections(&self, idle: Duration) {
        let gone =
            self.entries.lock().await.take(|(_, scope, ..), e| {
                matches!(scope, ScopeKey::Task(_)) && e.idle_for() >= idle
            });
        for e in gone {
            tracing::debug!(upstream = %e.spec.name, "task-scoped upstream connection idle; stopping it");
            e.client.shutdown().await;
        }
    }

    /// Stops every upstream (child processes are terminated).
    pub async fn shutdown(&self) {
        let entries = self.entries.lock().await.take(|_, _| true);
        for e in entries {
            e.client.shutdown().await;
        }
    }
}

impl Upstreams for UpstreamPool {
    async fn list_tools(&self, conn: &Connection<'_>) -> Result<Vec<ListedTool>, UpstreamError> {
        let entry = self.entry(conn, ClientCaps::default()).await?;
        let mut cached = entry.tools.lock().await;
        if entry.tools_changed.swap(false, Ordering::SeqCst) {
            *cached = None;
        }
        if let Some(t) = cached.as_ref() {
            return Ok(t.clone());
        }
        let mut tools = Vec::new();
        let mut cursor: Option<Value> = None;
        // Bounded pagination: a misbehaving upstream cannot keep us here.
        for _ in 0..50 {
            let params = cursor.take().map(|c| json!({ "cursor": c }));
            let result = entry.client.request("tools/list", params).await?;
            if let Some(list) = result.get("tools").and_then(Value::as_array) {
                // Injected credentials are cut out of each definition first, so none reaches
                // the agent and the pinning digest, computed here once per listing, stays the
                // same when the credentials are renewed.
                tools.extend(list.iter().cloned().map(|mut definition| {
                    if let Some(i) = conn.injection() {
                        i.redact_json(&mut definition);
                    }
                    ListedTool::new(definition)
                }));
            }
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => break,
            }
        }
        *cached = Some(tools.clone());
        Ok(tools)
    }

    async fn find_tool(
        &self,
        conn: &Connection<'_>,
        name: &str,
    ) -> Result<Option<ListedTool>, UpstreamError> {
        let named = |t: &&ListedTool| t.name() == Some(name);
        {
            // The connection's cached list, searched in place: one definition cloned, not all.
            let entry = self.entry(conn, ClientCaps::default()).await?;
            let cached = entry.tools.lock().await;
            if !entry.tools_changed.load(Ordering::SeqCst)
                && let Some(tools) = cached.as_ref()
            {
                return Ok(tools.iter().find(named).cloned());
            }
        }
        Ok(self.list_tools(conn).await?.iter().find(named).cloned())
    }

    async fn call_tool(
        &self,
        call: &PermittedCall<'_>,
        conn: &Connection<'_>,
        channel: &CallChannel,
    ) -> Result<Value, UpstreamError> {
        let params = json!({ "name": call.tool().tool, "arguments": call.arguments() });
        if conn.one_call() {
            // Made for this call with credentials minted for it: shared with nothing, and
            // stopped (its process reaped) before the call's credentials are revoked.
            if self
                .entries
                .lock()
                .await
                .ended
                .contains(&conn.task().to_owned())
            {
                return Err(UpstreamError::Failed(
                    conn.upstream().name.clone(),
                    "the task has ended".into(),
                ));
            }
            let entry = self.new_entry(conn, channel.caps(), false)?;
            let result = entry
                .client
                .request_cancellable("tools/call", Some(params), Some(channel))
                .await;
            entry.client.shutdown().await;
            return result;
        }
        let entry = self.entry(conn, channel.caps()).await?;
        entry
            .client
            .request_cancellable("tools/call", Some(params), Some(channel))
            .await
    }

    async fn request(
        &self,
        conn: &Connection<'_>,
        method: &str,
        params: Value,
    ) -> Result<Value, UpstreamError> {
        // A subscription's updates come on the session's own stream: the 2025 handshake.
        let handshake = method == "resources/subscribe";
        let entry = self
            .entry_for(conn, ClientCaps::default(), handshake)
            .await?;
        entry.client.request(method, Some(params)).await
    }
}

#[cfg(test)]
mod tests {
    use custos_core::{Resource, resource::parse_documents};

    use super::*;

    fn spec(yaml: &str) -> UpstreamSpec {
        match parse_documents(yaml).expect("spec").pop() {
            Some(Resource::Upstream(u)) => u,
            other => panic!("not an upstream: {other:?}"),
        }
    }

    fn plain<'a>(spec: &'a UpstreamSpec, task: &'a str) -> Connection<'a> {
        Connection::without_credentials(spec, task).expect("no credentials")
    }

    async fn keys(pool: &UpstreamPool) -> Vec<(String, ScopeKey)> {
        let mut k: Vec<_> = pool
            .entries
            .lock()
            .await
            .by_key
            .keys()
            .map(|(n, s, ..)| (n.clone(), s.clone()))
            .collect();
        k.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        k
    }

    impl UpstreamPool {
        async fn entry_plain(&self, conn: &Connection<'_>) -> Result<Arc<Entry>, UpstreamError> {
            self.entry(conn, ClientCaps::default()).await
        }
    }

    // Clients start their process or session on first request, so no process runs here.
    #[tokio::test]
    async fn connections_are_keyed_by_scope_and_a_task_end_takes_only_its_own() {
        let pool = UpstreamPool::new();
        let shared = spec("kind: Upstream\nname: s\ncommand: [x]\n");
        let task = spec("kind: Upstream\nname: t\ncommand: [x]\nscope: task\n");
        for t in ["a", "b"] {
            pool.entry_plain(&plain(&shared, t)).await.expect("shared");
            pool.entry_plain(&plain(&task, t)).await.expect("task");
        }
        let s = |n: &str| (n.to_owned(), ScopeKey::Shared);
        let t = |n: &str, id: &str| (n.to_owned(), ScopeKey::Task(id.to_owned()));
        assert_eq!(keys(&pool).await, vec![s("s"), t("t", "a"), t("t", "b")]);

        pool.end_task("a").await;
        assert_eq!(keys(&pool).await, vec![s("s"), t("t", "b")]);
        // A call authenticated just before its task ended starts nothing.
        assert!(pool.entry_plain(&plain(&task, "a")).await.is_err());
        assert!(pool.entry_plain(&plain(&shared, "a")).await.is_ok());

        // A changed upstream replaces its connections whatever their scope.
        let now_shared = spec("kind: Upstream\nname: t\ncommand: [y]\n");
        pool.entry_plain(&plain(&now_shared, "b"))
            .await
            .expect("changed");
        assert_eq!(keys(&pool).await, vec![s("s"), s("t")]);

        // Task connections nobody uses go, shared ones stay.
        let other = spec("kind: Upstream\nname: u\nurl: http://127.0.0.1:9/mcp\nscope: task\n");
        pool.entry_plain(&plain(&other, "c")).await.expect("task c");
        pool.stop_idle_task_connections(Duration::ZERO).await;
        assert_eq!(keys(&pool).await, vec![s("s"), s("t")]);
    }
}
