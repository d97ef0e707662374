//! Credentials injected into upstreams: `@modelcontextprotocol/server-postgres` from npm,
//! started for one task with a connection URL built from a PostgreSQL role minted for it,
//! answers the agent's queries as that role and no further; the credential is nowhere the
//! agent, the logs or the audit log can show; the role and the process end with the task. And
//! an upstream that echoes what it was given has every injected value (and its base64 and URL
//! encodings) cut out of results, errors, tool lists and its logged stderr.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::{RawMcp, TestServer, deps, fixture};

const PG_ENV: &str = "CUSTOS_IT_INJECT_PG_URL";

/// The command lines of running processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.contains(needle)) {
            out.push((pid, args));
        }
    }
    out
}

/// Polls `done` until it holds; panics after 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Drops a test's group role once no lease role is a member of it any more: revoking a lease
/// drops its role (and the membership) concurrently, and PostgreSQL refuses a DROP ROLE that
/// races it ("tuple concurrently deleted").
fn drop_group(rt: &tokio::runtime::Runtime, url: &str, group: &str) {
    eventually("the group's lease roles are revoked", || {
        rt.block_on(custos_test_support::tamper::sql_at(
            url,
            &format!(
                "SELECT COUNT(*) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                 WHERE g.rolname = '{group}'"
            ),
        )) == Some(0)
    });
    rt.block_on(custos_test_support::tamper::exec_at(
        url,
        &format!("DROP ROLE IF EXISTS {group}"),
    ));
}

/// Everything an operator or attacker could read afterwards: the server's log, the audit
/// trail of the task and the raw bytes of the store (database and write-ahead log).
fn everything_kept(s: &TestServer, task: &str) -> String {
    let trace = s.cli(&["audit", "trace", task, "--json"]);
    let mut kept = s.log();
    kept.push_str(&String::from_utf8_lossy(&trace.stdout));
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", s.db_path().display());
        if let Ok(bytes) = std::fs::read(&path) {
            kept.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    kept
}

fn agent_yaml(name: &str, template: &str, public_key: &str) -> String {
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "kind: Agent\nname: {name}\nowner: test@example.com\narchetype: automation\ntemplates: [{template}]\npublic_key: |\n{indented}"
    )
}

