//! SHA-256 digests as lowercase hex.

use aws_lc_rs::digest;

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

/// SHA-256 of `data`, raw bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The digest that pins an upstream tool's definition: [`argument_digest`] of its `name`,
/// `title`, `description`, `inputSchema`, `outputSchema` and `annotations` (absent members
/// count as null), so a change to anything a model reads about the tool changes it.
pub fn tool_definition_digest(tool: &serde_json::Value) -> String {
    let pick = |k: &str| tool.get(k).cloned().unwrap_or(serde_json::Value::Null);
    argument_digest(&serde_json::json!({
        "name": pick("name"),
        "title": pick("title"),
        "description": pick("description"),
        "inputSchema": pick("inputSchema"),
        "outputSchema": pick("outputSchema"),
        "annotations": pick("annotations"),
    }))
}

/// HMAC-SHA-256 of `data` under `key`, lowercase hex: how a webhook receiver checks that a
/// notification came from this Custos.
pub fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    hex::encode(aws_lc_rs::hmac::sign(&key, data).as_ref())
}

/// SHA-256 (lowercase hex) of a JSON value's canonical text: object keys sorted at every
/// level, no whitespace, strings escaped as `serde_json` does. Equal arguments digest equally
/// whatever order their keys arrived in, so an approval or an audit record binds the call.
pub fn argument_digest(arguments: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    write(arguments, &mut text);
    sha256_hex(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_golden_vector() {
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    // Golden vector: the canonical text of these arguments is
    // `{"a":1,"b":{"x":[1,2],"y":null},"s":"é\n"}`; its SHA-256 was computed outside Rust.
    #[test]
    fn argument_digest_golden_vector() {
        let a = serde_json::json!({"s": "é\n", "b": {"y": null, "x": [1, 2]}, "a": 1});
        assert_eq!(argument_digest(&a), GOLDEN_ARGS);
        let reordered = serde_json::json!({"a": 1, "b": {"x": [1, 2], "y": null}, "s": "é\n"});
        assert_eq!(argument_digest(&reordered), GOLDEN_ARGS);
        let changed = serde_json::json!({"a": 2, "b": {"x": [1, 2], "y": null}, "s": "é\n"});
        assert_ne!(argument_digest(&changed), GOLDEN_ARGS);
        assert_eq!(
            argument_digest(&serde_json::json!({})),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    const GOLDEN_ARGS: &str = "09cdd5b769491e5ffc3f4a31b5650fb2c7e6edf510c4b194822739ac4dac810c";
}
