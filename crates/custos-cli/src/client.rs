//! The HTTP client the CLI uses to talk to a running server.

use anyhow::{Context as _, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A client of one server, with an optional operator token.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of `base` (e.g. `http://127.0.0.1:8470`).
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and returns the JSON answer, or the server's error message.
    pub async fn send(&self, method: Method, path: &str, body: Body) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Yaml(text) => req.header("content-type", "application/yaml").body(text),
            Body::Form(fields) => req.form(&fields),
        };
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach Custos at {} (is `custos serve` running? set CUSTOS_ADDR)",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("cannot read the answer")?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        Err(match status {
            StatusCode::UNAUTHORIZED => anyhow!("{message} (401: check CUSTOS_TOKEN)"),
            s => anyhow!("{message} ({})", s.as_u16()),
        })
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, Body::None).await
    }

    /// `POST` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, Body::Json(body)).await
    }

    /// `PUT` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, Body::Json(body)).await
    }
}

/// A request body.
pub enum Body {
    /// None.
    None,
    /// JSON.
    Json(Value),
    /// YAML text.
    Yaml(String),
    /// Form fields.
    Form(Vec<(&'static str, String)>),
}
