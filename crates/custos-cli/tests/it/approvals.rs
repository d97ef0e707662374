//! The human approval gate on the wire: a Tier 3 call is held as a request bound to the exact
//! call, an approver answers it by CLI or API, and the identical call then runs exactly once;
//! other arguments, another task, a second run, a denial and an expiry are all refused.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, fixture};

fn bundle(public_key: &str) -> String {
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        r#"kind: Upstream
name: fx
command: [python3, "{script}"]
tiers: {{ echo: 1, touch: 3 }}
default_tier: 4
---
kind: Template
name: fx-held
ttl: 10m
tools: [fx__echo, fx__touch, fx__wipe]
---
kind: Agent
name: agent-h
owner: test@example.com
archetype: internal-ops
templates: [fx-held]
public_key: |
{indented}"#,
        script = fixture("stdio_fixture.py").display()
    )
}

struct Agent {
    mcp: RawMcp,
    sid: String,
    task: String,
}

/// A call's answer: the result text, or the refusal's reason and approval id.
#[derive(Debug, PartialEq)]
enum Answer {
    Ran(String),
    Refused(String, Option<String>),
}

impl Agent {
    fn start(s: &TestServer, key: &Path) -> Self {
        let task = s.start_task("agent-h", "fx-held");
        let token = s.task_token(&task, key);
        let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
        let sid = mcp.initialize();
        Self { mcp, sid, task }
    }

    fn touch(&self, path: &Path) -> Answer {
        self.call("fx__touch", json!({ "path": path }))
    }

