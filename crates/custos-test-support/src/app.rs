//! [`TestApp`]: the whole HTTP surface driven in-process, over a temporary SQLite store, with
//! a manual clock, so token lifetimes, task expiry (and later lease and approval expiry) are
//! tested by moving the clock instead of sleeping.
//!
//! Requests go through the same router `custos serve` runs ([`custos_server::router`]),
//! without a socket: there is no peer address, so per-source limits see every request as
//! coming from nowhere in particular. Tests about the wire itself (connections, timeouts,
//! disconnects) drive the real binary instead.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use custos_core::Clock as _;
use custos_core::clock::ManualClock;
use custos_crypto::AgentKey;
use custos_crypto::jwt::sign_assertion;
use custos_server::serve::{Built, ServeConfig, build_with_clock};
use custos_server::{AppState, router};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt as _;

/// Where the in-process server says it listens: the issuer and token audience derive from it.
pub const APP_ADDR: &str = "127.0.0.1:8470";

/// Where the manual clock starts: 2026-01-01T00:00:00Z.
pub const APP_EPOCH_MS: i64 = 1_767_225_600_000;

/// One answer: status and body (JSON, or `Value::String` when it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Value,
}

/// The server in-process, its data directory, its admin token and its clock.
pub struct TestApp {
    state: AppState,
    /// The clock every component reads; move it with [`TestApp::advance`].
    pub clock: ManualClock,
    /// The dev admin's operator token.
    pub admin_token: String,
    dir: TempDir,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TestApp {
    /// A fresh server as `serve --dev` builds it, its clock at [`APP_EPOCH_MS`].
    ///
    /// # Panics
    /// When the server cannot be built (a test setup failure).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestApp::start`], with the configuration adjusted first.
    ///
    /// # Panics
    /// When the server cannot be built.
    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServeConfig::dev(dir.path().join("data"));
        adjust(&mut config);
        let clock = ManualClock::new(APP_EPOCH_MS);
        let Built {
            state,
            admin_token_path,
        } = build_with_clock(
            &config,
            APP_ADDR.parse().expect("address"),
            Arc::new(clock.clone()),
        )
        .await
        .expect("the server builds");
        let admin_token = std::fs::read_to_string(admin_token_path)
            .expect("admin.token")
            .trim()
            .to_owned();
        Self {
            state,
            clock,
            admin_token,
            dir,
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock
            .advance(i64::try_from(by.as_millis()).expect("a test-sized duration"));
    }

    /// The issuer (`http://127.0.0.1:8470`), which agent assertions name as their audience.
    pub fn issuer(&self) -> String {
        format!("http://{APP_ADDR}")
    }

    /// The handler state, for tests that reach the broker directly.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Sends one request through the router.
    ///
    /// # Panics
    /// When the body cannot be read (the router never fails that way).
    pub async fn send(&self, mut req: Request<Body>) -> Reply {
        // As every HTTP/1.1 client does.
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut()
                .insert(header::HOST, header::HeaderValue::from_static(APP_ADDR));
        }
        let resp = router(self.state.clone())
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply { status, body }
    }

    /// A JSON API request with an optional bearer token and JSON body.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).expect("request")).await
    }

    /// Applies YAML as the admin; panics unless it applied.
    pub async fn apply(&self, yaml: &str) -> Value {
        let req = Request::post("/v1/apply")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.admin_token),
            )
            .header(header::CONTENT_TYPE, "application/yaml")
            .body(Body::from(yaml.to_owned()))
            .expect("request");
        let reply = self.send(req).await;
        assert_eq!(reply.status, StatusCode::OK, "apply: {}", reply.body);
        reply.body
    }

    /// A new agent key and its public key PEM.
    pub fn agent_key() -> (AgentKey, String) {
        let key = AgentKey::generate().expect("key");
        let public = key.public_key_pem();
        (key, public)
    }

    /// Starts a task as the admin (optionally with a TTL) and returns its id.
    pub async fn start_task(&self, agent: &str, template: &str, ttl: Option<&str>) -> String {
        let mut body = json!({
            "agent": agent,
            "template": template,
            "on_behalf_of": "alice@example.com",
        });
        if let Some(t) = ttl {
            body["ttl"] = t.into();
        }
        let reply = self
            .api(
                Method::POST,
                "/v1/tasks",
                Some(&self.admin_token),
                Some(body),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "start task: {}",
            reply.body
        );
        reply.body["task_id"].as_str().expect("task_id").to_owned()
    }

    /// The token exchange at `/oauth/token` with an assertion signed now (by the manual clock).
    pub async fn exchange(&self, task: &str, agent: &str, key: &AgentKey) -> Reply {
        let assertion =
            sign_assertion(key, agent, &self.issuer(), self.clock.now_secs(), 60).expect("sign");
        let form = format!(
            "grant_type={}&subject_token={task}&subject_token_type={}&actor_token={assertion}&actor_token_type={}",
            enc(custos_broker::TOKEN_EXCHANGE_GRANT),
            enc(custos_broker::TASK_ID_TOKEN_TYPE),
            enc(custos_broker::JWT_TOKEN_TYPE),
        );
        let req = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .expect("request");
        self.send(req).await
    }

    /// A task token for `task`; panics unless the exchange succeeds.
    pub async fn task_token(&self, task: &str, agent: &str, key: &AgentKey) -> String {
        let reply = self.exchange(task, agent, key).await;
        assert_eq!(reply.status, StatusCode::OK, "exchange: {}", reply.body);
        reply.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// One 2026-07-28-era (stateless) request to `/mcp`: `_meta` and the `Mcp-Method` header
    /// added.
    pub async fn mcp(&self, token: &str, method: &str, mut params: Value) -> Reply {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        });
        let message = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let req = Request::post("/mcp")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method)
            .body(Body::from(message.to_string()))
            .expect("request");
        self.send(req).await
    }
}

/// `application/x-www-form-urlencoded` escaping of a value made of URN characters.
fn enc(s: &str) -> String {
    s.replace(':', "%3A")
}
