//! Authentication and authorization at the edges: operator roles, the token exchange, and
//! task tokens at the gateway. Every refusal is a 401 without detail and an audit record.

use custos_crypto::jwt::sign_assertion;
use custos_crypto::{AgentKey, ServerKey, TokenIssuer, jwk_thumbprint};
use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, auth_failures_on_record, fixture_yaml};

struct Setup {
    server: TestServer,
    key: std::path::PathBuf,
    task: String,
    token: String,
}

fn setup() -> Setup {
    let server = TestServer::start();
    let (key, public) = server.keygen("agent-a");
    server.apply(&fixture_yaml("agent-a", &public, "5s"));
    let task = server.start_task("agent-a", "fx-all");
    let token = server.task_token(&task, &key);
    Setup {
        server,
        key,
        task,
        token,
    }
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("i64")
}

fn records(server: &TestServer) -> i64 {
    server.cli_json(&["audit", "verify", "--json"])["records"]
        .as_i64()
        .expect("records")
}

fn assert_401_without_detail(r: &super::support::RawReply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    assert_eq!(
        r.body,
        json!({"error": {"code": "unauthenticated", "message": "authentication required"}}),
        "{what}"
    );
    assert!(
        r.headers
            .get("www-authenticate")
            .is_some_and(|h| h.contains("resource_metadata")),
        "{what}"
    );
}

#[test]
fn operator_roles_are_enforced_on_every_call() {
    let s = TestServer::start();
    let init = s.cli_json(&["operator", "create", "ivy", "--role", "initiator", "--json"]);
    assert_eq!(
        (init["name"].as_str(), init["role"].as_str()),
        (Some("ivy"), Some("initiator"))
    );
    let ivy = init["token"].as_str().expect("token").to_owned();
    assert!(ivy.starts_with("custos_op_"));
    let aud = s.cli_json(&["operator", "create", "ada", "--role", "auditor", "--json"]);
    let ada = aud["token"].as_str().expect("token").to_owned();
    // The token is shown once: listing operators never shows it.
    let list = s.cli_json(&["operator", "list", "--json"]).to_string();
    assert!(!list.contains(&ivy) && !list.contains(&ada));
    assert!(s.db_path().exists());

    let (_, public) = s.keygen("agent-a");
    let yaml = fixture_yaml("agent-a", &public, "5s");
    let path = s.dir.path().join("r.yaml");
    std::fs::write(&path, yaml).expect("write");
    let path = path.to_str().expect("utf-8");

    let out = s.cli_as(&ivy, &["apply", "-f", path]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("role `initiator` may not do this"));
    assert!(
        s.cli(&["apply", "-f", path]).status.success(),
        "admin applies"
    );

    let start = [
        "task",
        "start",
        "--agent",
        "agent-a",
        "--template",
        "fx-echo",
        "--on-behalf-of",
        "bob",
        "--json",
    ];
    assert!(
        s.cli_as(&ivy, &start).status.success(),
        "initiator starts tasks"
    );
    let out = s.cli_as(&ada, &start);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("403"));
    assert!(
        s.cli_as(&ada, &["audit", "verify"]).status.success(),
        "auditor verifies"
    );
    assert!(
        !s.cli_as(&ivy, &["audit", "verify"]).status.success(),
        "initiator may not audit"
    );
    assert!(
        !s.cli_as(&ivy, &["operator", "create", "eve", "--role", "admin"])
            .status
            .success()
    );

    // Bad operator tokens: forged (right shape, wrong checksum), unknown, garbage.
    let mut forged = ivy.clone();
    let last = forged.pop().expect("non-empty");
    forged.push(if last == 'a' { 'b' } else { 'a' });
    for bad in [
        forged.as_str(),
        "custos_op_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "nonsense",
    ] {
        let out = s.cli_as(bad, &["get", "agents"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("authentication required"),
            "{bad}"
        );
    }
}

