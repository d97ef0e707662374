//! MariaDB/MySQL: users with the role's grants; revocation drops them and kills their
//! connections.

use std::str::FromStr;

use custos_credentials::{
    CredentialError, Engine, MintedCredential, MysqlConfig, MysqlEngine, MysqlRole, PrincipalName,
    RoleSpec,
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{AssertSqlSafe, Connection, Executor};

use super::{CapturedLogs, assert_no_secret, in_minutes, lease, under, unique_prefix};

fn admin_url() -> String {
    std::env::var("CUSTOS_TEST_MYSQL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3306/".to_owned())
}

/// A database `ct_<prefix>` with a table `t`, and the engine.
struct Fixture {
    engine: MysqlEngine,
    admin: MySqlConnection,
    prefix: String,
    db: String,
}

impl Fixture {
    async fn new() -> Self {
        let prefix = unique_prefix();
        let db = format!("ct_{prefix}");
        let engine =
            MysqlEngine::new(MysqlConfig::new(SecretString::from(admin_url()))).expect("engine");
        let mut admin = MySqlConnection::connect(&admin_url())
            .await
            .unwrap_or_else(|e| panic!("MariaDB at {} (CUSTOS_TEST_MYSQL): {e}", admin_url()));
        for sql in [
            format!("CREATE DATABASE `{db}`"),
            format!("CREATE TABLE `{db}`.t (id int)"),
            format!("INSERT INTO `{db}`.t VALUES (1)"),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .expect("setup");
        }
        Self {
            engine,
            admin,
            prefix,
            db,
        }
    }

    fn role(&self, privileges: &str) -> RoleSpec {
        RoleSpec::Mysql(MysqlRole {
            statements: vec![format!(
                "GRANT {privileges} ON `{}`.* TO {{{{name}}}}",
                self.db
            )],
            ..MysqlRole::default()
        })
    }

    async fn login(&self, cred: &MintedCredential) -> Result<MySqlConnection, sqlx::Error> {
        let options = MySqlConnectOptions::from_str(&admin_url())
            .expect("url")
            .username(cred.principal.as_str())
            .password(cred.password.expose_secret())
            .database(&self.db);
        MySqlConnection::connect_with(&options).await
    }

    async fn user_exists(&mut self, p: &PrincipalName) -> bool {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.user WHERE User = ?")
            .bind(p.as_str())
            .fetch_one(&mut self.admin)
            .await
            .expect("query");
        n > 0
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
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE `{}`", self.db)))
            .execute(&mut self.admin)
            .await
            .expect("drop database");
        let _ = self.admin.close().await;
    }
}

fn db_code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number().to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn readonly_reads_writer_writes_and_revoke_kills_sessions_and_logins() {
    let mut f = Fixture::new().await;
    let (p_ro, p_rw) = (lease(&f.prefix, "ro"), lease(&f.prefix, "rw"));
    let cred_ro = f
        .engine
        .mint(&p_ro, in_minutes(10), &f.role("SELECT"))
        .await
        .expect("mint ro");
    let cred_rw = f
        .engine
        .mint(&p_rw, in_minutes(10), &f.role("SELECT, INSERT"))
        .await
        .expect("mint rw");
    assert!(cred_ro.server_expires_at.is_none());

    let mut reader = f.login(&cred_ro).await.expect("ro login");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
        .fetch_one(&mut reader)
        .await
        .expect("ro select");
    assert_eq!(n, 1);
    let denied = reader
        .execute("INSERT INTO t VALUES (2)")
        .await
        .expect_err("ro insert");
    // ER_TABLEACCESS_DENIED_ERROR
    assert_eq!(db_code(&denied).as_deref(), Some("1142"), "{denied}");

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

    f.engine.revoke(&p_ro).await.expect("revoke");
    assert!(
        reader.execute("SELECT 1").await.is_err(),
        "the revoked session still answers"
    );
    let refused = f
        .login(&cred_ro)
        .await
        .expect_err("a revoked user can log in");
    // ER_ACCESS_DENIED_ERROR, or MariaDB's ER_ACCESS_DENIED_NO_PASSWORD_ERROR for a user
    // that no longer exists.
    assert!(
        matches!(db_code(&refused).as_deref(), Some("1045" | "1698")),
        "{refused}"
    );
    assert!(!f.user_exists(&p_ro).await);
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
async fn host_pattern_and_connection_limit_apply() {
    let mut f = Fixture::new().await;
    let p = lease(&f.prefix, "h");
    let spec = RoleSpec::Mysql(MysqlRole {
        host: "127.0.0.1".to_owned(),
        statements: vec![format!("GRANT SELECT ON `{}`.t TO {{{{name}}}}", f.db)],
        max_connections: Some(1),
    });
    let cred = f.engine.mint(&p, in_minutes(5), &spec).await.expect("mint");
    let host: String =
        sqlx::query_scalar("SELECT CONVERT(Host USING utf8mb4) FROM mysql.user WHERE User = ?")
            .bind(p.as_str())
            .fetch_one(&mut f.admin)
            .await
            .expect("host");
    assert_eq!(host, "127.0.0.1");
    let first = f.login(&cred).await.expect("login");
    assert!(
        f.login(&cred).await.is_err(),
        "MAX_USER_CONNECTIONS 1 allows a second session"
    );
    drop(first);
    f.engine.revoke(&p).await.expect("revoke drops every host");
    assert!(!f.user_exists(&p).await);
    f.finish().await;
}

#[tokio::test]
async fn injection_through_the_spec_is_refused() {
    let mut f = Fixture::new().await;
    let p = lease(&f.prefix, "inj");
    let attempts = [
        MysqlRole {
            host: "%'; DROP USER root; --".to_owned(),
            ..MysqlRole::default()
        },
        MysqlRole {
            statements: vec![format!(
                "GRANT SELECT ON `{}`.* TO {{{{name}}}}; DROP USER root",
                f.db
            )],
            ..MysqlRole::default()
        },
        MysqlRole {
            statements: vec![format!(
                "GRANT SELECT ON `{}`.* TO '{{{{name}}}}'@'%'",
                f.db
            )],
            ..MysqlRole::default()
        },
        MysqlRole {
            statements: vec!["GRANT ALL ON *.* TO {{name}} # {{name}}".to_owned()],
            ..MysqlRole::default()
        },
    ];
    for spec in attempts {
        let spec = RoleSpec::Mysql(spec);
        let err = f
            .engine
            .mint(&p, in_minutes(5), &spec)
            .await
            .expect_err("refused");
        assert!(matches!(err, CredentialError::InvalidRole { .. }), "{err}");
    }
    assert!(!f.user_exists(&p).await);
    let root: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.user WHERE User = 'root'")
        .fetch_one(&mut f.admin)
        .await
        .expect("query");
    assert!(root > 0);
    f.finish().await;
}

#[tokio::test]
async fn invalid_sql_fails_at_mint_and_leaves_no_user() {
    let mut f = Fixture::new().await;
    let p = lease(&f.prefix, "bad");
    // CREATE USER succeeds, then the grant fails: the engine must drop the user again.
    let spec = RoleSpec::Mysql(MysqlRole {
        statements: vec![
            format!("GRANT SELECT ON `{}`.* TO {{{{name}}}}", f.db),
            "GRANT SELEKT ON nowhere.* TO {{name}}".to_owned(),
        ],
        ..MysqlRole::default()
    });
    let err = f
        .engine
        .mint(&p, in_minutes(5), &spec)
        .await
        .expect_err("invalid SQL");
    let text = err.to_string();
    assert!(matches!(err, CredentialError::Server { .. }), "{text}");
    assert!(
        text.contains("statements[1]") && text.contains("1064"),
        "{text}"
    );
    assert_no_secret(&err, &[]);
    assert!(!f.user_exists(&p).await, "a failed mint left {p}");

    let ok = f.role("SELECT");
    let cred = f.engine.mint(&p, in_minutes(5), &ok).await.expect("mint");
    let again = f
        .engine
        .mint(&p, in_minutes(5), &ok)
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
async fn unreachable_server_is_a_clear_error() {
    let engine = MysqlEngine::new(MysqlConfig::new(SecretString::from(
        "mysql://root:sekrit-admin-pw@127.0.0.1:1/",
    )))
    .expect("engine");
    let err = engine.check().await.expect_err("unreachable");
    let text = err.to_string();
    assert!(
        text.contains("cannot reach the mysql server at 127.0.0.1:1"),
        "{text}"
    );
    assert_no_secret(&err, &["sekrit-admin-pw"]);
    let p = lease(&unique_prefix(), "x");
    let mint = engine
        .mint(&p, in_minutes(5), &RoleSpec::Mysql(MysqlRole::default()))
        .await
        .expect_err("mint");
    assert!(mint.is_unreachable(), "{mint}");
}

#[tokio::test]
async fn logs_never_carry_the_password() {
    let logs = CapturedLogs::start();
    let f = Fixture::new().await;
    let p = lease(&f.prefix, "log");
    let cred = f
        .engine
        .mint(&p, in_minutes(5), &f.role("SELECT"))
        .await
        .expect("mint");
    f.engine.revoke(&p).await.expect("revoke");
    let text = logs.text();
    assert!(text.contains(p.as_str()), "the mint is logged: {text}");
    assert!(!text.contains(cred.password.expose_secret()), "{text}");
    assert!(
        !text.contains("IDENTIFIED BY"),
        "statements are not logged: {text}"
    );
    f.finish().await;
}
