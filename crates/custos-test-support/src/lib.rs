//! Databases for tests: a fresh SQLite file or a fresh PostgreSQL database per test, and
//! [`both_backends!`] to run one test body against each.
//!
//! PostgreSQL is real, never a mock: the server named by `CUSTOS_TEST_PG`
//! (`postgres://USER@HOST:PORT/DB`, a user allowed to `CREATE DATABASE`), else a throwaway
//! cluster started once per test process from the local PostgreSQL binaries. When neither
//! can be had, the test fails and says how to fix it: it is never skipped.
//!
//! Each PostgreSQL test gets its own database, `custos_test_<pid>_<n>_<stamp>`. It is dropped
//! when the test passes and kept for inspection when it fails (the name is printed); a
//! throwaway cluster, and everything in it, is removed once the test process exits.

pub mod app;
pub mod tamper;

pub use app::TestApp;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use custos_store::{Durability, Store};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection as _};

pub use tempfile::TempDir;

/// The variable naming a PostgreSQL server for tests.
pub const PG_ENV: &str = "CUSTOS_TEST_PG";
/// The variable naming the directory of the PostgreSQL binaries for a throwaway cluster.
pub const PG_BIN_ENV: &str = "CUSTOS_TEST_PG_BIN";

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// Keeps a test's database alive; dropping it removes the database.
#[derive(Debug)]
pub enum Guard {
    /// The SQLite file's directory.
    Sqlite(TempDir),
    /// The PostgreSQL database.
    Postgres(TestDb),
}

impl Guard {
    /// The URL the test's store was opened with (`sqlite:…` or `postgres://…`).
    pub fn url(&self) -> String {
        match self {
            Guard::Sqlite(dir) => sqlite_url(dir.path()),
            Guard::Postgres(db) => db.url().to_owned(),
        }
    }
}

/// A PostgreSQL database made for one test. Dropped with `DROP DATABASE … WITH (FORCE)` when
/// the test passes; kept (and its name printed) when the test panicked.
#[derive(Debug)]
pub struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL connecting to this database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "custos-test-support: kept PostgreSQL database `{}` for inspection: {}",
                self.name,
                redact(&self.url)
            );
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside or outside a runtime, so the async drop gets a thread and a
        // runtime of its own.
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                // The name is ours: `custos_test_` and digits.
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!(
                "custos-test-support: could not drop test database `{}`: {e}",
                self.name
            ),
            Err(_) => eprintln!(
                "custos-test-support: dropping test database `{}` panicked",
                self.name
            ),
        }
    }
}

/// The URL of the test PostgreSQL server: `CUSTOS_TEST_PG` when set, else a throwaway
/// cluster started (once per process) from the local PostgreSQL binaries.
///
/// # Panics
/// When `CUSTOS_TEST_PG` is unset and no cluster can be started; the message says how to fix it.
pub async fn pg_url() -> String {
    if let Some(url) = std::env::var(PG_ENV).ok().filter(|u| !u.trim().is_empty()) {
        return url;
    }
    static CLUSTER: OnceLock<Result<String, String>> = OnceLock::new();
    // Starting a cluster blocks for seconds: keep it off the async worker.
    let started = tokio::task::spawn_blocking(|| CLUSTER.get_or_init(start_cluster).clone())
        .await
        .unwrap_or_else(|e| Err(format!("the cluster starter panicked: {e}")));
    match started {
        Ok(url) => url,
        Err(why) => panic!(
            "PostgreSQL tests need a PostgreSQL server and none could be had.\n\
             Fix it in one of two ways:\n  \
             - set {PG_ENV}=postgres://USER@HOST:PORT/DB naming a running server (USER must be \
               allowed to CREATE DATABASE), e.g. {PG_ENV}=postgres://postgres@127.0.0.1:5432/postgres;\n  \
             - or install the PostgreSQL server binaries (Debian: `apt-get install postgresql`; \
               or name their directory in {PG_BIN_ENV}) so a throwaway cluster can be started \
               (as root it runs as the `postgres` OS user, which must exist).\n\
             Starting a throwaway cluster failed: {why}"
        ),
    }
}

/// A store over a new, empty, migrated PostgreSQL database of its own.
///
/// # Panics
/// When no PostgreSQL server can be had (see [`pg_url`]) or it refuses.
pub async fn fresh_pg_store() -> (Store, TestDb) {
    let db = fresh_pg_db().await;
    let store = Store::connect(db.url(), Durability::Process)
        .await
        .unwrap_or_else(|e| panic!("open the store on {}: {e}", redact(db.url())));
    (store, db)
}

/// A new, empty PostgreSQL database (no migrations run), for tests that open it themselves.
///
/// # Panics
/// When no PostgreSQL server can be had (see [`pg_url`]) or it refuses.
pub async fn fresh_pg_db() -> TestDb {
    static N: AtomicU64 = AtomicU64::new(0);
    let admin_url = pg_url().await;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() % 1_000_000_000)
        .unwrap_or_default();
    let name = format!(
        "custos_test_{}_{}_{stamp}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the test PostgreSQL server {} ({PG_ENV}): {e}",
            redact(&admin_url)
        )
    });
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {}: {e}", redact(&admin_url)));
    let _ = conn.close().await;
    let url = with_database(&admin_url, &name);
    // Fail here, clearly, if the rewritten URL does not parse.
    if let Err(e) = PgConnectOptions::from_str(&url) {
        panic!("bad test database URL {}: {e}", redact(&url));
    }
    TestDb {
        admin_url,
        name,
        url,
    }
}