#[test]
fn forged_expired_and_misaddressed_task_tokens_are_refused_and_audited() {
    let st = setup();
    let s = &st.server;
    let ok = RawMcp::new(&s.mcp_url(), Some(&st.token));
    ok.initialize();

    // Tokens minted with the server's own key but wrong claims, and with a stranger's key.
    let pem = std::fs::read_to_string(s.data_dir().join("signing-key.pem")).expect("signing key");
    let own = |aud: &str| {
        TokenIssuer::new(
            ServerKey::new(AgentKey::from_pkcs8_pem(&pem).expect("key")),
            s.addr.clone(),
            aud.to_owned(),
        )
    };
    let right = own(&s.mcp_url());
    let t = now();
    // The task as its real token describes it: initiator, agent and the agent's id.
    let real: Value = serde_json::from_slice(&base64_url_decode(
        st.token.split('.').nth(1).expect("claims"),
    ))
    .expect("claims");
    let task = |id: &str| custos_core::Task {
        id: custos_core::TaskId::parse(id).expect("task id"),
        agent: "agent-a".into(),
        agent_id: custos_core::AgentId::parse(real["act"]["agent_id"].as_str().expect("agent_id"))
            .expect("agent id"),
        template: "fx-all".into(),
        template_version: 1,
        started_by: "admin".into(),
        on_behalf_of: "alice@example.com".into(),
        purpose: None,
        created_at: 0,
        expires_at: i64::MAX,
        state: custos_core::TaskState::Active,
        ended_at: None,
        ended_by: None,
        tainted_at: None,
        tainted_by: None,
    };
    let (expired, _) = right
        .issue(&task(&st.task), t - 1000, t - 10)
        .expect("issue");
    let (wrong_aud, _) = own("http://elsewhere/mcp")
        .issue(&task(&st.task), t, t + 300)
        .expect("issue");
    let stranger = TokenIssuer::new(
        ServerKey::new(AgentKey::generate().expect("key")),
        s.addr.clone(),
        s.mcp_url(),
    );
    let (foreign, _) = stranger.issue(&task(&st.task), t, t + 300).expect("issue");
    let (other_task, _) = right
        .issue(&task("task_doesnotexist"), t, t + 300)
        .expect("issue");
    let parts: Vec<&str> = st.token.split('.').collect();
    let none_header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);
    let mut claims: Value = serde_json::from_slice(&base64_url_decode(parts[1])).expect("claims");
    claims["template"] = "fx-all-but-bigger".into();
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        base64_url(claims.to_string().as_bytes()),
        parts[2]
    );

    let (_, failures_before) = auth_failures_on_record(s);
    let bad = [
        ("expired", expired),
        ("wrong audience", wrong_aud),
        ("foreign key", foreign),
        ("unknown task", other_task),
        ("alg none", alg_none),
        ("edited claims", edited),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (what, token) in &bad {
        let r = RawMcp::new(&s.mcp_url(), Some(token)).post(
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}),
            &[],
        );
        assert_401_without_detail(&r, what);
    }
    // No token at all: 401 pointing at the protected-resource metadata (not audited: nothing was presented).
    assert_401_without_detail(
        &RawMcp::new(&s.mcp_url(), None).post(&json!({}), &[]),
        "no token",
    );
    // Every refusal is on record, summed per source and reason once the window closes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let failures = loop {
        let (_, failures) = auth_failures_on_record(s);
        if failures >= failures_before + bad.len() as i64 || std::time::Instant::now() > deadline {
            break failures;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        failures,
        failures_before + bad.len() as i64,
        "every refused token counted in the audit log"
    );
    // Anyone may read the coarse metrics: they say failures happened, never why (which
    // would tell an outsider whether a task exists or which agent owns it).
    let public = reqwest::blocking::get(format!("{}/metrics", s.addr))
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        public.contains("custos_auth_failures_total{subject=\"task_token\"}"),
        "{public}"
    );
    assert!(!public.contains("reason="), "{public}");
    assert!(!public.contains("upstream="), "{public}");
    // An operator who may audit sees the reasons.
    let metrics = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", s.addr))
        .bearer_auth(&s.admin_token)
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    for reason in [
        "expired",
        "wrong_audience",
        "bad_signature",
        "unknown_task",
        "malformed",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "metrics lack {reason}"
        );
    }
    // The real token still works.
    assert!(!ok.initialize().is_empty());
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64")
}

