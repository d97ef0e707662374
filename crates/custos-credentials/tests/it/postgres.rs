//! PostgreSQL: login roles through group roles, SCRAM verifiers, `VALID UNTIL`, revocation
//! that ends sessions and hands over owned objects.

use std::str::FromStr;
use std::time::Duration;

use custos_credentials::{
    CredentialError, Engine, MintedCredential, PostgresConfig, PostgresEngine, PostgresRole,
    PrincipalName, RoleSpec,
};
use custos_test_support::{TestDb, fresh_pg_db, pg_url};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Executor};

use super::{CapturedLogs, assert_no_secret, in_minutes, lease, pg_cluster, under, unique_prefix};

/// A test database, its engine (admin connected to it) and group roles named after the test.
struct Fixture {
    /// A database on the shared test server, dropped by `custos-test-support`.
    _shared: Option<TestDb>,
    /// `(cluster admin URL, database)` on the password-checking cluster, dropped by `finish`.
    own: Option<(String, String)>,
    url: String,
    engine: PostgresEngine,
    admin: PgConnection,
    prefix: String,
    groups: Vec<String>,
}

impl Fixture {
    /// On the shared test server (`CUSTOS_TEST_PG`), which trusts every login.
    async fn new() -> Self {
        let db = fresh_pg_db().await;
        let url = db.url().to_owned();
        Self::on(url, Some(db), None).await
    }

    /// On a cluster that checks passwords and `VALID UNTIL`.
    async fn with_password_auth() -> Self {
        let admin = pg_cluster::admin_url().await;
        let name = format!("ct_{}", unique_prefix());
        let mut conn = PgConnection::connect(&admin).await.expect("cluster admin");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let _ = conn.close().await;
        let (server, _) = admin.rsplit_once('/').expect("url");
        let url = format!("{server}/{name}");
        Self::on(url, None, Some((admin, name))).await
    }

    async fn on(url: String, shared: Option<TestDb>, own: Option<(String, String)>) -> Self {
        let engine = PostgresEngine::new(PostgresConfig::new(SecretString::from(url.clone())))
            .expect("engine");
        let mut admin = PgConnection::connect(&url).await.expect("admin");
        admin
            .execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
            .await
            .expect("table");
        Self {
            _shared: shared,
            own,
            url,
            engine,
            admin,
            prefix: unique_prefix(),
            groups: Vec::new(),
        }
    }

    /// A group role `g_<prefix>_<suffix>` with these grants (`{g}` is the group).
    async fn group(&mut self, suffix: &str, grants: &[&str]) -> String {
        let g = format!("g_{}_{suffix}", self.prefix);
        self.sql(&format!("CREATE ROLE \"{g}\" NOLOGIN")).await;
        self.groups.push(g.clone());
        for grant in grants {
            self.sql(&grant.replace("{g}", &format!("\"{g}\""))).await;
        }
        g
    }

    async fn sql(&mut self, sql: &str) {
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn login_options(&self, cred: &MintedCredential) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.url)
            .expect("url")
            .username(cred.principal.as_str())
            .password(cred.password.expose_secret())
    }

    async fn login(&self, cred: &MintedCredential) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.login_options(cred)).await
    }

    async fn role_exists(&mut self, name: &PrincipalName) -> bool {
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(name.as_str())
            .fetch_optional(&mut self.admin)
            .await
            .expect("query")
            .is_some()
    }

    async fn finish(mut self) {
        for p in self
            .engine
            .list_principals(&under(&self.prefix))
            .await
            .expect("list")
        {
            self.engine.revoke(&p).await.expect("revoke leftover");
        }
        self.engine.close().await;
        for g in std::mem::take(&mut self.groups) {
            self.sql(&format!("DROP OWNED BY \"{g}\"; DROP ROLE \"{g}\""))
                .await;
        }
        let _ = self.admin.close().await;
        if let Some((admin, name)) = self.own.take() {
            let mut conn = PgConnection::connect(&admin).await.expect("cluster admin");
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .expect("drop database");
            let _ = conn.close().await;
        }
    }
}

fn role(groups: &[&str]) -> RoleSpec {
    RoleSpec::Postgres(PostgresRole {
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..PostgresRole::default()
    })
}

fn is_permission_denied(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"))
}

