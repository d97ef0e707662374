//! Tasks and task tokens: start, end, the RFC 8693 token exchange, and authenticating a
//! task token on every request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use custos_audit::{AuditEvent, Detail, EventKind};
use custos_core::TaskId;
use custos_core::duration::format_duration;
use custos_core::operator::Permission;
use custos_core::text::{has_unsafe_chars, truncate};
use custos_core::{Decision, Reason};
use custos_core::{Task as TaskRow, TaskState};
use custos_crypto::jwt::{assertion_issuer, verify_assertion};
use custos_crypto::{PresentedToken, jwk_thumbprint, new_id};
use serde::{Deserialize, Serialize};

use crate::call::TaskContext;
use crate::operators::Operator;
use crate::{Broker, BrokerError, Source};

/// RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The subject token type naming a Custos task: the subject is the task's initiator.
pub const TASK_ID_TOKEN_TYPE: &str = "urn:custos:params:oauth:token-type:task-id";
/// RFC 8693 token type for a JWT (the agent's signed assertion, as `actor_token`).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// What an initiator asks for when starting a task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartTask {
    /// The agent that will do the work.
    pub agent: String,
    /// The template it works under.
    pub template: String,
    /// The human or event on whose behalf.
    pub on_behalf_of: String,
    /// Why.
    #[serde(default)]
    pub purpose: Option<String>,
    /// How long the task may live (at most the template's TTL; default the template's TTL).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// The form fields of a token-exchange request at `/oauth/token`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenRequest {
    /// Must be [`TOKEN_EXCHANGE_GRANT`].
    #[serde(default)]
    pub grant_type: String,
    /// The task id.
    #[serde(default)]
    pub subject_token: String,
    /// Must be [`TASK_ID_TOKEN_TYPE`].
    #[serde(default)]
    pub subject_token_type: String,
    /// The agent's signed assertion.
    #[serde(default)]
    pub actor_token: String,
    /// Must be [`JWT_TOKEN_TYPE`].
    #[serde(default)]
    pub actor_token_type: String,
    /// Optional; when given it must be this Custos's MCP endpoint.
    #[serde(default)]
    pub resource: Option<String>,
    /// Optional; when given it must be this Custos's MCP endpoint.
    #[serde(default)]
    pub audience: Option<String>,
}

/// The token-exchange answer.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    /// The task token.
    pub access_token: String,
    /// Always the access-token type.
    pub issued_token_type: &'static str,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: i64,
}

pub(crate) struct TaskCache {
    ttl_ms: i64,
    entries: Mutex<HashMap<TaskId, (i64, TaskRow)>>,
}

impl TaskCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, id: &TaskId, now: i64) -> Option<TaskRow> {
        let g = self.entries.lock().ok()?;
        let (at, row) = g.get(id)?;
        (now - at <= self.ttl_ms).then(|| row.clone())
    }

    fn put(&self, row: TaskRow, now: i64) {
        if let Ok(mut g) = self.entries.lock() {
            if g.len() > 100_000 {
                g.retain(|_, (at, _)| now - *at <= self.ttl_ms);
            }
            g.insert(row.id.clone(), (now, row));
        }
    }

    /// Marks the cached task tainted (the store already says so).
    fn taint(&self, id: &TaskId, tool: &str, at: i64) {
        if let Ok(mut m) = self.entries.lock()
            && let Some((_, row)) = m.get_mut(id)
            && row.tainted_at.is_none()
        {
            row.tainted_at = Some(at);
            row.tainted_by = Some(tool.to_owned());
        }
    }

    fn forget(&self, id: &TaskId) {
        if let Ok(mut g) = self.entries.lock() {
            g.remove(id);
        }
    }
}

/// Task tokens whose signature has been verified, keyed by the token's SHA-256.
pub(crate) struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], custos_crypto::TaskClaims>>,
}

impl VerifiedTokens {
    pub(crate) fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, digest: &[u8; 32], now: i64) -> Option<custos_crypto::TaskClaims> {
        let g = self.entries.lock().ok()?;
        g.get(digest)
            .filter(|c| now < c.exp && now >= c.nbf)
            .cloned()
    }

    fn put(&self, digest: [u8; 32], claims: custos_crypto::TaskClaims, now: i64) {
        if let Ok(mut g) = self.entries.lock() {
            if g.len() >= 100_000 {
                g.retain(|_, c| now < c.exp);
            }
            g.insert(digest, claims);
        }
    }
}

