//! The README quickstart, run as a user would: `examples/quickstart.sh` against a fresh data
//! directory, with the real filesystem MCP server from npm.

use std::process::Command;

use super::support::{custos_bin, repo_root};

#[test]
fn quickstart_script_runs_end_to_end() {
    let work = tempfile::tempdir().expect("tempdir");
    let out = Command::new("bash")
        .arg(repo_root().join("examples/quickstart.sh"))
        .env("CUSTOS_BIN", custos_bin())
        .env("CUSTOS_QUICKSTART_DIR", work.path())
        .env_remove("CUSTOS_TOKEN")
        .env_remove("CUSTOS_ADDR")
        .output()
        .expect("run quickstart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(work.path().join("server.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "quickstart failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{log}"
    );
    assert!(stdout.contains("quickstart OK"), "{stdout}");
    // What a user sees: the allowed call returned the file, the refusals name their reasons,
    // and the trace shows the chain from initiator to each call.
    assert!(stdout.contains("Tag the release"), "{stdout}");
    assert!(
        stdout.contains("is not allowed by template `docs-review`"),
        "{stdout}"
    );
    assert!(stdout.contains("Tier 4: always refused"), "{stdout}");
    assert!(stdout.contains("initiator  alice@example.com"), "{stdout}");
    // The decision, written before the call, then its result, under one call id.
    let decision = stdout
        .lines()
        .find(|l| l.contains("tool_call     files__read_text_file tier 1 -> allow"))
        .unwrap_or_else(|| panic!("no decision line: {stdout}"));
    let call_id = decision
        .split_whitespace()
        .find(|w| w.starts_with("call_"))
        .unwrap_or_else(|| panic!("no call id: {decision}"));
    assert!(
        stdout.lines().any(
            |l| l.contains("tool_result   files__read_text_file tier 1 -> ok")
                && l.contains(call_id)
        ),
        "{stdout}"
    );
    assert!(stdout.contains("audit log intact"), "{stdout}");
}