#[tokio::test]
async fn readonly_reads_writer_writes_and_revoke_ends_sessions_and_logins() {
    let mut f = Fixture::with_password_auth().await;
    let ro = f.group("ro", &["GRANT SELECT ON t TO {g}"]).await;
    let rw = f.group("rw", &["GRANT SELECT, INSERT ON t TO {g}"]).await;
    let (p_ro, p_rw) = (lease(&f.prefix, "ro"), lease(&f.prefix, "rw"));

    let cred_ro = f
        .engine
        .mint(&p_ro, in_minutes(10), &role(&[&ro]))
        .await
        .expect("mint ro");
    let cred_rw = f
        .engine
        .mint(&p_rw, in_minutes(10), &role(&[&rw]))
        .await
        .expect("mint rw");
    assert_eq!(cred_ro.principal, p_ro);
    let debug = format!("{cred_ro:?}");
    assert!(!debug.contains(cred_ro.password.expose_secret()), "{debug}");

    // The server stores a verifier, never the password.
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(p_ro.as_str())
        .fetch_one(&mut f.admin)
        .await
        .expect("verifier");
    assert!(stored.starts_with("SCRAM-SHA-256$1:"), "{stored}");
    assert!(!stored.contains(cred_ro.password.expose_secret()));

    // The server checks the password against the verifier Custos computed.
    let wrong = f.login_options(&cred_ro).password("not-the-password");
    assert!(
        PgConnection::connect_with(&wrong).await.is_err(),
        "a wrong password logs in"
    );
    let mut reader = f.login(&cred_ro).await.expect("ro login");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut reader)
        .await
        .expect("ro select");
    assert_eq!(n, 1);
    let denied = reader
        .execute("INSERT INTO t VALUES (2)")
        .await
        .expect_err("ro insert");
    assert!(is_permission_denied(&denied), "{denied}");

    let mut writer = f.login(&cred_rw).await.expect("rw login");
    writer
        .execute("INSERT INTO t VALUES (2)")
        .await
        .expect("rw insert");
    let _ = writer.close().await;

    assert_eq!(
        f.engine
            .list_principals(&under(&f.prefix))
            .await
            .expect("list"),
        vec![p_ro.clone(), p_rw.clone()]
    );

    // Revoke with the reader's session open: it is terminated, a new login fails.
    f.engine.revoke(&p_ro).await.expect("revoke");
    let after = reader.execute("SELECT 1").await;
    assert!(after.is_err(), "the revoked session still answers");
    assert!(
        f.login(&cred_ro).await.is_err(),
        "a revoked role can log in"
    );
    assert!(!f.role_exists(&p_ro).await);
    f.engine.revoke(&p_ro).await.expect("revoke twice");
    f.engine
        .revoke(&lease(&f.prefix, "never"))
        .await
        .expect("revoke unknown");

    assert_eq!(
        f.engine
            .list_principals(&under(&f.prefix))
            .await
            .expect("list"),
        vec![p_rw.clone()]
    );
    f.engine.revoke(&p_rw).await.expect("revoke rw");
    assert!(
        f.engine
            .list_principals(&under(&f.prefix))
            .await
            .expect("list")
            .is_empty()
    );
    f.finish().await;
}

#[tokio::test]
async fn valid_until_refuses_login_after_expiry_without_custos() {
    let mut f = Fixture::with_password_auth().await;
    let ro = f.group("ro", &["GRANT SELECT ON t TO {g}"]).await;
    let p = lease(&f.prefix, "exp");
    let spec = RoleSpec::Postgres(PostgresRole {
        groups: vec![ro],
        grace: Duration::ZERO,
        ..PostgresRole::default()
    });
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let cred = f.engine.mint(&p, expires, &spec).await.expect("mint");
    assert_eq!(cred.server_expires_at, Some(expires));
    let until: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM rolvaliduntil)::float8 FROM pg_roles WHERE rolname = $1",
    )
    .bind(p.as_str())
    .fetch_one(&mut f.admin)
    .await
    .expect("valid until");
    let until = until.expect("VALID UNTIL is set");
    let want = expires.unix_timestamp_nanos() as f64 / 1e9;
    assert!((until - want).abs() < 0.001, "{until} vs {want}");

    let early = f.login(&cred).await.expect("login before expiry");
    let _ = early.close().await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let late = f.login(&cred).await.expect_err("login after expiry");
    assert!(
        late.to_string().contains("password authentication failed"),
        "{late}"
    );
    // The role is still there: the server refused on its own.
    assert!(f.role_exists(&p).await);
    f.finish().await;
}

