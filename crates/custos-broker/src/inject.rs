//! Credentials injected into a task's connection to an upstream (`credentials:` on a
//! `scope: task` upstream): minted as leases of the task when the connection is first needed,
//! handed to the gateway as the values to put in the process's environment or arguments or in
//! the requests' headers, and cut out of everything the upstream sends back.
//!
//! One set of leases serves one connection. With `lease: call`, each tool call gets a set and
//! a connection of its own, both ended after it; otherwise the set is minted anew (and the gateway restarts
//! the connection with it) when three quarters of its lifetime have passed or one of its leases
//! was revoked; ending the task revokes its leases, and the gateway stops the connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use custos_core::{InjectTarget, InjectValue, LeaseState, UpstreamSpec};
use custos_credentials::{PrincipalName, Redactor};
use secrecy::SecretString;
use serde_json::Value;

use crate::call::TaskContext;
use crate::leases::IssuedLease;
use crate::{Broker, BrokerError};

/// The part of a set's lifetime after which a new set is minted for the next connection.
const REFRESH_AFTER_NUM: i64 = 3;
const REFRESH_AFTER_DEN: i64 = 4;

/// One value to inject: where it goes and what it is. `Debug` redacts the value.
#[derive(Debug)]
pub struct Injected {
    /// Where it goes.
    pub target: InjectTarget,
    /// The secret (a connection URL, a user name or a password).
    pub value: SecretString,
}

/// The credentials of one task's connection to one upstream.
#[derive(Debug)]
pub struct Injection {
    id: u64,
    leases: Vec<String>,
    refresh_at: i64,
    values: Vec<Injected>,
    redactor: Redactor,
}

static NEXT_INJECTION: AtomicU64 = AtomicU64::new(1);

impl Injection {
    fn new(leases: Vec<String>, refresh_at: i64, values: Vec<Injected>) -> Self {
        let redactor = Redactor::new(values.iter().map(|v| &v.value));
        Self {
            id: NEXT_INJECTION.fetch_add(1, Ordering::Relaxed),
            leases,
            refresh_at,
            values,
            redactor,
        }
    }

    /// Stand-ins for an upstream that takes credentials, for a connection no task owns (an
    /// operator approving its tools): URLs point at the reserved host `invalid.invalid`, user
    /// names and passwords are empty. Nothing real is minted or handed out.
    pub(crate) fn placeholder(spec: &UpstreamSpec) -> Self {
        let values = spec
            .credentials
            .iter()
            .map(|c| Injected {
                target: c.target.clone(),
                value: SecretString::from(match c.value {
                    InjectValue::Url => "postgresql://custos-placeholder@invalid.invalid/none",
                    InjectValue::Username | InjectValue::Password | InjectValue::Token => "",
                }),
            })
            .collect();
        Self::new(Vec::new(), i64::MAX, values)
    }

    /// Identifies this set: a connection made with another set (or none) is not this one's.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The values and where each goes, in the order the upstream lists them.
    pub fn values(&self) -> &[Injected] {
        &self.values
    }

    /// Cuts these values (and their encodings) out of text.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Cuts these values out of every string (and key) of `value`.
    pub fn redact_json(&self, value: &mut Value) {
        if !self.redactor.is_empty() {
            redact_value(&self.redactor, value);
        }
    }
}

fn redact_value(r: &Redactor, value: &mut Value) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = r.redact(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(r, v)),
        Value::Object(map) => {
            let dirty_keys = map
                .keys()
                .any(|k| matches!(r.redact(k), std::borrow::Cow::Owned(_)));
            if dirty_keys {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(r.redact(&k).into_owned(), v);
                }
            }
            map.values_mut().for_each(|v| redact_value(r, v));
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A slot per (task, upstream): the set in use, and the revocation count it was last checked at.
type Slot = Arc<tokio::sync::Mutex<Option<(Arc<Injection>, u64)>>>;

/// The injection sets of live connections.
#[derive(Default)]
pub(crate) struct Injections {
    slots: Mutex<HashMap<(String, String), Slot>>,
    /// Counts lease revocations in this process: a set made before the last one re-reads its
    /// leases' states before it is used again.
    revocations: AtomicU64,
}

