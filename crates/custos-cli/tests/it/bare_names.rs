//! An upstream exposed without the `upstream__` prefix (`prefix: false`): agents call its
//! tools by the server's own names, while templates, tiers and the audit log keep naming them
//! `upstream__tool`; a template reaches at most one such upstream.

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, fixture};

fn names(r: &Value) -> Vec<String> {
    let mut n: Vec<String> = r["result"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    n.sort();
    n
}

#[test]
fn a_bare_upstreams_tools_are_called_by_their_own_names() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-b");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    let script = fixture("stdio_fixture.py");
    s.apply(&format!(
        "kind: Upstream\nname: fx\ncommand: [python3, \"{script}\"]\nprefix: false\n\
         tiers: {{ echo: 1, touch: 1, wipe: 4 }}\ndefault_tier: 3\n---\n\
         kind: Upstream\nname: other\ncommand: [python3, \"{script}\"]\ntiers: {{ echo: 1 }}\n---\n\
         kind: Template\nname: bare\nttl: 10m\ntools: [fx__echo, fx__wipe, fx__publish, other__echo]\n---\n\
         kind: Agent\nname: agent-b\nowner: test@example.com\narchetype: automation\n\
         templates: [bare]\npublic_key: |\n{indented}",
        script = script.display()
    ));
    let task = s.start_task("agent-b", "bare");
    let mcp = RawMcp::new(&s.mcp_url(), Some(&s.task_token(&task, &key)));
    let sid = mcp.initialize();

    let listed = mcp.call(&sid, "tools/list", json!({})).body;
    assert_eq!(
        names(&listed),
        ["echo", "other__echo", "publish"],
        "its own names beside a prefixed upstream's; tier 4 still hidden: {listed}"
    );
    let r = mcp
        .call(
            &sid,
            "tools/call",
            json!({"name": "echo", "arguments": {"n": 1}}),
        )
        .body;
    assert_eq!(r["result"]["content"][0]["text"], "{\"n\": 1}", "{r}");
    let r = mcp
        .call(
            &sid,
            "tools/call",
            json!({"name": "other__echo", "arguments": {"n": 2}}),
        )
        .body;
    assert_eq!(r["result"]["content"][0]["text"], "{\"n\": 2}", "{r}");
    // The prefixed name is not how agents reach a bare upstream, and tier 4 stays refused.
    for (name, code, reason) in [
        ("fx__echo", -32602, "tool_not_allowed"),
        ("wipe", -32010, "tier4_denied"),
    ] {
        let r = mcp
            .call(&sid, "tools/call", json!({"name": name, "arguments": {}}))
            .body;
        assert_eq!(r["error"]["code"], code, "{name}: {r}");
        assert_eq!(r["error"]["data"]["reason"], reason, "{name}: {r}");
    }

    // Policy and the audit log name the tool `upstream__tool`.
    let trace = s.cli_json(&["audit", "trace", &task, "--json"]);
    let tools: Vec<&str> = trace["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "tool_call")
        .filter_map(|r| r["tool"].as_str())
        .collect();
    assert!(
        tools.contains(&"fx__echo") && tools.contains(&"fx__wipe"),
        "{trace}"
    );
    assert!(!tools.contains(&"echo"), "{trace}");

    // A template that would reach two bare upstreams is refused on apply, naming both.
    let path = s.dir.path().join("two-bare.yaml");
    std::fs::write(
        &path,
        "kind: Upstream\nname: other\ncommand: [python3, x.py]\nprefix: false\n",
    )
    .expect("write");
    let out = s.cli(&["apply", "-f", path.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("`bare`") && err.contains("`fx`") && err.contains("`other`"),
        "{err}"
    );
    // Nothing was applied: `other` still answers under its prefix.
    let r = mcp
        .call(
            &sid,
            "tools/call",
            json!({"name": "other__echo", "arguments": {"n": 3}}),
        )
        .body;
    assert_eq!(r["result"]["content"][0]["text"], "{\"n\": 3}", "{r}");
}
