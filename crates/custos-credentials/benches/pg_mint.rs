//! PostgreSQL credentials minted per second: through [`PostgresEngine::mint`] with 4
//! concurrent tasks, against a plain loop sending the same `CREATE ROLE .. LOGIN PASSWORD
//! '<verifier>' VALID UNTIL .. IN ROLE ..` statement over 4 connections, side by side in one
//! run (rounds alternate; medians reported). A third loop sends the same statements through a
//! sqlx pool of 4, which separates the pool's cost from the engine's own.
//!
//! `cargo bench -p custos-credentials --bench pg_mint` (or `--profile dev` to skip a release
//! build). The server is `CUSTOS_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! `PG_MINT_N` mints per round (default 400), `PG_MINT_ROUNDS` rounds per side (default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_credentials::{
    Engine, PostgresConfig, PostgresEngine, PostgresRole, PrincipalName, PrincipalPrefix, RoleSpec,
};
use secrecy::SecretString;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

const TASKS: usize = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tag() -> String {
    let mut b = [0_u8; 4];
    aws_lc_rs::rand::fill(&mut b).expect("rng");
    format!("{:08x}", u32::from_le_bytes(b))
}

async fn sql(conn: &mut PgConnection, text: String) {
    sqlx::raw_sql(AssertSqlSafe(text))
        .execute(conn)
        .await
        .expect("statement");
}

async fn engine_round(
    engine: &Arc<PostgresEngine>,
    spec: &Arc<RoleSpec>,
    run: &str,
    n: usize,
) -> Duration {
    let expires = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (engine, spec, run) = (engine.clone(), spec.clone(), run.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(TASKS) {
                let p = PrincipalName::for_lease(&format!("{run}{i}")).expect("lease id");
                engine.mint(&p, expires, &spec).await.expect("mint");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    start.elapsed()
}

async fn plain_round(
    conns: &mut Vec<PgConnection>,
    group: &str,
    verifier: &str,
    run: &str,
    n: usize,
) -> Duration {
    let until = (time::OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, mut conn) in std::mem::take(conns).into_iter().enumerate() {
        let (until, run, group, verifier) = (
            until.clone(),
            run.to_owned(),
            group.to_owned(),
            verifier.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(TASKS) {
                sql(
                    &mut conn,
                    format!(
                        "CREATE ROLE \"plain_{run}{i}\" LOGIN PASSWORD '{verifier}' \
                         VALID UNTIL '{until}' IN ROLE \"{group}\""
                    ),
                )
                .await;
            }
            conn
        }));
    }
    for task in tasks {
        conns.push(task.await.expect("task"));
    }
    start.elapsed()
}

async fn pool_round(
    pool: &sqlx::PgPool,
    group: &str,
    verifier: &str,
    run: &str,
    n: usize,
) -> Duration {
    let until = (time::OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (until, run, group, verifier, pool) = (
            until.clone(),
            run.to_owned(),
            group.to_owned(),
            verifier.to_owned(),
            pool.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(TASKS) {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE ROLE \"pool_{run}{i}\" LOGIN PASSWORD '{verifier}' \
                         VALID UNTIL '{until}' IN ROLE \"{group}\""
                )))
                .execute(&pool)
                .await
                .expect("x");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    start.elapsed()
}

async fn drop_roles(conn: &mut PgConnection, pattern: &str) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1)",
    )
    .bind(pattern)
    .fetch_all(&mut *conn)
    .await
    .expect("list");
    for chunk in names.chunks(200) {
        let list: Vec<String> = chunk.iter().map(|n| format!("\"{n}\"")).collect();
        sql(conn, format!("DROP ROLE {}", list.join(", "))).await;
    }
}

