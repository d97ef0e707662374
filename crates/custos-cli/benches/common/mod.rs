#![allow(dead_code, reason = "shared by benchmarks that each use part of it")]

//! The `custos` binary under benchmark: started on a fresh data directory in `--dev` mode,
//! driven through its CLI, stopped at the end. Shared by the benchmarks of this crate.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Gateway {
    pub bin: PathBuf,
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub admin_token: String,
}

impl Gateway {
    pub fn start(bin: &Path, durability: &str, env: &[(String, String)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), bin, durability, env, &[])
    }

    /// Starts on `dir` (a data directory from an earlier run is reused), with `extra`
    /// arguments to `serve`; returns once the server listens.
    pub fn start_in(
        dir: tempfile::TempDir,
        bin: &Path,
        durability: &str,
        env: &[(String, String)],
        extra: &[&str],
    ) -> Self {
        let data = dir.path().join("data");
        let mut child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--durability"])
            .arg(durability)
            .args(extra)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("RUST_LOG")
            // The registry the benchmark applies, not the default tier bundle (an older
            // baseline binary ignores the variable).
            .env("CUSTOS_EMPTY", "true")
            .env_remove("CUSTOS_TOKEN")
            .env_remove("CUSTOS_ADDR")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = dir.path().join("server.log");
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&log).unwrap();
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if !sent && let Some(rest) = line.strip_prefix("custos listening on ") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                    sent = true;
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("custos did not start");
        };
        let admin_token = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            bin: bin.to_owned(),
            child,
            dir,
            addr,
            admin_token,
        }
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = Command::new(&self.bin)
            .args(args)
            .env("CUSTOS_ADDR", &self.addr)
            .env("CUSTOS_TOKEN", &self.admin_token)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "custos {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Makes an agent key (its public half in `agent.pub` of the data directory's parent, for
    /// `public_key_file: agent.pub`), applies `resources`, starts a task of `agent` under
    /// `template` and returns its task token.
    pub fn task_token(&self, resources: &str, agent: &str, template: &str) -> String {
        let key = self.dir.path().join("agent.key");
        let k = self.cli_json(&["agent", "keygen", "--out", path(&key), "--json"]);
        std::fs::write(
            self.dir.path().join("agent.pub"),
            k["public_key"].as_str().unwrap(),
        )
        .unwrap();
        let file = self.dir.path().join("bench.yaml");
        std::fs::write(&file, resources).unwrap();
        self.cli_json(&["apply", "-f", path(&file), "--json"]);
        let task = self.cli_json(&[
            "task",
            "start",
            "--agent",
            agent,
            "--template",
            template,
            "--on-behalf-of",
            "bench@example.com",
            "--purpose",
            "benchmark",
            "--json",
        ]);
        let tok = self.cli_json(&[
            "task",
            "token",
            "--task",
            task["task_id"].as_str().unwrap(),
            "--agent-key",
            path(&key),
            "--json",
        ]);
        tok["access_token"].as_str().unwrap().to_owned()
    }

    /// `custos audit verify`: (chain ok, records).
    pub fn audit_verify(&self) -> (bool, u64) {
        let out = Command::new(&self.bin)
            .args(["audit", "verify", "--json"])
            .env("CUSTOS_ADDR", &self.addr)
            .env("CUSTOS_TOKEN", &self.admin_token)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            v["ok"].as_bool() == Some(true),
            v["records"].as_u64().unwrap_or(0),
        )
    }

    /// Stops the server and keeps its data directory.
    pub fn stop_keeping_data(mut self) -> tempfile::TempDir {
        self.terminate();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
