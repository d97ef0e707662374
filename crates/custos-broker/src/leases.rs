//! Credential leases: minting a credential for a task (intent first, then the engine, then
//! activation), revoking it (on request, when its task ends, when it expires), and the
//! reconciler that removes principals no live lease covers.
//!
//! Lifecycle of a lease (`custos_core::LeaseState`):
//! `pending` (the intent, written before the credential exists) → `active` (minted and handed
//! out) → `revoked`; `pending` → `failed` when minting fails (the engine already removed what it
//! made); `active` → `failed` when revocation gave up after [`MAX_REVOKE_ATTEMPTS`] (the
//! principal may still exist: kept, reported by `custos lease list --failed`, and retried by the
//! reconciler and by an operator's revoke).
//!
//! Every lease id is `lease_` + this installation's scope (5 characters, chosen once and kept
//! in the store) + 20 random base32 characters; its principal is `custos_` + the same 25
//! characters. The reconciler only looks at principals under its own scope, so installations
//! (and tests) sharing a database server never remove each other's credentials.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custos_audit::{AuditEvent, Detail, EventKind};
use custos_core::operator::Permission;
use custos_core::{CredentialEngine, Decision, Lease, LeaseState, Reason, TaskId, TaskState};
use custos_credentials::{
    ClaimsSigner, CredentialError, Engine, EngineKind, Grant, JwtEngine, MysqlConfig, MysqlEngine,
    PostgresConfig, PostgresEngine, PrincipalName, PrincipalPrefix, RedisConfig, RedisEngine,
};
use custos_crypto::{TokenIssuer, new_id};
use secrecy::SecretString;

use crate::call::TaskContext;
use crate::operators::Operator;
use crate::registry::CredentialRoleEntry;
use crate::{Broker, BrokerError};

/// What every lease id starts with.
pub const LEASE_ID_PREFIX: &str = "lease_";
/// Characters of an installation's lease scope.
pub const LEASE_SCOPE_LEN: usize = 5;
/// Random characters of a lease id after the scope (100 bits).
const LEASE_RANDOM_LEN: usize = 20;
/// How often the expiry worker looks for leases past their expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(500);
/// Most leases one look of the expiry worker claims.
const EXPIRY_BATCH: i64 = 256;
/// How long a claimed lease is left to the replica that claimed it before another may.
const CLAIM_MS: i64 = 30_000;
/// Failed revocations after which a lease is marked failed (kept and reported).
pub const MAX_REVOKE_ATTEMPTS: i64 = 8;
/// The first retry waits this long; each later one twice as long, up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: i64 = 500;
const MAX_BACKOFF_MS: i64 = 30_000;
/// A pending intent older than this is not live: its mint never finished.
pub const STALE_PENDING_MS: i64 = 60_000;
/// How often the reconciler runs after the first time.
const RECONCILE_EVERY: Duration = Duration::from_secs(300);
/// The longest error text kept on a lease or in an audit record.
const MAX_ERROR: usize = 512;

/// Where the admin connection URLs of credential roles come from: the server's environment,
/// or (in tests) anything else. Values are secrets; names are not.
#[derive(Clone)]
pub struct CredentialEnv(Arc<EnvLookup>);

/// Reads one variable.
type EnvLookup = dyn Fn(&str) -> Option<SecretString> + Send + Sync;

/// An engine and the role version it was built from.
type CachedEngine = (i64, Arc<dyn Engine>);

impl CredentialEnv {
    /// The process environment.
    pub fn process() -> Self {
        Self(Arc::new(|name| {
            std::env::var(name).ok().map(SecretString::from)
        }))
    }

    /// Values from a function (tests).
    pub fn from_fn(f: impl Fn(&str) -> Option<SecretString> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    fn get(&self, name: &str) -> Option<SecretString> {
        (self.0)(name)
    }

    /// Whether the variable is set (apply warns when it is not).
    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl Default for CredentialEnv {
    fn default() -> Self {
        Self::process()
    }
}

impl std::fmt::Debug for CredentialEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialEnv(..)")
    }
}

/// A lease just issued, with its password: hand it to the task once, never store or log it.
#[derive(Debug)]
pub struct IssuedLease {
    /// The lease (active).
    pub lease: Lease,
    /// The credential's password (`Debug` redacts it).
    pub password: SecretString,
}

/// Engines built from credential roles, one per role, rebuilt when the role's version changes.
#[derive(Default)]
pub(crate) struct Engines {
    by_role: Mutex<HashMap<String, CachedEngine>>,
}

/// Who a lease's credential is handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recipient {
    /// The task, over the Vault-compatible API.
    Task,
    /// An upstream, by injection: the task never sees it.
    Upstream,
}

/// Why a lease is revoked, as audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Its task ended or expired.
    TaskEnd,
    /// Its own expiry passed.
    Expired,
    /// The task or an operator asked.
    Revoked,
    /// The reconciler found it not live.
    Reconcile,
    /// Its agent was suspended.
    AgentSuspended,
    /// The tool call it was minted for ended (`lease: call`).
    CallEnd,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::TaskEnd => "task_end",
            Cause::Expired => "expired",
            Cause::Revoked => "revoked",
            Cause::Reconcile => "reconcile",
            Cause::AgentSuspended => "agent_suspended",
            Cause::CallEnd => "call_end",
        }
    }
}

