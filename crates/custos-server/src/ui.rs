//! The web pages under `/ui/`: approvers answer held calls in a browser.
//!
//! An operator signs in with their token; the page keeps a server-side session (a random id in
//! an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui`), re-authenticates the token on
//! every request (a removed or rotated operator loses the page at once), and every form carries
//! a per-session CSRF token. Pages are rendered with askama, which escapes every value; they
//! load no script and the content security policy allows none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, REFERRER_POLICY,
    SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use custos_broker::{Answer, BrokerError, Operator};
use custos_core::operator::Permission;
use custos_crypto::PresentedToken;
use serde::Deserialize;

use crate::error::status_of;
use crate::{AppState, Peer};

/// The session cookie's name.
const COOKIE_NAME: &str = "custos_ui";
/// How long a signed-in page stays signed in.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The most sessions held at once; past it, the oldest are dropped.
const MAX_SESSIONS: usize = 10_000;
/// The largest form the pages accept.
const FORM_LIMIT: usize = 16 * 1024;

/// One signed-in browser.
struct Session {
    token: Arc<PresentedToken>,
    csrf: String,
    expires: Instant,
}

/// Signed-in browsers, by the SHA-256 of their cookie (a lookup by hash leaks nothing about
/// the cookie through timing).
#[derive(Default)]
struct Sessions(Mutex<HashMap<[u8; 32], Session>>);

impl Sessions {
    fn create(&self, token: PresentedToken) -> (String, String) {
        let id = hex(&custos_crypto::random::random_bytes::<32>());
        let csrf = hex(&custos_crypto::random::random_bytes::<32>());
        let now = Instant::now();
        if let Ok(mut m) = self.0.lock() {
            m.retain(|_, s| s.expires > now);
            while m.len() >= MAX_SESSIONS {
                let Some(oldest) = m.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) else {
                    break;
                };
                m.remove(&oldest);
            }
            m.insert(
                custos_crypto::digest::sha256(id.as_bytes()),
                Session {
                    token: Arc::new(token),
                    csrf: csrf.clone(),
                    expires: now + SESSION_TTL,
                },
            );
        }
        (id, csrf)
    }

    fn get(&self, id: &str) -> Option<(Arc<PresentedToken>, String)> {
        let key = custos_crypto::digest::sha256(id.as_bytes());
        let mut m = self.0.lock().ok()?;
        match m.get(&key) {
            Some(s) if s.expires > Instant::now() => Some((s.token.clone(), s.csrf.clone())),
            Some(_) => {
                m.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&custos_crypto::digest::sha256(id.as_bytes()));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[derive(Clone)]
struct UiState {
    app: AppState,
    sessions: Arc<Sessions>,
    /// Whether the server is reached over HTTPS (the cookie is then `Secure`).
    secure: bool,
}

/// The `/ui` routes.
pub(crate) fn router(app: AppState) -> Router {
    let secure = app.broker.config().issuer.starts_with("https://");
    let limits = crate::body::BodyLimits {
        max_bytes: FORM_LIMIT,
        timeout: app.body_timeout,
        shape: crate::body::ErrorShape::Api,
    };
    let state = UiState {
        app,
        sessions: Arc::new(Sessions::default()),
        secure,
    };
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/approvals") }))
        .route("/ui/", get(|| async { redirect("/ui/approvals") }))
        .route("/ui/approvals", get(approvals_page))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/approvals/{id}/{action}", post(answer))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            crate::body::read_within,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
        .with_state(state)
}

/// A signed-in operator: the session's token, authenticated again for this request.
struct SignedIn {
    operator: Operator,
    csrf: String,
    cookie: String,
}

/// Why a request gets the sign-in page instead.
enum NotSignedIn {
    /// No session, an expired one, or a token that no longer authenticates.
    Login,
    /// Too many failed authentications from this address.
    RateLimited,
    /// The store is down.
    Unavailable,
}

impl FromRequestParts<UiState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &UiState,
    ) -> Result<Self, Self::Rejection> {
        let peer = Peer::from_request_parts(parts, state)
            .await
            .unwrap_or(Peer(None));
        let why = match cookie(&parts.headers).and_then(|c| state.sessions.get(&c).map(|s| (c, s)))
        {
            None => NotSignedIn::Login,
            Some((cookie, (token, csrf))) => {
                match state
                    .app
                    .broker
                    .authenticate_operator(&token, peer.source())
                    .await
                {
                    Ok(operator) => {
                        return Ok(SignedIn {
                            operator,
                            csrf,
                            cookie,
                        });
                    }
                    Err(BrokerError::RateLimited) => NotSignedIn::RateLimited,
                    Err(BrokerError::Unavailable(_)) => NotSignedIn::Unavailable,
                    Err(_) => {
                        state.sessions.remove(&cookie);
                        NotSignedIn::Login
                    }
                }
            }
        };
        Err(login_page(why))
    }
}