impl Injections {
    fn slot(&self, task: &str, upstream: &str) -> Slot {
        let mut g = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.entry((task.to_owned(), upstream.to_owned()))
            .or_default()
            .clone()
    }

    /// A lease was revoked somewhere in this process.
    pub(crate) fn lease_revoked(&self) {
        self.revocations.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets an ended task's sets (its leases are revoked by the task end itself).
    pub(crate) fn forget_task(&self, task: &str) {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(t, _), _| t != task);
    }
}

impl Broker {
    /// The credentials `ctx`'s connection to `spec` carries: none for an upstream that takes
    /// none; else the task's current set, minted (each role's lease written, minted and
    /// audited) when there is none, it is due for refresh, or one of its leases was revoked.
    ///
    /// # Errors
    /// The [`BrokerError`] of the lease that could not be issued (the template does not allow
    /// the role, the role does not exist, its server is unreachable, ...); leases of the set
    /// already issued are revoked.
    pub(crate) async fn injection(
        &self,
        ctx: &TaskContext,
        spec: &UpstreamSpec,
    ) -> Result<Option<Arc<Injection>>, BrokerError> {
        if spec.credentials.is_empty() {
            return Ok(None);
        }
        let injections = &self.inner.injections;
        let slot = injections.slot(ctx.task_id(), &spec.name);
        let mut current = slot.lock().await;
        if spec.credentials_per_call() {
            // Credentials are minted for each call on a connection of its own; the task's
            // connection (for listing tools) gets stand-ins, kept so it is not restarted.
            let set = match current.as_ref() {
                Some((set, _)) => set.clone(),
                None => {
                    let set = Arc::new(Injection::placeholder(spec));
                    *current = Some((set.clone(), 0));
                    set
                }
            };
            return Ok(Some(set));
        }
        let now = self.now();
        if let Some((set, checked)) = current.as_mut()
            && now < set.refresh_at
        {
            let revocations = injections.revocations.load(Ordering::SeqCst);
            if *checked == revocations || self.all_active(&set.leases).await? {
                *checked = revocations;
                return Ok(Some(set.clone()));
            }
        }
        let checked = injections.revocations.load(Ordering::SeqCst);
        let set = Arc::new(self.mint_injection(ctx, spec).await?);
        *current = Some((set.clone(), checked));
        Ok(Some(set))
    }

    /// The credentials for one call on `spec`: for an upstream whose credentials are minted
    /// per call, a new set (revoked by [`Broker::end_call_injection`] after the call); for
    /// the others, the task connection's ([`Broker::injection`]).
    ///
    /// # Errors
    /// As [`Broker::injection`].
    pub(crate) async fn call_injection(
        &self,
        ctx: &TaskContext,
        spec: &UpstreamSpec,
    ) -> Result<Option<Arc<Injection>>, BrokerError> {
        if spec.credentials_per_call() {
            return Ok(Some(Arc::new(self.mint_injection(ctx, spec).await?)));
        }
        self.injection(ctx, spec).await
    }

    /// Revokes the leases of a per-call set once its call ended (nothing for a task
    /// connection's set, whose leases end with the task).
    pub(crate) async fn end_call_injection(&self, spec: &UpstreamSpec, set: Option<&Injection>) {
        if let Some(set) = set
            && spec.credentials_per_call()
        {
            self.revoke_call_leases(&set.leases).await;
        }
    }