fn exchange(s: &TestServer, task: &str, assertion: &str) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/oauth/token", s.addr))
        .form(&[
            ("grant_type", custos_broker::TOKEN_EXCHANGE_GRANT),
            ("subject_token", task),
            ("subject_token_type", custos_broker::TASK_ID_TOKEN_TYPE),
            ("actor_token", assertion),
            ("actor_token_type", custos_broker::JWT_TOKEN_TYPE),
        ])
        .send()
        .expect("POST /oauth/token");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn assertions_are_single_use_signed_by_the_tasks_agent_and_short_lived() {
    let st = setup();
    let s = &st.server;
    let key =
        AgentKey::from_pkcs8_pem(&std::fs::read_to_string(&st.key).expect("key")).expect("key");
    let (_, public_b) = s.keygen("agent-b");
    s.apply(
        &fixture_yaml("agent-b", &public_b, "5s")
            .split("---\nkind: Agent")
            .nth(1)
            .map(|a| format!("kind: Agent{a}"))
            .expect("agent doc"),
    );
    let key_b = AgentKey::from_pkcs8_pem(
        &std::fs::read_to_string(s.dir.path().join("agent-b.key")).expect("key"),
    )
    .expect("key");
    let issuer = s.addr.clone();
    let t = now();

    let a = sign_assertion(&key, &jwk_thumbprint(&key.public_key()), &issuer, t, 60).expect("sign");
    let (status, body) = exchange(s, &st.task, &a);
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_in"].as_i64().expect("expires_in") <= 900);
    assert_eq!(body["token_type"], "Bearer");
    let (status, body) = exchange(s, &st.task, &a);
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (401, Some("authentication required")),
        "replay"
    );

    // Agent B's key, naming itself or naming agent A, cannot get a token for A's task.
    for claimed in [jwk_thumbprint(&key_b.public_key()), "agent-a".to_owned()] {
        let b = sign_assertion(&key_b, &claimed, &issuer, t, 60).expect("sign");
        assert_eq!(exchange(s, &st.task, &b).0, 401, "agent B as {claimed}");
    }
    // Wrong audience, expired, too long-lived.
    let wrong = sign_assertion(&key, "agent-a", "http://elsewhere", t, 60).expect("sign");
    assert_eq!(exchange(s, &st.task, &wrong).0, 401);
    let old = sign_assertion(&key, "agent-a", &issuer, t - 600, 60).expect("sign");
    assert_eq!(exchange(s, &st.task, &old).0, 401);
    let long = sign_assertion(&key, "agent-a", &issuer, t, 3600).expect("sign");
    assert_eq!(exchange(s, &st.task, &long).0, 401);
    // Malformed requests are 400 with a reason (nothing about identity is revealed).
    let (status, body) = exchange(s, &st.task, "x");
    assert_eq!(status, 401, "{body}");
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/oauth/token", s.addr))
        .form(&[("grant_type", "password")])
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
}

#[test]
fn suspension_and_task_end_take_effect_at_once() {
    let st = setup();
    let s = &st.server;
    let mcp = RawMcp::new(&s.mcp_url(), Some(&st.token));
    let session = mcp.initialize();
    assert_eq!(mcp.call(&session, "tools/list", json!({})).status, 200);

    assert!(s.cli(&["agent", "suspend", "agent-a"]).status.success());
    assert_401_without_detail(&mcp.call(&session, "tools/list", json!({})), "suspended");
    assert!(
        !s.cli(&[
            "task",
            "token",
            "--task",
            &st.task,
            "--agent-key",
            st.key.to_str().expect("utf-8")
        ])
        .status
        .success()
    );
    assert!(s.cli(&["agent", "resume", "agent-a"]).status.success());
    assert_eq!(
        mcp.call(&session, "tools/list", json!({})).status,
        200,
        "resumed"
    );

    assert!(s.cli(&["task", "end", &st.task]).status.success());
    assert_401_without_detail(&mcp.call(&session, "tools/list", json!({})), "ended task");
    assert!(
        !s.cli(&[
            "task",
            "token",
            "--task",
            &st.task,
            "--agent-key",
            st.key.to_str().expect("utf-8")
        ])
        .status
        .success()
    );
    let again = s.cli(&["task", "end", &st.task]);
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already ended")
    );

    let trace = s.cli_json(&["audit", "trace", &st.task, "--json"]);
    let kinds: Vec<&str> = trace["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"task_start"));
    assert_eq!(kinds.last(), Some(&"task_end"));
}

#[test]
fn another_tasks_token_cannot_use_a_session_and_tasks_expire() {
    let st = setup();
    let s = &st.server;
    let mine = RawMcp::new(&s.mcp_url(), Some(&st.token));
    let session = mine.initialize();
    let task2 = s.start_task("agent-a", "fx-echo");
    let token2 = s.task_token(&task2, &st.key);
    let other = RawMcp::new(&s.mcp_url(), Some(&token2));
    let r = other.call(&session, "tools/list", json!({}));
    assert_eq!(r.status, 404, "a session belongs to its task: {}", r.body);
    // Each token sees its own template.
    let s2 = other.initialize();
    let names = |r: super::support::RawReply| -> Vec<String> {
        r.body["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(
        names(other.call(&s2, "tools/list", json!({}))),
        vec!["fx__echo".to_owned()]
    );

    // A task started with a 2-second TTL: its token dies with it.
    let short = s.cli_json(&[
        "task",
        "start",
        "--agent",
        "agent-a",
        "--template",
        "fx-echo",
        "--on-behalf-of",
        "bob",
        "--ttl",
        "2s",
        "--json",
    ]);
    let short_id = short["task_id"].as_str().expect("id");
    let tok = s.task_token(short_id, &st.key);
    let c = RawMcp::new(&s.mcp_url(), Some(&tok));
    c.initialize();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        c.post(
            &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}),
            &[]
        )
        .status,
        401
    );
    // A TTL beyond the template's is refused with the reason.
    let out = s.cli(&[
        "task",
        "start",
        "--agent",
        "agent-a",
        "--template",
        "fx-echo",
        "--on-behalf-of",
        "bob",
        "--ttl",
        "2h",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("exceeds template `fx-echo`'s maximum of 10m")
    );
}