fn one_iteration_verifier(password: &[u8]) -> String {
    use aws_lc_rs::{digest, hmac, pbkdf2};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let salt = [7_u8; 16];
    let mut salted = [0_u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::MIN,
        &salt,
        password,
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client = hmac::sign(&key, b"Client Key");
    let stored = digest::digest(&digest::SHA256, client.as_ref());
    let server = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256$1:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored.as_ref()),
        STANDARD.encode(server.as_ref())
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("CUSTOS_TEST_PG")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let n = env_usize("PG_MINT_N", 400);
    let rounds = env_usize("PG_MINT_ROUNDS", 3);
    let tag = tag();
    let group = format!("bench_grp_{tag}");
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    sql(&mut admin, format!("CREATE ROLE \"{group}\" NOLOGIN")).await;

    let mut config = PostgresConfig::new(SecretString::from(url.clone()));
    config.max_connections = TASKS as u32;
    let engine = Arc::new(PostgresEngine::new(config).expect("engine"));
    engine.check().await.expect("check");
    let spec = Arc::new(RoleSpec::Postgres(PostgresRole {
        groups: vec![group.clone()],
        ..PostgresRole::default()
    }));
    let mut conns = Vec::new();
    for _ in 0..TASKS {
        conns.push(PgConnection::connect(&url).await.expect("connect"));
    }
    // A verifier like the engine's (one PBKDF2 iteration: PostgreSQL runs the iterations
    // once at CREATE ROLE, to refuse an empty password); computing it is not timed.
    let verifier = one_iteration_verifier(b"bench-password-not-used-to-log-in");

    // Warm both paths (connections, caches) before timing.
    engine_round(&engine, &spec, &format!("b{tag}w"), 40).await;
    plain_round(&mut conns, &group, &verifier, &format!("{tag}w"), 40).await;

    // The same loop through a sqlx pool like the engine's: separates the pool's cost from
    // the engine's.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(TASKS as u32)
        .test_before_acquire(false)
        .connect(&url)
        .await
        .expect("pool");
    let mut pooled = Vec::new();
    let (mut through_engine, mut plain) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Rotate which side goes first, so none always runs right after the cleanup.
        for k in 0..3 {
            match (r + k) % 3 {
                0 => {
                    let d = engine_round(&engine, &spec, &format!("b{tag}r{r}x"), n).await;
                    through_engine.push(n as f64 / d.as_secs_f64());
                }
                1 => {
                    let d =
                        plain_round(&mut conns, &group, &verifier, &format!("{tag}r{r}x"), n).await;
                    plain.push(n as f64 / d.as_secs_f64());
                }
                _ => {
                    let d = pool_round(&pool, &group, &verifier, &format!("{tag}r{r}x"), n).await;
                    pooled.push(n as f64 / d.as_secs_f64());
                }
            }
        }
        // Keep pg_authid the same size for every side of the next round.
        drop_roles(&mut admin, &format!("custos_b{tag}")).await;
        drop_roles(&mut admin, &format!("plain_{tag}")).await;
        drop_roles(&mut admin, &format!("pool_{tag}")).await;
    }
    let leftover = engine
        .list_principals(
            &PrincipalPrefix::lease_ids_starting_with(&format!("b{tag}")).expect("prefix"),
        )
        .await
        .expect("list");
    assert!(leftover.is_empty());
    sql(&mut admin, format!("DROP ROLE \"{group}\"")).await;
    engine.close().await;

    let (e, p) = (median(through_engine.clone()), median(plain.clone()));
    println!(
        "pg_mint: {n} mints per round, {rounds} rounds per side, {TASKS} concurrent tasks/connections"
    );
    println!(
        "  through the engine: median {e:.0}/s  (rounds: {:?})",
        through_engine.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    println!(
        "  plain loop:         median {p:.0}/s  (rounds: {:?})",
        plain.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    let pl = median(pooled.clone());
    println!(
        "  plain loop, pooled: median {pl:.0}/s  (rounds: {:?})",
        pooled.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    let per_round: Vec<f64> = through_engine
        .iter()
        .zip(&plain)
        .map(|(e, p)| e / p)
        .collect();
    println!(
        "  engine/plain: {:.2} (of the medians), {:.2} (median of per-round ratios {:?})",
        e / p,
        median(per_round.clone()),
        per_round
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
    );
    println!("  engine/pooled plain: {:.2}", e / pl);
}
