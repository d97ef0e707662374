//! Lease failure paths with a manual clock: a mint against an unreachable server fails cleanly
//! (a failed lease, a clear error, an audit record), and a revocation that keeps failing is
//! retried with backoff, then marked failed, reported, and retried by an operator's revoke.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use custos_broker::CredentialEnv;
use custos_test_support::TestApp;
use secrecy::SecretString;
use serde_json::Value;

const GOOD: &str = "CUSTOS_TEST_GOOD_PG";
const BAD: &str = "CUSTOS_TEST_BAD_PG";

fn registry(env: &str, public_key: &str) -> String {
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "kind: CredentialRole\nname: pg\nengine: postgres\ndefault_ttl: 1m\nmax_ttl: 1m\nconnection_env: {env}\n---\n\
         kind: Template\nname: db\nttl: 30m\ntools: []\ncredentials: [pg]\n---\n\
         kind: Agent\nname: agent-a\nowner: test@example.com\narchetype: automation\n\
         templates: [db]\npublic_key: |\n{indented}"
    )
}

async fn app(good_url: String) -> TestApp {
    TestApp::start_with(move |c| {
        c.credential_env = CredentialEnv::from_fn(move |name| match name {
            GOOD => Some(SecretString::from(good_url.clone())),
            // Nothing listens on port 1.
            BAD => Some(SecretString::from(
                "postgres://postgres:hunter2@127.0.0.1:1/nowhere".to_owned(),
            )),
            _ => None,
        });
        // The reconciler is not what these tests are about.
        c.revoke_on_start = false;
    })
    .await
}

async fn leases(app: &TestApp, query: &str) -> Vec<Value> {
    let r = app
        .api(
            Method::GET,
            &format!("/v1/leases{query}"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body.as_array().cloned().expect("a list")
}

#[tokio::test]
async fn a_mint_against_an_unreachable_server_fails_cleanly() {
    let app = app(String::new()).await;
    let (key, public) = TestApp::agent_key();
    app.apply(&registry(BAD, &public)).await;
    let task = app.start_task("agent-a", "db", None).await;
    let token = app.task_token(&task, "agent-a", &key).await;
    let r = app
        .api(Method::GET, "/v1/database/creds/pg", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    let message = r.body["errors"][0]
        .as_str()
        .expect("a Vault error")
        .to_owned();
    assert!(
        message.contains("cannot reach the postgres server at 127.0.0.1:1"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    let failed = leases(&app, "?failed=true").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["task"], task.as_str());
    assert!(
        failed[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1:1"))
    );
    let trace = app
        .api(
            Method::GET,
            &format!("/v1/audit/trace/{task}"),
            Some(&app.admin_token),
            None,
        )
        .await;
    let text = trace.body.to_string();
    assert!(
        text.contains("lease_refused") && text.contains("credential_failed"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
}

#[tokio::test]
async fn a_revocation_that_keeps_failing_is_retried_then_reported() {
    let db = custos_test_support::fresh_pg_db().await;
    let app = app(db.url().to_owned()).await;
    let (key, public) = TestApp::agent_key();
    app.apply(&registry(GOOD, &public)).await;
    let task = app.start_task("agent-a", "db", None).await;
    let token = app.task_token(&task, "agent-a", &key).await;
    let r = app
        .api(Method::GET, "/v1/database/creds/pg", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id = r.body["lease_id"]
        .as_str()
        .expect("id")
        .rsplit('/')
        .next()
        .expect("id")
        .to_owned();
    // The role's server becomes unreachable (its admin URL now names nothing).
    app.apply(&registry(BAD, &public)).await;
    let broker = &app.state().broker;
    let mut attempts = Vec::new();
    for _ in 0..12 {
        app.advance(Duration::from_secs(31));
        broker.revoke_expired_leases().await.expect("store answers");
        let l = leases(&app, &format!("?task={task}")).await.remove(0);
        attempts.push(l["attempts"].as_i64().unwrap_or(-1));
        if l["state"] == "failed" {
            break;
        }
    }
    assert_eq!(
        attempts.last(),
        Some(&8),
        "gives up after 8 attempts: {attempts:?}"
    );
    assert!(attempts.windows(2).all(|w| w[1] >= w[0]), "{attempts:?}");
    let failed = leases(&app, "?failed=true").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], id.as_str());
    let trace = app
        .api(
            Method::GET,
            &format!("/v1/audit/trace/{task}"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert!(trace.body.to_string().contains("lease_revoke_failed"));
    // The server is back: an operator's revoke retries it and succeeds.
    app.apply(&registry(GOOD, &public)).await;
    let r = app
        .api(
            Method::POST,
            &format!("/v1/leases/{id}/revoke"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "revoked");
    let again = app
        .api(
            Method::POST,
            &format!("/v1/leases/{id}/revoke"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn suspending_the_agent_revokes_its_leases() {
    let db = custos_test_support::fresh_pg_db().await;
    let app = app(db.url().to_owned()).await;
    let (key, public) = TestApp::agent_key();
    app.apply(&registry(GOOD, &public)).await;
    let task = app.start_task("agent-a", "db", None).await;
    let token = app.task_token(&task, "agent-a", &key).await;
    let r = app
        .api(Method::GET, "/v1/database/creds/pg", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let user = r.body["data"]["username"]
        .as_str()
        .expect("username")
        .to_owned();
    let exists = format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{user}'");
    assert_eq!(
        custos_test_support::tamper::sql_at(db.url(), &exists).await,
        Some(1)
    );
    let r = app
        .api(
            Method::POST,
            "/v1/agents/agent-a/suspend",
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        custos_test_support::tamper::sql_at(db.url(), &exists).await,
        Some(0)
    );
    let l = leases(&app, &format!("?task={task}")).await;
    assert_eq!(l[0]["state"], "revoked");
    let trace = app
        .api(
            Method::GET,
            &format!("/v1/audit/trace/{task}"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert!(trace.body.to_string().contains("agent_suspended"));
}