    fn call(&self, tool: &str, arguments: Value) -> Answer {
        let r = self.mcp.call(
            &self.sid,
            "tools/call",
            json!({ "name": tool, "arguments": arguments }),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        match r.body["error"]["data"]["reason"].as_str() {
            Some(reason) => Answer::Refused(
                reason.to_owned(),
                r.body["error"]["data"]["approval_id"]
                    .as_str()
                    .map(str::to_owned),
            ),
            None => Answer::Ran(
                r.body["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
        }
    }
}

/// The approval id of a call held past its hold.
fn pending(answer: Answer) -> String {
    match answer {
        Answer::Refused(reason, Some(id)) if reason == "approval_pending" => id,
        other => panic!("expected approval_pending with an id, got {other:?}"),
    }
}

/// How many times the fixture's `touch` ran on `path`.
fn runs(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn operator(s: &TestServer, name: &str, role: &str) -> String {
    let v = s.cli_json(&["operator", "create", name, "--role", role, "--json"]);
    v["token"].as_str().expect("token").to_owned()
}

fn cli_as_json(s: &TestServer, token: &str, args: &[&str]) -> Value {
    let out = s.cli_as(token, args);
    assert!(
        out.status.success(),
        "custos {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// The id of the first request waiting for an answer, once one appears within `within`.
fn first_waiting_request(s: &TestServer, approver: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let list = cli_as_json(s, approver, &["approvals", "list", "--json"]);
        if let Some(id) = list[0]["id"].as_str() {
            return id.to_owned();
        }
        assert!(Instant::now() < deadline, "no approval request appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli_fails(s: &TestServer, token: &str, args: &[&str], says: &str) {
    let out = s.cli_as(token, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "custos {args:?} must fail");
    assert!(stderr.contains(says), "custos {args:?}: {stderr}");
}

#[test]
fn an_approval_allows_the_identical_call_once_and_nothing_else() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-h");
    s.apply(&bundle(&public));
    let carol = operator(&s, "carol", "approver");
    let a = Agent::start(&s, &key);
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, other) = (dir.path().join("p"), dir.path().join("other"));

    // Tier 4 is refused outright: no request is made, so no approval can ever allow it.
    assert_eq!(
        a.call("fx__wipe", json!({})),
        Answer::Refused("tier4_denied".into(), None)
    );
    let none = cli_as_json(&s, &carol, &["approvals", "list", "--all", "--json"]);
    assert_eq!(none, json!([]), "{none}");

    // Held: the upstream is not reached, and the agent learns the request's id.
    let first = pending(a.touch(&p));
    assert_eq!(runs(&p), 0);
    // Retried before anyone answered: the same request, not a new one.
    assert_eq!(pending(a.touch(&p)), first);

    // Approvers see it, bound to the call, with its attribution chain.
    let list = cli_as_json(&s, &carol, &["approvals", "list", "--json"]);
    let listed = list
        .as_array()
        .and_then(|l| l.iter().find(|x| x["id"] == first.as_str()))
        .unwrap_or_else(|| panic!("{first} listed: {list}"));
    assert_eq!(listed["task"], a.task.as_str());
    assert_eq!(listed["agent"], "agent-h");
    assert_eq!(listed["initiator"], "alice@example.com");
    assert_eq!(listed["tool"], "fx__touch");
    assert_eq!(listed["arguments"]["path"], p.to_str().expect("utf-8"));
    assert_eq!(listed["tier"], 3);
    assert_eq!(listed["state"], "pending");
    assert!(listed["expires"].as_str().is_some(), "{listed}");

    // The operator who started the task cannot approve its calls; an initiator-role
    // operator cannot approve at all.
    cli_fails(
        &s,
        &s.admin_token.clone(),
        &["approvals", "approve", &first],
        "separation of duties",
    );
    let ivan = operator(&s, "ivan", "initiator");
    cli_fails(&s, &ivan, &["approvals", "approve", &first], "may not");

    let approved = cli_as_json(&s, &carol, &["approvals", "approve", &first, "--json"]);
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by"], "carol");
    // It answers once.
    cli_fails(&s, &carol, &["approvals", "deny", &first], "approved");

    // Other arguments are not approved by it: a request of their own.
    let second = pending(a.touch(&other));
    assert_ne!(second, first);
    assert_eq!(runs(&other), 0);
    // Nor is the same call from another task.
    let b = Agent::start(&s, &key);
    let third = pending(b.touch(&p));
    assert_ne!(third, first);
    assert_eq!(runs(&p), 0);

    // The identical call runs, exactly once.
    assert_eq!(a.touch(&p), Answer::Ran("touched".into()));
    assert_eq!(runs(&p), 1);
    let again = pending(a.touch(&p));
    assert_ne!(again, first, "a second run needs an approval of its own");
    assert_eq!(runs(&p), 1);
    let shown = cli_as_json(&s, &carol, &["approvals", "show", &first, "--json"]);
    assert_eq!(shown["state"], "executed", "{shown}");
    assert!(shown["executed"].as_str().is_some(), "{shown}");

    // A denial refuses the identical call from then on.
    let denied = cli_as_json(
        &s,
        &carol,
        &[
            "approvals",
            "deny",
            &second,
            "--reason",
            "not that file",
            "--json",
        ],
    );
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["note"], "not that file");
    assert_eq!(
        a.touch(&other),
        Answer::Refused("approval_denied".into(), Some(second.clone()))
    );
    assert_eq!(runs(&other), 0);

    // `--all` lists every state; the default only what waits.
    let all = cli_as_json(&s, &carol, &["approvals", "list", "--all", "--json"]);
    let state_of = |id: &str| {
        all.as_array()
            .and_then(|l| l.iter().find(|x| x["id"] == id))
            .map(|x| x["state"].clone())
    };
    assert_eq!(state_of(&first), Some(json!("executed")));
    assert_eq!(state_of(&second), Some(json!("denied")));
    let waiting = cli_as_json(&s, &carol, &["approvals", "list", "--json"]);
    let ids: Vec<&str> = waiting
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["id"].as_str())
        .collect();
    assert!(
        ids.contains(&third.as_str()) && ids.contains(&again.as_str()),
        "{waiting}"
    );
    assert!(
        !ids.contains(&first.as_str()) && !ids.contains(&second.as_str()),
        "{waiting}"
    );
    // One task's requests only.
    let of_b = cli_as_json(
        &s,
        &carol,
        &["approvals", "list", "--all", "--task", &b.task, "--json"],
    );
    let ids_b: Vec<&str> = of_b
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["id"].as_str())
        .collect();
    assert_eq!(ids_b, [third.as_str()], "{of_b}");

    // The trail: the request, the approver's answer, and the call decided by the approval.
    let trace = s.cli_json(&["audit", "trace", &a.task, "--json"]);
    let records = trace["records"].as_array().cloned().unwrap_or_default();
    let of = |kind: &str, id: &str| {
        records
            .iter()
            .filter(|r| r["kind"] == kind && r["detail"]["approval_id"] == id)
            .count()
    };
    assert_eq!(of("approval_requested", &first), 1, "{trace}");
    let answered = records
        .iter()
        .find(|r| r["kind"] == "approval_answered" && r["detail"]["approval_id"] == first.as_str())
        .unwrap_or_else(|| panic!("the approval on record: {trace}"));
    assert_eq!(answered["actor"], "carol");
    assert_eq!(answered["tool"], "fx__touch");
    let executed = records
        .iter()
        .filter(|r| r["kind"] == "tool_call" && r["decision"] == "allow")
        .collect::<Vec<_>>();
    assert_eq!(executed.len(), 1, "one allowed call: {trace}");
    assert_eq!(executed[0]["detail"]["rule"], format!("approval:{first}"));
    assert_eq!(executed[0]["tier"], 3);
    let held = records
        .iter()
        .filter(|r| r["kind"] == "tool_call" && r["decision"] == "hold")
        .count();
    assert!(held >= 3, "held calls are on record as held: {trace}");
    assert!(
        records.iter().any(|r| r["kind"] == "tool_call"
            && r["decision"] == "hold"
            && r["detail"]["approval_id"] == first.as_str()),
        "a held call's record names the request it waits on: {trace}"
    );
    let verify = s.cli_json(&["audit", "verify", "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
}

#[test]
fn a_waiting_call_runs_when_approved_and_an_unanswered_one_expires() {
    let s = TestServer::start_with(&["--approval-hold", "30s", "--approval-ttl", "3s"]);
    let (key, public) = s.keygen("agent-h");
    s.apply(&bundle(&public));
    let carol = operator(&s, "carol", "approver");
    let a = Agent::start(&s, &key);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p");

    // The call waits in its hold; an approver answers; the waiting call runs.
    let (agent, path) = (a, p.clone());
    let waiting = std::thread::spawn(move || {
        let answer = agent.touch(&path);
        (agent, answer)
    });
    let id = first_waiting_request(&s, &carol, Duration::from_secs(20));
    assert_eq!(runs(&p), 0, "nothing ran before the approval");
    cli_as_json(&s, &carol, &["approvals", "approve", &id, "--json"]);
    let (a, answer) = waiting.join().expect("the waiting call");
    assert_eq!(answer, Answer::Ran("touched".into()));
    assert_eq!(runs(&p), 1);

    // Unanswered, a request expires (3 s here) and the waiting call is refused; answering it
    // later is too late.
    let q = dir.path().join("q");
    let expired = a.touch(&q);
    let Answer::Refused(reason, Some(late)) = expired else {
        panic!("expected a refusal, got {expired:?}")
    };
    assert_eq!(reason, "approval_expired");
    cli_fails(&s, &carol, &["approvals", "approve", &late], "expired");
    assert_eq!(runs(&q), 0);
    let shown = cli_as_json(&s, &carol, &["approvals", "show", &late, "--json"]);
    assert_eq!(shown["state"], "expired");
}

#[test]
fn approval_requests_are_bounded_redacted_and_checked() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-h");
    s.apply(&bundle(&public));
    let carol = operator(&s, "carol", "approver");
    let a = Agent::start(&s, &key);
    let dir = tempfile::tempdir().expect("tempdir");

    // Secrets in arguments are not shown to approvers; long values are cut.
    let secret = "hunter2-do-not-show";
    let id = pending(a.call(
        "fx__touch",
        json!({ "path": dir.path().join("s"), "password": secret, "note": "y".repeat(100_000) }),
    ));
    let shown = s.cli_as(&carol, &["approvals", "show", &id, "--json"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    assert!(text.len() < 10_000, "{} bytes shown", text.len());

    // One task cannot flood approvers: past 16 waiting requests, held calls are refused.
    for i in 1..16 {
        pending(a.touch(&dir.path().join(format!("f{i}"))));
    }
    assert_eq!(
        a.touch(&dir.path().join("f16")),
        Answer::Refused("approval_limit".into(), None)
    );

    // Ids that cannot be approval ids, unknown ids, roles that may not look.
    cli_fails(
        &s,
        &carol,
        &["approvals", "show", "../../v1/operators"],
        "not an approval id",
    );
    cli_fails(
        &s,
        &carol,
        &["approvals", "approve", "apr_unknown"],
        "not found",
    );
    let ivan = operator(&s, "ivan", "initiator");
    cli_fails(&s, &ivan, &["approvals", "list", "--json"], "may not");
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("{}/v1/approvals/{id}/deny", s.addr))
        .bearer_auth(&carol)
        .header("content-type", "application/json")
        .body(r#"{"reason": 5}"#)
        .send()
        .expect("POST deny");
    assert_eq!(r.status().as_u16(), 422, "a malformed body is refused");
    let still = cli_as_json(&s, &carol, &["approvals", "show", &id, "--json"]);
    assert_eq!(
        still["state"], "pending",
        "a malformed answer changes nothing"
    );
}

#[test]
fn an_approver_answers_in_the_browser() {
    use super::webdriver::Browser;

    let s = TestServer::start();
    let (key, public) = s.keygen("agent-h");
    s.apply(&bundle(&public));
    let carol = operator(&s, "carol", "approver");
    let a = Agent::start(&s, &key);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p");
    let id = pending(a.touch(&p));
    // A value crafted to run script in an approver's browser is shown as text.
    let hostile = "<script>document.title='owned'</script><img src=x onerror=alert(1)>";
    let q = dir.path().join("q");
    let other = pending(a.call("fx__touch", json!({ "path": q, "comment": hostile })));

    let b = Browser::start();
    let page = format!("{}/ui/approvals", s.addr);
    b.goto(&page);
    // Not signed in: the sign-in form. A wrong token does not sign in.
    b.type_into("#token", "custos_op_not-a-real-token");
    b.click("#sign-in");
    assert!(b.text("[role=alert]").contains("does not sign in"));
    b.type_into("#token", &carol);
    b.click("#sign-in");
    assert_eq!(b.text("#operator"), "carol");
    let row = format!("tr[id=\"{id}\"]");
    assert_eq!(b.attribute(&row, "data-state").as_deref(), Some("pending"));
    assert!(b.text(&row).contains("fx__touch"));
    assert!(
        b.text(&row).contains("held by upstream:fx:tiers:touch"),
        "{}",
        b.text(&row)
    );
    assert!(
        b.count(&format!("{row} details.recent li")) >= 2,
        "the task's earlier calls are on the page"
    );
    assert!(b.text(&row).contains(p.to_str().expect("utf-8")));
    let hostile_row = format!("tr[id=\"{other}\"]");
    assert!(
        b.text(&hostile_row).contains("<script>"),
        "the hostile value shows as text"
    );
    assert_eq!(b.count("script"), 0, "no script element on the page");
    assert_eq!(b.count("img"), 0, "no image element on the page");

    // The session cookie cannot answer without the page's CSRF token.
    let cookie = b.cookie("custos_ui").expect("a session cookie");
    let forged = reqwest::blocking::Client::new()
        .post(format!("{}/ui/approvals/{id}/approve", s.addr))
        .header("cookie", format!("custos_ui={cookie}"))
        .form(&[("csrf", "guess")])
        .send()
        .expect("forged POST");
    assert_eq!(forged.status().as_u16(), 403);
    // A cross-site post is refused even with the page's own CSRF token, and a cross-site
    // sign-in (login CSRF) sets no session.
    let csrf = b
        .attribute(&format!("{row} input[name=csrf]"), "value")
        .expect("the form's CSRF token");
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let cross = http
        .post(format!("{}/ui/approvals/{id}/approve", s.addr))
        .header("cookie", format!("custos_ui={cookie}"))
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .expect("cross-site POST");
    assert_eq!(cross.status().as_u16(), 403);
    let cross_login = http
        .post(format!("{}/ui/login", s.addr))
        .header("sec-fetch-site", "cross-site")
        .form(&[("token", carol.as_str())])
        .send()
        .expect("cross-site login");
    assert_eq!(cross_login.status().as_u16(), 403);
    assert!(cross_login.headers().get("set-cookie").is_none());
    assert_eq!(
        cli_as_json(&s, &carol, &["approvals", "show", &id, "--json"])["state"],
        "pending"
    );

    // Approve in the browser; the identical call then runs once.
    b.click(&format!("{row} button.approve"));
    assert!(b.text("#flash").contains("Approved"), "{}", b.url());
    assert_eq!(a.touch(&p), Answer::Ran("touched".into()));
    assert_eq!(runs(&p), 1);

    // Deny the other with a reason; the agent is refused.
    b.type_into(
        &format!("{hostile_row} input[name=reason]"),
        "not with that comment",
    );
    b.click(&format!("{hostile_row} button.deny"));
    assert!(b.text("#flash").contains("Denied"));
    let denied = cli_as_json(&s, &carol, &["approvals", "show", &other, "--json"]);
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["note"], "not with that comment");
    assert_eq!(denied["decided_by"], "carol");
    assert_eq!(
        a.call("fx__touch", json!({ "path": q, "comment": hostile })),
        Answer::Refused("approval_denied".into(), Some(other))
    );

    // The operator who started the task is refused by separation of duties, on the page too.
    let third = pending(a.touch(&dir.path().join("r")));
    b.click("form[action=\"/ui/logout\"] button");
    b.type_into("#token", &s.admin_token);
    b.click("#sign-in");
    b.click(&format!("tr[id=\"{third}\"] button.approve"));
    assert!(
        b.text("#error").contains("separation of duties"),
        "{}",
        b.text("body")
    );
    assert_eq!(
        cli_as_json(&s, &carol, &["approvals", "show", &third, "--json"])["state"],
        "pending"
    );
}

/// A one-shot HTTP receiver on loopback: records each request (headers and body) and answers
/// `status`.
fn receiver(status: u16) -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = tx.send((head, String::from_utf8_lossy(&body).into_owned()));
        }
    });
    (url, rx)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn approval_requests_and_answers_reach_the_webhook_signed() {
    let (url, hooks) = receiver(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("hook.key");
    let secret = custos_crypto::random::new_id("whsec_");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write secret");
    let s = TestServer::start_with(&[
        "--approval-webhook",
        &url,
        "--approval-webhook-secret-file",
        secret_file.to_str().expect("utf-8"),
    ]);
    let (key, public) = s.keygen("agent-h");
    s.apply(&bundle(&public));
    let carol = operator(&s, "carol", "approver");
    let a = Agent::start(&s, &key);
    let id = pending(a.call(
        "fx__touch",
        json!({ "path": dir.path().join("p"), "api_key": "sk-live-do-not-leak" }),
    ));

    let (head, body) = hooks
        .recv_timeout(Duration::from_secs(20))
        .expect("the request was POSTed");
    let v: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["type"], "approval.requested");
    assert_eq!(v["approval"]["id"], id.as_str());
    assert_eq!(v["approval"]["task"], a.task.as_str());
    assert_eq!(v["approval"]["tool"], "fx__touch");
    assert_eq!(v["page"], format!("{}/ui/approvals", s.addr));
    assert!(
        v["text"].as_str().is_some_and(|t| t.contains("agent-h")
            && t.contains("fx__touch")
            && t.contains("/ui/approvals")),
        "a Slack-compatible text: {v}"
    );
    assert!(!body.contains("sk-live-do-not-leak"), "{body}");
    let timestamp = header(&head, "x-custos-timestamp").expect("a timestamp");
    let signature = header(&head, "x-custos-signature").expect("a signature");
    let expected = custos_crypto::digest::hmac_sha256_hex(
        secret.as_bytes(),
        format!("{timestamp}.{body}").as_bytes(),
    );
    assert_eq!(signature, format!("sha256={expected}"));

    cli_as_json(&s, &carol, &["approvals", "deny", &id, "--json"]);
    let (_, body) = hooks
        .recv_timeout(Duration::from_secs(20))
        .expect("the answer was POSTed");
    let v: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["type"], "approval.answered");
    assert_eq!(v["approval"]["state"], "denied");
    assert_eq!(v["approval"]["decided_by"], "carol");
    assert!(
        !s.log().contains(&secret),
        "the signing key is never logged"
    );
}