#[tokio::test]
async fn grace_is_added_and_statements_run_with_placeholders() {
    let mut f = Fixture::new().await;
    let ro = f.group("ro", &["GRANT SELECT ON t TO {g}"]).await;
    // A group whose name needs quoting: it reaches SQL escaped, not raw.
    let odd = f.group("Odd-Name", &[]).await;
    let p = lease(&f.prefix, "st");
    let spec = RoleSpec::Postgres(PostgresRole {
        groups: vec![ro, odd.clone()],
        statements: vec![
            "COMMENT ON ROLE {{name}} IS {{expiration}}".to_owned(),
            "GRANT INSERT ON t TO {{ name }};".to_owned(),
            "SELECT {{expiration}}::timestamptz".to_owned(),
        ],
        grace: Duration::from_secs(60),
        connection_limit: Some(2),
    });
    let expires = in_minutes(5);
    let cred = f.engine.mint(&p, expires, &spec).await.expect("mint");
    assert_eq!(
        cred.server_expires_at,
        Some(expires + time::Duration::seconds(60))
    );
    let (limit, comment, odd_member): (i32, Option<String>, bool) = sqlx::query_as(
        "SELECT rolconnlimit, shobj_description(oid, 'pg_authid'), pg_has_role(rolname, $2::name, 'MEMBER') \
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(p.as_str())
    .bind(&odd)
    .fetch_one(&mut f.admin)
    .await
    .expect("role");
    let want = (expires + time::Duration::seconds(60))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    assert_eq!((limit, comment, odd_member), (2, Some(want), true));
    let mut conn = f.login(&cred).await.expect("login");
    conn.execute("INSERT INTO t VALUES (3)")
        .await
        .expect("granted by statement");
    let _ = conn.close().await;
    f.finish().await;
}

#[tokio::test]
async fn injection_through_the_spec_is_refused() {
    let mut f = Fixture::new().await;
    let p = lease(&f.prefix, "inj");
    let attempts = [
        role(&["x; DROP ROLE postgres"]),
        role(&["x\"; DROP ROLE postgres; --"]),
        RoleSpec::Postgres(PostgresRole {
            statements: vec!["GRANT SELECT ON t TO {{name}}; DROP ROLE postgres".to_owned()],
            ..PostgresRole::default()
        }),
        RoleSpec::Postgres(PostgresRole {
            statements: vec!["COMMENT ON ROLE {{name}} IS '{{name}}'".to_owned()],
            ..PostgresRole::default()
        }),
        RoleSpec::Postgres(PostgresRole {
            statements: vec!["ALTER ROLE {{name}} PASSWORD {{password}}".to_owned()],
            ..PostgresRole::default()
        }),
        RoleSpec::Postgres(PostgresRole {
            statements: vec!["SELECT 1 /* {{name}} */".to_owned()],
            ..PostgresRole::default()
        }),
    ];
    for spec in &attempts {
        assert!(spec.validate().is_err(), "{spec:?}");
        let err = f
            .engine
            .mint(&p, in_minutes(5), spec)
            .await
            .expect_err("refused");
        assert!(matches!(err, CredentialError::InvalidRole { .. }), "{err}");
    }
    assert!(PrincipalName::for_lease("x'; DROP ROLE postgres; --").is_err());
    assert!(!f.role_exists(&p).await);
    let postgres: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'")
            .fetch_optional(&mut f.admin)
            .await
            .expect("query");
    assert!(postgres.is_some());
    // A role for another engine is refused before anything is sent.
    let wrong = RoleSpec::Redis(Default::default());
    let err = f
        .engine
        .mint(&p, in_minutes(5), &wrong)
        .await
        .expect_err("wrong");
    assert!(matches!(err, CredentialError::WrongRole { .. }), "{err}");
    f.finish().await;
}

#[tokio::test]
async fn invalid_sql_fails_at_mint_and_leaves_no_principal() {
    let mut f = Fixture::new().await;
    let ro = f.group("ro", &["GRANT SELECT ON t TO {g}"]).await;
    let p = lease(&f.prefix, "bad");
    for (statement, step) in [
        ("GRANT SELEKT ON t TO {{name}}", "statements[1]"),
        ("GRANT SELECT ON no_such_table TO {{name}}", "statements[1]"),
    ] {
        let spec = RoleSpec::Postgres(PostgresRole {
            groups: vec![ro.clone()],
            statements: vec![
                "COMMENT ON ROLE {{name}} IS 'x'".to_owned(),
                statement.to_owned(),
            ],
            ..PostgresRole::default()
        });
        let err = f
            .engine
            .mint(&p, in_minutes(5), &spec)
            .await
            .expect_err("invalid SQL");
        let text = err.to_string();
        assert!(matches!(err, CredentialError::Server { .. }), "{text}");
        assert!(text.contains(step) && text.contains(p.as_str()), "{text}");
        assert_no_secret(&err, &[]);
        assert!(!f.role_exists(&p).await, "a failed mint left {p}");
    }
    // A missing group fails at CREATE ROLE, also cleanly.
    let err = f
        .engine
        .mint(&p, in_minutes(5), &role(&["no_such_group_xyz"]))
        .await
        .expect_err("missing group");
    assert!(err.to_string().contains("create role"), "{err}");
    assert!(
        f.engine
            .list_principals(&under(&f.prefix))
            .await
            .expect("list")
            .is_empty()
    );

    // Minting an existing principal leaves it alone.
    let cred = f
        .engine
        .mint(&p, in_minutes(5), &role(&[&ro]))
        .await
        .expect("mint");
    let again = f
        .engine
        .mint(&p, in_minutes(5), &role(&[&ro]))
        .await
        .expect_err("exists");
    assert!(
        matches!(again, CredentialError::AlreadyExists { .. }),
        "{again}"
    );
    assert_no_secret(&again, &[cred.password.expose_secret()]);
    f.login(&cred)
        .await
        .expect("the first credential still works");
    f.finish().await;
}

#[tokio::test]
async fn revoke_hands_over_objects_owned_in_another_database() {
    // The engine's admin is connected to the server's default database; the credential
    // creates a table in the test database, which revocation must find on its own.
    let mut f = Fixture::new().await;
    let owner = f
        .group(
            "own",
            &[
                "GRANT CREATE, USAGE ON SCHEMA public TO {g}",
                "GRANT SELECT ON t TO {g}",
            ],
        )
        .await;
    let engine = PostgresEngine::new(PostgresConfig::new(SecretString::from(pg_url().await)))
        .expect("engine");
    let p = lease(&f.prefix, "own");
    let cred = engine
        .mint(&p, in_minutes(5), &role(&[&owner]))
        .await
        .expect("mint");
    let mut conn = f.login(&cred).await.expect("login");
    conn.execute("CREATE TABLE made_by_lease (x int)")
        .await
        .expect("create");
    engine.revoke(&p).await.expect("revoke reassigns and drops");
    assert!(!f.role_exists(&p).await);
    let table_owner: String = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'made_by_lease'",
    )
    .fetch_one(&mut f.admin)
    .await
    .expect("the table survives");
    assert_ne!(table_owner, p.as_str());
    engine.close().await;
    f.finish().await;
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let engine = PostgresEngine::new(PostgresConfig::new(SecretString::from(
        "postgres://postgres:sekrit-admin-pw@127.0.0.1:1/postgres",
    )))
    .expect("engine");
    let err = engine.check().await.expect_err("unreachable");
    let text = err.to_string();
    assert!(matches!(err, CredentialError::Unreachable { .. }), "{text}");
    assert!(
        text.contains("cannot reach the postgres server at 127.0.0.1:1"),
        "{text}"
    );
    assert!(err.is_unreachable());
    assert_no_secret(&err, &["sekrit-admin-pw"]);
    let p = lease(&unique_prefix(), "x");
    let mint = engine
        .mint(&p, in_minutes(5), &role(&[]))
        .await
        .expect_err("mint");
    assert!(mint.is_unreachable(), "{mint}");
    assert_no_secret(&mint, &["sekrit-admin-pw"]);
    let revoke = engine.revoke(&p).await.expect_err("revoke");
    assert!(revoke.is_unreachable(), "{revoke}");
}