/// A new lease id under `scope` and its principal.
///
/// # Errors
/// [`BrokerError::Unavailable`] if the scope is not a valid principal part (a corrupt store).
pub(crate) fn new_lease_id(scope: &str) -> Result<(String, PrincipalName), BrokerError> {
    let random = new_id("");
    let suffix = format!("{scope}{}", &random[..LEASE_RANDOM_LEN]);
    let principal = principal_of_suffix(&suffix)?;
    Ok((format!("{LEASE_ID_PREFIX}{suffix}"), principal))
}

fn principal_of_suffix(suffix: &str) -> Result<PrincipalName, BrokerError> {
    PrincipalName::for_lease(suffix).map_err(|e| {
        tracing::error!(error = %e, "lease id does not make a principal");
        BrokerError::Unavailable("lease ids")
    })
}

/// The lease id of a principal this installation made.
pub(crate) fn lease_id_of(principal: &PrincipalName) -> String {
    format!("{LEASE_ID_PREFIX}{}", principal.lease_id())
}

/// A lease id as a client may send it: bare (`lease_…`) or Vault-style with a path in front
/// (`database/creds/<role>/lease_…`). `None` for anything else.
pub fn parse_lease_id(text: &str) -> Option<String> {
    let id = text.rsplit('/').next().unwrap_or(text);
    let suffix = id.strip_prefix(LEASE_ID_PREFIX)?;
    PrincipalName::for_lease(suffix).ok()?;
    Some(id.to_owned())
}

/// The wait before retry number `attempts` (1-based): 0.5 s, 1 s, 2 s, … up to 30 s.
pub(crate) fn backoff_ms(attempts: i64) -> i64 {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    FIRST_BACKOFF_MS
        .saturating_mul(1_i64 << doublings)
        .min(MAX_BACKOFF_MS)
}