impl Broker {
    /// Starts a task for an initiator.
    ///
    /// # Errors
    /// [`BrokerError::Invalid`] for an unknown or suspended agent, a template the agent may not
    /// use, or a TTL beyond the template's; [`BrokerError::Forbidden`] without the initiator role.
    pub async fn start_task(&self, op: &Operator, req: StartTask) -> Result<TaskRow, BrokerError> {
        op.require(Permission::RunTasks)?;
        let snap = self
            .snapshot_having(
                |s| s.agents.contains_key(&req.agent) && s.templates.contains_key(&req.template),
                0,
            )
            .await?;
        let agent = snap
            .agents
            .get(&req.agent)
            .ok_or_else(|| BrokerError::Invalid(format!("agent `{}` does not exist", req.agent)))?;
        if snap.suspended.contains(&req.agent) {
            return Err(BrokerError::Invalid(format!(
                "agent `{}` is suspended",
                req.agent
            )));
        }
        if !agent.spec.templates.contains(&req.template) {
            return Err(BrokerError::Invalid(format!(
                "agent `{}` may not run template `{}`",
                req.agent, req.template
            )));
        }
        let template = snap.templates.get(&req.template).ok_or_else(|| {
            BrokerError::Invalid(format!("template `{}` does not exist", req.template))
        })?;
        check_initiator(&req.on_behalf_of)?;
        check_purpose(req.purpose.as_deref())?;
        let max = template.spec.max_ttl();
        let ttl = match &req.ttl {
            Some(t) => custos_core::parse_duration(t).map_err(BrokerError::Invalid)?,
            None => max,
        };
        if ttl.is_zero() || ttl > max {
            return Err(BrokerError::Invalid(format!(
                "ttl `{}` exceeds template `{}`'s maximum of {}",
                format_duration(ttl),
                req.template,
                format_duration(max)
            )));
        }
        let now = self.inner.clock.now_ms();
        let row = TaskRow {
            id: TaskId::parse(&new_id(TaskId::PREFIX))
                .ok_or(BrokerError::Unavailable("task id generation"))?,
            agent: req.agent,
            agent_id: agent.id.clone(),
            template: req.template,
            template_version: template.version,
            started_by: op.name.clone(),
            on_behalf_of: req.on_behalf_of,
            purpose: req.purpose,
            created_at: now,
            expires_at: now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2),
            state: TaskState::Active,
            ended_at: None,
            ended_by: None,
            tainted_at: None,
            tainted_by: None,
        };
        self.inner.store.create_task(&row).await?;
        let mut e = task_event(EventKind::TaskStart, &row);
        e.actor = Some(op.name.clone());
        e.decision = Some(Decision::Allow);
        e.detail = Some(Detail::TaskStart {
            agent_id: row.agent_id.to_string(),
            expires_at: row.expires_at,
            template_version: row.template_version,
            purpose: row.purpose.clone(),
        });
        self.record(e).await?;
        Ok(row)
    }

    /// Ends a task at once: its tokens are refused from now on.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for an unknown task, [`BrokerError::Conflict`] when already ended.
    pub async fn end_task(&self, op: &Operator, id: &TaskId) -> Result<TaskRow, BrokerError> {
        op.require(Permission::RunTasks)?;
        let now = self.inner.clock.now_ms();
        let ended = self.inner.store.end_task(id, &op.name, now).await?;
        self.inner.tasks.forget(id);
        let row = self
            .inner
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("task `{id}` not found")))?;
        if !ended {
            return Err(BrokerError::Conflict(format!(
                "task `{id}` has already ended"
            )));
        }
        let mut e = task_event(EventKind::TaskEnd, &row);
        e.actor = Some(op.name.clone());
        self.record(e).await?;
        let _ = self.inner.task_ends.send(row.id.to_string());
        Ok(row)
    }

    /// Marks a task tainted by `tool` (an untrusted tool returned content to it): stored,
    /// recorded, and seen by the task's next call. Only the first taint is recorded.
    ///
    /// # Errors
    /// [`BrokerError`] when the store or the audit log fails.
    pub(crate) async fn mark_tainted(
        &self,
        ctx: &TaskContext,
        tool: &str,
    ) -> Result<(), BrokerError> {
        let Some(id) = TaskId::parse(ctx.task_id()) else {
            return Ok(());
        };
        let now = self.inner.clock.now_ms();
        if self.inner.store.mark_tainted(&id, tool, now).await? {
            let mut e = ctx.event(EventKind::TaskTainted);
            e.tool = Some(tool.to_owned());
            e.detail = Some(custos_audit::Detail::TaskTainted {
                tool: tool.to_owned(),
            });
            self.record(e).await?;
        }
        self.inner.tasks.taint(&id, tool, now);
        Ok(())
    }

    /// One task.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for an unknown task.
    pub async fn get_task(&self, op: &Operator, id: &TaskId) -> Result<TaskRow, BrokerError> {
        op.require(Permission::Read)?;
        self.inner
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("task `{id}` not found")))
    }

    /// Recent tasks, newest first.
    ///
    /// # Errors
    /// [`BrokerError`] when the store fails.
    pub async fn list_tasks(
        &self,
        op: &Operator,
        agent: Option<&str>,
    ) -> Result<Vec<TaskRow>, BrokerError> {
        op.require(Permission::Read)?;
        Ok(self.inner.store.list_tasks(agent, 500).await?)
    }

    async fn task(&self, id: &TaskId, now: i64) -> Result<Option<TaskRow>, BrokerError> {
        if let Some(t) = self.inner.tasks.get(id, now) {
            return Ok(Some(t));
        }
        let row = self.inner.store.get_task(id).await?;
        if let Some(r) = &row {
            self.inner.tasks.put(r.clone(), now);
        }
        Ok(row)
    }

    /// The RFC 8693 token exchange: an agent proves its identity with a signed assertion
    /// (`actor_token`) and receives a task token for a task started for it (`subject_token`).
    ///
    /// # Errors
    /// [`BrokerError::Invalid`] for a malformed request; [`BrokerError::Unauthenticated`] for
    /// anything about identity, replay or task state (the reason is audited, not returned).
    pub async fn exchange(
        &self,
        req: &TokenRequest,
        source: Source,
    ) -> Result<TokenResponse, BrokerError> {
        self.check_source(source)?;
        if req.grant_type != TOKEN_EXCHANGE_GRANT {
            return Err(BrokerError::Invalid(format!(
                "unsupported grant_type; use `{TOKEN_EXCHANGE_GRANT}`"
            )));
        }
        if req.subject_token_type != TASK_ID_TOKEN_TYPE || req.actor_token_type != JWT_TOKEN_TYPE {
            return Err(BrokerError::Invalid(format!(
                "subject_token_type must be `{TASK_ID_TOKEN_TYPE}` and actor_token_type `{JWT_TOKEN_TYPE}`"
            )));
        }
        let audience = self.inner.tokens.audience();
        for target in [&req.resource, &req.audience].into_iter().flatten() {
            if target != audience {
                return Err(BrokerError::Invalid(format!(
                    "this server issues tokens only for `{audience}`"
                )));
            }
        }
        let fail = |reason: Reason, agent: Option<String>| async move {
            Err(self.record_auth_failure("agent", reason, agent.as_deref(), source))
        };
        let Ok(claimed) = assertion_issuer(&req.actor_token) else {
            return fail(Reason::MalformedAssertion, None).await;
        };
        // The task names the agent; the assertion must be signed by that agent's key and name
        // the agent (by name or by its key's JWK thumbprint).
        let Some(task_id) = TaskId::parse(&req.subject_token) else {
            return fail(Reason::UnknownTask, None).await;
        };
        let Some(task) = self.inner.store.get_task(&task_id).await? else {
            return fail(Reason::UnknownTask, None).await;
        };
        let agent_name = task.agent.clone();
        let snap = self
            .snapshot_having(|s| s.agents.contains_key(&agent_name), 0)
            .await?;
        let Some(agent) = snap.agents.get(&agent_name) else {
            return fail(Reason::UnknownAgent, Some(agent_name)).await;
        };
        // The task belongs to the registration it was started for: an agent deleted and
        // re-created under the same name (a new id, perhaps a new key) does not inherit it.
        if agent.id != task.agent_id {
            return fail(Reason::AgentReplaced, Some(agent_name)).await;
        }
        if claimed != agent_name && claimed != jwk_thumbprint(&agent.key) {
            return fail(Reason::AssertionNamesAnotherAgent, Some(agent_name)).await;
        }
        let now = self.inner.clock.now_secs();
        let claims = match verify_assertion(
            &req.actor_token,
            &agent.key,
            self.inner.tokens.issuer(),
            now,
        ) {
            Ok(c) => c,
            Err(e) => return fail(e.reason(), Some(agent_name)).await,
        };
        if !self
            .inner
            .store
            .claim_jti(
                &claims.jti,
                &agent_name,
                claims.exp.saturating_mul(1000),
                now.saturating_mul(1000),
            )
            .await?
        {
            return fail(Reason::ReplayedAssertion, Some(agent_name)).await;
        }
        if snap.suspended.contains(&agent_name) {
            return fail(Reason::AgentSuspended, Some(agent_name)).await;
        }
        let now_ms = self.inner.clock.now_ms();
        if task.state != TaskState::Active || task.expires_at <= now_ms {
            return fail(Reason::TaskNotActive, Some(agent_name)).await;
        }
        // The agent's templates are read now, not when the task started: removing a template
        // from an agent stops its tasks under it.
        if !agent.spec.templates.contains(&task.template)
            || !snap.templates.contains_key(&task.template)
        {
            return fail(Reason::TemplateNotAllowed, Some(agent_name)).await;
        }
        let max_ttl = i64::try_from(self.inner.config.max_token_ttl.as_secs())
            .unwrap_or(900)
            .min(900);
        let exp = (task.expires_at / 1000).min(now.saturating_add(max_ttl));
        let (token, tc) = self
            .inner
            .tokens
            .issue(&task, now, exp)
            .map_err(|_| BrokerError::Unavailable("token signing"))?;
        let mut e = task_event(EventKind::TokenIssued, &task);
        e.decision = Some(Decision::Allow);
        e.detail = Some(Detail::TokenIssued {
            jti: tc.jti,
            exp: tc.exp,
        });
        self.record(e).await?;
        Ok(TokenResponse {
            access_token: token,
            issued_token_type: ACCESS_TOKEN_TYPE,
            token_type: "Bearer",
            expires_in: exp.saturating_sub(now),
        })
    }

    /// Authenticates a task token presented at the gateway: signature, expiry, audience, and
    /// that the task is active and its agent registered and not suspended.
    ///
    /// # Errors
    /// [`BrokerError::Unauthenticated`] for any failure (audited with the reason).
    pub async fn authenticate_task_token(
        &self,
        token: &PresentedToken,
        source: Source,
    ) -> Result<TaskContext, BrokerError> {
        self.check_source(source)?;
        let token = token.expose();
        let now_ms = self.inner.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        // A token verified once is remembered by its SHA-256 until it expires, so repeated
        // calls skip the signature check; task, agent and template state are checked below
        // on every request.
        let digest = custos_crypto::digest::sha256(token.as_bytes());
        let claims = match self.inner.verified.get(&digest, now) {
            Some(c) => c,
            None => match self.inner.tokens.verify(token, now) {
                Ok(c) => {
                    self.inner.verified.put(digest, c.clone(), now);
                    c
                }
                Err(e) => {
                    return Err(self.record_auth_failure("task_token", e.reason(), None, source));
                }
            },
        };
        let agent = claims.act.sub.clone();
        let snap = self
            .snapshot_having(
                |s| s.agents.contains_key(&agent) && s.templates.contains_key(&claims.template),
                50,
            )
            .await?;
        let task = match TaskId::parse(&claims.task_id) {
            Some(id) => self.task(&id, now_ms).await?,
            None => None,
        };
        let tainted = task.as_ref().is_some_and(|t| t.tainted_at.is_some());
        let reason = match task {
            None => Some(Reason::UnknownTask),
            Some(t)
                if t.agent != agent
                    || t.agent_id.as_str() != claims.act.agent_id
                    || t.template != claims.template =>
            {
                Some(Reason::TaskMismatch)
            }
            Some(t) if t.state != TaskState::Active || t.expires_at <= now_ms => {
                Some(Reason::TaskNotActive)
            }
            Some(t) => match snap.agents.get(&agent) {
                None => Some(Reason::UnknownAgent),
                Some(a) if a.id != t.agent_id => Some(Reason::AgentReplaced),
                Some(_) if snap.suspended.contains(&agent) => Some(Reason::AgentSuspended),
                Some(_) if !snap.templates.contains_key(&claims.template) => {
                    Some(Reason::UnknownTemplate)
                }
                // The agent's templates as of now: a template removed from the agent stops its
                // tasks at once.
                Some(a) if !a.spec.templates.contains(&claims.template) => {
                    Some(Reason::TemplateNotAllowed)
                }
                Some(_) => None,
            },
        };
        if let Some(r) = reason {
            return Err(self.record_auth_failure("task_token", r, Some(&agent), source));
        }
        Ok(TaskContext::new(claims, snap, tainted))
    }
}