    async fn all_active(&self, leases: &[String]) -> Result<bool, BrokerError> {
        for id in leases {
            let live = self
                .inner
                .store
                .get_lease(id)
                .await?
                .is_some_and(|l| l.state == LeaseState::Active && l.expires_at > self.now());
            if !live {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Issues one lease per role the upstream names and builds the values to inject; if any
    /// step fails, the leases already issued for the set are revoked.
    async fn mint_injection(
        &self,
        ctx: &TaskContext,
        spec: &UpstreamSpec,
    ) -> Result<Injection, BrokerError> {
        let mut issued: Vec<(String, IssuedLease)> = Vec::new();
        let built = self.issue_and_build(ctx, spec, &mut issued).await;
        match built {
            Ok(values) => {
                let refresh_at = issued
                    .iter()
                    .map(|(_, l)| {
                        let life = l.lease.expires_at.saturating_sub(l.lease.created_at);
                        l.lease.created_at + life * REFRESH_AFTER_NUM / REFRESH_AFTER_DEN
                    })
                    .min()
                    .unwrap_or_else(|| self.now());
                tracing::info!(task = %ctx.task_id(), upstream = %spec.name, leases = issued.len(), "credentials minted for the task's upstream connection");
                Ok(Injection::new(
                    issued.into_iter().map(|(_, l)| l.lease.id).collect(),
                    refresh_at,
                    values,
                ))
            }
            Err(e) => {
                for (_, lease) in &issued {
                    let _ = self.revoke_own_lease(ctx, &lease.lease.id).await;
                }
                Err(e)
            }
        }
    }

    async fn issue_and_build(
        &self,
        ctx: &TaskContext,
        spec: &UpstreamSpec,
        issued: &mut Vec<(String, IssuedLease)>,
    ) -> Result<Vec<Injected>, BrokerError> {
        let mut values = Vec::with_capacity(spec.credentials.len());
        for c in &spec.credentials {
            if !issued.iter().any(|(role, _)| *role == c.role) {
                let lease = self
                    .issue_lease_to(ctx, &c.role, crate::leases::Recipient::Upstream)
                    .await?;
                issued.push((c.role.clone(), lease));
            }
            let Some((_, lease)) = issued.iter().find(|(role, _)| *role == c.role) else {
                continue;
            };
            let value = match c.value {
                InjectValue::Url => self.lease_url(ctx, &c.role, lease).await?,
                InjectValue::Username => SecretString::from(lease.lease.principal.clone()),
                InjectValue::Password | InjectValue::Token => lease.password.clone(),
            };
            values.push(Injected {
                target: c.target.clone(),
                value,
            });
        }
        Ok(values)
    }

    /// The connection URL of an issued lease: its role's admin URL with the lease's user and
    /// password.
    async fn lease_url(
        &self,
        ctx: &TaskContext,
        role: &str,
        lease: &IssuedLease,
    ) -> Result<SecretString, BrokerError> {
        let entry = ctx
            .snapshot()
            .credential_roles
            .get(role)
            .ok_or_else(|| BrokerError::NotFound(format!("credential role `{role}`")))?;
        let admin = self.admin_url(role, entry).await?;
        let kind = crate::leases::engine_kind(entry.spec.engine);
        let principal = PrincipalName::parse(&lease.lease.principal)
            .map_err(|_| BrokerError::Unavailable("lease principal"))?;
        custos_credentials::connection_url(kind, &admin, &principal, &lease.password).map_err(|e| {
            BrokerError::CredentialUnavailable(format!("credential role `{role}`: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_and_key_of_a_result_loses_the_injected_values() {
        let secret = "s3cr3t-password-of-a-lease-0123";
        let set = Injection::new(
            vec![],
            0,
            vec![
                Injected {
                    target: InjectTarget::Arg,
                    value: SecretString::from(format!("postgresql://custos_x:{secret}@h/db")),
                },
                Injected {
                    target: InjectTarget::Env("PGPASSWORD".into()),
                    value: SecretString::from(secret),
                },
            ],
        );
        let mut result = serde_json::json!({
            "content": [{"type": "text", "text": format!("connected as postgresql://custos_x:{secret}@h/db")}],
            "structuredContent": {secret: [secret, 1, null]},
        });
        set.redact_json(&mut result);
        let text = result.to_string();
        assert!(!text.contains(secret), "{text}");
        assert_eq!(result["content"][0]["text"], "connected as [REDACTED]");
        assert_eq!(result["structuredContent"]["[REDACTED]"][0], "[REDACTED]");
        assert!(!format!("{set:?}").contains(secret));
    }
}
