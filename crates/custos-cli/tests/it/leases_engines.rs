//! Credentials of all three engines through the server, against the real servers on this
//! machine (PostgreSQL, MariaDB, Redis): minted with the task token over the Vault-compatible
//! API, each working as its role says and no further, and all of them gone — sessions
//! included — when the task ends, and again when the agent is suspended.

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection as _;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};

use super::support::TestServer;

const PG_ENV: &str = "CUSTOS_IT_ENGINES_PG_URL";
const MYSQL_ENV: &str = "CUSTOS_IT_ENGINES_MYSQL_URL";
const REDIS_ENV: &str = "CUSTOS_IT_ENGINES_REDIS_URL";

fn mysql_admin() -> String {
    std::env::var("CUSTOS_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn redis_admin() -> String {
    std::env::var("CUSTOS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One database on MariaDB, one key prefix on Redis, one group role on PostgreSQL: this
/// test's, removed at the end even when it fails.
struct Fixture {
    rt: tokio::runtime::Runtime,
    tag: String,
    pg: custos_test_support::TestDb,
    group: String,
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let tag = format!(
            "{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default()
        );
        let pg = rt.block_on(custos_test_support::fresh_pg_db());
        let group = format!("it_engines_{tag}");
        let f = Self { rt, tag, pg, group };
        f.pg_exec(&format!("CREATE ROLE {} NOLOGIN", f.group));
        f.rt.block_on(async {
            let mut admin = MySqlConnection::connect(&mysql_admin())
                .await
                .expect("MariaDB reachable");
            for q in [
                format!("CREATE DATABASE `{}`", f.db()),
                format!("CREATE TABLE `{}`.t (x INT)", f.db()),
                format!("INSERT INTO `{}`.t VALUES (1)", f.db()),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(q))
                    .execute(&mut admin)
                    .await
                    .expect("setup");
            }
        });
        f
    }

    fn db(&self) -> String {
        format!("it_custos_{}", self.tag)
    }

    fn keys(&self) -> String {
        format!("it:{}:", self.tag)
    }

    fn pg_exec(&self, sql: &str) {
        self.rt
            .block_on(custos_test_support::tamper::exec_at(self.pg.url(), sql));
    }

    fn pg_roles(&self, name: &str) -> i64 {
        self.rt
            .block_on(custos_test_support::tamper::sql_at(
                self.pg.url(),
                &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{name}'"),
            ))
            .unwrap_or(-1)
    }

    fn mysql_users(&self, name: &str) -> i64 {
        self.rt.block_on(async {
            let mut admin = MySqlConnection::connect(&mysql_admin())
                .await
                .expect("MariaDB reachable");
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM mysql.user WHERE User = ?")
                .bind(name)
                .fetch_one(&mut admin)
                .await
                .expect("count users");
            n
        })
    }

    fn redis_user(&self, name: &str) -> bool {
        self.rt.block_on(async {
            let mut admin = redis::Client::open(redis_admin())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("Redis reachable");
            let v: redis::Value = redis::cmd("ACL")
                .arg("GETUSER")
                .arg(name)
                .query_async(&mut admin)
                .await
                .expect("ACL GETUSER");
            !matches!(v, redis::Value::Nil)
        })
    }

    fn mysql_login(&self, user: &str, password: &str) -> Result<MySqlConnection, sqlx::Error> {
        let options = MySqlConnectOptions::from_str(&mysql_admin())
            .expect("url")
            .username(user)
            .password(password)
            .database(&self.db());
        self.rt.block_on(MySqlConnection::connect_with(&options))
    }

    fn redis_login(
        &self,
        user: &str,
        password: &str,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let url = format!("redis://{user}:{password}@127.0.0.1:6379/");
        self.rt.block_on(async {
            redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await
        })
    }

    fn yaml(&self, public_key: &str) -> String {
        let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
        let (db, keys, group) = (self.db(), self.keys(), &self.group);
        format!(
            r#"kind: CredentialRole
name: pg-reader
engine: postgres
default_ttl: 10m
max_ttl: 1h
connection_env: {PG_ENV}
role:
  groups: [{group}]
---
kind: CredentialRole
name: mariadb-reader
engine: mariadb
default_ttl: 10m
max_ttl: 1h
connection_env: {MYSQL_ENV}
role:
  statements: ["GRANT SELECT ON `{db}`.* TO {{{{name}}}}"]
---
kind: CredentialRole
name: redis-cache
engine: redis
default_ttl: 10m
max_ttl: 1h
connection_env: {REDIS_ENV}
role:
  keys: ["{keys}*"]
  commands: ["@read", "@write", "ping"]
  deny_commands: ["@dangerous"]
---
kind: Template
name: all-engines
ttl: 10m
tools: []
credentials: [pg-reader, mariadb-reader, redis-cache]
---
kind: Agent
name: agent-engines
owner: test@example.com
archetype: automation
templates: [all-engines]
public_key: |
{indented}"#
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let (db, keys, group) = (self.db(), self.keys(), self.group.clone());
        self.rt.block_on(async {
            if let Ok(mut admin) = MySqlConnection::connect(&mysql_admin()).await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{db}`"
                )))
                .execute(&mut admin)
                .await;
            }
            if let Ok(mut admin) =
                redis::Client::open(redis_admin()).and_then(|c| c.get_connection())
            {
                let found: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{keys}*"))
                    .query(&mut admin)
                    .unwrap_or_default();
                for k in found {
                    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(k).query(&mut admin);
                }
            }
        });
        self.pg_exec(&format!(
            "DO $$ DECLARE r record; BEGIN \
             FOR r IN SELECT m.rolname FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member \
             JOIN pg_roles g ON g.oid = am.roleid WHERE g.rolname = '{group}' AND m.rolname LIKE 'custos\\_%' \
             LOOP EXECUTE format('DROP ROLE %I', r.rolname); END LOOP; END $$; \
             DROP ROLE IF EXISTS {group}"
        ));
    }
}

/// `(username, password)` of a fresh credential of `role` for the token's task.
fn mint(s: &TestServer, token: &str, role: &str) -> (String, String) {
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/v1/database/creds/{role}", s.addr))
        .header("X-Vault-Token", token)
        .send()
        .expect("GET creds");
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{role}: {body}");
    let field = |k: &str| {
        body["data"][k]
            .as_str()
            .expect("credential field")
            .to_owned()
    };
    (field("username"), field("password"))
}

/// Polls `gone` until it holds; panics after 10 s.
fn eventually(what: &str, mut gone: impl FnMut() -> bool) {
    let start = Instant::now();
    while !gone() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn leases_on_all_three_engines_work_as_their_roles_say_and_end_with_the_task_and_the_agent() {
    let f = Fixture::new();
    let (pg_url, mysql_url, redis_url) = (
        f.pg.url().to_owned(),
        format!("{}/{}", mysql_admin(), f.db()),
        redis_admin(),
    );
    let env = [
        (PG_ENV, pg_url.as_str()),
        (MYSQL_ENV, mysql_url.as_str()),
        (REDIS_ENV, redis_url.as_str()),
    ];
    let server = TestServer::start_with_env(&[], &env);
    let (key, public) = server.keygen("agent-engines");
    server.apply(&f.yaml(&public));

    // Task one: a credential of each engine.
    let task = server.start_task("agent-engines", "all-engines");
    let token = server.task_token(&task, &key);
    let (pg_user, _) = mint(&server, &token, "pg-reader");
    let (my_user, my_pass) = mint(&server, &token, "mariadb-reader");
    let (rd_user, rd_pass) = mint(&server, &token, "redis-cache");
    assert_eq!(f.pg_roles(&pg_user), 1);

    // MariaDB: the user reads its database and cannot write it.
    let mut my = f.mysql_login(&my_user, &my_pass).expect("MariaDB login");
    let (x,): (i32,) =
        f.rt.block_on(sqlx::query_as("SELECT x FROM t").fetch_one(&mut my))
            .expect("SELECT");
    assert_eq!(x, 1);
    let refused =
        f.rt.block_on(sqlx::query("INSERT INTO t VALUES (2)").execute(&mut my))
            .expect_err("INSERT refused");
    assert!(
        refused.to_string().contains("INSERT command denied"),
        "{refused}"
    );

    // Redis: the user reads and writes its keys, and nothing else.
    let mut rd = f.redis_login(&rd_user, &rd_pass).expect("Redis login");
    let k = format!("{}k", f.keys());
    let set: redis::RedisResult<()> =
        f.rt.block_on(redis::cmd("SET").arg(&k).arg("v").query_async(&mut rd));
    set.expect("SET its own key");
    let outside: redis::RedisResult<Option<String>> =
        f.rt.block_on(redis::cmd("GET").arg("someone-else:k").query_async(&mut rd));
    assert!(
        outside.is_err_and(|e| e.to_string().contains("NOPERM")),
        "a key outside the role's pattern is refused"
    );

    // Ending the task revokes all three, and the open sessions go with them.
    assert!(server.cli(&["task", "end", &task]).status.success());
    eventually("the PostgreSQL role is gone", || f.pg_roles(&pg_user) == 0);
    eventually("the MariaDB user is gone", || f.mysql_users(&my_user) == 0);
    eventually("the Redis ACL user is gone", || !f.redis_user(&rd_user));
    assert!(
        f.rt.block_on(sqlx::query("SELECT 1").execute(&mut my))
            .is_err(),
        "the open MariaDB session was killed"
    );
    let after: redis::RedisResult<Option<String>> =
        f.rt.block_on(redis::cmd("GET").arg(&k).query_async(&mut rd));
    assert!(after.is_err(), "the open Redis client was killed");
    assert!(
        f.mysql_login(&my_user, &my_pass).is_err(),
        "no new MariaDB login"
    );
    assert!(
        f.redis_login(&rd_user, &rd_pass).is_err(),
        "no new Redis login"
    );

    // Task two: suspending the agent revokes all three as well.
    let task = server.start_task("agent-engines", "all-engines");
    let token = server.task_token(&task, &key);
    let (pg_user, _) = mint(&server, &token, "pg-reader");
    let (my_user, _) = mint(&server, &token, "mariadb-reader");
    let (rd_user, _) = mint(&server, &token, "redis-cache");
    assert!(f.mysql_users(&my_user) == 1 && f.redis_user(&rd_user) && f.pg_roles(&pg_user) == 1);
    assert!(
        server
            .cli(&["agent", "suspend", "agent-engines"])
            .status
            .success()
    );
    eventually("the PostgreSQL role is gone", || f.pg_roles(&pg_user) == 0);
    eventually("the MariaDB user is gone", || f.mysql_users(&my_user) == 0);
    eventually("the Redis ACL user is gone", || !f.redis_user(&rd_user));

    // Every issuance and revocation names the user in clear; no password is on the record.
    let trace = server.cli_json(&["audit", "trace", &task, "--json"]);
    let revoked: Vec<&str> = trace["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == "lease_revoked")
        .filter_map(|r| r["detail"]["principal"].as_str())
        .collect();
    for u in [&pg_user, &my_user, &rd_user] {
        assert!(
            revoked.contains(&u.as_str()),
            "{u} revoked on the record: {revoked:?}"
        );
    }
    let text = trace.to_string();
    assert!(
        !text.contains(&my_pass) && !text.contains(&rd_pass),
        "no password on the record"
    );
    let log = server.log();
    assert!(
        !log.contains(&my_pass) && !log.contains(&rd_pass),
        "no password in the log"
    );
}