/// How often the expiry watcher looks for tasks that expired.
const EXPIRY_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// Most expired tasks announced per look; more wait for the next.
const EXPIRY_BATCH: i64 = 10_000;

impl Broker {
    /// Announces, on [`Broker::task_ends`], the tasks whose expiry passed since the last look,
    /// so what is held per task (sessions, per-task upstreams, later leases) is let go at expiry
    /// and not only when an operator ends a task. Returns how many were announced.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be read (the next look retries).
    pub async fn announce_expired_tasks(&self) -> Result<usize, BrokerError> {
        let mut announced = self.inner.expiry_announced.lock().await;
        let now = self.inner.clock.now_ms();
        let after = *announced;
        if now <= after {
            return Ok(0);
        }
        let expired = self
            .inner
            .store
            .tasks_expiring(after, now, EXPIRY_BATCH)
            .await?;
        // A full batch moves the cursor only as far as it read; ties beyond the batch at the
        // same millisecond are left to the holders' own expiry.
        let upto = match expired.last() {
            Some((_, at)) if expired.len() as i64 == EXPIRY_BATCH => *at,
            _ => now,
        };
        for (id, _) in &expired {
            let _ = self.inner.task_ends.send(id.to_string());
        }
        *announced = upto;
        Ok(expired.len())
    }

