//! Printing answers for people and for scripts.

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
            r["kind"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            item["version"].to_string(),
            item["updated_at"].as_str().unwrap_or(""),
            item["updated_by"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
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
    if let Some(p) = t["purpose"].as_str() {
        println!("purpose    {p}");
    }
    println!();
    for r in v["records"].as_array().into_iter().flatten() {
        let mut line = format!("#{:<6} {}  {:<13}", r["seq"], s(&r["time"]), s(&r["kind"]));
        if let Some(tool) = r["tool"].as_str() {
            line.push_str(&format!(" {tool}"));
        }
        if let Some(tier) = r["tier"].as_i64() {
            line.push_str(&format!(" tier {tier}"));
        }
        if let Some(d) = r["decision"].as_str() {
            line.push_str(&format!(" -> {d}"));
        }
        if let Some(o) = r["outcome"].as_str() {
            line.push_str(&format!(" -> {o}"));
        }
        if let Some(us) = r["latency_us"].as_i64() {
            line.push_str(&format!(" ({:.2} ms)", us as f64 / 1000.0));
        }
        if let Some(reason) = r["reason"].as_str() {
            line.push_str(&format!("  [{reason}]"));
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
