//! Just-in-time PostgreSQL credentials through Custos: mints per second through the
//! Vault-compatible API against the same `CREATE ROLE` statements from a plain loop, expiry to
//! revocation with 1,000 leases expiring in the same second, and restart to ready with 100,000
//! live leases in the store.
//!
//! ```text
//! cargo bench -p custos-cli --bench leases
//! ```
//!
//! Against the PostgreSQL server in `CUSTOS_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! the release `custos` runs in `--dev` mode on a fresh data directory (embedded SQLite).
//! Knobs: `BENCH_CONC` (default `4,16`), `BENCH_SECS` per run (default 3), `BENCH_ROUNDS`
//! (default 3), `BENCH_EXPIRING` (default 1000), `BENCH_STORED` (default 100000).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    reason = "a benchmark binary: panics are failures, output is the point"
)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Gateway;
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

const ENV: &str = "BENCH_PG_ADMIN_URL";

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pg_url() -> String {
    std::env::var("CUSTOS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn sql(conn: &mut PgConnection, q: String) {
    sqlx::raw_sql(AssertSqlSafe(q))
        .execute(&mut *conn)
        .await
        .unwrap();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 0.5)
}

/// Applies the roles, a template and an agent; starts a task; its token.
fn provision(g: &Gateway, group: &str) -> String {
    let yaml = format!(
        "kind: CredentialRole\nname: bench-pg\nengine: postgres\ndefault_ttl: 30m\nmax_ttl: 1h\n\
         connection_env: {ENV}\nrole:\n  groups: [{group}]\n\
         ---\nkind: CredentialRole\nname: bench-short\nengine: postgres\ndefault_ttl: 3s\nmax_ttl: 3s\n\
         connection_env: {ENV}\nrole:\n  groups: [{group}]\n  grace: 1s\n\
         ---\nkind: Template\nname: bench\nttl: 1h\ntools: []\ncredentials: [bench-pg, bench-short]\n\
         ---\nkind: Agent\nname: bench-agent\nowner: bench@example.com\narchetype: automation\n\
         templates: [bench]\npublic_key_file: agent.pub\n"
    );
    g.task_token(&yaml, "bench-agent", "bench")
}

