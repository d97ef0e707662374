//! A throwaway PostgreSQL cluster that checks passwords, for the tests whose point is what the
//! server does at login: a SCRAM verifier computed by Custos is accepted, `VALID UNTIL` refuses
//! an expired role. The shared test server (`CUSTOS_TEST_PG`) trusts every login from
//! 127.0.0.1, so it checks neither; its configuration is not ours to change.
//!
//! The cluster runs from the local PostgreSQL binaries (`CUSTOS_TEST_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`), with `scram-sha-256` for every user but the `postgres` admin,
//! and is removed by a watchdog once the test process exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The admin URL of the password-checking cluster, started on first use.
///
/// # Panics
/// When the cluster cannot be started; the message says why.
pub async fn admin_url() -> String {
    static CLUSTER: OnceLock<Result<String, String>> = OnceLock::new();
    let started = tokio::task::spawn_blocking(|| CLUSTER.get_or_init(start).clone())
        .await
        .expect("cluster starter");
    started.unwrap_or_else(|why| {
        panic!(
            "the password-checking PostgreSQL cluster could not be started (install the \
             PostgreSQL server binaries or name their directory in CUSTOS_TEST_PG_BIN): {why}"
        )
    })
}

fn bindir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CUSTOS_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb".to_owned())
}

/// Runs `cmd`, as the `postgres` OS user when we are root (initdb refuses root).
fn run(as_root: bool, cmd: &mut Command) -> Result<String, String> {
    let mut full = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    } else {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args());
        c
    };
    let out = full
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {}{}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start() -> Result<String, String> {
    let bin = bindir()?;
    let as_root = run(false, Command::new("id").arg("-u"))?.trim() == "0";
    let dir = run(
        as_root,
        Command::new("mktemp")
            .arg("-d")
            .arg("/tmp/custos-cred-pg.XXXXXX"),
    )?;
    let dir = PathBuf::from(dir.trim());
    let data = dir.join("data");
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
        .map_err(|e| format!("watchdog: {e}"))?;
    run(
        as_root,
        Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]),
    )?;
    let hba = "local all all trust\n\
               host all postgres 127.0.0.1/32 trust\n\
               host all all 127.0.0.1/32 scram-sha-256\n";
    run(
        as_root,
        Command::new("sh").arg("-c").arg(format!(
            "printf '%s' '{hba}' > '{}'",
            data.join("pg_hba.conf").display()
        )),
    )?;
    let mut last = String::new();
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let opts = format!(
            "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c max_connections=100",
            dir.display()
        );
        match run(
            as_root,
            Command::new(bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
        ) {
            Ok(_) => return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres")),
            Err(e) => last = e,
        }
    }
    Err(last)
}