#[test]
fn server_postgres_answers_with_a_role_minted_for_the_task_and_the_agent_never_sees_it() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(custos_test_support::fresh_pg_db());
    let tag = format!("{}_{}", std::process::id(), db.url().len());
    let group = format!("it_inject_{tag}");
    let exec = |sql: &str| {
        rt.block_on(custos_test_support::tamper::exec_at(db.url(), sql));
    };
    let count = |sql: &str| {
        rt.block_on(custos_test_support::tamper::sql_at(db.url(), sql))
            .unwrap_or(-1)
    };
    exec(&format!(
        "CREATE ROLE {group} NOLOGIN; \
         CREATE TABLE orders (id int, total int); INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30); \
         CREATE TABLE payroll (salary int); INSERT INTO payroll VALUES (100000); \
         GRANT SELECT ON orders TO {group}"
    ));

    let pg_server = &deps().pg_server;
    let s = TestServer::start_with_env(&[], &[(PG_ENV, db.url())]);
    let (key, public) = s.keygen("agent-db");
    s.apply(&format!(
        "kind: CredentialRole\nname: pg-readonly\nengine: postgres\ndefault_ttl: 10m\nmax_ttl: 1h\nconnection_env: {PG_ENV}\nrole:\n  groups: [{group}]\n---\n\
         kind: Upstream\nname: pg\ncommand: [\"{node}\", \"{pg_server}\"]\nscope: task\ntiers: {{ query: 1 }}\ncredentials:\n  - {{ role: pg-readonly, arg: true }}\n---\n\
         kind: Template\nname: db-reader\nttl: 10m\ntools: [pg__query]\ncredentials: [pg-readonly]\n---\n{}",
        agent_yaml("agent-db", "db-reader", &public),
        node = deps().node,
    ));
    let task = s.start_task("agent-db", "db-reader");
    let token = s.task_token(&task, &key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    let mut seen = String::new();
    let mut ask = |method: &str, params: Value| {
        let r = mcp.call(&sid, method, params);
        seen.push_str(&r.body.to_string());
        r.body
    };

    let list = ask("tools/list", json!({}));
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["pg__query"], "{list}");

    // The query runs as a role minted for this task, through the group it names.
    let text = |r: &Value| {
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let who = ask(
        "tools/call",
        json!({"name": "pg__query", "arguments": {"sql": "SELECT current_user AS u, (SELECT sum(total) FROM orders)::int AS total"}}),
    );
    let rows: Value = serde_json::from_str(&text(&who)).expect("rows");
    assert_eq!(rows[0]["total"], 60, "{who}");
    let user = rows[0]["u"].as_str().expect("user").to_owned();
    assert!(user.starts_with("custos_"), "{user}");
    let leases = s.cli_json(&["lease", "list", "--json"]);
    let lease = leases
        .as_array()
        .expect("leases")
        .iter()
        .find(|l| l["principal"] == user.as_str())
        .unwrap_or_else(|| panic!("no lease for {user}: {leases}"));
    assert_eq!(lease["task"], task.as_str());
    assert_eq!(lease["role"], "pg-readonly");

    // What the role was not granted stays out of reach.
    let payroll = ask(
        "tools/call",
        json!({"name": "pg__query", "arguments": {"sql": "SELECT * FROM payroll"}}),
    );
    assert!(
        payroll.to_string().contains("permission denied"),
        "{payroll}"
    );

    // The URL the process was started with is the lease's; nothing else holds it.
    let procs = processes_with(pg_server);
    assert_eq!(
        procs.len(),
        1,
        "one server-postgres for the task: {procs:?}"
    );
    let url = procs[0].1.last().expect("url argument").clone();
    assert!(url.starts_with(&format!("postgres://{user}:")), "{url}");
    let password = url
        .split_once(&format!("{user}:"))
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(p, _)| p.to_owned())
        .expect("password in the URL");
    assert!(password.len() >= 32);
    assert!(!seen.contains(&password), "the agent saw the password");
    // A second task gets a process and a role of its own.
    let other = s.start_task("agent-db", "db-reader");
    let other_mcp = RawMcp::new(&s.mcp_url(), Some(&s.task_token(&other, &key)));
    let other_sid = other_mcp.initialize();
    let r = other_mcp.call(
        &other_sid,
        "tools/call",
        json!({"name": "pg__query", "arguments": {"sql": "SELECT current_user AS u"}}),
    );
    assert!(!r.body.to_string().contains(&user), "{}", r.body);
    assert_eq!(processes_with(pg_server).len(), 2);

    // Ending the task stops its process and drops its role; the other task's stay.
    assert!(s.cli(&["task", "end", &task]).status.success());
    eventually("the task's role is dropped", || {
        count(&format!(
            "SELECT COUNT(*) FROM pg_roles WHERE rolname = '{user}'"
        )) == 0
    });
    eventually("the task's server-postgres is stopped", || {
        processes_with(pg_server).len() == 1
    });
    let kept = everything_kept(&s, &task);
    assert!(kept.contains(&user), "the audit names the database user");
    assert!(!kept.contains(&password), "the password was kept somewhere");
    assert!(s.cli(&["task", "end", &other]).status.success());
    eventually("the other process is stopped", || {
        processes_with(pg_server).is_empty()
    });
    exec(&format!("DROP TABLE orders, payroll; DROP ROLE {group}"));
}

