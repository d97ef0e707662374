//! Just-in-time PostgreSQL credentials end to end, against the real server: a
//! `CredentialRole` whose admin URL comes from the server's environment, the Vault-compatible
//! API with the task token, `custos lease list|revoke`, revocation when the task ends, expiry
//! on its own, the reconciler at restart, refusals, and no password anywhere it should not be.
//!
//! The test PostgreSQL server trusts every local login, so a credential is checked by what the
//! server holds (`pg_roles`, `pg_auth_members`), not by logging in with it.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::support::TestServer;

const ENV: &str = "CUSTOS_IT_PG_ADMIN_URL";

/// Runs SQL on the test database from the test; the first column of the first row of the
/// last statement, when an integer.
fn pg(url: &str, statements: &str) -> Option<i64> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(custos_test_support::tamper::sql_at(url, statements))
}

/// Runs SQL (one text, `DO` blocks allowed) on the test database.
fn pg_exec(url: &str, statements: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(custos_test_support::tamper::exec_at(url, statements));
}

fn role_count(url: &str, name: &str) -> i64 {
    pg(
        url,
        &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{name}'"),
    )
    .unwrap_or(-1)
}

/// Polls until `name` is gone from `pg_roles`; the time it took.
fn wait_role_gone(url: &str, name: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while role_count(url, name) != 0 {
        assert!(
            start.elapsed() < within,
            "role `{name}` still exists after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Drops the test's group role, and any `custos_` member it still has, even when the test
/// fails (roles belong to the whole server, not to the test's database).
struct GroupGuard {
    url: String,
    group: String,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let g = &self.group;
        pg_exec(
            &self.url,
            &format!(
                "DO $$ DECLARE r record; BEGIN \
                 FOR r IN SELECT m.rolname FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member \
                 JOIN pg_roles g ON g.oid = am.roleid WHERE g.rolname = '{g}' AND m.rolname LIKE 'custos\\_%' \
                 LOOP EXECUTE format('DROP ROLE %I', r.rolname); END LOOP; END $$; \
                 DROP ROLE IF EXISTS {g}"
            ),
        );
    }
}

struct Vault {
    base: String,
    http: reqwest::blocking::Client,
}

impl Vault {
    fn new(s: &TestServer) -> Self {
        Self {
            base: s.addr.clone(),
            http: reqwest::blocking::Client::new(),
        }
    }

    fn creds(&self, token: &str, role: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/v1/database/creds/{role}", self.base))
            .header("X-Vault-Token", token)
            .send()
            .expect("GET creds");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn put(&self, token: &str, path: &str, lease_id: &str) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}/v1/sys/leases/{path}", self.base))
            .bearer_auth(token)
            .json(&serde_json::json!({ "lease_id": lease_id }))
            .send()
            .expect("PUT sys/leases");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
}

fn yaml(group: &str, public_key: &str) -> String {
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        r#"kind: CredentialRole
name: pg-readonly
engine: postgres
default_ttl: 10m
max_ttl: 1h
connection_env: {ENV}
role:
  groups: [{group}]
---
kind: CredentialRole
name: pg-short
engine: postgres
default_ttl: 2s
max_ttl: 2s
connection_env: {ENV}
role:
  groups: [{group}]
  grace: 1s
---
kind: CredentialRole
name: pg-noenv
engine: postgres
default_ttl: 1m
max_ttl: 1m
connection_env: CUSTOS_IT_UNSET_ENV
---
kind: Template
name: db-reader
ttl: 10m
tools: []
credentials: [pg-readonly, pg-short, pg-noenv]
---
kind: Template
name: no-creds
ttl: 10m
tools: []
---
kind: Agent
name: agent-db
owner: test@example.com
archetype: automation
templates: [db-reader, no-creds]
public_key: |
{indented}"#
    )
}

/// Applies YAML that must be refused; returns stderr.
fn apply_refused(s: &TestServer, text: &str) -> String {
    let path = s.dir.path().join("bad.yaml");
    std::fs::write(&path, text).expect("write");
    let out = s.cli(&["apply", "-f", path.to_str().expect("utf-8"), "--json"]);
    assert!(!out.status.success(), "applied: {text}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn leases(s: &TestServer, task: &str) -> Vec<Value> {
    s.cli_json(&["lease", "list", "--task", task, "--json"])
        .as_array()
        .cloned()
        .expect("a list")
}

#[test]
fn postgres_leases_end_to_end() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(custos_test_support::fresh_pg_db());
    let url = db.url().to_owned();
    let tag = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    );
    let group = format!("it_readers_{tag}");
    pg(&url, &format!("CREATE ROLE {group} NOLOGIN"));
    let _group = GroupGuard {
        url: url.clone(),
        group: group.clone(),
    };

    let env = [(ENV, url.as_str())];
    let server = TestServer::start_with_env(&[], &env);
    let (key, public) = server.keygen("agent-db");
    server.apply(&yaml(&group, &public));
    let vault = Vault::new(&server);

    // Bad roles are refused on apply, naming the field; nothing is applied.
    let base = yaml(&group, &public);
    let unknown_field = base.replacen(
        &format!("  groups: [{group}]\n---"),
        &format!("  groups: [{group}]\n  superuser: true\n---"),
        1,
    );
    let e = apply_refused(&server, &unknown_field);
    assert!(
        e.contains("CredentialRole `pg-readonly`")
            && e.contains("field `role`")
            && e.contains("superuser"),
        "{e}"
    );
    let e = apply_refused(&server, &base.replacen("max_ttl: 1h", "max_ttl: 2h", 1));
    assert!(
        e.contains("field `max_ttl`: `2h` must be between 1s and 1h"),
        "{e}"
    );
    let e = apply_refused(
        &server,
        &base.replacen(
            &format!("groups: [{group}]"),
            "groups: [\"x; DROP ROLE postgres\"]",
            1,
        ),
    );
    assert!(e.contains("field `role.groups[0]`"), "{e}");
    let e = apply_refused(
        &server,
        &base.replacen(
            "credentials: [pg-readonly, pg-short, pg-noenv]",
            "credentials: [pg-nope]",
            1,
        ),
    );
    assert!(
        e.contains("credential role `pg-nope` does not exist"),
        "{e}"
    );

    // A credential for the task, in Vault's shape.
    let task = server.start_task("agent-db", "db-reader");
    let token = server.task_token(&task, &key);
    let (status, body) = vault.creds(&token, "pg-readonly");
    assert_eq!(status, 200, "{body}");
    let username = body["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();
    let password = body["data"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    let lease_id = body["lease_id"].as_str().expect("lease_id").to_owned();
    assert!(
        lease_id.starts_with("database/creds/pg-readonly/lease_"),
        "{lease_id}"
    );
    assert_eq!(body["renewable"], true);
    let duration = body["lease_duration"].as_i64().expect("lease_duration");
    assert!((590..=600).contains(&duration), "{duration}");
    assert!(
        username.starts_with("custos_") && password.len() >= 32,
        "{body}"
    );
    let bare_id = lease_id.rsplit('/').next().expect("id").to_owned();
    assert_eq!(&bare_id["lease_".len()..], &username["custos_".len()..]);

    // The role exists, can log in, expires on the server itself, and holds the group.
    assert_eq!(
        pg(
            &url,
            &format!(
                "SELECT COUNT(*) FROM pg_roles WHERE rolname = '{username}' AND rolcanlogin AND rolvaliduntil IS NOT NULL \
                 AND rolvaliduntil > now() + interval '9 minutes' AND rolvaliduntil < now() + interval '12 minutes'"
            )
        ),
        Some(1),
        "login role with VALID UNTIL"
    );
    assert_eq!(
        pg(
            &url,
            &format!(
                "SELECT COUNT(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
                 JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = '{username}' AND g.rolname = '{group}'"
            )
        ),
        Some(1),
        "member of the group"
    );

    // The operator sees it, with the principal, never the password.
    let listed = leases(&server, &task);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], bare_id.as_str());
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["principal"], username.as_str());
    assert_eq!(listed[0]["role"], "pg-readonly");
    assert_eq!(listed[0]["task"], task.as_str());
    assert!(listed[0]["expires"].is_string());

    // Vault's lookup, for the lease's own task.
    let (status, looked) = vault.put(&token, "lookup", &lease_id);
    assert_eq!(status, 200, "{looked}");
    assert_eq!(looked["data"]["id"], lease_id.as_str());
    assert!(
        looked["data"]["ttl"].as_i64().unwrap_or(0) > 500,
        "{looked}"
    );

    // Refusals: a role the template does not list, another task's lease, a bad token.
    let other = server.start_task("agent-db", "no-creds");
    let other_token = server.task_token(&other, &key);
    let (status, refused) = vault.creds(&other_token, "pg-readonly");
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["errors"][0].as_str().is_some_and(
            |m| m.contains("template `no-creds` does not allow credential role `pg-readonly`")
        ),
        "{refused}"
    );
    let (status, invalid) = vault.put(&other_token, "lookup", &lease_id);
    assert_eq!(
        (status, &invalid["errors"][0]),
        (400, &Value::from("invalid lease"))
    );
    let (status, denied) = vault.creds("not-a-token", "pg-readonly");
    assert_eq!(
        (status, &denied["errors"][0]),
        (403, &Value::from("permission denied"))
    );
    assert!(leases(&server, &other).is_empty());

    // A role whose connection_env the server lacks: a warning on apply, a clear error at mint,
    // and no lease.
    assert!(
        server.log().contains("connection_env is not set"),
        "{}",
        server.log()
    );
    let (status, noenv) = vault.creds(&token, "pg-noenv");
    assert_eq!(status, 500, "{noenv}");
    assert!(
        noenv["errors"][0].as_str().is_some_and(|m| m.contains(
            "environment variable `CUSTOS_IT_UNSET_ENV` (its connection_env) is not set"
        )),
        "{noenv}"
    );
    assert_eq!(leases(&server, &task).len(), 1);

    // A lease expires on its own: its role is gone within the bound.
    let (status, short) = vault.creds(&token, "pg-short");
    assert_eq!(status, 200, "{short}");
    assert_eq!(short["lease_duration"], 2);
    let short_user = short["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();
    assert_eq!(role_count(&url, &short_user), 1);
    let took = wait_role_gone(&url, &short_user, Duration::from_secs(10));
    assert!(
        took >= Duration::from_millis(1500),
        "revoked before expiry: {took:?}"
    );

    // The task revokes a lease through Vault's API.
    let (_, third) = vault.creds(&token, "pg-readonly");
    let third_user = third["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();
    let (status, _) = vault.put(&token, "revoke", third["lease_id"].as_str().expect("id"));
    assert_eq!(status, 204);
    assert_eq!(role_count(&url, &third_user), 0);

    // A principal under this installation's scope that no lease covers is removed when the
    // server restarts; the live lease survives.
    let scope = &username["custos_".len().."custos_".len() + 5];
    let orphan = format!("custos_{scope}{}", "z".repeat(20));
    pg(&url, &format!("CREATE ROLE {orphan} LOGIN"));
    let dir = server.stop();
    let server = TestServer::start_in_with_env(dir, &[], &env);
    wait_role_gone(&url, &orphan, Duration::from_secs(10));
    assert_eq!(
        role_count(&url, &username),
        1,
        "a live lease survives a restart"
    );

    // An operator revokes a lease with the CLI. (The issuer is the server's address, which
    // changed with the restart: a new token.)
    let token = server.task_token(&task, &key);
    let (status, fourth) = Vault::new(&server).creds(&token, "pg-readonly");
    assert_eq!(status, 200, "{fourth}\n{}", server.log());
    let fourth_id = fourth["lease_id"]
        .as_str()
        .expect("id")
        .rsplit('/')
        .next()
        .expect("id")
        .to_owned();
    let revoked = server.cli_json(&["lease", "revoke", &fourth_id, "--json"]);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(
        role_count(&url, fourth["data"]["username"].as_str().expect("username")),
        0
    );

    // Ending the task revokes what it still holds.
    let out = server.cli(&["task", "end", &task]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_role_gone(&url, &username, Duration::from_secs(5));
    let after = leases(&server, &task);
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(after.iter().all(|l| l["state"] == "revoked"), "{after:?}");

    // Who received which user is in the audit trail, in clear; no password is anywhere.
    let trace = server.cli(&["audit", "trace", &task, "--json"]);
    assert!(trace.status.success());
    let trace = String::from_utf8_lossy(&trace.stdout).into_owned();
    assert!(
        trace.contains(&username)
            && trace.contains("lease_issued")
            && trace.contains("lease_revoked"),
        "{trace}"
    );
    let listing =
        String::from_utf8_lossy(&server.cli(&["lease", "list", "--json"]).stdout).into_owned();
    for (what, text) in [
        ("audit trace", &trace),
        ("server log", &server.log()),
        ("lease list", &listing),
    ] {
        assert!(!text.contains(&password), "the password is in the {what}");
        assert!(!text.contains(&url), "the admin URL is in the {what}");
    }
    for p in [&short, &third, &fourth] {
        let pw = p["data"]["password"].as_str().expect("password");
        assert!(!trace.contains(pw) && !server.log().contains(pw) && !listing.contains(pw));
    }
    assert!(
        server
            .cli_json(&["lease", "list", "--failed", "--json"])
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}

/// `psql` as the superuser on the example's database: (succeeded, stderr).
fn psql_example(sql: &str) -> (bool, String) {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "custos_example",
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_credentials_example_applies_and_its_readonly_role_reads_but_cannot_write() {
    let root = super::support::repo_root();
    let setup = std::process::Command::new("bash")
        .arg(root.join("examples/credentials-setup.sh"))
        .output()
        .expect("run the example's setup");
    assert!(
        setup.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let s = TestServer::start_with_env(
        &[],
        &[
            (
                "CUSTOS_EXAMPLE_PG",
                "postgres://postgres@127.0.0.1:5432/custos_example",
            ),
            (
                "CUSTOS_EXAMPLE_MARIADB",
                "mysql://root@127.0.0.1:3306/custos_example",
            ),
            ("CUSTOS_EXAMPLE_REDIS", "redis://127.0.0.1:6379"),
        ],
    );
    // The example fetches server-postgres with npx; the test runs the copy its setup installed.
    let example = std::fs::read_to_string(root.join("examples/credentials.yaml"))
        .expect("the example")
        .replace(
            r#"[npx, -y, "@modelcontextprotocol/server-postgres@0.6.2"]"#,
            &format!(
                r#"["{}", "{}"]"#,
                super::support::deps().node,
                super::support::deps().pg_server
            ),
        );
    let file = s.dir.path().join("credentials.yaml");
    std::fs::write(&file, example).expect("write the example");
    let out = s.cli(&["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "the example applies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (key, public) = s.keygen("example-agent");
    let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
    s.apply(&format!(
        "kind: Agent\nname: example-agent\nowner: test@example.com\narchetype: internal-ops\n\
         templates: [db-reader]\npublic_key: |\n{indented}"
    ));
    let task = s.start_task("example-agent", "db-reader");
    let token = s.task_token(&task, &key);
    let vault = Vault::new(&s);

    let (status, body) = vault.creds(&token, "pg-readonly");
    assert_eq!(status, 200, "{body}");
    let user = body["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();
    assert!(user.starts_with("custos_"), "{user}");
    // The credential's privileges: it reads the example's table and cannot write it.
    let (read, err) = psql_example(&format!("SET ROLE {user}; SELECT count(*) FROM orders"));
    assert!(read, "SELECT as {user}: {err}");
    let (wrote, err) = psql_example(&format!(
        "SET ROLE {user}; INSERT INTO orders (customer, total) VALUES ('x', 1)"
    ));
    assert!(!wrote, "INSERT as {user} succeeded");
    assert!(err.contains("permission denied"), "{err}");
    // The template allows pg-readonly only.
    assert_eq!(vault.creds(&token, "pg-readwrite").0, 403);
    // Through the gateway, server-postgres answers as a pg-readonly user of its own.
    let mcp = super::support::RawMcp::new(&s.mcp_url(), Some(&token));
    let sid = mcp.initialize();
    let r = mcp.call(
        &sid,
        "tools/call",
        serde_json::json!({"name": "pg__query", "arguments": {"sql": "SELECT current_user AS u, count(*)::int AS n FROM orders"}}),
    );
    let text = r.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains("\"u\": \"custos_") && text.contains("\"n\""),
        "{}",
        r.body
    );
    assert!(
        !text.contains(&user),
        "a lease of its own, not the Vault client's"
    );
    // Ending the task removes the user.
    assert!(s.cli(&["task", "end", &task]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, err) = psql_example(&format!("SET ROLE {user}"));
        if err.contains("does not exist") {
            break;
        }
        assert!(Instant::now() < deadline, "{user} still exists: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Members of `group` whose name is a Custos principal.
fn custos_members(url: &str, group: &str) -> i64 {
    pg(
        url,
        &format!(
            "SELECT COUNT(*) FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member \
             JOIN pg_roles g ON g.oid = am.roleid WHERE g.rolname = '{group}' \
             AND m.rolname LIKE 'custos\\_%'"
        ),
    )
    .unwrap_or(-1)
}

/// A fresh database, a group role, a server whose `pg-burst` role (TTL `ttl`) joins it, and a
/// task of an agent allowed to use it: (database, url, group guard, server, task, token).
struct BurstWorld {
    url: String,
    group: String,
    server: TestServer,
    task: String,
    token: String,
    _guard: GroupGuard,
    _db: custos_test_support::TestDb,
}

impl BurstWorld {
    fn new(ttl: &str) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let db = rt.block_on(custos_test_support::fresh_pg_db());
        let url = db.url().to_owned();
        let group = format!(
            "it_burst_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default()
        );
        pg(&url, &format!("CREATE ROLE {group} NOLOGIN"));
        let guard = GroupGuard {
            url: url.clone(),
            group: group.clone(),
        };
        let server = TestServer::start_with_env(&[], &[(ENV, url.as_str())]);
        let (key, public) = server.keygen("agent-burst");
        let indented: String = public.lines().map(|l| format!("  {l}\n")).collect();
        server.apply(&format!(
            "kind: CredentialRole\nname: pg-burst\nengine: postgres\ndefault_ttl: {ttl}\nmax_ttl: {ttl}\n\
             connection_env: {ENV}\nrole:\n  groups: [{group}]\n  grace: 1s\n---\n\
             kind: Template\nname: burst\nttl: 10m\ntools: []\ncredentials: [pg-burst]\n---\n\
             kind: Agent\nname: agent-burst\nowner: test@example.com\narchetype: automation\n\
             templates: [burst]\npublic_key: |\n{indented}"
        ));
        let task = server.start_task("agent-burst", "burst");
        let token = server.task_token(&task, &key);
        Self {
            url,
            group,
            server,
            task,
            token,
            _guard: guard,
            _db: db,
        }
    }
}

#[test]
fn a_thousand_leases_expiring_together_are_all_revoked() {
    let w = BurstWorld::new("30s");
    let (url, group, server, token) = (&w.url, &w.group, &w.server, &w.token);
    // 1,000 leases, minted by 8 clients at once: they expire within a few seconds of each
    // other, 30 s after they were minted.
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let vault = Vault::new(server);
            let token = token.as_str();
            scope.spawn(move || {
                for _ in 0..125 {
                    let (status, body) = vault.creds(token, "pg-burst");
                    assert_eq!(status, 200, "{body}");
                }
            });
        }
    });
    assert_eq!(custos_members(url, group), 1000, "every lease has its user");
    // All gone after their expiry, without anyone asking; generous bound (the figure belongs
    // in a benchmark, not here).
    let deadline = Instant::now() + Duration::from_secs(120);
    while custos_members(url, group) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} users left 2 minutes after minting",
            custos_members(url, group)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let failed = server.cli_json(&["lease", "list", "--failed", "--json"]);
    assert_eq!(failed.as_array().map(Vec::len), Some(0), "{failed}");
}

#[test]
fn credential_requests_abandoned_at_once_still_finish_activated_and_audited() {
    let w = BurstWorld::new("10m");
    let host = w.server.addr.trim_start_matches("http://").to_owned();
    // Each client sends its request and hangs up at once, while the credential is being made.
    // Some hang-ups win the race before the request reaches the broker; keep going until a
    // few requests did.
    let count = || {
        w.server
            .cli_json(&["lease", "list", "--task", &w.task, "--json"])
            .as_array()
            .map_or(0, Vec::len)
    };
    for round in 0..20 {
        for _ in 0..10 {
            use std::io::Write as _;
            let mut conn = std::net::TcpStream::connect(&host).expect("connect");
            write!(
                conn,
                "GET /v1/database/creds/pg-burst HTTP/1.1\r\nHost: {host}\r\nX-Vault-Token: {}\r\n\r\n",
                w.token
            )
            .expect("send");
            conn.flush().expect("flush");
            drop(conn);
        }
        if count() >= 5 || round == 19 {
            break;
        }
    }
    // Whatever was minted ends active and audited; nothing is left pending.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leases = loop {
        let leases = w
            .server
            .cli_json(&["lease", "list", "--task", &w.task, "--json"]);
        let leases = leases.as_array().cloned().unwrap_or_default();
        let pending = leases.iter().filter(|l| l["state"] == "pending").count();
        if pending == 0 || Instant::now() > deadline {
            break leases;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!leases.is_empty(), "no request reached the broker");
    assert!(leases.iter().all(|l| l["state"] == "active"), "{leases:#?}");
    assert_eq!(
        custos_members(&w.url, &w.group),
        i64::try_from(leases.len()).expect("count"),
        "one user per lease, none untracked"
    );
    let trace = w.server.cli_json(&["audit", "trace", &w.task, "--json"]);
    let issued = trace["records"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["kind"] == "lease_issued").count())
        .unwrap_or(0);
    assert_eq!(issued, leases.len(), "every lease handed out is on record");
}

/// Runs a Python script with Vault's own client (`hvac`, from PyPI) against the server; the
/// JSON it prints.
fn hvac(s: &TestServer, token: &str, script: &str) -> Value {
    let program = format!(
        "import hvac, json, sys\nc = hvac.Client(url=sys.argv[1], token=sys.argv[2])\nout = {{}}\n{script}\nprint(json.dumps(out))\n"
    );
    let out = std::process::Command::new(&super::support::deps().python)
        .arg("-c")
        .arg(program)
        .arg(&s.addr)
        .arg(token)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "hvac script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// Seconds from now until the role's `VALID UNTIL`.
fn valid_for(url: &str, name: &str) -> i64 {
    pg(
        url,
        &format!(
            "SELECT (extract(epoch FROM rolvaliduntil) - extract(epoch FROM now()))::bigint \
             FROM pg_roles WHERE rolname = '{name}'"
        ),
    )
    .unwrap_or(-1)
}

#[test]
fn vaults_own_client_generates_renews_looks_up_and_revokes() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(custos_test_support::fresh_pg_db());
    let url = db.url().to_owned();
    let group = format!("it_hvac_{}", std::process::id());
    pg(&url, &format!("CREATE ROLE {group} NOLOGIN"));
    let _group = GroupGuard {
        url: url.clone(),
        group: group.clone(),
    };
    let server = TestServer::start_with_env(&[], &[(ENV, url.as_str())]);
    let (key, public) = server.keygen("agent-db");
    // Tasks that outlive the role's max_ttl (1h), so renewals meet the role's bound first.
    server.apply(&yaml(&group, &public).replacen(
        "name: db-reader\nttl: 10m",
        "name: db-reader\nttl: 2h",
        1,
    ));
    let task = server.start_task("agent-db", "db-reader");
    let token = server.task_token(&task, &key);

    // Generate (default_ttl 10m), then renew for 30 minutes (within max_ttl 1h).
    let first = hvac(
        &server,
        &token,
        r#"
r = c.secrets.database.generate_credentials(name="pg-readonly")
out["lease_id"] = r["lease_id"]
out["username"] = r["data"]["username"]
out["renewable"] = r["renewable"]
out["duration"] = r["lease_duration"]
out["last_renewal_before"] = c.sys.read_lease(lease_id=r["lease_id"])["data"]["last_renewal"]
rr = c.sys.renew_lease(lease_id=r["lease_id"], increment=1800)
out["renewed"] = rr["lease_duration"]
out["renewed_id"] = rr["lease_id"]
look = c.sys.read_lease(lease_id=r["lease_id"])["data"]
out["ttl"] = look["ttl"]
out["last_renewal"] = look["last_renewal"]
try:
    c.sys.renew_lease(lease_id=r["lease_id"], increment="soon")
except hvac.exceptions.InvalidRequest as e:
    out["bad_increment"] = str(e)
"#,
    );
    let user = first["username"].as_str().expect("username").to_owned();
    let lease_id = first["lease_id"].as_str().expect("lease id").to_owned();
    assert!(
        lease_id.starts_with("database/creds/pg-readonly/lease_"),
        "{first}"
    );
    assert_eq!(first["renewable"], true, "{first}");
    assert_eq!(first["duration"], 600, "{first}");
    assert_eq!(first["renewed_id"], lease_id.as_str(), "{first}");
    let renewed = first["renewed"].as_i64().expect("lease_duration");
    assert!((1790..=1800).contains(&renewed), "{first}");
    assert_eq!(first["last_renewal_before"], Value::Null, "{first}");
    assert!(
        first["last_renewal"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "lookup names the renewal: {first}"
    );
    let ttl = first["ttl"].as_i64().expect("ttl");
    assert!((1790..=1800).contains(&ttl), "{first}");
    assert!(
        first["bad_increment"]
            .as_str()
            .is_some_and(|e| e.contains("increment")),
        "{first}"
    );
    // The database's own expiry moved with it: 30 minutes plus the default grace (30 s).
    let valid = valid_for(&url, &user);
    assert!((1815..=1830).contains(&valid), "VALID UNTIL in {valid}s");
    // The lease as operators see it, and the renewal on the record with the database user.
    let bare = lease_id.rsplit('/').next().expect("bare id").to_owned();
    let expires_of = || {
        leases(&server, &task)
            .into_iter()
            .find(|l| l["id"] == bare.as_str())
            .map(|l| l["expires"].clone())
            .expect("the lease is listed")
    };
    let expires = expires_of();
    let trace = server.cli_json(&["audit", "trace", &task, "--json"]);
    let renewal = trace["records"]
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["kind"] == "lease_renewed")
        .cloned()
        .expect("a lease_renewed record");
    assert_eq!(renewal["detail"]["principal"], user.as_str(), "{renewal}");
    assert!(
        !trace.to_string().contains("password\":\""),
        "no password on the record"
    );

    // Renewing past max_ttl stops at it; revoke; a revoked lease neither renews nor looks live.
    let second = hvac(
        &server,
        &token,
        &format!(
            r#"
lid = "{lease_id}"
out["capped"] = c.sys.renew_lease(lease_id=lid, increment=7200)["lease_duration"]
c.sys.revoke_lease(lease_id=lid)
out["ttl"] = c.sys.read_lease(lease_id=lid)["data"]["ttl"]
try:
    c.sys.renew_lease(lease_id=lid)
except hvac.exceptions.InvalidRequest as e:
    out["renew_revoked"] = str(e)
try:
    c.sys.revoke_prefix("database/")
except hvac.exceptions.Forbidden as e:
    out["task_prefix"] = "forbidden"
a = c.secrets.database.generate_credentials(name="pg-readonly")
b = c.secrets.database.generate_credentials(name="pg-readonly")
out["others"] = [a["data"]["username"], b["data"]["username"]]
"#
        ),
    );
    let capped = second["capped"].as_i64().expect("capped");
    assert!(
        (3590..=3600).contains(&capped),
        "never beyond max_ttl (1h) from issue: {second}"
    );
    assert_ne!(expires_of(), expires, "the capped renewal moved the expiry");
    assert_eq!(second["ttl"], 0, "{second}");
    assert!(
        second["renew_revoked"]
            .as_str()
            .is_some_and(|e| e.contains("cannot be renewed")),
        "{second}"
    );
    assert_eq!(
        second["task_prefix"], "forbidden",
        "a task token cannot revoke by prefix"
    );
    assert_eq!(role_count(&url, &user), 0, "revoked: the role is gone");

    // An operator revokes by prefix with the same client: a prefix that is not a whole segment
    // takes nothing, the role's prefix takes both.
    let others: Vec<String> = second["others"]
        .as_array()
        .expect("others")
        .iter()
        .map(|u| u.as_str().expect("user").to_owned())
        .collect();
    hvac(
        &server,
        &server.admin_token,
        r#"c.sys.revoke_prefix("database/creds/pg-read")"#,
    );
    for u in &others {
        assert_eq!(
            role_count(&url, u),
            1,
            "`pg-read` is not a prefix of the role `pg-readonly`"
        );
    }
    hvac(
        &server,
        &server.admin_token,
        r#"c.sys.revoke_prefix("database/creds/pg-readonly")"#,
    );
    for u in &others {
        assert_eq!(role_count(&url, u), 0, "revoked by prefix: {u}");
    }
    let live = leases(&server, &task)
        .iter()
        .filter(|l| l["state"] == "active")
        .count();
    assert_eq!(live, 0, "every lease of the task is revoked");
}
