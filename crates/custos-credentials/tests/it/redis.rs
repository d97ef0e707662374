//! Redis: ACL users with the role's keys and commands; revocation kills their clients and
//! deletes them.

use custos_credentials::{
    CredentialError, Engine, MintedCredential, PrincipalName, RedisConfig, RedisEngine, RedisRole,
    RoleSpec,
};
use redis::aio::MultiplexedConnection;
use secrecy::{ExposeSecret, SecretString};

use super::{assert_no_secret, in_minutes, lease, under, unique_prefix};

fn url() -> String {
    std::env::var("CUSTOS_TEST_REDIS")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_owned())
}

struct Fixture {
    engine: RedisEngine,
    admin: MultiplexedConnection,
    prefix: String,
}

impl Fixture {
    async fn new() -> Self {
        let engine = RedisEngine::new(RedisConfig::new(SecretString::from(url()))).expect("engine");
        let admin = redis::Client::open(url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {} (CUSTOS_TEST_REDIS): {e}", url()));
        let prefix = unique_prefix();
        let mut f = Self {
            engine,
            admin,
            prefix,
        };
        let key = f.key("k");
        f.cmd(redis::cmd("SET").arg(&key).arg("1")).await;
        f
    }

    fn key(&self, k: &str) -> String {
        format!("{}:{k}", self.prefix)
    }

    fn role(&self, commands: &[&str]) -> RoleSpec {
        RoleSpec::Redis(RedisRole {
            keys: vec![format!("{}:*", self.prefix)],
            commands: commands.iter().map(|c| (*c).to_owned()).collect(),
            ..RedisRole::default()
        })
    }

    async fn cmd(&mut self, cmd: &redis::Cmd) -> redis::Value {
        cmd.query_async(&mut self.admin)
            .await
            .expect("admin command")
    }

    async fn login(&self, cred: &MintedCredential) -> redis::RedisResult<MultiplexedConnection> {
        // The password needs no URL encoding.
        let url = format!(
            "redis://{}:{}@127.0.0.1:6379/",
            cred.principal,
            cred.password.expose_secret()
        );
        redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await
    }

    async fn user_exists(&mut self, p: &PrincipalName) -> bool {
        let v = self
            .cmd(redis::cmd("ACL").arg("GETUSER").arg(p.as_str()))
            .await;
        !matches!(v, redis::Value::Nil)
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
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut self.admin)
            .await
            .expect("keys");
        for k in keys {
            self.cmd(redis::cmd("DEL").arg(k)).await;
        }
        self.engine.close().await;
    }
}

#[tokio::test]
async fn readonly_reads_writer_writes_and_revoke_kills_clients_and_auth() {
    let mut f = Fixture::new().await;
    let (p_ro, p_rw) = (lease(&f.prefix, "ro"), lease(&f.prefix, "rw"));
    let cred_ro = f
        .engine
        .mint(&p_ro, in_minutes(10), &f.role(&["@read", "ping"]))
        .await
        .expect("mint ro");
    let cred_rw = f
        .engine
        .mint(&p_rw, in_minutes(10), &f.role(&["@read", "@write", "ping"]))
        .await
        .expect("mint rw");

    let mut reader = f.login(&cred_ro).await.expect("ro login");
    let v: String = redis::cmd("GET")
        .arg(f.key("k"))
        .query_async(&mut reader)
        .await
        .expect("ro get");
    assert_eq!(v, "1");
    let denied = redis::cmd("SET")
        .arg(f.key("k"))
        .arg("2")
        .query_async::<()>(&mut reader)
        .await
        .expect_err("ro set");
    assert!(
        denied.to_string().to_lowercase().contains("noperm"),
        "{denied}"
    );
    let outside = redis::cmd("GET")
        .arg("elsewhere:k")
        .query_async::<Option<String>>(&mut reader)
        .await
        .expect_err("key outside the pattern");
    assert!(
        outside.to_string().to_lowercase().contains("noperm"),
        "{outside}"
    );

    let mut writer = f.login(&cred_rw).await.expect("rw login");
    redis::cmd("SET")
        .arg(f.key("w"))
        .arg("2")
        .query_async::<()>(&mut writer)
        .await
        .expect("rw set");

    assert_eq!(
        f.engine
            .list_principals(&under(&f.prefix))
            .await
            .expect("list"),
        vec![p_ro.clone(), p_rw.clone()]
    );

    f.engine.revoke(&p_ro).await.expect("revoke");
    let after = redis::cmd("PING").query_async::<String>(&mut reader).await;
    assert!(
        after.is_err(),
        "the revoked client still answers: {after:?}"
    );
    assert!(
        f.login(&cred_ro).await.is_err(),
        "a revoked user can authenticate"
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
async fn rejected_rules_and_injection_leave_no_user() {
    let mut f = Fixture::new().await;
    let p = lease(&f.prefix, "bad");
    // Well-formed, but the server does not know the command: one atomic SETUSER, no user.
    let err = f
        .engine
        .mint(&p, in_minutes(5), &f.role(&["@read", "nosuchcommand"]))
        .await
        .expect_err("unknown command");
    assert!(matches!(err, CredentialError::Server { .. }), "{err}");
    assert!(err.to_string().contains("acl setuser"), "{err}");
    assert_no_secret(&err, &[]);
    assert!(!f.user_exists(&p).await);

    for spec in [
        RedisRole {
            keys: vec!["x on >pw +@all".to_owned()],
            ..RedisRole::default()
        },
        RedisRole {
            keys: vec!["x\r\nACL SETUSER evil on".to_owned()],
            ..RedisRole::default()
        },
        RedisRole {
            commands: vec!["@all".to_owned()],
            ..RedisRole::default()
        },
        RedisRole {
            commands: vec!["acl".to_owned()],
            ..RedisRole::default()
        },
        RedisRole {
            channels: vec![String::new()],
            ..RedisRole::default()
        },
    ] {
        let err = f
            .engine
            .mint(&p, in_minutes(5), &RoleSpec::Redis(spec))
            .await
            .expect_err("refused");
        assert!(matches!(err, CredentialError::InvalidRole { .. }), "{err}");
    }
    assert!(!f.user_exists(&p).await);

    let cred = f
        .engine
        .mint(&p, in_minutes(5), &f.role(&["ping"]))
        .await
        .expect("mint");
    let again = f
        .engine
        .mint(&p, in_minutes(5), &f.role(&["@all"]))
        .await
        .expect_err("invalid");
    assert!(matches!(again, CredentialError::InvalidRole { .. }));
    let again = f
        .engine
        .mint(&p, in_minutes(5), &f.role(&["ping"]))
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
    let engine = RedisEngine::new(RedisConfig::new(SecretString::from(
        "redis://default:sekrit-admin-pw@127.0.0.1:1/",
    )))
    .expect("engine");
    let err = engine.check().await.expect_err("unreachable");
    let text = err.to_string();
    assert!(
        text.contains("cannot reach the redis server at 127.0.0.1:1"),
        "{text}"
    );
    assert_no_secret(&err, &["sekrit-admin-pw"]);
    let p = lease(&unique_prefix(), "x");
    let mint = engine
        .mint(&p, in_minutes(5), &RoleSpec::Redis(RedisRole::default()))
        .await
        .expect_err("mint");
    assert!(mint.is_unreachable(), "{mint}");
}
