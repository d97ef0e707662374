//! Printing answers for people and for scripts.

use custos_core::clock::rfc3339;
use custos_core::text::escape_unsafe;
use serde_json::Value;

/// Prints exactly one JSON document on stdout.
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints resources as a table, or as YAML documents (`---`-separated) ready to re-apply.
pub fn print_resources(v: &Value, yaml: bool) -> anyhow::Result<()> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if yaml {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                println!("---");
            }
            print!("{}", serde_yaml::to_string(&item["resource"])?);
        }
        return Ok(());
    }
    println!(
        "{:<12} {:<32} {:>7}  {:<25} BY",
        "KIND", "NAME", "VERSION", "UPDATED"
    );
    for item in items {
        let r = &item["resource"];
        println!(
            "{:<12} {:<32} {:>7}  {:<25} {}",
            s(&r["kind"]),
            s(&r["name"]),
            item["version"].to_string(),
            s(&item["updated_at"]),
            s(&item["updated_by"])
        );
    }
    Ok(())
}

/// A string field as a human reads it: `-` when absent, control characters escaped (a
/// newline or an ANSI escape in a value from outside must not forge or hide a line).
fn s(v: &Value) -> String {
    match v.as_str() {
        Some(text) => escape_unsafe(text).into_owned(),
        None => "-".to_owned(),
    }
}

/// A string field as a human reads it: empty when absent, control characters escaped.
pub fn text(v: &Value) -> String {
    v.as_str()
        .map(|t| escape_unsafe(t).into_owned())
        .unwrap_or_default()
}

/// What a record's detail adds to its trace line, escaped.
fn detail_note(d: &Value) -> Option<String> {
    let text = match d["type"].as_str()? {
        "permit" => format!("rule {}", s(&d["rule"])),
        "refusal" | "upstream_error" => s(&d["message"]),
        "task_start" => format!(
            "expires {}",
            d["expires_at"].as_i64().map(rfc3339).unwrap_or_default()
        ),
        "token_issued" => format!(
            "token {} until {}",
            s(&d["jti"]),
            d["exp"]
                .as_i64()
                .map(|secs| rfc3339(secs.saturating_mul(1000)))
                .unwrap_or_default()
        ),
        "registry_change" => format!(
            "{} {} `{}` version {}",
            s(&d["op"]),
            s(&d["resource_kind"]),
            s(&d["name"]),
            d["version"]
        ),
        "auth_failures" => format!(
            "{} x{} from {}",
            s(&d["subject"]),
            d["count"],
            s(&d["source"])
        ),
        other => escape_unsafe(other).into_owned(),
    };
    Some(text)
}

/// Prints a task's chain: initiator → task → agent → each record with decision and outcome.
pub fn print_trace(v: &Value) {
    let t = &v["task"];
    println!("initiator  {}", s(&t["initiator"]));
    println!(
        "task       {} ({}), started by {} at {}, expires {}",
        s(&t["id"]),
        s(&t["state"]),
        s(&t["started_by"]),
        s(&t["created"]),
        s(&t["expires"])
    );
    println!(
        "agent      {} under template {} (version {})",
        s(&t["agent"]),
        s(&t["template"]),
        t["template_version"]
    );
    if t["purpose"].is_string() {
        println!("purpose    {}", s(&t["purpose"]));
    }
    println!();
    for r in v["records"].as_array().into_iter().flatten() {
        let mut line = format!("#{:<6} {}  {:<13}", r["seq"], s(&r["time"]), s(&r["kind"]));
        if r["tool"].is_string() {
            line.push_str(&format!(" {}", s(&r["tool"])));
        }
        if let Some(tier) = r["tier"].as_i64() {
            line.push_str(&format!(" tier {tier}"));
        }
        if r["decision"].is_string() {
            line.push_str(&format!(" -> {}", s(&r["decision"])));
        }
        if r["outcome"].is_string() {
            line.push_str(&format!(" -> {}", s(&r["outcome"])));
        }
        if let Some(us) = r["latency_us"].as_i64() {
            line.push_str(&format!(" ({:.2} ms)", us as f64 / 1000.0));
        }
        if r["reason"].is_string() {
            line.push_str(&format!("  [{}]", s(&r["reason"])));
        }
        if let Some(note) = detail_note(&r["detail"]) {
            line.push_str(&format!("  {note}"));
        }
        if let Some(pv) = r["policy_version"].as_i64() {
            line.push_str(&format!("  (policy v{pv})"));
        }
        if r["call_id"].is_string() {
            line.push_str(&format!("  {}", s(&r["call_id"])));
        }
        println!("{line}");
    }
}

/// Replaces `public_key_file: PATH` in Agent documents with the file's contents as
/// `public_key`, reading PATH relative to the YAML file. Other documents pass unchanged.
pub fn inline_key_files(text: &str, base: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use serde::Deserialize as _;
    if !text.contains("public_key_file") {
        return Ok(text.to_owned());
    }
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let mut value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("document {}: invalid YAML", i + 1))?;
        if let Some(map) = value.as_mapping_mut()
            && let Some(path) = map.remove("public_key_file")
        {
            let path = path.as_str().with_context(|| {
                format!("document {}: field `public_key_file` must be a path", i + 1)
            })?;
            let full = base.join(path);
            let pem = std::fs::read_to_string(&full).with_context(|| {
                format!(
                    "document {}: field `public_key_file`: cannot read {}",
                    i + 1,
                    full.display()
                )
            })?;
            map.insert("public_key".into(), pem.into());
        }
        if !value.is_null() {
            docs.push(serde_yaml::to_string(&value)?);
        }
    }
    Ok(docs.join("---\n"))
}