#[test]
fn everything_an_upstream_echoes_of_its_credentials_is_cut_out() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(custos_test_support::fresh_pg_db());
    let group = format!("it_leak_{}_{}", std::process::id(), db.url().len());
    rt.block_on(custos_test_support::tamper::exec_at(
        db.url(),
        &format!("CREATE ROLE {group} NOLOGIN"),
    ));
    let s = TestServer::start_with_env(&[], &[(PG_ENV, db.url())]);
    let (key, public) = s.keygen("agent-leak");
    let script = fixture("leaky_upstream.py");
    s.apply(&format!(
        "kind: CredentialRole\nname: pg-leak\nengine: postgres\ndefault_ttl: 10m\nmax_ttl: 1h\nconnection_env: {PG_ENV}\nrole:\n  groups: [{group}]\n---\n\
         kind: Upstream\nname: leaky\ncommand: [python3, \"{script}\"]\nscope: task\ntiers: {{ leak: 1, fail: 1 }}\ncredentials:\n  - {{ role: pg-leak, value: password, env: SECRET }}\n  - {{ role: pg-leak, arg: true }}\n---\n\
         kind: Template\nname: leaker\nttl: 10m\ntools: [\"leaky__*\"]\ncredentials: [pg-leak]\n---\n\
         kind: Template\nname: no-creds\nttl: 10m\ntools: [\"leaky__*\"]\n---\n{}",
        agent_yaml("agent-leak", "leaker, no-creds", &public),
        script = script.display(),
    ));
    let task = s.start_task("agent-leak", "leaker");
    let mcp = RawMcp::new(&s.mcp_url(), Some(&s.task_token(&task, &key)));
    let sid = mcp.initialize();
    let list = mcp.call(&sid, "tools/list", json!({})).body;
    let leak = mcp
        .call(
            &sid,
            "tools/call",
            json!({"name": "leaky__leak", "arguments": {}}),
        )
        .body;
    let fail = mcp
        .call(
            &sid,
            "tools/call",
            json!({"name": "leaky__fail", "arguments": {}}),
        )
        .body;
    // Asked for progress, it leaks into a progress message and a log message too.
    let streamed = Value::Array(mcp.call_streamed(
        &sid,
        "tools/call",
        json!({"name": "leaky__leak", "arguments": {}, "_meta": {"progressToken": "p"}}),
    ));
    let notices: Vec<&str> = streamed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["method"].as_str())
        .collect();
    assert_eq!(
        notices,
        ["notifications/progress", "notifications/message"],
        "{streamed}"
    );

    // The process got the lease's password in SECRET and its URL as the last argument.
    let procs = processes_with(&script.display().to_string());
    assert_eq!(procs.len(), 1, "{procs:?}");
    let url = procs[0].1.last().expect("url").clone();
    let environ = std::fs::read(format!("/proc/{}/environ", procs[0].0)).expect("environ");
    let password = String::from_utf8_lossy(&environ)
        .split('\0')
        .find_map(|kv| kv.strip_prefix("SECRET=").map(str::to_owned))
        .expect("SECRET set");
    assert!(password.len() >= 32 && url.contains(&password), "{url}");

    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let encodings = |s: &str| {
        vec![
            s.to_owned(),
            b64.encode(s),
            b64.encode(format!("u:{s}")),
            b64.encode(format!("us:{s}")),
            base64::engine::general_purpose::URL_SAFE.encode(format!("use:{s}")),
        ]
    };
    for (what, body) in [
        ("tools/list", &list),
        ("leak", &leak),
        ("fail", &fail),
        ("notices", &streamed),
    ] {
        let text = body.to_string();
        assert!(text.contains("[REDACTED]"), "{what}: {text}");
        for needle in encodings(&password).iter().chain(encodings(&url).iter()) {
            // Base64 of a longer text keeps at most the few characters at its edges.
            let core = &needle[needle.len().min(4)..needle.len().saturating_sub(4)];
            assert!(!text.contains(core), "{what} carries {needle}: {text}");
        }
    }
    assert!(leak["result"]["content"][0]["text"].is_string(), "{leak}");
    assert_eq!(
        leak["result"]["structuredContent"]["[REDACTED]"], "as a key",
        "{leak}"
    );
    assert!(
        fail["error"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("[REDACTED]")),
        "{fail}"
    );
    let kept = everything_kept(&s, &task);
    assert!(
        kept.contains("leaking [REDACTED]"),
        "stderr is logged, redacted"
    );
    // Cut out before a long line is truncated: no part of it is left at the cut.
    assert!(
        !kept.contains(&format!("xxxx{}", &password[..6])),
        "a truncated line keeps the start of the secret"
    );
    for needle in encodings(&password) {
        let core = &needle[needle.len().min(4)..needle.len().saturating_sub(4)];
        assert!(!kept.contains(core), "kept: {needle}");
    }

    // A template that does not allow the role gets no credential, and no connection.
    let denied = s.start_task("agent-leak", "no-creds");
    let mcp = RawMcp::new(&s.mcp_url(), Some(&s.task_token(&denied, &key)));
    let sid = mcp.initialize();
    let r = mcp
        .call(
            &sid,
            "tools/call",
            json!({"name": "leaky__leak", "arguments": {}}),
        )
        .body;
    let text = r.to_string();
    assert!(
        text.contains("credentials could not be issued") && text.contains("pg-leak"),
        "{text}"
    );
    assert_eq!(processes_with(&script.display().to_string()).len(), 1);
    let refused = s.cli_json(&["audit", "trace", &denied, "--json"]);
    assert!(
        refused.to_string().contains("lease_refused"),
        "the refusal is audited: {refused}"
    );
    assert!(s.cli(&["task", "end", &task]).status.success());
    drop_group(&rt, db.url(), &group);
}

