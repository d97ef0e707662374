//! MCP clients to upstreams, one per registered upstream, created on first use and replaced
//! when the upstream's spec changes.

mod http;
mod stdio;

use std::collections::HashMap;
use std::sync::Arc;

use custos_broker::{PermittedCall, UpstreamError, Upstreams};
use custos_core::UpstreamSpec;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::jsonrpc::{META_CAPABILITIES, META_CLIENT_INFO, META_VERSION};
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

/// The `initialize` params.
pub(crate) fn initialize_params() -> Value {
    json!({ "protocolVersion": HANDSHAKE_VERSIONS[0], "capabilities": {}, "clientInfo": client_info() })
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

/// Splits a JSON-RPC response into its result or an [`UpstreamError::Rpc`].
pub(crate) fn into_result(upstream: &str, msg: Value) -> Result<Value, UpstreamError> {
    if let Some(err) = msg.get("error") {
        return Err(UpstreamError::Rpc {
            upstream: upstream.to_owned(),
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(500)
                .collect(),
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
        match self {
            Client::Stdio(c) => c.request(method, params).await,
            Client::Http(c) => c.request(method, params).await,
        }
    }

    async fn shutdown(&self) {
        match self {
            Client::Stdio(c) => c.shutdown().await,
            Client::Http(c) => c.shutdown().await,
        }
    }
}

struct Entry {
    spec: UpstreamSpec,
    client: Arc<Client>,
    tools: Mutex<Option<Vec<Value>>>,
}

/// All upstream clients. Implements the broker's [`Upstreams`].
#[derive(Default)]
pub struct UpstreamPool {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    http: reqwest::Client,
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
            entries: Mutex::new(HashMap::new()),
            http,
        }
    }

    async fn entry(&self, spec: &UpstreamSpec) -> Arc<Entry> {
        let mut g = self.entries.lock().await;
        if let Some(e) = g.get(&spec.name)
            && e.spec == *spec
        {
            return e.clone();
        }
        let client = match (&spec.command, &spec.url) {
            (Some(cmd), _) => Client::Stdio(StdioUpstream::new(
                &spec.name,
                cmd.clone(),
                spec.call_timeout(),
            )),
            (None, Some(url)) => Client::Http(HttpUpstream::new(
                &spec.name,
                url,
                spec.call_timeout(),
                self.http.clone(),
            )),
            // INVARIANT: validation guarantees one of command/url; an empty command fails at spawn.
            (None, None) => Client::Stdio(StdioUpstream::new(
                &spec.name,
                Vec::new(),
                spec.call_timeout(),
            )),
        };
        let entry = Arc::new(Entry {
            spec: spec.clone(),
            client: Arc::new(client),
            tools: Mutex::new(None),
        });
        if let Some(old) = g.insert(spec.name.clone(), entry.clone()) {
            tokio::spawn(async move { old.client.shutdown().await });
        }
        entry
    }

    /// Stops every upstream (child processes are terminated).
    pub async fn shutdown(&self) {
        let entries: Vec<Arc<Entry>> = self.entries.lock().await.drain().map(|(_, e)| e).collect();
        for e in entries {
            e.client.shutdown().await;
        }
    }
}

impl Upstreams for UpstreamPool {
    async fn list_tools(&self, upstream: &UpstreamSpec) -> Result<Vec<Value>, UpstreamError> {
        let entry = self.entry(upstream).await;
        let mut cached = entry.tools.lock().await;
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
                tools.extend(list.iter().cloned());
            }
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => break,
            }
        }
        *cached = Some(tools.clone());
        Ok(tools)
    }

    async fn call_tool(&self, call: &PermittedCall<'_>) -> Result<Value, UpstreamError> {
        let entry = self.entry(call.upstream()).await;
        entry
            .client
            .request(
                "tools/call",
                Some(json!({ "name": call.tool().tool, "arguments": call.arguments() })),
            )
            .await
    }
}