/// Whether a form post comes from this site's own pages: a browser that says where a request
/// comes from (`Sec-Fetch-Site`, else `Origin`) must say this site. A cross-site post is
/// refused before anything else, login included (no login CSRF); the per-session CSRF token
/// still guards every answer.
fn same_site(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        "cross-site form posts are refused; use the page itself",
    )
        .into_response()
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Headers every page carries: no caching, no framing, no scripts, no referrer.
fn page(status: StatusCode, html: String) -> Response {
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => page(status, html),
        Err(e) => {
            tracing::error!(error = %e, "a page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

fn redirect(to: &'static str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Template)]
#[template(path = "ui_login.html")]
struct LoginPage {
    error: Option<String>,
}

fn login_page(why: NotSignedIn) -> Response {
    let (status, error) = match why {
        NotSignedIn::Login => (StatusCode::OK, None),
        NotSignedIn::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed sign-ins from this address; try again later.".to_owned()),
        ),
        NotSignedIn::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("Custos cannot reach its store; try again later.".to_owned()),
        ),
    };
    render(status, &LoginPage { error })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<UiState>,
    peer: Peer,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    let Ok(Form(form)) = form else {
        return render(
            StatusCode::BAD_REQUEST,
            &LoginPage {
                error: Some("The sign-in form was malformed.".into()),
            },
        );
    };
    let token = PresentedToken::new(form.token.trim());
    drop(form);
    match state
        .app
        .broker
        .authenticate_operator(&token, peer.source())
        .await
    {
        Ok(_) => {
            let (id, _) = state.sessions.create(token);
            let mut r = redirect("/ui/approvals");
            let secure = if state.secure { "; Secure" } else { "" };
            let value = format!(
                "{COOKIE_NAME}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                SESSION_TTL.as_secs()
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(SET_COOKIE, v);
            }
            r
        }
        Err(BrokerError::RateLimited) => login_page(NotSignedIn::RateLimited),
        Err(BrokerError::Unavailable(_)) => login_page(NotSignedIn::Unavailable),
        // Says nothing about why, like every authentication failure.
        Err(_) => render(
            StatusCode::UNAUTHORIZED,
            &LoginPage {
                error: Some("That token does not sign in.".into()),
            },
        ),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
    #[serde(default)]
    reason: Option<String>,
}

fn csrf_ok(signed_in: &SignedIn, presented: &str) -> bool {
    // Compared as digests: equal digests say nothing about how much of a guess was right.
    custos_crypto::digest::sha256(signed_in.csrf.as_bytes())
        == custos_crypto::digest::sha256(presented.as_bytes())
}

async fn logout(
    State(state): State<UiState>,
    headers: HeaderMap,
    signed_in: SignedIn,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    if !form.is_ok_and(|Form(f)| csrf_ok(&signed_in, &f.csrf)) {
        return (StatusCode::FORBIDDEN, "the form is stale; reload the page").into_response();
    }
    state.sessions.remove(&signed_in.cookie);
    let mut r = redirect("/ui/approvals");
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("custos_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// One row of the approvals table, every value as text (askama escapes it).
struct Row {
    id: String,
    task: String,
    agent: String,
    initiator: String,
    started_by: String,
    tool: String,
    arguments: String,
    digest: String,
    tier: u8,
    policy_version: i64,
    state: &'static str,
    expires: String,
    decided_by: Option<String>,
    note: Option<String>,
    rule: String,
    purpose: Option<String>,
    recent: Vec<(String, String, String)>,
}

/// How many rows get their task's context (purpose, earlier calls) on one page.
const MAX_CONTEXT_ROWS: usize = 20;

impl From<custos_core::Approval> for Row {
    fn from(a: custos_core::Approval) -> Self {
        Self {
            id: a.id.to_string(),
            task: a.task.to_string(),
            agent: a.agent,
            initiator: a.initiator,
            started_by: a.started_by,
            tool: a.tool,
            arguments: serde_json::to_string_pretty(&a.arguments).unwrap_or_default(),
            digest: a.digest,
            tier: a.tier.number(),
            policy_version: a.policy_version,
            state: a.state.as_str(),
            expires: custos_core::clock::rfc3339(a.expires_at),
            decided_by: a.decided_by,
            note: a.note,
            rule: a.rule,
            purpose: None,
            recent: Vec::new(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui_approvals.html")]
struct ApprovalsPage {
    operator: String,
    role: &'static str,
    csrf: String,
    rows: Vec<Row>,
    all: bool,
    can_answer: bool,
    flash: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    done: Option<String>,
}

async fn approvals_page(
    State(state): State<UiState>,
    signed_in: SignedIn,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let flash = match q.done.as_deref() {
        Some("approved") => Some("Approved: the identical call may now run once.".to_owned()),
        Some("denied") => Some("Denied.".to_owned()),
        _ => None,
    };
    show(&state, &signed_in, q.all, flash, None, StatusCode::OK).await
}

async fn show(
    state: &UiState,
    signed_in: &SignedIn,
    all: bool,
    flash: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let op = &signed_in.operator;
    let (rows, error, status) = match state.app.broker.list_approvals(op, all, None).await {
        Ok(list) => {
            let mut rows = Vec::with_capacity(list.len());
            for (i, a) in list.into_iter().enumerate() {
                let context = if i < MAX_CONTEXT_ROWS {
                    state.app.broker.approval_context(op, &a).await.ok()
                } else {
                    None
                };
                let mut row = Row::from(a);
                if let Some(c) = context {
                    row.purpose = c.purpose;
                    row.recent = c
                        .recent_calls
                        .into_iter()
                        .map(|r| {
                            let why = r.reason.map(|x| format!(" ({x})")).unwrap_or_default();
                            (
                                custos_core::clock::rfc3339(r.at),
                                r.tool,
                                format!("{}{why}", r.what),
                            )
                        })
                        .collect();
                }
                rows.push(row);
            }
            (rows, error, status)
        }
        Err(e) => (Vec::new(), Some(e.to_string()), status_of(&e)),
    };
    render(
        status,
        &ApprovalsPage {
            operator: op.name().to_owned(),
            role: op.role().as_str(),
            csrf: signed_in.csrf.clone(),
            rows,
            all,
            can_answer: op.role().allows(Permission::Approve),
            flash,
            error,
        },
    )
}

async fn answer(
    State(state): State<UiState>,
    headers: HeaderMap,
    signed_in: SignedIn,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    let form = match form {
        Ok(Form(f)) if csrf_ok(&signed_in, &f.csrf) => f,
        _ => {
            return show(
                &state,
                &signed_in,
                false,
                None,
                Some("The form was stale or forged; nothing was answered. Try again.".into()),
                StatusCode::FORBIDDEN,
            )
            .await;
        }
    };
    let (answer, done) = match action.as_str() {
        "approve" => (Answer::Approve, "/ui/approvals?done=approved"),
        "deny" => (Answer::Deny, "/ui/approvals?done=denied"),
        _ => return (StatusCode::NOT_FOUND, "no such page").into_response(),
    };
    let Some(id) = custos_core::ApprovalId::parse(&id) else {
        return show(
            &state,
            &signed_in,
            false,
            None,
            Some("No such approval.".into()),
            StatusCode::NOT_FOUND,
        )
        .await;
    };
    let note = form
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    match state
        .app
        .broker
        .answer_approval(&signed_in.operator, &id, answer, note)
        .await
    {
        Ok(_) => redirect(done),
        Err(e) => {
            let status = status_of(&e);
            show(&state, &signed_in, false, None, Some(e.to_string()), status).await
        }
    }
}