#[test]
fn an_http_upstream_gets_each_tasks_own_credential_in_its_headers() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(custos_test_support::fresh_pg_db());
    let group = format!("it_hdr_{}_{}", std::process::id(), db.url().len());
    let exec = |sql: &str| rt.block_on(custos_test_support::tamper::exec_at(db.url(), sql));
    exec(&format!("CREATE ROLE {group} NOLOGIN"));
    let s = TestServer::start_with_env(&[], &[(PG_ENV, db.url())]);
    let upstream = super::python_client::HttpUpstream::start(s.dir.path());
    let (key, public) = s.keygen("agent-hdr");
    s.apply(&format!(
        "kind: CredentialRole\nname: api-key\nengine: postgres\ndefault_ttl: 10m\nmax_ttl: 1h\nconnection_env: {PG_ENV}\nrole:\n  groups: [{group}]\n---\n\
         kind: Upstream\nname: api\nurl: {url}\nscope: task\ntiers: {{ shout: 1 }}\ncredentials:\n  - {{ role: api-key, value: password, header: Authorization, prefix: 'Bearer ' }}\n  - {{ role: api-key, value: username, header: X-Db-User }}\n---\n\
         kind: Template\nname: caller\nttl: 10m\ntools: [api__shout]\ncredentials: [api-key]\n---\n{}",
        agent_yaml("agent-hdr", "caller", &public),
        url = upstream.url,
    ));
    let shout = |task: &str| {
        let token = s.task_token(task, &key);
        let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
        let sid = mcp.initialize();
        let r = mcp.call(
            &sid,
            "tools/call",
            json!({"name": "api__shout", "arguments": {"text": "hi"}}),
        );
        assert!(r.body.to_string().contains("HI"), "{}", r.body);
        token
    };
    let (one, two) = (
        s.start_task("agent-hdr", "caller"),
        s.start_task("agent-hdr", "caller"),
    );
    let tokens = [shout(&one), shout(&two)];

    // Every request of a task's connection carried that task's lease, never the agent's token.
    let requests = upstream.requests();
    let mut users = std::collections::BTreeSet::new();
    let mut passwords = std::collections::BTreeSet::new();
    for r in &requests {
        let auth = r["authorization"].as_str().unwrap_or_default();
        let password = auth.strip_prefix("Bearer ").expect("a bearer credential");
        assert!(password.len() >= 32, "{auth}");
        assert!(!tokens.iter().any(|t| auth.contains(t.as_str())));
        passwords.insert(password.to_owned());
        users.insert(r["headers"]["x-db-user"].as_str().expect("user").to_owned());
    }
    assert!(requests.iter().any(|r| r["rpc"] == "tools/call"));
    assert_eq!((users.len(), passwords.len()), (2, 2), "one lease per task");
    for user in &users {
        assert!(user.starts_with("custos_"), "{user}");
        let n = rt.block_on(custos_test_support::tamper::sql_at(
            db.url(),
            &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{user}'"),
        ));
        assert_eq!(n, Some(1), "{user} exists while its task runs");
    }
    for task in [&one, &two] {
        assert!(s.cli(&["task", "end", task]).status.success());
    }
    for user in &users {
        eventually("the leases end with their tasks", || {
            rt.block_on(custos_test_support::tamper::sql_at(
                db.url(),
                &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{user}'"),
            )) == Some(0)
        });
    }
    for password in &passwords {
        assert!(!everything_kept(&s, &one).contains(password.as_str()));
    }
    exec(&format!("DROP ROLE IF EXISTS {group}"));
}