/// A store over a new SQLite file in a temporary directory (removed when the `TempDir` drops).
///
/// # Panics
/// When the directory or the database cannot be made.
pub async fn fresh_sqlite_store() -> (Store, TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("custos-test-")
        .tempdir()
        .expect("temporary directory");
    let store = Store::connect(&sqlite_url(dir.path()), Durability::Process)
        .await
        .expect("open the SQLite store");
    (store, dir)
}

/// A store of `backend` over a fresh database.
///
/// # Panics
/// As [`fresh_sqlite_store`] and [`fresh_pg_store`].
pub async fn fresh_store(backend: Backend) -> (Store, Guard) {
    match backend {
        Backend::Sqlite => {
            let (s, d) = fresh_sqlite_store().await;
            (s, Guard::Sqlite(d))
        }
        Backend::Postgres => {
            let (s, d) = fresh_pg_store().await;
            (s, Guard::Postgres(d))
        }
    }
}

/// Runs `test` on a store over a fresh database of `backend`, then closes the store and drops
/// the database (kept when the test panics).
pub async fn run_on<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let (store, guard) = fresh_store(backend).await;
    test(store.clone()).await;
    store.close().await;
    drop(guard);
}

/// For each `async fn NAME(store: Store)` listed, generates a module `NAME` with two tests,
/// `sqlite` and `postgres`, each running the body on a fresh database of that backend.
/// The calling crate needs `tokio` (with `macros`) among its dependencies.
#[macro_export]
macro_rules! both_backends {
    ($($test:ident),+ $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    $crate::run_on($crate::Backend::Sqlite, super::$test).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    $crate::run_on($crate::Backend::Postgres, super::$test).await;
                }
            }
        )+
    };
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("custos.db").display())
}

/// `url` with its database (the path) replaced by `db`, query kept.
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Starts a throwaway cluster; the URL of its `postgres` database, or why it failed.
fn start_cluster() -> Result<String, String> {
    let bin = pg_bindir()?;
    let as_root = is_root();
    let has_postgres_user = Command::new("id")
        .arg("postgres")
        .output()
        .is_ok_and(|o| o.status.success());
    if as_root && !has_postgres_user {
        return Err("running as root and there is no `postgres` OS user to run initdb as".into());
    }
    let tmp = std::env::temp_dir();
    let dir = run(
        as_root,
        Command::new("mktemp")
            .arg("-d")
            .arg(tmp.join("custos-test-pg.XXXXXX")),
    )?;
    let dir = PathBuf::from(dir.trim());
    let data = dir.join("data");
    // The watchdog removes the cluster once this process is gone, however it ends: tests
    // have no hook that runs at process exit. It polls /proc because, as another user, it
    // may not signal this process.
    let watchdog = format!(
        "trap '' INT TERM HUP; while [ -d /proc/{pid} ]; do sleep 1; done; \
         '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut cmd = Command::new("setsid");
    if as_root {
        cmd.args(["runuser", "-u", "postgres", "--"]);
    }
    cmd.args(["sh", "-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start the cleanup watchdog (setsid sh): {e}"))?;

    run(
        as_root,
        Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C"]),
    )?;
    let mut last_err = String::new();
    // A free port can be taken between finding it and binding it: try a few.
    for _ in 0..5 {
        let port = free_port()?;
        let opts = format!(
            "-p {port} -k '{dir}' -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            dir = dir.display()
        );
        let started = run(
            as_root,
            Command::new(bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
        );
        match started {
            Ok(_) => {
                eprintln!(
                    "custos-test-support: {PG_ENV} unset; started a throwaway PostgreSQL cluster \
                     in {} on port {port} (removed when the tests exit)",
                    dir.display()
                );
                return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
            }
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                last_err = format!("{e}\n{log}");
            }
        }
    }
    Err(last_err)
}

/// The directory of `initdb` and `pg_ctl`.
fn pg_bindir() -> Result<PathBuf, String> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(d) = std::env::var(PG_BIN_ENV) {
        let d = PathBuf::from(d);
        return if has(&d) {
            Ok(d)
        } else {
            Err(format!(
                "{PG_BIN_ENV}={} has no initdb and pg_ctl",
                d.display()
            ))
        };
    }
    // Debian installs each major version side by side: take the newest.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&d) {
            return Ok(d);
        }
    }
    for d in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/local/pgsql/bin")])
    {
        if has(&d) {
            return Ok(d);
        }
    }
    Err(
        "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql/*/bin, \
         pg_config --bindir, PATH or /usr/local/pgsql/bin"
            .into(),
    )
}

/// initdb refuses to run as root.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata("/proc/self") {
        Ok(m) => m.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
    }
}

/// Runs `cmd` (as the `postgres` OS user when `as_root`); its stdout, or what went wrong.
fn run(as_root: bool, cmd: &mut Command) -> Result<String, String> {
    let mut full = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd.get_program());
        c
    } else {
        Command::new(cmd.get_program())
    };
    full.args(cmd.get_args())
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    let shown = format!("{full:?}");
    let out = full
        .output()
        .map_err(|e| format!("could not run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("find a port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "t1"),
            "postgresql://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "t1"), "postgres://h:1/t1");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