    /// Looks for expired tasks every [`EXPIRY_TICK`] until shutdown.
    pub(crate) async fn watch_task_expiry(&self) {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.announce_expired_tasks().await {
                tracing::warn!(error = %e, "could not look for expired tasks; retrying");
            }
        }
    }
}

/// An audit event carrying a task's attribution chain.
fn task_event(kind: EventKind, t: &TaskRow) -> AuditEvent {
    let mut e = AuditEvent::new(kind);
    e.initiator = Some(t.on_behalf_of.clone());
    e.agent = Some(t.agent.clone());
    e.task = Some(t.id.to_string());
    e.template = Some(t.template.clone());
    e
}

/// The longest `on_behalf_of`.
const MAX_INITIATOR: usize = 256;
/// The longest `purpose`.
const MAX_PURPOSE: usize = 1024;

/// Who a task runs for: shown in every trace line of it, so one printable line of bounded
/// length (an e-mail address, a team, `event:…`), never text that could forge another line.
fn check_initiator(who: &str) -> Result<(), BrokerError> {
    if who.trim().is_empty()
        || who.len() > MAX_INITIATOR
        || who.trim() != who
        || has_unsafe_chars(who)
    {
        return Err(BrokerError::Invalid(format!(
            "`on_behalf_of` must name the initiator: 1 to {MAX_INITIATOR} bytes of printable text \
             without control characters or surrounding spaces (got `{}`)",
            custos_core::text::for_display(who, 64)
        )));
    }
    Ok(())
}

/// Why a task runs: free text, bounded, printable (newlines and escapes would forge trace lines).
fn check_purpose(purpose: Option<&str>) -> Result<(), BrokerError> {
    let Some(p) = purpose else { return Ok(()) };
    if p.len() > MAX_PURPOSE || has_unsafe_chars(p) {
        return Err(BrokerError::Invalid(format!(
            "`purpose` must be at most {MAX_PURPOSE} bytes of printable text without control \
             characters (got {} bytes starting `{}`)",
            p.len(),
            truncate(&custos_core::text::escape_unsafe(p), 40)
        )));
    }
    Ok(())
}