#[test]
fn a_jwt_role_signs_a_token_naming_the_task_that_downstreams_verify_with_the_jwks() {
    let s = TestServer::start();
    let upstream = super::python_client::HttpUpstream::start(s.dir.path());
    let (key, public) = s.keygen("agent-jwt");
    s.apply(&format!(
        "kind: CredentialRole\nname: billing-api\nengine: jwt\ndefault_ttl: 5m\nmax_ttl: 15m\nrole:\n  audience: https://billing.internal\n  claims: {{ scope: 'invoices:read' }}\n---\n\
         kind: Upstream\nname: api\nurl: {url}\nscope: task\ntiers: {{ shout: 1 }}\ncredentials:\n  - {{ role: billing-api, value: token, header: Authorization, prefix: 'Bearer ' }}\n---\n\
         kind: Template\nname: biller\nttl: 10m\ntools: [api__shout]\ncredentials: [billing-api]\n---\n{}",
        agent_yaml("agent-jwt", "biller", &public),
        url = upstream.url,
    ));
    let task = s.start_task("agent-jwt", "biller");
    let token = s.task_token(&task, &key);
    let mcp = RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    let r = mcp.call(
        &sid,
        "tools/call",
        json!({"name": "api__shout", "arguments": {"text": "pay"}}),
    );
    assert!(r.body.to_string().contains("PAY"), "{}", r.body);

    // What the upstream received verifies with Custos's JWKS, for its audience, and names
    // the initiator, the agent and the task.
    let auth = upstream
        .requests()
        .iter()
        .find(|r| r["rpc"] == "tools/call")
        .and_then(|r| r["authorization"].as_str().map(str::to_owned))
        .expect("the call carried a credential");
    let jwt = auth.strip_prefix("Bearer ").expect("bearer");
    let jwks: jsonwebtoken::jwk::JwkSet =
        reqwest::blocking::get(format!("{}/.well-known/jwks.json", s.addr))
            .and_then(reqwest::blocking::Response::json)
            .expect("jwks");
    let header = jsonwebtoken::decode_header(jwt).expect("header");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("the signing key is in the JWKS");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["https://billing.internal"]);
    let claims = jsonwebtoken::decode::<Value>(
        jwt,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key"),
        &validation,
    )
    .expect("the token verifies")
    .claims;
    assert_eq!(claims["sub"], "alice@example.com");
    assert_eq!(claims["act"]["sub"], "agent-jwt");
    assert_eq!(claims["task_id"], task.as_str());
    assert_eq!(claims["scope"], "invoices:read");
    let life = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
    assert!((299..=301).contains(&life), "the role's 5m: {life}");
    let leases = s.cli_json(&["lease", "list", "--task", &task, "--json"]);
    assert_eq!(leases[0]["principal"], claims["jti"], "{leases}");
    assert_eq!(leases[0]["engine"], "jwt");

    // It is no task token: the gateway refuses it.
    let forged = RawMcp::new(&s.mcp_url(), Some(jwt));
    let r = forged.post(
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"x","version":"0"}}}),
        &[],
    );
    assert_eq!(r.status, 401);

    // Over the Vault API: the same kind of token, not renewable.
    let http = reqwest::blocking::Client::new();
    let creds: Value = http
        .get(format!("{}/v1/database/creds/billing-api", s.addr))
        .header("X-Vault-Token", &token)
        .send()
        .and_then(reqwest::blocking::Response::json)
        .expect("creds");
    assert_eq!(creds["renewable"], false, "{creds}");
    assert_eq!(
        creds["data"]["password"]
            .as_str()
            .map(|p| p.split('.').count()),
        Some(3),
        "{creds}"
    );
    let renew = http
        .put(format!("{}/v1/sys/leases/renew", s.addr))
        .header("X-Vault-Token", &token)
        .json(&json!({"lease_id": creds["lease_id"]}))
        .send()
        .expect("renew");
    assert_eq!(renew.status().as_u16(), 400);

    // A jwt role takes no connection_env (one whose audience is Custos's own is refused at
    // mint, in the engine's tests), and no upstream can ask it for a connection URL.
    let own = s.cli(&[
        "apply",
        "-f",
        &write(
            &s,
            "own.yaml",
            &format!(
                "kind: CredentialRole\nname: own-aud\nengine: jwt\ndefault_ttl: 5m\nmax_ttl: 5m\nconnection_env: X\nrole:\n  audience: {}/mcp\n",
                s.addr
            ),
        ),
    ]);
    assert!(
        String::from_utf8_lossy(&own.stderr).contains("has no server"),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    let url = s.cli(&[
        "apply",
        "-f",
        &write(
            &s,
            "url.yaml",
            &format!(
                "kind: Upstream\nname: api2\nurl: {}\nscope: task\ncredentials: [{{ role: billing-api, arg: true }}]\n",
                upstream.url
            ),
        ),
    ]);
    assert!(!url.status.success(), "`arg` on an HTTP upstream");
    let url = s.cli(&[
        "apply",
        "-f",
        &write(
            &s,
            "url.yaml",
            &format!(
                "kind: Upstream\nname: api2\nurl: {}\nscope: task\ncredentials: [{{ role: billing-api, header: X-Key }}]\n",
                upstream.url
            ),
        ),
    ]);
    assert!(
        String::from_utf8_lossy(&url.stderr).contains("has no connection URL"),
        "{}",
        String::from_utf8_lossy(&url.stderr)
    );
    assert!(s.cli(&["task", "end", &task]).status.success());
}

