//! Argument-level policy and taint on the wire: the same tool allowed, held and denied by its
//! arguments; an untrusted tool's content taints its task and raises that task's later
//! calls; audit records name the policies that decided.

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, fixture};

fn bundle(public_key: &str) -> String {
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        r#"kind: Upstream
name: fx
command: [python3, "{script}"]
tiers: {{ echo: 1, publish: 2, whoami: 1 }}
tier_rules:
  - {{ tool: echo, args: {{ rows: {{ min: 1000 }} }}, tier: 3 }}
untrusted: [whoami]
tainted_tiers: {{ publish: 3 }}
---
kind: Template
name: fx-args
ttl: 10m
tools:
  - tool: fx__publish
    args: {{ channel: ["internal-*"] }}
  - fx__echo
  - fx__whoami
---
kind: Agent
name: agent-p
owner: test@example.com
archetype: automation
templates: [fx-args]
public_key: |
{indented}"#,
        script = fixture("stdio_fixture.py").display()
    )
}

struct Session {
    mcp: RawMcp,
    sid: String,
    task: String,
}

impl Session {
    /// The names `tools/list` gives this session, sorted.
    fn tools(&self) -> Vec<String> {
        let r = self.mcp.call(&self.sid, "tools/list", json!({}));
        assert_eq!(r.status, 200, "{}", r.body);
        let mut names: Vec<String> = r.body["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        names.sort_unstable();
        names
    }

    fn start(s: &TestServer, key: &std::path::Path) -> Self {
        let task = s.start_task("agent-p", "fx-args");
        let token = s.task_token(&task, key);
        let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
        let sid = mcp.initialize();
        Self { mcp, sid, task }
    }

    /// `Ok(text)` for a result, `Err(reason)` for a refusal.
    fn call(&self, tool: &str, args: Value) -> Result<String, String> {
        let r = self.mcp.call(
            &self.sid,
            "tools/call",
            json!({"name": tool, "arguments": args}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        match r.body["error"]["data"]["reason"].as_str() {
            Some(reason) => Err(reason.to_owned()),
            None => Ok(r.body["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()),
        }
    }
}

#[test]
fn arguments_decide_and_untrusted_content_taints_the_task() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-p");
    s.apply(&bundle(&public));
    let a = Session::start(&s, &key);

    // The same tool, allowed or denied by its arguments.
    assert!(
        a.call("fx__publish", json!({"channel": "internal-news"}))
            .is_ok()
    );
    assert_eq!(
        a.call("fx__publish", json!({"channel": "external-press"})),
        Err("argument_not_allowed".into())
    );
    assert_eq!(
        a.call("fx__publish", json!({"channel": ["internal-news"]})),
        Err("argument_not_allowed".into())
    );
    // And allowed or held by the upstream's tier rule: 999 rows pass, 1000 are held.
    assert!(a.call("fx__echo", json!({"rows": 999})).is_ok());
    assert_eq!(
        a.call("fx__echo", json!({"rows": 1000})),
        Err("approval_pending".into())
    );

    let task = |id: &str| s.cli_json(&["task", "get", id, "--json"]);
    assert_eq!(task(&a.task)["tainted"], false);
    // An untrusted tool returns content: the task is tainted from then on ...
    assert!(a.call("fx__whoami", json!({})).is_ok());
    let t = task(&a.task);
    assert_eq!(t["tainted"], true, "{t}");
    assert_eq!(t["tainted_by"], "fx__whoami");
    // ... and its external send is held, while the same call by an untainted task is not.
    assert_eq!(
        a.call("fx__publish", json!({"channel": "internal-news"})),
        Err("approval_pending".into())
    );
    let b = Session::start(&s, &key);
    assert!(
        b.call("fx__publish", json!({"channel": "internal-news"}))
            .is_ok()
    );
    assert_eq!(task(&b.task)["tainted"], false);

    // The trail names the deciding policy, the policy version and the taint.
    let trace = s.cli_json(&["audit", "trace", &a.task, "--json"]);
    let records = trace["records"].as_array().cloned().unwrap_or_default();
    let permit = records
        .iter()
        .find(|r| {
            r["kind"] == "tool_call" && r["tool"] == "fx__publish" && r["decision"] == "allow"
        })
        .unwrap_or_else(|| panic!("an allowed publish on record: {trace}"));
    assert_eq!(
        permit["detail"]["rule"], "template:fx-args:tools[0]",
        "{permit}"
    );
    assert!(permit["policy_version"].as_i64().is_some(), "{permit}");
    let denied = records
        .iter()
        .find(|r| r["reason"] == "argument_not_allowed")
        .unwrap_or_else(|| panic!("the refused publish on record: {trace}"));
    assert!(
        denied["detail"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`channel`") && !m.contains("external-press")),
        "the refusal names the constrained argument, not its value: {denied}"
    );
    let tainted: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "task_tainted")
        .collect();
    assert_eq!(tainted.len(), 1, "one taint record: {trace}");
    assert_eq!(tainted[0]["detail"]["tool"], "fx__whoami");
}

#[test]
fn argument_constraints_that_cannot_hold_are_refused_on_apply() {
    let s = TestServer::start();
    let (_, public) = s.keygen("agent-p");
    for (bad, says) in [
        ("args: { channel: {min: 5, max: 1} }", "above"),
        ("args: { channel: {max: 1.23456} }", "4 decimal places"),
        ("args: { channel: {under: 1} }", "unknown field"),
        ("args: { channel: [] }", "1 to 64 globs"),
    ] {
        let yaml = bundle(&public).replace(r#"args: { channel: ["internal-*"] }"#, bad);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, &yaml).expect("write");
        let out = s.cli(&["apply", "-f", file.to_str().expect("path")]);
        assert!(!out.status.success(), "{bad} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
    // Nothing was applied.
    let templates = s.cli_json(&["get", "templates", "--json"]);
    assert!(
        templates
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["resource"]["name"] != "fx-args")),
        "{templates}"
    );
}

#[test]
fn policy_explain_says_what_would_happen_and_why() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-p");
    s.apply(&bundle(&public));
    let a = Session::start(&s, &key);
    let explain = |tool: &str, args: &str| {
        s.cli_json(&[
            "policy", "explain", "--task", &a.task, "--tool", tool, "--args", args, "--json",
        ])
    };
    let tool_calls = || {
        let trace = s.cli_json(&["audit", "trace", &a.task, "--json"]);
        trace["records"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|r| r["kind"] == "tool_call").count())
    };

    let e = explain("fx__publish", r#"{"channel": "internal-news"}"#);
    assert_eq!(e["decision"], "allow", "{e}");
    assert_eq!(e["tier"], 2);
    assert_eq!(e["allowed_by"], json!(["template:fx-args:tools[0]"]));
    assert_eq!(e["tiered_by"], json!(["upstream:fx:tiers:publish"]));
    assert_eq!(e["tainted"], false);
    assert!(e["policy_version"].as_i64().is_some());
    assert!(
        e["cedar"]
            .as_str()
            .is_some_and(|c| c.contains("@id(\"template:fx-args:tools[0]\")")),
        "{e}"
    );

    let e = explain("fx__publish", r#"{"channel": "external-press"}"#);
    assert_eq!(
        (e["decision"].as_str(), e["reason"].as_str()),
        (Some("deny"), Some("argument_not_allowed"))
    );
    let e = explain("fx__nope", "{}");
    assert_eq!(e["reason"], "tool_not_allowed");

    // A held call: which rule raised it, and the request once the agent has asked.
    let e = explain("fx__echo", r#"{"rows": 1000}"#);
    assert_eq!(
        (e["decision"].as_str(), e["tier"].as_u64()),
        (Some("hold"), Some(3)),
        "{e}"
    );
    assert!(
        e["tiered_by"]
            .as_array()
            .is_some_and(|t| t.iter().any(|p| p == "upstream:fx:tier_rules[0]")),
        "{e}"
    );
    assert!(e["approval"].is_null());
    assert_eq!(
        a.call("fx__echo", json!({"rows": 1000})),
        Err("approval_pending".into())
    );
    let e = explain("fx__echo", r#"{"rows": 1000}"#);
    assert_eq!(e["approval"]["state"], "pending", "{e}");
    // An initiator may explain, but approval requests are for approvers and auditors.
    let ivan = s.cli_json(&[
        "operator",
        "create",
        "ivan",
        "--role",
        "initiator",
        "--json",
    ]);
    let out = s.cli_as(
        ivan["token"].as_str().expect("token"),
        &[
            "policy",
            "explain",
            "--task",
            &a.task,
            "--tool",
            "fx__echo",
            "--args",
            r#"{"rows": 1000}"#,
            "--json",
        ],
    );
    let as_initiator: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(as_initiator["decision"], "hold");
    assert!(as_initiator["approval"].is_null(), "{as_initiator}");
    // The same digest whatever the key order or spacing.
    assert_eq!(
        explain("fx__echo", r#"{ "rows" : 1000 }"#)["digest"],
        e["digest"]
    );

    // After an untrusted tool's content, the task's external send is held, and explain says why.
    assert!(a.call("fx__whoami", json!({})).is_ok());
    let e = explain("fx__publish", r#"{"channel": "internal-news"}"#);
    assert_eq!(e["decision"], "hold", "{e}");
    assert_eq!(e["tainted"], true);
    assert_eq!(e["tainted_by"], "fx__whoami");
    assert!(
        e["tiered_by"]
            .as_array()
            .is_some_and(|t| t.iter().any(|p| p == "upstream:fx:tainted_tiers:publish")),
        "{e}"
    );

    // Explaining calls nothing and records no decision.
    let before = tool_calls();
    explain("fx__echo", r#"{"rows": 1}"#);
    assert_eq!(tool_calls(), before);

    // The human form, and bad input.
    let out = s.cli(&[
        "policy",
        "explain",
        "--task",
        &a.task,
        "--tool",
        "fx__echo",
        "--args",
        r#"{"rows": 1}"#,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("decision:       allow (permitted)"),
        "{text}"
    );
    for (args, says) in [
        (
            vec![
                "--task",
                a.task.as_str(),
                "--tool",
                "fx__echo",
                "--args",
                "{not json",
            ],
            "must be JSON",
        ),
        (
            vec![
                "--task",
                a.task.as_str(),
                "--tool",
                "fx__echo",
                "--args",
                "[1]",
            ],
            "JSON object",
        ),
        (
            vec!["--task", "task_unknown", "--tool", "fx__echo"],
            "not found",
        ),
    ] {
        let mut argv = vec!["policy", "explain"];
        argv.extend(args);
        let out = s.cli(&argv);
        assert!(!out.status.success(), "{argv:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{argv:?}: {stderr}");
    }
}

#[test]
fn the_default_bundle_encodes_the_four_tiers_for_the_four_archetypes() {
    let s = TestServer::start_with_env(&[], &[("CUSTOS_EMPTY", "false")]);
    let names = |kind: &str| -> Vec<String> {
        s.cli_json(&["get", kind, "--json"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["resource"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    let mut templates = names("templates");
    templates.sort();
    assert_eq!(
        templates,
        ["automation", "coding", "customer-service", "internal-ops"]
    );
    let mut upstreams = names("upstreams");
    upstreams.sort();
    assert_eq!(upstreams, ["fetch", "fs", "git", "memory", "time"]);

    let (_, public) = s.keygen("agent-any");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    s.apply(&format!(
        "kind: Agent\nname: agent-any\nowner: test@example.com\narchetype: coding\n\
         templates: [coding, automation, customer-service, internal-ops]\npublic_key: |\n{indented}"
    ));
    let task = |template: &str| {
        s.cli_json(&[
            "task",
            "start",
            "--agent",
            "agent-any",
            "--template",
            template,
            "--on-behalf-of",
            "alice@example.com",
            "--json",
        ])["task_id"]
            .as_str()
            .expect("task id")
            .to_owned()
    };
    let decide = |task: &str, tool: &str, args: Value| {
        let e = s.cli_json(&[
            "policy",
            "explain",
            "--task",
            task,
            "--tool",
            tool,
            "--args",
            &args.to_string(),
            "--json",
        ]);
        (
            e["decision"].as_str().unwrap_or_default().to_owned(),
            e["tier"].as_u64(),
        )
    };
    let allow = |t: u64| ("allow".to_owned(), Some(t));
    let hold = ("hold".to_owned(), Some(3));

    let coding = task("coding");
    // Tier 1: reading and code review.
    assert_eq!(
        decide(&coding, "fs__read_text_file", json!({"path": "a"})),
        allow(1)
    );
    assert_eq!(
        decide(&coding, "git__git_diff", json!({"target": "main"})),
        allow(1)
    );
    // Tier 2: writes to the workspace and feature branches.
    assert_eq!(
        decide(
            &coding,
            "fs__write_file",
            json!({"path": "a", "content": "x"})
        ),
        allow(2)
    );
    assert_eq!(
        decide(
            &coding,
            "git__git_checkout",
            json!({"branch_name": "feature/x"})
        ),
        allow(2)
    );
    assert_eq!(
        decide(&coding, "git__git_commit", json!({"message": "m"})),
        allow(2)
    );
    // Tier 3: production branches.
    for branch in ["main", "master", "release-1.2", "production"] {
        assert_eq!(
            decide(&coding, "git__git_checkout", json!({"branch_name": branch})),
            hold,
            "{branch}"
        );
    }
    assert_eq!(decide(&coding, "git__git_reset", json!({})), hold);
    assert_eq!(
        decide(
            &coding,
            "git__git_create_branch",
            json!({"branch_name": "release-2"})
        ),
        hold
    );
    assert_eq!(
        decide(
            &coding,
            "git__git_create_branch",
            json!({"branch_name": "feature/y", "base_branch": "main"})
        ),
        allow(2)
    );
    assert_eq!(
        decide(
            &coding,
            "fs__move_file",
            json!({"source": "a", "destination": "b"})
        ),
        hold
    );
    // Not the coding agent's: the web.
    assert_eq!(
        decide(
            &coding,
            "fetch__fetch",
            json!({"url": "https://example.com"})
        )
        .0,
        "deny"
    );

    let automation = task("automation");
    assert_eq!(
        decide(
            &automation,
            "memory__create_entities",
            json!({"entities": []})
        ),
        allow(2)
    );
    assert_eq!(
        decide(
            &automation,
            "fetch__fetch",
            json!({"url": "https://example.com"})
        ),
        allow(2)
    );
    // Tier 4: deletion without an audit trail.
    assert_eq!(
        decide(
            &automation,
            "memory__delete_entities",
            json!({"entityNames": ["x"]})
        ),
        ("deny".to_owned(), Some(4))
    );

    let service = task("customer-service");
    assert_eq!(
        decide(&service, "memory__search_nodes", json!({"query": "refund"})),
        allow(1)
    );
    assert_eq!(
        decide(&service, "memory__add_observations", json!({})).0,
        "deny"
    );

    let ops = task("internal-ops");
    assert_eq!(decide(&ops, "git__git_log", json!({})), allow(1));
    assert_eq!(
        decide(&ops, "fs__write_file", json!({"path": "a", "content": "x"})).0,
        "deny"
    );
    assert_eq!(
        decide(&ops, "git__git_commit", json!({"message": "m"})).0,
        "deny"
    );

    // The fetched web taints the task: the bundle marks it untrusted and holds what a tainted
    // task sends out or writes.
    let fetch = s.cli_json(&["get", "upstream", "fetch", "-o", "json"]);
    assert_eq!(fetch["resource"]["untrusted"], json!(["fetch"]), "{fetch}");
    assert_eq!(fetch["resource"]["tainted_tiers"]["fetch"], 3, "{fetch}");

    // A restart does not apply it again over what an operator changed.
    s.cli_json(&["delete", "template", "automation", "--json"]);
    let dir = s.stop();
    let s = TestServer::start_in_with_env(dir, &[], &[("CUSTOS_EMPTY", "false")]);
    let templates = s.cli_json(&["get", "templates", "--json"]);
    assert!(
        templates.as_array().is_some_and(
            |t| !t.is_empty() && t.iter().all(|t| t["resource"]["name"] != "automation")
        ),
        "{templates}"
    );
}

#[test]
fn the_default_bundle_is_not_applied_with_empty() {
    let s = TestServer::start_with_env(&["--empty"], &[("CUSTOS_EMPTY", "false")]);
    let templates = s.cli_json(&["get", "templates", "--json"]);
    assert_eq!(templates, json!([]), "{templates}");
}

#[test]
fn raw_cedar_policies_forbid_calls_and_raise_tiers_and_bad_ones_are_refused_where_they_are_wrong() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-p");
    s.apply(&bundle(&public));
    let write = |name: &str, yaml: &str| {
        let path = s.dir.path().join(name);
        std::fs::write(&path, yaml).expect("write");
        path.to_str().expect("utf-8").to_owned()
    };

    // Refused on apply, with the line and column of the problem, and nothing applied.
    for (yaml, says) in [
        (
            "kind: Policy\nname: broken\ncedar: |\n  forbid (principal, action == Custos::Action::\"call\", resource)\n  when { context.tool == };\n",
            "line 2, column",
        ),
        (
            "kind: Policy\nname: typo\ncedar: |\n  forbid (principal, action == Custos::Action::\"call\", resource)\n  when { context.tol == \"x\" };\n",
            "line 2, column",
        ),
        (
            "kind: Policy\nname: grant\ncedar: |\n  permit (principal, action == Custos::Action::\"call\", resource);\n",
            "may not grant calls",
        ),
    ] {
        let file = write("bad-policy.yaml", yaml);
        let out = s.cli(&["apply", "-f", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml}");
        assert!(stderr.contains(says), "{yaml}: {stderr}");
    }
    assert_eq!(s.cli_json(&["get", "policies", "--json"]), json!([]));

    let a = Session::start(&s, &key);
    assert!(a.call("fx__echo", json!({"rows": 1})).is_ok());
    assert_eq!(a.tools(), ["fx__echo", "fx__publish", "fx__whoami"]);
    let file = write(
        "policy.yaml",
        r#"kind: Policy
name: guard
description: no echo for fx-args; whoami needs a human
cedar: |
  forbid (principal, action == Custos::Action::"call", resource)
  when { context.template == "fx-args" && context.tool == "fx__echo" };

  @tier("3")
  permit (principal, action == Custos::Action::"classify", resource)
  when { context.tool == "fx__whoami" };
"#,
    );
    s.cli_json(&["apply", "-f", &file, "--json"]);
    assert_eq!(
        s.cli_json(&["get", "policies", "--json"])[0]["resource"]["name"],
        "guard"
    );
    // The same task, the same call: now forbidden — and no longer listed, since a raw policy
    // cannot read arguments and so refuses every call of it — and the whoami call held.
    assert_eq!(
        a.call("fx__echo", json!({"rows": 1})),
        Err("policy_forbidden".into())
    );
    assert_eq!(a.tools(), ["fx__publish", "fx__whoami"]);
    assert_eq!(
        a.call("fx__whoami", json!({})),
        Err("approval_pending".into())
    );
    let e = s.cli_json(&[
        "policy", "explain", "--task", &a.task, "--tool", "fx__echo", "--json",
    ]);
    assert_eq!(e["forbidden_by"], json!(["policy:guard[0]"]), "{e}");
    let e = s.cli_json(&[
        "policy",
        "explain",
        "--task",
        &a.task,
        "--tool",
        "fx__whoami",
        "--json",
    ]);
    assert_eq!(e["tiered_by"], json!(["policy:guard[1]"]), "{e}");
    // Deleting it lifts both.
    s.cli_json(&["delete", "policy", "guard", "--json"]);
    assert!(a.call("fx__echo", json!({"rows": 1})).is_ok());
    assert_eq!(a.tools(), ["fx__echo", "fx__publish", "fx__whoami"]);
}

#[test]
fn a_trusted_upstreams_annotations_propose_default_tiers_and_nothing_else_does() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-p");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    let script = fixture("stdio_fixture.py");
    let yaml = |trusted: bool| {
        format!(
            "kind: Upstream\nname: fx\ncommand: [python3, \"{}\"]\ntrusted: {trusted}\ntiers: {{ touch: 2 }}\ndefault_tier: 3\n---\n\
             kind: Template\nname: fx-ann\nttl: 10m\ntools: [\"fx__*\"]\n---\n\
             kind: Agent\nname: agent-p\nowner: test@example.com\narchetype: automation\ntemplates: [fx-ann]\npublic_key: |\n{indented}",
            script.display()
        )
    };
    s.apply(&yaml(true));
    let task = s.start_task("agent-p", "fx-ann");
    let explain = |tool: &str| {
        let e = s.cli_json(&[
            "policy", "explain", "--task", &task, "--tool", tool, "--json",
        ]);
        (
            e["tier"].as_u64(),
            e["tiered_by"][0].as_str().unwrap_or_default().to_owned(),
        )
    };
    // Read-only and closed-world: Tier 1; read-only but open-world: Tier 2; an open-world
    // write, or a tool without annotations: the upstream's default; `tiers` always wins.
    assert_eq!(
        explain("fx__echo"),
        (Some(1), "upstream:fx:annotations:echo".into())
    );
    assert_eq!(
        explain("fx__whoami"),
        (Some(2), "upstream:fx:annotations:whoami".into())
    );
    assert_eq!(
        explain("fx__publish"),
        (Some(3), "upstream:fx:default_tier".into())
    );
    assert_eq!(
        explain("fx__sleep"),
        (Some(3), "upstream:fx:default_tier".into())
    );
    assert_eq!(
        explain("fx__touch"),
        (Some(2), "upstream:fx:tiers:touch".into())
    );
    // The call is decided the same way.
    let token = s.task_token(&task, &key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__echo", "arguments": {"a": 1}}),
    );
    assert!(r.body["result"].is_object(), "{}", r.body);
    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "fx__sleep", "arguments": {"secs": 0}}),
    );
    assert_eq!(
        r.body["error"]["data"]["reason"], "approval_pending",
        "{}",
        r.body
    );

    // Not trusted: the same annotations propose nothing.
    s.apply(&yaml(false));
    assert_eq!(
        explain("fx__echo"),
        (Some(3), "upstream:fx:default_tier".into())
    );
}