#[test]
fn a_flood_of_bad_tokens_costs_a_few_records_and_is_rate_limited() {
    let s = TestServer::start_with(&["--auth-failure-window", "2s", "--auth-failure-limit", "100"]);
    let http = reqwest::blocking::Client::new();
    let before = records(&s);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..1500 {
        let status = http
            .post(s.mcp_url())
            .bearer_auth(format!("garbage-{i}"))
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .send()
            .expect("POST /mcp")
            .status()
            .as_u16();
        *statuses.entry(status).or_default() += 1;
    }
    assert!(
        statuses.get(&401).is_some_and(|n| *n >= 100),
        "{statuses:?}"
    );
    assert!(
        statuses.get(&429).is_some_and(|n| *n > 0),
        "past the limit a source is refused unchecked: {statuses:?}"
    );
    assert_eq!(
        statuses.get(&401).unwrap_or(&0) + statuses.get(&429).unwrap_or(&0),
        1500
    );
    // Once the windows close, the flood is a handful of summary records, not 1,500.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (summaries, failures) = auth_failures_on_record(&s);
    assert_eq!(
        failures,
        *statuses.get(&401).unwrap_or(&0) as i64,
        "every refusal counted"
    );
    assert!(
        summaries <= 6,
        "{summaries} summary records for one source and reason"
    );
    assert!(
        records(&s) - before <= 6 + 1,
        "the flood wrote {} records",
        records(&s) - before
    );
    // A well-behaved source elsewhere is unaffected, and so is this one after the window.
    assert!(s.cli(&["get", "agents"]).status.success());
}

#[test]
fn an_agent_deleted_and_re_created_under_its_name_does_not_inherit_its_tasks() {
    let server = TestServer::start();
    let s = &server;
    let (key, public) = s.keygen("agent-a");
    s.apply(&fixture_yaml("agent-a", &public, "5s"));
    let old_task = s.start_task("agent-a", "fx-all");
    let old_token = s.task_token(&old_task, &key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&old_token));
    let session = mcp.initialize();
    assert_eq!(mcp.call(&session, "tools/list", json!({})).status, 200);
    let old_id = s.cli_json(&["task", "get", &old_task, "--json"])["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    assert!(old_id.starts_with("agent_"), "{old_id}");
    let before = auth_failures_on_record(s).1;

    // Deleted, then registered again under the same name, even with the very same key.
    assert!(s.cli(&["delete", "agent", "agent-a"]).status.success());
    s.apply(&fixture_yaml("agent-a", &public, "5s"));

    // The old registration's token and task are refused, on the open session and anew.
    assert_401_without_detail(&mcp.call(&session, "tools/list", json!({})), "old token");
    let exchange = s.cli(&[
        "task",
        "token",
        "--task",
        &old_task,
        "--agent-key",
        key.to_str().expect("utf-8"),
    ]);
    assert!(!exchange.status.success(), "old task exchanged");
    // Both refusals are on record as `agent_replaced`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while auth_failures_on_record(s).1 < before + 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        super::support::sql(
            s,
            "SELECT COALESCE(SUM(json_extract(detail, '$.count')), 0) FROM audit_log \
             WHERE kind = 'auth_failures' AND reason = 'agent_replaced'"
        ),
        Some(2)
    );

    // The new registration has its own id and works for new tasks.
    let task = s.start_task("agent-a", "fx-all");
    let new_id = s.cli_json(&["task", "get", &task, "--json"])["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    assert_ne!(new_id, old_id);
    let token = s.task_token(&task, &key);
    let fresh = RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = fresh.initialize();
    assert_eq!(fresh.call(&sid, "tools/list", json!({})).status, 200);
    // Registry changes name the ids: the trail tells the two registrations apart.
    let ids = super::support::sql(
        s,
        &format!(
            "SELECT COUNT(DISTINCT json_extract(detail, '$.id')) FROM audit_log \
             WHERE kind = 'registry_change' AND json_extract(detail, '$.name') = 'agent-a' \
             AND json_extract(detail, '$.id') IN ('{old_id}', '{new_id}')"
        ),
    );
    assert_eq!(ids, Some(2));
}