/// `custos secret put ROLE --json` with `value` on standard input.
fn secret_put(s: &TestServer, token: &str, role: &str, value: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(super::support::custos_bin())
        .args(["secret", "put", role, "--json"])
        .env("CUSTOS_ADDR", &s.addr)
        .env("CUSTOS_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("secret put");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

fn write(s: &TestServer, name: &str, text: &str) -> String {
    let path = s.dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn a_per_call_credential_lives_for_one_call_on_a_process_of_its_own() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(custos_test_support::fresh_pg_db());
    let group = format!("it_call_{}_{}", std::process::id(), db.url().len());
    let count = |sql: &str| rt.block_on(custos_test_support::tamper::sql_at(db.url(), sql));
    rt.block_on(custos_test_support::tamper::exec_at(
        db.url(),
        &format!("CREATE ROLE {group} NOLOGIN"),
    ));
    let s = TestServer::start_with_env(&[], &[(PG_ENV, db.url())]);
    let (key, public) = s.keygen("agent-call");
    let script = fixture("leaky_upstream.py");
    s.apply(&format!(
        "kind: CredentialRole\nname: pg-once\nengine: postgres\ndefault_ttl: 10m\nmax_ttl: 1h\nconnection_env: {PG_ENV}\nrole:\n  groups: [{group}]\n---\n\
         kind: Upstream\nname: once\ncommand: [python3, \"{script}\", \"-\"]\nscope: task\ntiers: {{ leak: 1 }}\ncredentials:\n  - {{ role: pg-once, value: password, env: SECRET, lease: call }}\n---\n\
         kind: Template\nname: once\nttl: 10m\ntools: [once__leak]\ncredentials: [pg-once]\n---\n{}",
        agent_yaml("agent-call", "once", &public),
        script = script.display(),
    ));
    let task = s.start_task("agent-call", "once");
    let mcp = RawMcp::new(&s.mcp_url(), Some(&s.task_token(&task, &key)));
    let sid = mcp.initialize();
    // The tools are listed on the task's connection, which holds no credential.
    let list = mcp.call(&sid, "tools/list", json!({})).body;
    assert_eq!(list["result"]["tools"][0]["name"], "once__leak", "{list}");
    assert!(
        s.cli_json(&["lease", "list", "--task", &task, "--json"])
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    for _ in 0..2 {
        let r = mcp
            .call(
                &sid,
                "tools/call",
                json!({"name": "once__leak", "arguments": {}}),
            )
            .body;
        assert!(r.to_string().contains("[REDACTED]"), "{r}");
    }
    // Two calls, two leases, each revoked before its call answered; no process left of them.
    let leases = s.cli_json(&["lease", "list", "--task", &task, "--json"]);
    let leases = leases.as_array().expect("leases");
    assert_eq!(leases.len(), 2, "{leases:?}");
    for l in leases {
        assert_eq!(l["state"], "revoked", "{l}");
        let user = l["principal"].as_str().expect("principal");
        assert_eq!(
            count(&format!(
                "SELECT COUNT(*) FROM pg_roles WHERE rolname = '{user}'"
            )),
            Some(0)
        );
    }
    let trace = s.cli_json(&["audit", "trace", &task, "--json"]).to_string();
    assert_eq!(trace.matches("call_end").count(), 2, "{trace}");
    // Only the task's listing process runs.
    assert_eq!(processes_with(&script.display().to_string()).len(), 1);
    assert!(s.cli(&["task", "end", &task]).status.success());
    drop_group(&rt, db.url(), &group);
}

#[test]
fn a_static_secret_is_sealed_at_rest_and_handed_out_only_by_injection() {
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-static");
    let script = fixture("leaky_upstream.py");
    let yaml = format!(
        "kind: CredentialRole\nname: stripe-key\nengine: static\ndefault_ttl: 10m\nmax_ttl: 1h\n---\n\
         kind: Upstream\nname: pay\ncommand: [python3, \"{script}\", \"-\"]\nscope: task\ntiers: {{ leak: 1 }}\ncredentials:\n  - {{ role: stripe-key, value: token, env: SECRET }}\n---\n\
         kind: Template\nname: payer\nttl: 10m\ntools: [pay__leak]\ncredentials: [stripe-key]\n---\n{}",
        agent_yaml("agent-static", "payer", &public),
        script = script.display(),
    );
    s.apply(&yaml);
    let secret = "sk_live_0123456789abcdefghijklmnopqrstuv";

    // Nothing is stored yet: the call fails clearly, naming the command that fixes it.
    let task = s.start_task("agent-static", "payer");
    let token = s.task_token(&task, &key);
    let call = |token: &str| {
        let mcp = RawMcp::new(&s.mcp_url(), Some(token));
        let sid = mcp.initialize();
        mcp.call(
            &sid,
            "tools/call",
            json!({"name": "pay__leak", "arguments": {}}),
        )
        .body
    };
    let r = call(&token).to_string();
    assert!(r.contains("custos secret put stripe-key"), "{r}");

    // Stored from standard input (a final newline dropped), by an admin only.
    let put = |token: &str| secret_put(&s, token, "stripe-key", &format!("{secret}\n"));
    let auditor = s.cli_json(&[
        "operator", "create", "audrey", "--role", "auditor", "--json",
    ]);
    let refused = put(auditor["token"].as_str().expect("token"));
    assert!(!refused.status.success());
    let stored = put(&s.admin_token);
    assert!(
        stored.status.success(),
        "{}",
        String::from_utf8_lossy(&stored.stderr)
    );
    let listed = s.cli_json(&["secret", "list", "--json"]);
    assert_eq!(listed[0]["role"], "stripe-key", "{listed}");
    assert_eq!(listed[0]["updated_by"], "admin", "{listed}");
    assert!(!listed.to_string().contains(secret));

    // The upstream gets it (a new task: the first one's connection failed to start).
    let task = s.start_task("agent-static", "payer");
    let token = s.task_token(&task, &key);
    let r = call(&token);
    assert!(r.to_string().contains("[REDACTED]"), "{r}");
    let procs = processes_with(&script.display().to_string());
    let environ = std::fs::read(format!("/proc/{}/environ", procs[0].0)).expect("environ");
    assert!(
        String::from_utf8_lossy(&environ).contains(&format!("SECRET={secret}")),
        "the process got the value"
    );
    // Never over the Vault API, never in the store, the log or the audit in clear.
    let vault = reqwest::blocking::Client::new()
        .get(format!("{}/v1/database/creds/stripe-key", s.addr))
        .header("X-Vault-Token", &token)
        .send()
        .expect("creds");
    assert_eq!(vault.status().as_u16(), 403);
    let kept = everything_kept(&s, &task);
    assert!(!kept.contains(secret), "the value is sealed at rest");
    assert!(kept.contains("secret_written"));
    assert!(s.cli(&["task", "end", &task]).status.success());

    // After a restart (the dev key-encryption key kept in the data directory) it still opens.
    let dir = s.stop();
    let s = TestServer::start_in(dir, &[]);
    let task = s.start_task("agent-static", "payer");
    let r = {
        let mcp = RawMcp::new(&s.mcp_url(), Some(&s.task_token(&task, &key)));
        let sid = mcp.initialize();
        mcp.call(
            &sid,
            "tools/call",
            json!({"name": "pay__leak", "arguments": {}}),
        )
        .body
    };
    assert!(r.to_string().contains("[REDACTED]"), "{r}");
    // A wrong key opens nothing: the call fails closed, naming why.
    let dir = s.stop();
    let wrong = custos_crypto::Kek::generate();
    let s = TestServer::start_in_with_env(dir, &[], &[("CUSTOS_KEK", wrong.to_base64().as_str())]);
    let task = s.start_task("agent-static", "payer");
    let mcp = RawMcp::new(&s.mcp_url(), Some(&s.task_token(&task, &key)));
    let sid = mcp.initialize();
    let r = mcp
        .call(
            &sid,
            "tools/call",
            json!({"name": "pay__leak", "arguments": {}}),
        )
        .body
        .to_string();
    assert!(r.contains("does not open") && !r.contains(secret), "{r}");
}

#[test]
fn a_roles_admin_url_can_be_stored_sealed_instead_of_read_from_the_environment() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(custos_test_support::fresh_pg_db());
    let group = format!("it_stored_{}_{}", std::process::id(), db.url().len());
    rt.block_on(custos_test_support::tamper::exec_at(
        db.url(),
        &format!("CREATE ROLE {group} NOLOGIN"),
    ));
    let s = TestServer::start();
    let (key, public) = s.keygen("agent-stored");
    s.apply(&format!(
        "kind: CredentialRole\nname: pg-stored\nengine: postgres\ndefault_ttl: 10m\nmax_ttl: 1h\nrole:\n  groups: [{group}]\n---\n\
         kind: Template\nname: stored\nttl: 10m\ntools: []\ncredentials: [pg-stored]\n---\n{}",
        agent_yaml("agent-stored", "stored", &public),
    ));
    let task = s.start_task("agent-stored", "stored");
    let token = s.task_token(&task, &key);
    let creds = || {
        reqwest::blocking::Client::new()
            .get(format!("{}/v1/database/creds/pg-stored", s.addr))
            .header("X-Vault-Token", &token)
            .send()
            .expect("creds")
    };
    // Nothing stored: a clear error, nothing minted.
    let r = creds();
    assert_eq!(r.status().as_u16(), 500);
    assert!(
        r.text()
            .unwrap_or_default()
            .contains("custos secret put pg-stored")
    );
    assert!(
        secret_put(&s, &s.admin_token, "pg-stored", db.url())
            .status
            .success()
    );
    let r = creds();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().expect("json");
    let user = body["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();
    assert_eq!(
        rt.block_on(custos_test_support::tamper::sql_at(
            db.url(),
            &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{user}'"),
        )),
        Some(1),
        "minted through the stored admin URL"
    );
    // The URL is sealed at rest and shown nowhere.
    let kept = everything_kept(&s, &task);
    assert!(
        !kept.contains(db.url()),
        "the admin URL is in the clear somewhere"
    );
    assert!(s.cli(&["task", "end", &task]).status.success());
    eventually("the user is dropped with its task", || {
        rt.block_on(custos_test_support::tamper::sql_at(
            db.url(),
            &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{user}'"),
        )) == Some(0)
    });
    drop_group(&rt, db.url(), &group);
}