/// Mints `role` once; the credential's username.
async fn mint(client: &reqwest::Client, addr: &str, token: &str, role: &str) -> String {
    let r = client
        .get(format!("{addr}/v1/database/creds/{role}"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "mint");
    let v: Value = r.json().await.unwrap();
    v["data"]["username"].as_str().unwrap().to_owned()
}

/// Mints through the API from `conc` clients for `secs`: mints per second.
async fn api_run(addr: &str, token: &str, conc: usize, secs: f64) -> f64 {
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, addr, token, stop, done) = (
            client.clone(),
            addr.to_owned(),
            token.to_owned(),
            stop.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                mint(&client, &addr, &token, "bench-pg").await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The same `CREATE ROLE` statement the engine sends (the verifier Custos computed for one of
/// its own mints), from `conc` plain connections for `secs`: statements per second.
async fn plain_run(
    group: &str,
    verifier: &str,
    run: usize,
    conc: usize,
    secs: f64,
) -> (f64, usize) {
    let until = (time::OffsetDateTime::now_utc() + time::Duration::minutes(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..conc {
        conns.push(PgConnection::connect(&pg_url()).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, mut conn) in conns.into_iter().enumerate() {
        let pid = std::process::id();
        let (stop, done, until, group, verifier) = (
            stop.clone(),
            done.clone(),
            until.clone(),
            group.to_owned(),
            verifier.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                sql(
                    &mut conn,
                    format!(
                        "CREATE ROLE \"bench_plain_{pid}_{run}_{t}_{i}\" LOGIN PASSWORD '{verifier}' \
                         VALID UNTIL '{until}' IN ROLE \"{group}\""
                    ),
                )
                .await;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    (n as f64 / start.elapsed().as_secs_f64(), n as usize)
}

/// Drops every role that is a member of `group` (plain-loop roles and any left by Custos), a
/// few hundred per statement (one transaction each, within the server's lock table).
async fn drop_members(admin: &mut PgConnection, group: &str) {
    loop {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT m.rolname::text FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member \
             JOIN pg_roles g ON g.oid = am.roleid WHERE g.rolname = $1 LIMIT 200",
        )
        .bind(group)
        .fetch_all(&mut *admin)
        .await
        .unwrap();
        if names.is_empty() {
            return;
        }
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        sql(admin, format!("DROP ROLE {}", list.join(", "))).await;
    }
}

async fn members(admin: &mut PgConnection, group: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT m.rolname::text FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member \
         JOIN pg_roles g ON g.oid = am.roleid WHERE g.rolname = $1 AND m.rolname LIKE 'custos%'",
    )
    .bind(group)
    .fetch_all(&mut *admin)
    .await
    .unwrap()
}

fn revoke_prefix(g: &Gateway, prefix: &str) {
    let r = reqwest::blocking::Client::new()
        .put(format!("{}/v1/sys/leases/revoke-prefix/{prefix}", g.addr))
        .header("X-Vault-Token", &g.admin_token)
        .timeout(Duration::from_secs(600))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204, "revoke-prefix");
}

fn main() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_custos"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conc: Vec<usize> = std::env::var("BENCH_CONC")
        .unwrap_or_else(|_| "4,16".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let secs: f64 = env_or("BENCH_SECS", 3.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let expiring: usize = env_or("BENCH_EXPIRING", 1000);
    let stored: usize = env_or("BENCH_STORED", 100_000);
    let group = format!("bench_leases_{}", std::process::id());
    let mut admin = rt.block_on(PgConnection::connect(&pg_url())).unwrap();
    rt.block_on(sql(&mut admin, format!("CREATE ROLE {group} NOLOGIN")));

    let env = vec![(ENV.to_owned(), pg_url())];
    let g = Gateway::start(&bin, "process", &env);
    let token = provision(&g, &group);
    let client = reqwest::Client::new();

    // A verifier exactly as Custos computes it, for the plain loop's statements.
    let sample = rt.block_on(mint(&client, &g.addr, &token, "bench-pg"));
    let verifier: String = rt
        .block_on(
            sqlx::query_scalar::<_, String>("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                .bind(&sample)
                .fetch_one(&mut admin),
        )
        .unwrap();

    println!(
        "== mints per second: through Custos (Vault API: lease intent, CREATE ROLE, lease, audit) vs a plain loop of the same CREATE ROLE"
    );
    println!("| C | round | Custos API /s | plain loop /s | ratio |");
    println!("|---|---|---|---|---|");
    let mut summary = Vec::new();
    for &c in &conc {
        let mut ratios = Vec::new();
        let (mut apis, mut plains) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            // The order alternates round by round; both sides start from the same pg_authid size.
            let (api, plain) = if r % 2 == 0 {
                let api = rt.block_on(api_run(&g.addr, &token, c, secs));
                revoke_prefix(&g, "database/creds/bench-pg");
                let (plain, _) = rt.block_on(plain_run(&group, &verifier, r, c, secs));
                rt.block_on(drop_members(&mut admin, &group));
                (api, plain)
            } else {
                let (plain, _) = rt.block_on(plain_run(&group, &verifier, r, c, secs));
                rt.block_on(drop_members(&mut admin, &group));
                let api = rt.block_on(api_run(&g.addr, &token, c, secs));
                revoke_prefix(&g, "database/creds/bench-pg");
                (api, plain)
            };
            println!("| {c} | {r} | {api:.0} | {plain:.0} | {:.2} |", api / plain);
            ratios.push(api / plain);
            apis.push(api);
            plains.push(plain);
        }
        summary.push((
            c,
            median(&mut apis),
            median(&mut plains),
            median(&mut ratios),
        ));
    }
    for (c, api, plain, ratio) in &summary {
        println!("C = {c}: median {api:.0} vs {plain:.0} mints/s, median ratio {ratio:.2}");
    }

    // Expiry: `expiring` leases of a 3 s role minted as fast as 16 clients can, so they expire
    // within about a second of each other; each principal's removal is timed against its
    // lease's expiry.
    println!("\n== expiry to revocation, {expiring} leases expiring together");
    let started = Instant::now();
    let minted: Vec<(String, Instant)> = rt.block_on(async {
        let mut tasks = Vec::new();
        let per = expiring.div_ceil(16);
        for _ in 0..16 {
            let (client, addr, token) = (client.clone(), g.addr.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..per {
                    let sent = Instant::now();
                    let user = mint(&client, &addr, &token, "bench-short").await;
                    // The lease expires 3 s after it was written, which is after `sent`.
                    out.push((user, sent + Duration::from_secs(3)));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.truncate(expiring);
        all
    });
    let spread = started.elapsed();
    let expiry: HashMap<String, Instant> = minted.into_iter().collect();
    let mut gone: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while gone.len() < expiry.len() && Instant::now() < deadline {
        let present: std::collections::HashSet<String> = rt
            .block_on(members(&mut admin, &group))
            .into_iter()
            .collect();
        let now = Instant::now();
        for u in expiry.keys() {
            if !present.contains(u) {
                gone.entry(u.clone()).or_insert(now);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut lag: Vec<f64> = expiry
        .iter()
        .filter_map(|(u, e)| {
            gone.get(u)
                .map(|g| g.saturating_duration_since(*e).as_secs_f64() * 1e3)
        })
        .collect();
    lag.sort_by(f64::total_cmp);
    println!(
        "minted in {:.2} s; revoked {} of {}; expiry to revocation (upper bound: the lease expired no earlier than the request was sent; polled every 20 ms): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        spread.as_secs_f64(),
        gone.len(),
        expiry.len(),
        percentile(&lag, 0.5),
        percentile(&lag, 0.99),
        lag.last().copied().unwrap_or(f64::NAN)
    );

    // Restart with `stored` live leases in the store (their principals do not exist on the
    // server, as after a restore; the reconciler has nothing to remove).
    println!("\n== restart to ready with {stored} live leases in the store");
    let dir = g.stop_keeping_data();
    rt.block_on(async {
        let db = dir.path().join("data").join("custos.db");
        let mut lite = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let scope: String = sqlx::query_scalar("SELECT scope FROM lease_scope")
            .fetch_one(&mut lite)
            .await
            .unwrap();
        let (task, agent, agent_uid): (String, String, String) =
            sqlx::query_as("SELECT task, agent, agent_uid FROM leases LIMIT 1")
                .fetch_one(&mut lite)
                .await
                .unwrap();
        let far = (time::OffsetDateTime::now_utc().unix_timestamp() + 3000) * 1000;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {stored}) \
             INSERT INTO leases (id, role, engine, principal, task, agent, agent_uid, initiator, \
             created_at, expires_at, state) \
             SELECT 'lease_{scope}' || printf('zz%020d', i), 'bench-pg', 'postgres', \
             'custos_{scope}' || printf('zz%020d', i), '{task}', '{agent}', '{agent_uid}', \
             'bench@example.com', {far} - 60000, {far}, 'active' FROM n"
        )))
        .execute(&mut lite)
        .await
        .unwrap();
    });
    let mut dir = dir;
    for extra in [&[][..], &["--no-revoke-on-start"][..]] {
        let t0 = Instant::now();
        let g = Gateway::start_in(dir, &bin, "process", &env, extra);
        let ready = t0.elapsed();
        let health = reqwest::blocking::get(format!("{}/healthz", g.addr))
            .unwrap()
            .status();
        println!(
            "serve {}: ready (listening, /healthz {health}) in {:.2} s",
            if extra.is_empty() {
                "(reconciler on)"
            } else {
                "--no-revoke-on-start"
            },
            ready.as_secs_f64()
        );
        dir = g.stop_keeping_data();
    }
    rt.block_on(async {
        drop_members(&mut admin, &group).await;
        sql(&mut admin, format!("DROP ROLE IF EXISTS {group}")).await;
    });
}