#[test]
fn a_dead_webhook_holds_up_nothing() {
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let s = TestServer::start_with(&[
        "--approval-webhook",
        &format!("http://127.0.0.1:{port}/hook?token=hook-url-secret"),
    ]);
    let (key, public) = s.keygen("agent-h");
    s.apply(&bundle(&public));
    let a = Agent::start(&s, &key);
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..5 {
        pending(a.touch(&dir.path().join(format!("p{i}"))));
    }
    assert_eq!(
        a.call("fx__echo", json!({"x": 1})),
        Answer::Ran("{\"x\": 1}".into())
    );
    // The server says the webhook is unreachable, without the URL's secret.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.log().contains("approval webhook unreachable") {
        assert!(
            Instant::now() < deadline,
            "no delivery failure logged: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!s.log().contains("hook-url-secret"), "{}", s.log());
}

#[test]
fn a_held_call_reports_progress_until_it_is_answered() {
    use std::io::BufRead as _;

    let s = TestServer::start_with(&["--approval-hold", "60s"]);
    let (key, public) = s.keygen("agent-h");
    s.apply(&bundle(&public));
    let carol = operator(&s, "carol", "approver");
    let a = Agent::start(&s, &key);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p");

    // A client that sent a progress token and accepts an event stream gets progress while
    // the call waits for its approval, then the answer, on one stream.
    let token = s.task_token(&a.task, &key);
    let (url, sid, path) = (s.mcp_url(), a.sid.clone(), p.clone());
    let reader = std::thread::spawn(move || {
        let body = json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {
            "name": "fx__touch", "arguments": {"path": path}, "_meta": {"progressToken": "pt-1"}}});
        let resp = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .expect("client")
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string())
            .send()
            .expect("POST tools/call");
        assert_eq!(
            resp.headers()["content-type"].to_str().ok(),
            Some("text/event-stream")
        );
        let mut messages = Vec::new();
        for line in std::io::BufReader::new(resp).lines() {
            let line = line.expect("stream line");
            if let Some(data) = line.strip_prefix("data: ") {
                messages.push(serde_json::from_str::<Value>(data).expect("JSON data"));
            }
        }
        messages
    });
    let id = first_waiting_request(&s, &carol, Duration::from_secs(20));
    // Long enough for two progress notifications (one every 2 s), with room for a slow machine.
    std::thread::sleep(Duration::from_millis(5500));
    cli_as_json(&s, &carol, &["approvals", "approve", &id, "--json"]);
    let messages = reader.join().expect("the reader");
    let (last, progress) = messages.split_last().expect("messages");
    assert_eq!(last["id"], 41, "{messages:?}");
    assert_eq!(last["result"]["content"][0]["text"], "touched", "{last}");
    assert!(progress.len() >= 2, "{messages:?}");
    for (i, m) in progress.iter().enumerate() {
        assert_eq!(m["method"], "notifications/progress", "{m}");
        assert_eq!(m["params"]["progressToken"], "pt-1");
        assert_eq!(m["params"]["progress"], i + 1, "progress grows: {m}");
        assert!(
            m["params"]["message"]
                .as_str()
                .is_some_and(|t| t.contains(&id)),
            "the waiting is explained: {m}"
        );
    }
    assert_eq!(runs(&p), 1);
    // Without a token, or without accepting a stream, the answer is plain JSON as before.
    let r = a.mcp.call(
        &a.sid,
        "tools/call",
        json!({"name": "fx__echo", "arguments": {"x": 1}, "_meta": {"progressToken": {"bad": 1}}}),
    );
    assert_eq!(
        r.body["result"]["content"][0]["text"], "{\"x\": 1}",
        "{}",
        r.body
    );
}