#[tokio::test]
async fn concurrent_revokes_of_one_principal_all_succeed() {
    let mut f = Fixture::new().await;
    let owner = f
        .group("own", &["GRANT CREATE, USAGE ON SCHEMA public TO {g}"])
        .await;
    let p = lease(&f.prefix, "race");
    let cred = f
        .engine
        .mint(&p, in_minutes(5), &role(&[&owner]))
        .await
        .expect("mint");
    let mut conn = f.login(&cred).await.expect("login");
    conn.execute("CREATE TABLE raced (x int)")
        .await
        .expect("create");
    let (a, b, c) = tokio::join!(
        f.engine.revoke(&p),
        f.engine.revoke(&p),
        f.engine.revoke(&p)
    );
    for r in [a, b, c] {
        r.expect("every concurrent revoke succeeds");
    }
    assert!(!f.role_exists(&p).await);
    f.finish().await;
}

#[tokio::test]
async fn admin_connections_the_server_closed_are_replaced() {
    let mut f = Fixture::new().await;
    let p = lease(&f.prefix, "re");
    f.engine
        .mint(&p, in_minutes(5), &role(&[]))
        .await
        .expect("mint");
    // The server ends the engine's idle admin sessions (a restart, an idle timeout).
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'custos-credentials' AND datname = current_database()",
    )
    .fetch_all(&mut f.admin)
    .await
    .expect("terminate");
    assert!(!killed.is_empty());
    // Idle connections are checked before reuse after a second.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        f.engine
            .list_principals(&under(&f.prefix))
            .await
            .expect("list on a new connection"),
        vec![p.clone()]
    );
    f.engine.revoke(&p).await.expect("revoke");
    f.finish().await;
}