fn bounded_error(e: &dyn std::fmt::Display) -> String {
    custos_core::text::truncate(&e.to_string(), MAX_ERROR).into_owned()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn at_ms(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The credential engine kind of a role's engine.
pub(crate) fn engine_kind(engine: CredentialEngine) -> EngineKind {
    match engine {
        CredentialEngine::Postgres => EngineKind::Postgres,
        CredentialEngine::Mysql => EngineKind::Mysql,
        CredentialEngine::Redis => EngineKind::Redis,
        CredentialEngine::Jwt => EngineKind::Jwt,
        CredentialEngine::Static => EngineKind::Static,
    }
}

/// Signs `jwt` roles' tokens with the task-token key (served in the JWKS).
struct TokenSigner(Arc<TokenIssuer>);

impl ClaimsSigner for TokenSigner {
    fn issuer(&self) -> &str {
        self.0.issuer()
    }

    fn forbidden_audience(&self, audience: &str) -> bool {
        audience == self.0.audience() || audience.starts_with(self.0.issuer())
    }

    fn sign(&self, claims: &serde_json::Value) -> Result<SecretString, CredentialError> {
        self.0
            .sign_claims(claims)
            .map(SecretString::from)
            .map_err(|_| CredentialError::InvalidConfig {
                engine: EngineKind::Jwt,
                reason: "signing the token failed".into(),
            })
    }
}

fn lease_event(kind: EventKind, l: &Lease) -> AuditEvent {
    let mut e = AuditEvent::new(kind);
    e.initiator = Some(l.initiator.clone());
    e.agent = Some(l.agent.clone());
    e.task = Some(l.task.to_string());
    e.detail = Some(Detail::Lease {
        lease_id: l.id.clone(),
        role: l.role.clone(),
        engine: l.engine.clone(),
        principal: l.principal.clone(),
        agent_id: l.agent_id.to_string(),
        expires_at: l.expires_at,
        cause: None,
        error: None,
    });
    e
}

fn with_cause(mut e: AuditEvent, cause: Option<Cause>, error: Option<String>) -> AuditEvent {
    if let Some(Detail::Lease {
        cause: c, error: r, ..
    }) = &mut e.detail
    {
        *c = cause.map(|c| c.as_str().to_owned());
        *r = error;
    }
    e
}

impl Broker {
    /// The engine of a credential role, built from the role and its admin URL on first use and
    /// rebuilt when the role changes.
    async fn engine_for(
        &self,
        name: &str,
        entry: &CredentialRoleEntry,
    ) -> Result<Arc<dyn Engine>, BrokerError> {
        let engines = &self.inner.engines;
        if let Ok(g) = engines.by_role.lock()
            && let Some((version, engine)) = g.get(name)
            && *version == entry.version
        {
            return Ok(engine.clone());
        }
        let built: Result<Arc<dyn Engine>, CredentialError> = match entry.spec.engine {
            CredentialEngine::Jwt => Ok(Arc::new(JwtEngine::new(Arc::new(TokenSigner(
                self.inner.tokens.clone(),
            ))))),
            CredentialEngine::Static => Ok(Arc::new(crate::secrets::StaticEngine {
                store: self.inner.store.clone(),
                kek: self.inner.config.kek.clone(),
                role: name.to_owned(),
            })),
            server => {
                let url = self.admin_url(name, entry).await?;
                match server {
                    CredentialEngine::Mysql => MysqlEngine::new(MysqlConfig::new(url))
                        .map(|e| Arc::new(e) as Arc<dyn Engine>),
                    CredentialEngine::Redis => RedisEngine::new(RedisConfig::new(url))
                        .map(|e| Arc::new(e) as Arc<dyn Engine>),
                    _ => PostgresEngine::new(PostgresConfig::new(url))
                        .map(|e| Arc::new(e) as Arc<dyn Engine>),
                }
            }
        };
        let engine = built.map_err(|e| {
            BrokerError::CredentialUnavailable(format!("credential role `{name}`: {e}"))
        })?;
        if let Ok(mut g) = engines.by_role.lock() {
            g.insert(name.to_owned(), (entry.version, engine.clone()));
        }
        Ok(engine)
    }

    /// The admin connection URL of a credential role: from the server's environment
    /// (`connection_env`), or, for a role without one, the value an admin stored for it with
    /// `custos secret put` (sealed at rest).
    ///
    /// # Errors
    /// [`BrokerError::CredentialUnavailable`] when its variable is not set, or no value is
    /// stored (or it does not open).
    pub(crate) async fn admin_url(
        &self,
        name: &str,
        entry: &CredentialRoleEntry,
    ) -> Result<SecretString, BrokerError> {
        if !entry.spec.engine.has_server() {
            return Err(BrokerError::CredentialUnavailable(format!(
                "credential role `{name}`: a `{}` role has no server connection",
                entry.spec.engine
            )));
        }
        let Some(env_name) = &entry.spec.connection_env else {
            return self.stored_secret(name).await.map_err(|e| {
                BrokerError::CredentialUnavailable(format!(
                    "credential role `{name}`: its admin connection URL: {e}"
                ))
            });
        };
        self.inner.config.credential_env.get(env_name).ok_or_else(|| {
            BrokerError::CredentialUnavailable(format!(
                "credential role `{name}`: environment variable `{env_name}` (its connection_env) is not set on the server"
            ))
        })
    }

    /// The engine to revoke a lease with: its role's current one, else the last one built for
    /// it (a role deleted after its leases were issued).
    async fn engine_for_lease(&self, lease: &Lease) -> Result<Arc<dyn Engine>, BrokerError> {
        let snap = self.snapshot().await?;
        if let Some(entry) = snap.credential_roles.get(&lease.role) {
            return self.engine_for(&lease.role, entry).await;
        }
        self.inner
            .engines
            .by_role
            .lock()
            .ok()
            .and_then(|g| g.get(&lease.role).map(|(_, e)| e.clone()))
            .ok_or_else(|| {
                BrokerError::CredentialUnavailable(format!(
                    "credential role `{}` no longer exists",
                    lease.role
                ))
            })
    }

    async fn refuse_lease(&self, ctx: &TaskContext, role: &str, reason: Reason, message: &str) {
        let mut e = AuditEvent::new(EventKind::LeaseRefused);
        e.initiator = Some(ctx.initiator().to_owned());
        e.agent = Some(ctx.agent().to_owned());
        e.task = Some(ctx.task_id().to_owned());
        e.template = Some(ctx.template().to_owned());
        e.decision = Some(Decision::Deny);
        e.reason = Some(reason);
        e.detail = Some(Detail::Refusal {
            message: format!("credential role `{role}`: {message}"),
            approval_id: None,
        });
        if let Err(err) = self.record(e).await {
            tracing::error!(error = %err, "a refused credential request could not be recorded");
        }
    }

    /// Mints a credential of `role` for the task `ctx` authenticated: the task's template must
    /// list the role; the lease lives the role's `default_ttl`, never beyond its `max_ttl` nor
    /// the task's expiry. The lease intent is written before the credential exists.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] when the template does not list the role;
    /// [`BrokerError::NotFound`] when the role does not exist; [`BrokerError::Invalid`] when the
    /// task has no time left; [`BrokerError::CredentialUnavailable`] when the engine is not
    /// configured or could not mint (the lease is marked failed, nothing is left behind);
    /// [`BrokerError::Unavailable`] when the store or the audit log fails.
    pub async fn issue_lease(
        &self,
        ctx: &TaskContext,
        role: &str,
    ) -> Result<IssuedLease, BrokerError> {
        self.issue_lease_to(ctx, role, Recipient::Task).await
    }

    /// [`Broker::issue_lease`] for `recipient`: the task itself, or an upstream the gateway
    /// injects the credential into (the only way a static secret is handed out).
    pub(crate) async fn issue_lease_to(
        &self,
        ctx: &TaskContext,
        role: &str,
        recipient: Recipient,
    ) -> Result<IssuedLease, BrokerError> {
        // Run to its end even if the client hangs up: a mint under way is activated and
        // audited, or revoked, never left pending for the reconciler.
        let (broker, ctx, role) = (self.clone(), ctx.clone(), role.to_owned());
        self.to_completion("credential issuance", async move {
            broker.mint_lease(&ctx, &role, recipient).await
        })
        .await?
    }

    /// The issuance itself: intent, mint, activation, audit (or refusal, or revocation).
    async fn mint_lease(
        &self,
        ctx: &TaskContext,
        role: &str,
        recipient: Recipient,
    ) -> Result<IssuedLease, BrokerError> {
        let snap = ctx.snapshot();
        let allowed = snap
            .templates
            .get(ctx.template())
            .is_some_and(|t| t.spec.credentials.iter().any(|c| c == role));
        let role_text = custos_core::text::for_display(role, 64);
        if !allowed {
            let message = format!(
                "template `{}` does not allow credential role `{role_text}`",
                ctx.template()
            );
            self.refuse_lease(ctx, &role_text, Reason::CredentialNotAllowed, &message)
                .await;
            return Err(BrokerError::Forbidden(message));
        }
        let Some(entry) = snap.credential_roles.get(role) else {
            let message = format!("credential role `{role_text}` does not exist");
            self.refuse_lease(ctx, &role_text, Reason::UnknownCredentialRole, &message)
                .await;
            return Err(BrokerError::NotFound(message));
        };
        if entry.spec.engine == CredentialEngine::Static && recipient == Recipient::Task {
            let message = format!(
                "credential role `{role_text}` is a static secret: it is handed out only by injection into an upstream"
            );
            self.refuse_lease(ctx, &role_text, Reason::CredentialNotAllowed, &message)
                .await;
            return Err(BrokerError::Forbidden(message));
        }
        let task_id = TaskId::parse(ctx.task_id()).ok_or(BrokerError::Unauthenticated)?;
        let now = self.inner.clock.now_ms();
        let task = self
            .inner
            .store
            .get_task(&task_id)
            .await?
            .filter(|t| t.is_active_at(now))
            .ok_or_else(|| BrokerError::Forbidden(format!("task `{task_id}` is not active")))?;
        let left = Duration::from_millis(u64::try_from(task.expires_at - now).unwrap_or(0));
        let ttl = entry.spec.lease_ttl(left).ok_or_else(|| {
            BrokerError::Invalid(format!("task `{task_id}` has no time left for a lease"))
        })?;
        let engine = match self.engine_for(role, entry).await {
            Ok(e) => e,
            Err(e) => {
                self.refuse_lease(ctx, role, Reason::CredentialFailed, &e.to_string())
                    .await;
                return Err(e);
            }
        };
        let (id, principal) = new_lease_id(&self.inner.lease_scope)?;
        let mut lease = Lease {
            id,
            role: role.to_owned(),
            engine: entry.spec.engine.as_str().to_owned(),
            principal: principal.to_string(),
            task: task.id.clone(),
            agent: task.agent.clone(),
            agent_id: task.agent_id.clone(),
            initiator: task.on_behalf_of.clone(),
            created_at: now,
            expires_at: now.saturating_add(ms(ttl)),
            state: LeaseState::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: 0,
            revoked_at: None,
            renewed_at: None,
        };
        // INVARIANT: the intent is durable before the credential can exist.
        self.inner.store.insert_lease(&lease).await?;
        let grant = Grant {
            task: ctx.task_id(),
            agent: &lease.agent,
            agent_id: lease.agent_id.as_str(),
            initiator: &lease.initiator,
            lease: &lease.id,
        };
        let minted = match engine
            .mint_for(&principal, at_ms(lease.expires_at), &entry.role, &grant)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let error = bounded_error(&e);
                tracing::warn!(lease = %lease.id, role, principal = %principal, reason = e.reason(), error = %error, "credential mint failed");
                self.inner
                    .store
                    .mark_lease_failed(&lease.id, &error)
                    .await?;
                lease.state = LeaseState::Failed;
                let mut ev = with_cause(
                    lease_event(EventKind::LeaseRefused, &lease),
                    None,
                    Some(error.clone()),
                );
                ev.template = Some(ctx.template().to_owned());
                ev.decision = Some(Decision::Deny);
                ev.reason = Some(Reason::CredentialFailed);
                self.record(ev).await?;
                return Err(BrokerError::CredentialUnavailable(format!(
                    "credential role `{role}`: {error}"
                )));
            }
        };
        let activated = self.inner.store.activate_lease(&lease.id).await?;
        // The task may have ended while the credential was made (its end handler then revoked
        // the pending lease, or will find this one active).
        let still_active = self
            .inner
            .store
            .get_task(&task_id)
            .await?
            .is_some_and(|t| t.state == TaskState::Active && t.expires_at > now);
        if !activated || !still_active {
            if let Err(e) = engine.revoke(&principal).await {
                tracing::warn!(lease = %lease.id, error = %e, "revoking a credential of an ended task failed; the reconciler retries");
            } else {
                self.inner
                    .store
                    .mark_lease_revoked(&lease.id, self.inner.clock.now_ms())
                    .await?;
            }
            return Err(BrokerError::Forbidden(format!(
                "task `{task_id}` ended while its credential was made"
            )));
        }
        lease.state = LeaseState::Active;
        let mut ev = lease_event(EventKind::LeaseIssued, &lease);
        ev.template = Some(ctx.template().to_owned());
        ev.decision = Some(Decision::Allow);
        if let Err(e) = self.record(ev).await {
            // Fail closed: a credential nobody can trace is not handed out.
            let _ = self.revoke_lease_now(&lease, Cause::Revoked).await;
            return Err(e);
        }
        tracing::info!(lease = %lease.id, role, principal = %lease.principal, task = %lease.task, agent = %lease.agent, "credential lease issued");
        Ok(IssuedLease {
            lease,
            password: minted.password,
        })
    }

    /// Revokes one lease now: the engine removes the principal (idempotent), the lease is
    /// marked revoked and audited once. A failure is noted on the lease with its next retry.
    async fn revoke_lease_now(&self, lease: &Lease, cause: Cause) -> Result<(), BrokerError> {
        let principal = PrincipalName::parse(&lease.principal).map_err(|e| {
            tracing::error!(lease = %lease.id, error = %e, "stored principal is not a custos principal");
            BrokerError::Unavailable("store")
        })?;
        let revoked = match self.engine_for_lease(lease).await {
            Ok(engine) => engine
                .revoke(&principal)
                .await
                .map_err(|e| bounded_error(&e)),
            Err(e) => Err(bounded_error(&e)),
        };
        let now = self.inner.clock.now_ms();
        match revoked {
            Ok(()) => {
                self.inner.injections.lease_revoked();
                if self.inner.store.mark_lease_revoked(&lease.id, now).await? {
                    let mut done = lease.clone();
                    done.state = LeaseState::Revoked;
                    done.revoked_at = Some(now);
                    self.record(with_cause(
                        lease_event(EventKind::LeaseRevoked, &done),
                        Some(cause),
                        None,
                    ))
                    .await?;
                    tracing::info!(lease = %lease.id, principal = %lease.principal, cause = cause.as_str(), "credential lease revoked");
                }
                Ok(())
            }
            Err(error) => {
                let attempts = lease.attempts.saturating_add(1);
                let give_up = attempts >= MAX_REVOKE_ATTEMPTS;
                let next = now.saturating_add(backoff_ms(attempts));
                let noted = self
                    .inner
                    .store
                    .note_revoke_failure(&lease.id, now, &error, next, give_up)
                    .await?;
                if give_up && noted {
                    tracing::error!(lease = %lease.id, principal = %lease.principal, attempts, error = %error, "credential revocation gave up; the lease is marked failed");
                    self.inner.metrics.lease_revoke_failed();
                    let mut ev = with_cause(
                        lease_event(EventKind::LeaseRevokeFailed, lease),
                        Some(cause),
                        Some(error.clone()),
                    );
                    ev.decision = Some(Decision::Deny);
                    ev.reason = Some(Reason::CredentialFailed);
                    self.record(ev).await?;
                } else {
                    tracing::warn!(lease = %lease.id, principal = %lease.principal, attempts, error = %error, "credential revocation failed; retrying");
                }
                Err(BrokerError::CredentialUnavailable(format!(
                    "revoking lease `{}` failed (retried in the background): {error}",
                    lease.id
                )))
            }
        }
    }

    /// A lease of the task `ctx` authenticated (Vault's `sys/leases/lookup`).
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for a lease of another task or none.
    pub async fn lookup_own_lease(
        &self,
        ctx: &TaskContext,
        id: &str,
    ) -> Result<Lease, BrokerError> {
        let not_found = || BrokerError::NotFound("lease not found".to_owned());
        let id = parse_lease_id(id).ok_or_else(not_found)?;
        self.inner
            .store
            .get_lease(&id)
            .await?
            .filter(|l| l.task.as_str() == ctx.task_id())
            .ok_or_else(not_found)
    }

    /// Renews a lease of the task `ctx` authenticated (Vault's `sys/leases/renew`): it then
    /// expires `increment` from now (the role's `default_ttl` when none), never beyond its
    /// creation plus the role's `max_ttl` nor the task's expiry, and never earlier than before.
    /// The server's own expiry (PostgreSQL `VALID UNTIL`) moves first, then the lease; the
    /// renewal is audited (`lease_renewed`). Returns the lease as renewed.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for a lease of another task or none; [`BrokerError::Invalid`]
    /// for a lease that is not active; [`BrokerError::Forbidden`] when the task is not active;
    /// [`BrokerError::CredentialUnavailable`] when the role is gone or its server refused.
    pub async fn renew_own_lease(
        &self,
        ctx: &TaskContext,
        id: &str,
        increment: Option<Duration>,
    ) -> Result<Lease, BrokerError> {
        let lease = self.lookup_own_lease(ctx, id).await?;
        if lease.state != LeaseState::Active {
            return Err(BrokerError::Invalid(format!(
                "lease `{}` is {} and cannot be renewed",
                lease.id,
                lease.state.as_str()
            )));
        }
        let (broker, ctx) = (self.clone(), ctx.clone());
        self.to_completion("credential renewal", async move {
            broker.renew_lease_now(&ctx, lease, increment).await
        })
        .await?
    }

    async fn renew_lease_now(
        &self,
        ctx: &TaskContext,
        mut lease: Lease,
        increment: Option<Duration>,
    ) -> Result<Lease, BrokerError> {
        let gone = || {
            BrokerError::CredentialUnavailable(format!(
                "credential role `{}` no longer exists",
                lease.role
            ))
        };
        let entry = ctx
            .snapshot()
            .credential_roles
            .get(&lease.role)
            .ok_or_else(gone)?;
        let now = self.inner.clock.now_ms();
        let task = self
            .inner
            .store
            .get_task(&lease.task)
            .await?
            .filter(|t| t.is_active_at(now))
            .ok_or_else(|| {
                BrokerError::Forbidden(format!("task `{}` is not active", lease.task))
            })?;
        let before = lease.expires_at;
        let after =
            entry
                .spec
                .renewed_expiry(lease.created_at, before, now, task.expires_at, increment);
        if after > before {
            let principal = PrincipalName::parse(&lease.principal).map_err(|e| {
                tracing::error!(lease = %lease.id, error = %e, "stored principal is not a custos principal");
                BrokerError::Unavailable("store")
            })?;
            let engine = self.engine_for(&lease.role, entry).await?;
            // The server's expiry first: if the lease's cannot follow, the lease still ends
            // (and is revoked) at its old expiry.
            engine
                .renew(&principal, at_ms(after), &entry.role)
                .await
                .map_err(|e| match e {
                    // A signed token's expiry is part of it: Vault's answer for a lease that
                    // cannot be renewed, a 400.
                    CredentialError::NotRenewable(_) => {
                        BrokerError::Invalid(format!("lease `{}` is not renewable: {e}", lease.id))
                    }
                    e => BrokerError::CredentialUnavailable(format!(
                        "renewing lease `{}`: {}",
                        lease.id,
                        bounded_error(&e)
                    )),
                })?;
        }
        let renewed_before = lease.renewed_at;
        if !self
            .inner
            .store
            .set_lease_expiry(&lease.id, after, Some(now))
            .await?
        {
            return Err(BrokerError::Invalid(format!(
                "lease `{}` was revoked while it was renewed",
                lease.id
            )));
        }
        lease.expires_at = after;
        lease.renewed_at = Some(now);
        let mut ev = lease_event(EventKind::LeaseRenewed, &lease);
        ev.template = Some(ctx.template().to_owned());
        ev.decision = Some(Decision::Allow);
        if let Err(e) = self.record(ev).await {
            // Fail closed: a renewal nobody can trace does not stand.
            let _ = self
                .inner
                .store
                .set_lease_expiry(&lease.id, before, renewed_before)
                .await;
            return Err(e);
        }
        tracing::info!(lease = %lease.id, principal = %lease.principal, expires = lease.expires_at, "credential lease renewed");
        Ok(lease)
    }

    /// Revokes a lease of the task `ctx` authenticated (Vault's `sys/leases/revoke`).
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for a lease of another task or none;
    /// [`BrokerError::CredentialUnavailable`] when the engine failed (retried in the background).
    pub async fn revoke_own_lease(&self, ctx: &TaskContext, id: &str) -> Result<(), BrokerError> {
        let lease = self.lookup_own_lease(ctx, id).await?;
        if lease.state == LeaseState::Revoked {
            return Ok(());
        }
        self.revoke_to_completion(lease).await
    }

    /// Revokes the leases minted for one tool call, now that it ended (run to its end
    /// whether or not the caller still waits; a failure is retried by the expiry worker).
    pub(crate) async fn revoke_call_leases(&self, ids: &[String]) {
        for id in ids {
            let lease = match self.inner.store.get_lease(id).await {
                Ok(Some(l)) if l.state != LeaseState::Revoked => l,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(lease = %id, error = %e, "a per-call lease could not be read to revoke it; it is revoked at its expiry");
                    continue;
                }
            };
            let broker = self.clone();
            let done = self
                .to_completion("per-call credential revocation", async move {
                    broker.revoke_lease_now(&lease, Cause::CallEnd).await
                })
                .await;
            if let Err(e) | Ok(Err(e)) = done {
                tracing::warn!(lease = %id, error = %e, "a per-call lease was not revoked yet; retrying in the background");
            }
        }
    }

    /// [`Broker::revoke_lease_now`] run to its end whether or not the caller still waits.
    async fn revoke_to_completion(&self, lease: Lease) -> Result<(), BrokerError> {
        let broker = self.clone();
        self.to_completion("credential revocation", async move {
            broker.revoke_lease_now(&lease, Cause::Revoked).await
        })
        .await?
    }

    /// Leases newest first (at most 1000): one task's, or all; only failed ones with `failed`.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] without the read permission.
    pub async fn list_leases(
        &self,
        op: &Operator,
        task: Option<&TaskId>,
        failed: bool,
    ) -> Result<Vec<Lease>, BrokerError> {
        op.require(Permission::Read)?;
        Ok(self
            .inner
            .store
            .list_leases(task.map(TaskId::as_str), failed, 1000)
            .await?)
    }

    /// An operator revokes a lease (also one marked failed, to retry it). Returns it as stored
    /// afterwards.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`]; [`BrokerError::Conflict`] when already revoked;
    /// [`BrokerError::CredentialUnavailable`] when the engine failed;
    /// [`BrokerError::Forbidden`] without the admin role.
    pub async fn revoke_lease(&self, op: &Operator, id: &str) -> Result<Lease, BrokerError> {
        op.require(Permission::Administer)?;
        let not_found = || {
            BrokerError::NotFound(format!(
                "lease `{}` not found",
                custos_core::text::for_display(id, 64)
            ))
        };
        let id = parse_lease_id(id).ok_or_else(not_found)?;
        let mut lease = self
            .inner
            .store
            .get_lease(&id)
            .await?
            .ok_or_else(not_found)?;
        if lease.state == LeaseState::Revoked {
            return Err(BrokerError::Conflict(format!(
                "lease `{id}` is already revoked"
            )));
        }
        if lease.state == LeaseState::Failed {
            // A failed lease is retried from scratch; a failed mint left nothing, and revoking
            // nothing succeeds.
            lease.attempts = 0;
        }
        self.revoke_to_completion(lease).await?;
        self.inner.store.get_lease(&id).await?.ok_or_else(not_found)
    }

    /// An operator revokes every live lease whose Vault id (`database/creds/<role>/<lease>`)
    /// lies under `prefix`, a path matched segment by segment as Vault's `revoke-prefix` does
    /// (`database/creds/pg-readonly` takes that role's leases, not `pg-readonly-2`'s;
    /// `database/` takes all). Returns how many were revoked; a lease whose engine failed is
    /// retried in the background and not counted.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] without the admin role; [`BrokerError::Invalid`] for a
    /// prefix outside `database/`.
    pub async fn revoke_lease_prefix(
        &self,
        op: &Operator,
        prefix: &str,
    ) -> Result<usize, BrokerError> {
        op.require(Permission::Administer)?;
        let prefix = prefix.trim_matches('/');
        let mut segments = prefix.split('/');
        if segments.next() != Some("database") || segments.next().is_some_and(|s| s != "creds") {
            return Err(BrokerError::Invalid(format!(
                "prefix `{}` names no leases: leases are under `database/creds/<role>/`",
                custos_core::text::for_display(prefix, 128)
            )));
        }
        let role = segments.next().map(str::to_owned);
        let under = format!("{prefix}/");
        let (broker, actor) = (self.clone(), op.name().to_owned());
        // Runs to its end whether or not the operator still waits: a client hanging up
        // half-way never leaves half the leases it named alive.
        self.to_completion("revocation by prefix", async move {
            let mut revoked = 0;
            for lease in broker.inner.store.live_leases_of_role(role.as_deref()).await? {
                let id = format!("database/creds/{}/{}/", lease.role, lease.id);
                if !id.starts_with(&under) {
                    continue;
                }
                match broker.revoke_to_completion(lease).await {
                    Ok(()) => revoked += 1,
                    Err(BrokerError::CredentialUnavailable(e)) => {
                        tracing::warn!(error = %e, "revoke-prefix: a lease could not be revoked now; retried in the background");
                    }
                    Err(e) => return Err(e),
                }
            }
            tracing::info!(prefix = %custos_core::text::for_display(&under, 128), revoked, actor = %actor, "leases revoked by prefix");
            Ok(revoked)
        })
        .await?
    }

    /// Revokes every pending or active lease of a task. Returns how many were revoked.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be read.
    pub async fn revoke_task_leases(&self, task: &TaskId) -> Result<usize, BrokerError> {
        let mut revoked = 0;
        for lease in self.inner.store.live_leases_of_task(task).await? {
            if self.revoke_lease_now(&lease, Cause::TaskEnd).await.is_ok() {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Revokes every pending or active lease of an agent (it was suspended). Returns how many
    /// were revoked; the others are retried in the background.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be read.
    pub(crate) async fn revoke_agent_leases(&self, agent: &str) -> Result<usize, BrokerError> {
        let mut revoked = 0;
        for lease in self.inner.store.live_leases_of_agent(agent).await? {
            if self
                .revoke_lease_now(&lease, Cause::AgentSuspended)
                .await
                .is_ok()
            {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Revokes the leases past their expiry that are due (first attempts and retries), claimed
    /// so that replicas do not take the same ones. Returns how many were revoked.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be read.
    pub async fn revoke_expired_leases(&self) -> Result<usize, BrokerError> {
        let now = self.inner.clock.now_ms();
        let due = self
            .inner
            .store
            .claim_due_leases(now, now.saturating_add(CLAIM_MS), EXPIRY_BATCH)
            .await?;
        let mut work = tokio::task::JoinSet::new();
        for lease in due {
            let broker = self.clone();
            work.spawn(async move {
                broker
                    .revoke_lease_now(&lease, Cause::Expired)
                    .await
                    .is_ok()
            });
        }
        let mut revoked = 0;
        while let Some(done) = work.join_next().await {
            if matches!(done, Ok(true)) {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Removes principals under this installation's scope that no live lease covers, on every
    /// server a credential role names, and closes intents older than a minute
    /// (their mint never finished). Returns how many principals were removed.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be read.
    pub async fn reconcile_leases(&self) -> Result<usize, BrokerError> {
        let now = self.inner.clock.now_ms();
        let cutoff = now - STALE_PENDING_MS;
        let mut removed = 0;
        for lease in self.inner.store.stale_pending_leases(cutoff, 1000).await? {
            if self
                .revoke_lease_now(&lease, Cause::Reconcile)
                .await
                .is_ok()
            {
                removed += 1;
            }
        }
        let prefix = PrincipalPrefix::lease_ids_starting_with(&self.inner.lease_scope)
            .map_err(|_| BrokerError::Unavailable("lease scope"))?;
        let snap = self.snapshot().await?;
        let mut servers = HashSet::new();
        for (name, entry) in &snap.credential_roles {
            // Signed tokens leave nothing on any server to reconcile.
            // Roles reading one variable share a server; a stored URL is each role's own.
            let server = entry
                .spec
                .connection_env
                .clone()
                .unwrap_or_else(|| format!("stored:{name}"));
            if !entry.spec.engine.has_server() || !servers.insert((entry.spec.engine, server)) {
                continue;
            }
            let engine = match self.engine_for(name, entry).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(role = %name, error = %e, "cannot reconcile credentials of this role's server");
                    continue;
                }
            };
            let found = match engine.list_principals(&prefix).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(role = %name, error = %e, "cannot list principals to reconcile; retrying later");
                    continue;
                }
            };
            if found.is_empty() {
                continue;
            }
            // Read after listing: a principal listed was made after its intent was written,
            // so a live lease for it is in this read.
            let live: HashSet<String> = self
                .inner
                .store
                .live_principals(cutoff)
                .await?
                .into_iter()
                .collect();
            for principal in found.iter().filter(|p| !live.contains(p.as_str())) {
                if let Err(e) = engine.revoke(principal).await {
                    tracing::warn!(principal = %principal, error = %e, "reconciler could not remove a principal; retrying later");
                    continue;
                }
                self.inner.injections.lease_revoked();
                removed += 1;
                let lease = self
                    .inner
                    .store
                    .lease_by_principal(principal.as_str())
                    .await?;
                tracing::info!(principal = %principal, lease = ?lease.as_ref().map(|l| &l.id), "reconciler removed a principal no live lease covers");
                match lease {
                    Some(l) if l.state != LeaseState::Revoked => {
                        if self.inner.store.mark_lease_revoked(&l.id, now).await? {
                            self.record(with_cause(
                                lease_event(EventKind::LeaseRevoked, &l),
                                Some(Cause::Reconcile),
                                None,
                            ))
                            .await?;
                        }
                    }
                    Some(_) => {}
                    None => {
                        let mut e = AuditEvent::new(EventKind::LeaseRevoked);
                        e.detail = Some(Detail::Lease {
                            lease_id: lease_id_of(principal),
                            role: name.clone(),
                            engine: entry.spec.engine.as_str().to_owned(),
                            principal: principal.to_string(),
                            agent_id: String::new(),
                            expires_at: 0,
                            cause: Some("reconcile_untracked".to_owned()),
                            error: None,
                        });
                        self.record(e).await?;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Revokes the leases of each task as it ends or expires, until shutdown.
    pub(crate) async fn watch_task_ends_for_leases(
        &self,
        mut ends: tokio::sync::broadcast::Receiver<String>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match ends.recv().await {
                Ok(id) => {
                    self.inner.injections.forget_task(&id);
                    let Some(task) = TaskId::parse(&id) else {
                        continue;
                    };
                    let broker = self.clone();
                    self.spawn_supervised(async move {
                        if let Err(e) = broker.revoke_task_leases(&task).await {
                            tracing::warn!(task = %task, error = %e, "could not revoke an ended task's leases; they are revoked at their expiry");
                        }
                    });
                }
                // Missed ends: those leases are revoked at their own expiry, which is never
                // after their task's.
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "task ends missed by the lease watcher");
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Revokes due leases every [`EXPIRY_TICK`] until shutdown.
    pub(crate) async fn watch_lease_expiry(&self) {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.revoke_expired_leases().await {
                tracing::warn!(error = %e, "could not look for expired leases; retrying");
            }
        }
    }

    /// Reconciles now and then every [`RECONCILE_EVERY`], until shutdown.
    pub(crate) async fn run_reconciler(&self) {
        loop {
            match self.reconcile_leases().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    "reconciler removed credentials no live lease covers"
                ),
                Err(e) => tracing::warn!(error = %e, "lease reconciliation failed; retrying later"),
            }
            tokio::time::sleep(RECONCILE_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_map_to_principals_under_the_scope() {
        let (id, principal) = new_lease_id("abcde").expect("id");
        assert!(id.starts_with("lease_abcde"), "{id}");
        assert_eq!(
            id.len(),
            LEASE_ID_PREFIX.len() + LEASE_SCOPE_LEN + LEASE_RANDOM_LEN
        );
        assert_eq!(principal.as_str(), format!("custos_{}", &id[6..]));
        assert_eq!(lease_id_of(&principal), id);
        assert!(
            PrincipalPrefix::lease_ids_starting_with("abcde")
                .map(|p| principal.as_str().starts_with(p.as_str()))
                .unwrap_or(false)
        );
        let (other, _) = new_lease_id("abcde").expect("id");
        assert_ne!(id, other);
    }

    #[test]
    fn lease_ids_parse_bare_or_vault_style() {
        let (id, _) = new_lease_id("abcde").expect("id");
        assert_eq!(parse_lease_id(&id).as_deref(), Some(id.as_str()));
        assert_eq!(
            parse_lease_id(&format!("database/creds/pg-readonly/{id}")).as_deref(),
            Some(id.as_str())
        );
        for bad in [
            "",
            "lease_",
            "lease_ABC",
            "task_abc",
            "lease_a-b",
            "database/creds/x/",
        ] {
            assert_eq!(parse_lease_id(bad), None, "{bad}");
        }
        assert_eq!(parse_lease_id(&format!("lease_{}", "a".repeat(26))), None);
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff_ms(1), 500);
        assert_eq!(backoff_ms(2), 1_000);
        assert_eq!(backoff_ms(4), 4_000);
        assert_eq!(backoff_ms(7), 30_000);
        assert_eq!(backoff_ms(1_000), 30_000);
        assert_eq!(backoff_ms(0), 500);
    }
}
