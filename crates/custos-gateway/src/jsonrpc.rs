//! JSON-RPC 2.0 messages as MCP uses them, kept as raw JSON so no field is dropped.

use serde_json::{Value, json};

/// Parse error.
pub const PARSE_ERROR: i64 = -32700;
/// Invalid request.
pub const INVALID_REQUEST: i64 = -32600;
/// Method not found.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid params.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// 2026-07-28: a routing header does not match the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: unsupported protocol version.
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// Custos: the call was refused by policy.
pub const DENIED: i64 = -32010;
/// Custos: the upstream failed or timed out.
pub const UPSTREAM_FAILED: i64 = -32011;
/// Custos: a dependency (store, audit) is down; refused.
pub const UNAVAILABLE: i64 = -32012;

/// The `_meta` key carrying the protocol version (2026-07-28).
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The `_meta` key carrying the client capabilities (2026-07-28).
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// The `_meta` key carrying client info (2026-07-28).
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// The `_meta` key carrying server info (2026-07-28).
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// The `_meta` key of a stateless-era request opting in to log messages at a level and above.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";

/// A response carrying `result`.
pub fn result(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// A response carrying `error`.
pub fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({ "code": code, "message": message });
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": err })
}

/// A request.
pub fn request(id: i64, method: &str, params: Option<Value>) -> Value {
    let mut m = json!({ "jsonrpc": "2.0", "id": id, "method": method });
    if let Some(p) = params {
        m["params"] = p;
    }
    m
}

/// A notification.
pub fn notification(method: &str, params: Option<Value>) -> Value {
    let mut m = json!({ "jsonrpc": "2.0", "method": method });
    if let Some(p) = params {
        m["params"] = p;
    }
    m
}

/// What one incoming JSON-RPC message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// Has `method` and `id`.
    Request {
        /// The id (string or number).
        id: &'a Value,
        /// The method.
        method: &'a str,
        /// The params, if any.
        params: Option<&'a Value>,
    },
    /// Has `method`, no `id`.
    Notification {
        /// The method.
        method: &'a str,
    },
    /// Has `result` or `error` and an `id`.
    Response,
}

/// Classifies a message, or says why it is not a valid JSON-RPC 2.0 message.
///
/// # Errors
/// A message for an `INVALID_REQUEST` error.
pub fn classify(msg: &Value) -> Result<Message<'_>, &'static str> {
    let obj = msg
        .as_object()
        .ok_or("body must be a single JSON-RPC message object")?;
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("`jsonrpc` must be \"2.0\"");
    }
    let id = obj.get("id");
    if let Some(id) = id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        return Err("`id` must be a string or an integer");
    }
    match (obj.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => {
            let params = obj.get("params");
            if let Some(p) = params
                && !p.is_object()
            {
                return Err("`params` must be an object");
            }
            Ok(Message::Request { id, method, params })
        }
        (Some(Value::String(method)), None) => Ok(Message::Notification { method }),
        (Some(_), _) => Err("`method` must be a string"),
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            Ok(Message::Response)
        }
        _ => Err("not a request, notification or response"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let r = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
        assert!(matches!(
            classify(&r),
            Ok(Message::Request {
                method: "tools/list",
                ..
            })
        ));
        let n = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        assert!(matches!(classify(&n), Ok(Message::Notification { .. })));
        assert!(matches!(
            classify(&json!({"jsonrpc":"2.0","id":1,"result":{}})),
            Ok(Message::Response)
        ));
        for bad in [
            json!([1]),
            json!({"id":1,"method":"x"}),
            json!({"jsonrpc":"2.0","id":1.5,"method":"x"}),
            json!({"jsonrpc":"2.0","id":1,"method":7}),
            json!({"jsonrpc":"2.0","id":1,"method":"x","params":[1]}),
            json!({"jsonrpc":"2.0"}),
        ] {
            assert!(classify(&bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde_json::Value;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "jsonrpc", "id", "method", "params", "result", "error", "x"
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // Any JSON an agent sends is classified or rejected, never a panic.
        #[test]
        fn classify_never_panics(v in json_value()) {
            let _ = super::classify(&v);
        }

        #[test]
        fn bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                let _ = super::classify(&v);
            }
        }
    }
}

/// The longest error message taken from a peer, in characters.
const MAX_ERROR_MESSAGE: usize = 500;
/// The largest error `data` taken from a peer, as JSON bytes; larger is dropped.
const MAX_ERROR_DATA: usize = 4096;

/// A peer's JSON-RPC error object, bounded before anything keeps or relays it: its code (when
/// an integer), its message (the first 500 characters) and its `data` when that is at most
/// 4 KiB of JSON.
pub(crate) fn error_parts(err: &Value) -> (Option<i64>, String, Option<Value>) {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(MAX_ERROR_MESSAGE)
        .collect();
    let data = err
        .get("data")
        .filter(|d| serde_json::to_vec(d).is_ok_and(|b| b.len() <= MAX_ERROR_DATA))
        .cloned();
    (err.get("code").and_then(Value::as_i64), message, data)
}