#[tokio::test]
async fn logs_never_carry_the_password_or_verifier() {
    let logs = CapturedLogs::start();
    let mut f = Fixture::new().await;
    let p = lease(&f.prefix, "log");
    let spec = RoleSpec::Postgres(PostgresRole {
        statements: vec!["COMMENT ON ROLE {{name}} IS 'x'".to_owned()],
        ..PostgresRole::default()
    });
    let cred = f.engine.mint(&p, in_minutes(5), &spec).await.expect("mint");
    let verifier: String =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(p.as_str())
            .fetch_one(&mut f.admin)
            .await
            .expect("verifier");
    f.engine.revoke(&p).await.expect("revoke");
    let text = logs.text();
    assert!(text.contains(p.as_str()), "the mint is logged: {text}");
    assert!(!text.contains(cred.password.expose_secret()), "{text}");
    let stored_key = verifier.rsplit('$').next().expect("keys");
    assert!(!text.contains(stored_key), "{text}");
    assert!(!text.contains("SCRAM-SHA-256$"), "{text}");
    // The capture does see sqlx's statement log: the test's own admin connection logs its
    // queries, the engine's do not.
    assert!(text.contains("SELECT rolpassword"), "{text}");
    f.finish().await;
}

#[tokio::test]
async fn revoke_hands_objects_to_the_configured_owner() {
    let mut f = Fixture::new().await;
    let creator = f
        .group("cr", &["GRANT CREATE, USAGE ON SCHEMA public TO {g}"])
        .await;
    let heir = f.group("heir", &[]).await;
    let mut config = PostgresConfig::new(SecretString::from(f.url.clone()));
    config.owner = Some(heir.clone());
    let engine = PostgresEngine::new(config).expect("engine");
    let p = lease(&f.prefix, "own");
    let cred = engine
        .mint(&p, in_minutes(5), &role(&[&creator]))
        .await
        .expect("mint");
    let mut conn = f.login(&cred).await.expect("login");
    conn.execute("CREATE TABLE inherited (x int)")
        .await
        .expect("create");
    let _ = conn.close().await;
    engine.revoke(&p).await.expect("revoke");
    let owner: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'inherited'")
            .fetch_one(&mut f.admin)
            .await
            .expect("the table survives");
    assert_eq!(owner, heir);
    engine.close().await;
    // The fixture drops the groups with `DROP OWNED`, which takes the table too.
    f.finish().await;
}

#[test]
fn a_bad_owner_is_refused_at_configuration() {
    let mut config = PostgresConfig::new(SecretString::from("postgres://postgres@127.0.0.1/x"));
    config.owner = Some("x\"; DROP ROLE postgres; --".to_owned());
    let err = PostgresEngine::new(config).expect_err("refused");
    assert!(
        matches!(err, CredentialError::InvalidConfig { .. }),
        "{err}"
    );
}