#[test]
fn the_python_sdk_receives_progress_while_its_call_waits_for_approval() {
    let s = TestServer::start_with(&["--approval-hold", "60s"]);
    let (key, public) = s.keygen("agent-h");
    s.apply(&bundle(&public));
    let carol = operator(&s, "carol", "approver");
    let task = s.start_task("agent-h", "fx-held");
    let token = s.task_token(&task, &key);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p");
    let args = json!({ "path": p }).to_string();
    let (url, python) = (s.mcp_url(), super::support::deps().python.clone());
    let client = std::thread::spawn(move || {
        std::process::Command::new(python)
            .arg(fixture("mcp_client.py"))
            .args([&url, &token, "legacy", "call-progress", "fx__touch", &args])
            .output()
            .expect("run mcp_client.py")
    });
    let id = first_waiting_request(&s, &carol, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(5500));
    cli_as_json(&s, &carol, &["approvals", "approve", &id, "--json"]);
    let out = client.join().expect("the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON ({e}): {stdout}"));
    assert_eq!(v["ok"]["content"][0]["text"], "touched", "{v}");
    let progress = v["progress"].as_array().cloned().unwrap_or_default();
    assert!(progress.len() >= 2, "the SDK saw progress: {v}");
    assert!(
        progress
            .iter()
            .all(|p| p["message"].as_str().is_some_and(|m| m.contains(&id))),
        "{v}"
    );
    assert_eq!(runs(&p), 1);
}
