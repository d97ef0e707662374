//! `custos audit verify` end to end: a real server produces records, the test edits the SQLite
//! file underneath it (WAL mode lets a second connection write while the server runs), and
//! the CLI must fail and name the record.

use serde_json::Value;
use std::process::Output;

use super::support::{TestServer, fixture_yaml, sql};

/// A server with a few records of several kinds: resources applied, tasks started and ended.
fn server_with_records() -> TestServer {
    let s = TestServer::start();
    let (_key, public_key) = s.keygen("agent-a");
    s.apply(&fixture_yaml("agent-a", &public_key, "5s"));
    let first = s.start_task("agent-a", "fx-echo");
    s.start_task("agent-a", "fx-all");
    s.cli_json(&["task", "end", &first, "--json"]);
    s
}

/// `custos audit verify` (text) and `custos audit verify --json` (parsed).
fn verify(s: &TestServer) -> (Output, Value) {
    let text = s.cli(&["audit", "verify"]);
    let json = s.cli(&["audit", "verify", "--json"]);
    let report = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "audit verify --json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&json.stdout),
            String::from_utf8_lossy(&json.stderr)
        )
    });
    assert_eq!(
        text.status.success(),
        json.status.success(),
        "text and JSON forms agree on the exit status"
    );
    (text, report)
}

fn assert_intact(s: &TestServer) -> i64 {
    let (out, report) = verify(s);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed on an untouched log: {stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert!(stdout.contains("audit log intact"), "{stdout}");
    assert_eq!(report["ok"], true, "{report}");
    let records = report["records"].as_i64().expect("records");
    assert!(records >= 6, "expected several records: {report}");
    records
}

/// Asserts `custos audit verify` exits non-zero and names `record {seq}` in both forms.
fn assert_broken_naming(s: &TestServer, seq: i64) {
    let (out, report) = verify(s);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "verify passed a tampered log: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("audit log BROKEN"), "{stderr}");
    let named = |text: &str| {
        let needle = format!("record {seq}");
        text.match_indices(&needle)
            .any(|(i, _)| !text[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    assert!(named(&stderr), "no problem names record {seq}: {stderr}");
    assert_eq!(report["ok"], false, "{report}");
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        problems.iter().any(|p| named(p)),
        "no problem names record {seq}: {problems:?}"
    );
}

#[test]
fn an_edited_record_fails_verify_and_is_named() {
    let s = server_with_records();
    assert_intact(&s);
    let seq = sql(
        &s,
        "SELECT MAX(seq) FROM audit_log WHERE kind = 'registry_change'",
    )
    .expect("a registry_change record");
    sql(
        &s,
        &format!("UPDATE audit_log SET actor = 'mallory' WHERE seq = {seq}"),
    );
    assert_broken_naming(&s, seq);
    let (out, _) = verify(&s);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("record {seq} was altered")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_deleted_record_fails_verify_and_is_named() {
    let s = server_with_records();
    let records = assert_intact(&s);
    let seq = sql(
        &s,
        "SELECT MIN(seq) FROM audit_log WHERE kind = 'task_start'",
    )
    .expect("a task_start record");
    assert!(seq < records, "the deleted record is not the last");
    sql(&s, &format!("DELETE FROM audit_log WHERE seq = {seq}"));
    assert_broken_naming(&s, seq);
}

#[test]
fn a_cleanly_truncated_log_fails_verify_against_what_the_server_wrote() {
    let s = server_with_records();
    let records = assert_intact(&s);
    // Remove the last record and point the head row at the one before: the stored rows are
    // consistent again, and only the server's memory of its last write can tell.
    sql(
        &s,
        &format!(
            "DELETE FROM audit_log WHERE seq = {records}; \
             UPDATE audit_head SET seq = {prev}, hash = (SELECT hash FROM audit_log WHERE seq = {prev}) WHERE id = 1",
            prev = records - 1
        ),
    );
    assert_broken_naming(&s, records);
}
