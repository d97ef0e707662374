//! Stored secrets, sealed at rest under the key-encryption key (an AES-256-GCM envelope bound
//! to the value's purpose and role): the value a `static` role hands out (only by injection
//! into an upstream, as a lease of the task like any other), and the admin connection URL of a
//! server role that names no `connection_env`.

use std::sync::Arc;

use custos_audit::{AuditEvent, Detail, EventKind};
use custos_core::operator::Permission;
use custos_core::{CredentialEngine, StaticSecret};
use custos_credentials::{
    CredentialError, EngineFuture, EngineKind, Grant, MintedCredential, PrincipalName, RoleSpec,
    Serverless,
};
use custos_crypto::Kek;
use custos_store::Store;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use crate::operators::Operator;
use crate::{Broker, BrokerError};

/// The largest static secret, in bytes.
pub const MAX_STATIC_SECRET: usize = 64 * 1024;

/// What a stored value is for: it is sealed bound to its purpose and role, so a value stored
/// for one never opens as the other (a role whose engine changed included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The value a `static` role hands out.
    Static,
    /// The admin connection URL of a server role without `connection_env`.
    Connection,
}

impl Purpose {
    fn of(engine: CredentialEngine) -> Option<Self> {
        match engine {
            CredentialEngine::Static => Some(Purpose::Static),
            e if e.has_server() => Some(Purpose::Connection),
            _ => None,
        }
    }

    fn record_id(self, role: &str) -> String {
        match self {
            Purpose::Static => format!("static:{role}"),
            Purpose::Connection => format!("connection:{role}"),
        }
    }
}

const NO_KEK: &str = "no key-encryption key is configured (`--kek-file` or `CUSTOS_KEK`)";

/// Opens the value stored for `role`.
///
/// # Errors
/// A message saying why (no key, nothing stored, the store failed, it does not open); never
/// the value.
async fn open_stored(
    store: &Store,
    kek: Option<&Kek>,
    role: &str,
    purpose: Purpose,
) -> Result<SecretString, String> {
    let kek = kek.ok_or_else(|| NO_KEK.to_owned())?;
    let sealed = store
        .static_secret(role)
        .await
        .map_err(|e| format!("the store failed: {e}"))?
        .ok_or_else(|| {
            format!("no value is stored for role `{role}` (`custos secret put {role}`)")
        })?;
    let value = kek
        .open(&purpose.record_id(role), &sealed)
        .map_err(|e| format!("the stored value does not open: {e}"))?;
    let text =
        std::str::from_utf8(&value).map_err(|_| "the stored value is not text".to_owned())?;
    Ok(SecretString::from(text))
}

/// Hands out a static role's stored value as each lease's secret.
pub(crate) struct StaticEngine {
    pub(crate) store: Store,
    pub(crate) kek: Option<Arc<Kek>>,
    pub(crate) role: String,
}

impl StaticEngine {
    async fn open(&self, principal: &PrincipalName) -> Result<MintedCredential, CredentialError> {
        let value = open_stored(
            &self.store,
            self.kek.as_deref(),
            &self.role,
            Purpose::Static,
        )
        .await
        .map_err(|reason| CredentialError::InvalidConfig {
            engine: EngineKind::Static,
            reason,
        })?;
        Ok(MintedCredential::new(principal.clone(), value, None))
    }
}

impl Serverless for StaticEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Static
    }

    // The value stays valid however long the lease lives.
    fn renewable(&self) -> bool {
        true
    }

    fn issue<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
        grant: Option<&'a Grant<'a>>,
    ) -> EngineFuture<'a, MintedCredential> {
        let _ = (expires_at, role, grant);
        Box::pin(self.open(principal))
    }
}

impl Broker {
    /// Stores the value of the static credential role `role`, sealed under the
    /// key-encryption key; audited (`secret_written`, without the value). An admin operator's.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] without the admin role; [`BrokerError::NotFound`] for an
    /// unknown role; [`BrokerError::Invalid`] for a role that is not `static` or an empty or
    /// oversized value; [`BrokerError::CredentialUnavailable`] without a key-encryption key.
    pub async fn put_static_secret(
        &self,
        op: &Operator,
        role: &str,
        value: SecretString,
    ) -> Result<StaticSecret, BrokerError> {
        op.require(Permission::Administer)?;
        let snap = self.snapshot().await?;
        let shown = custos_core::text::for_display(role, 64);
        let entry = snap
            .credential_roles
            .get(role)
            .ok_or_else(|| BrokerError::NotFound(format!("credential role `{shown}` not found")))?;
        let purpose = match (Purpose::of(entry.spec.engine), &entry.spec.connection_env) {
            (Some(Purpose::Static), _) => Purpose::Static,
            (Some(Purpose::Connection), None) => Purpose::Connection,
            (Some(Purpose::Connection), Some(env)) => {
                return Err(BrokerError::Invalid(format!(
                    "credential role `{shown}` reads its admin URL from `{env}` (its connection_env); a value is stored only for a `static` role or a role without connection_env"
                )));
            }
            (None, _) => {
                return Err(BrokerError::Invalid(format!(
                    "credential role `{shown}` is a `{}` role, which stores no value",
                    entry.spec.engine
                )));
            }
        };
        let len = value.expose_secret().len();
        if len == 0 || len > MAX_STATIC_SECRET {
            return Err(BrokerError::Invalid(format!(
                "a static secret is 1 to {MAX_STATIC_SECRET} bytes, not {len}"
            )));
        }
        let kek = self
            .inner
            .config
            .kek
            .clone()
            .ok_or_else(|| BrokerError::CredentialUnavailable(NO_KEK.into()))?;
        let sealed = kek.seal(&purpose.record_id(role), value.expose_secret().as_bytes());
        let (broker, op, role) = (self.clone(), op.clone(), role.to_owned());
        self.to_completion("static secret write", async move {
            let mut e = AuditEvent::new(EventKind::SecretWritten);
            e.actor = Some(op.name.clone());
            e.detail = Some(Detail::SecretWritten {
                role: role.clone(),
                kek: kek.id().to_owned(),
            });
            // Recorded before the value changes: the trail never lacks a write that happened.
            broker.record(e).await?;
            let now = broker.now();
            broker
                .inner
                .store
                .put_static_secret(&role, &sealed, now, &op.name)
                .await?;
            tracing::info!(role = %role, operator = %op.name, "static secret stored");
            Ok(StaticSecret {
                role,
                updated_at: now,
                updated_by: op.name.clone(),
            })
        })
        .await?
    }

    /// The value stored for `role` as its admin connection URL.
    ///
    /// # Errors
    /// Why it is not available (a message, never the value).
    pub(crate) async fn stored_secret(&self, role: &str) -> Result<SecretString, String> {
        open_stored(
            &self.inner.store,
            self.inner.config.kek.as_deref(),
            role,
            Purpose::Connection,
        )
        .await
    }

    /// The static secrets stored: roles and when, never values.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] without the read permission.
    pub async fn list_static_secrets(
        &self,
        op: &Operator,
    ) -> Result<Vec<StaticSecret>, BrokerError> {
        op.require(Permission::Read)?;
        Ok(self.inner.store.list_static_secrets().await?)
    }
}
