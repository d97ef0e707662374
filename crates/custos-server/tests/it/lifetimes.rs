//! Token and task lifetimes: what a clock moving forward does to tokens, assertions and tasks.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use custos_test_support::TestApp;
use serde_json::json;

/// A template, an agent allowed to run it, and nothing upstream: `server/discover` answers
/// for any task token the gateway accepts.
fn registry(agent: &str, public_key: &str) -> String {
    let indented: String = public_key.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "kind: Template\nname: quiet\nttl: 30m\ntools: []\n---\n\
         kind: Agent\nname: {agent}\nowner: test@example.com\narchetype: automation\n\
         templates: [quiet]\npublic_key: |\n{indented}"
    )
}

async fn app_with_agent() -> (TestApp, custos_crypto::AgentKey) {
    let app = TestApp::start().await;
    let (key, public) = TestApp::agent_key();
    app.apply(&registry("agent-a", &public)).await;
    (app, key)
}

async fn discover(app: &TestApp, token: &str) -> StatusCode {
    app.mcp(token, "server/discover", json!({})).await.status
}

#[tokio::test]
async fn a_task_token_works_until_its_expiry_and_not_a_second_longer() {
    let (app, key) = app_with_agent().await;
    let task = app.start_task("agent-a", "quiet", None).await;
    let reply = app.exchange(&task, "agent-a", &key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let ttl = reply.body["expires_in"].as_u64().expect("expires_in");
    assert_eq!(ttl, 900, "tokens live at most 15 minutes");
    let token = reply.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    assert_eq!(discover(&app, &token).await, StatusCode::OK);
    app.advance(Duration::from_secs(ttl - 1));
    assert_eq!(
        discover(&app, &token).await,
        StatusCode::OK,
        "one second left"
    );
    app.advance(Duration::from_secs(1));
    assert_eq!(
        discover(&app, &token).await,
        StatusCode::UNAUTHORIZED,
        "expired at exp"
    );
    // The task is still running: a new exchange gives a new token that works.
    let fresh = app.task_token(&task, "agent-a", &key).await;
    assert_eq!(discover(&app, &fresh).await, StatusCode::OK);
}

#[tokio::test]
async fn a_task_ends_at_its_ttl_and_its_last_token_ends_with_it() {
    let (app, key) = app_with_agent().await;
    let task = app.start_task("agent-a", "quiet", Some("2m")).await;
    let reply = app.exchange(&task, "agent-a", &key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // A token never outlives its task.
    assert_eq!(reply.body["expires_in"], 120);
    let token = reply.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    app.advance(Duration::from_secs(119));
    assert_eq!(discover(&app, &token).await, StatusCode::OK);
    app.advance(Duration::from_secs(1));
    assert_eq!(discover(&app, &token).await, StatusCode::UNAUTHORIZED);
    let again = app.exchange(&task, "agent-a", &key).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.body);
    // An operator reading the task sees when it expired.
    let read = app
        .api(
            Method::GET,
            &format!("/v1/tasks/{task}"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        read.body["expires_at"].as_i64(),
        Some(custos_test_support::app::APP_EPOCH_MS + 120_000)
    );
}

#[tokio::test]
async fn an_assertion_is_good_for_its_own_lifetime_only() {
    let (app, key) = app_with_agent().await;
    let task = app.start_task("agent-a", "quiet", None).await;
    let issued_at = custos_test_support::app::APP_EPOCH_MS / 1000;
    let assertion =
        custos_crypto::jwt::sign_assertion(&key, "agent-a", &app.issuer(), issued_at, 60)
            .expect("sign");
    // Presented 61 s later (beyond its 60 s and the allowed skew): refused, nothing issued.
    app.advance(Duration::from_secs(61 + 60));
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={task}\
         &subject_token_type=urn%3Acustos%3Aparams%3Aoauth%3Atoken-type%3Atask-id\
         &actor_token={assertion}&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
    );
    let req = axum::http::Request::post("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(form))
        .expect("request");
    assert_eq!(app.send(req).await.status, StatusCode::UNAUTHORIZED);
    // One signed now works.
    let reply = app.exchange(&task, "agent-a", &key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn expired_tasks_are_announced_once_and_ended_ones_not_again() {
    let (app, _key) = app_with_agent().await;
    let broker = &app.state().broker;
    let mut ends = broker.task_ends();
    let short = app.start_task("agent-a", "quiet", Some("1m")).await;
    let long = app.start_task("agent-a", "quiet", Some("5m")).await;
    let ended = app.start_task("agent-a", "quiet", Some("1m")).await;
    let end = app
        .api(
            Method::POST,
            &format!("/v1/tasks/{ended}/end"),
            Some(&app.admin_token),
            None,
        )
        .await;
    assert_eq!(end.status, StatusCode::OK, "{}", end.body);
    assert_eq!(
        ends.recv().await.expect("announced"),
        ended,
        "ended by hand"
    );

    // The watcher looks every second on its own; a look now makes the test independent of
    // when it last did. Each expiry is announced once, by whichever look sees it first.
    let look = async || {
        broker.announce_expired_tasks().await.expect("look");
    };
    look().await;
    assert!(ends.try_recv().is_err(), "nothing expired yet");
    app.advance(Duration::from_secs(60));
    look().await;
    assert_eq!(ends.try_recv().expect("announced"), short);
    look().await;
    assert!(ends.try_recv().is_err(), "announced once");
    app.advance(Duration::from_secs(240));
    look().await;
    assert_eq!(ends.try_recv().expect("announced"), long);
    look().await;
    assert!(
        ends.try_recv().is_err(),
        "the task ended by hand is not announced again"
    );
}
