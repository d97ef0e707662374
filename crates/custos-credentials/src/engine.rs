//! The engine interface the lease manager, reconciler and broker program against.

use std::future::Future;
use std::pin::Pin;

use secrecy::SecretString;
use time::OffsetDateTime;

use crate::error::{CredentialError, EngineKind};
use crate::principal::{PrincipalName, PrincipalPrefix};
use crate::role::RoleSpec;

/// The future an [`Engine`] method returns; boxed so engines can live behind
/// `Arc<dyn Engine>`, one per configured server.
pub type EngineFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, CredentialError>> + Send + 'a>>;

/// A credential an engine just created.
///
/// `Debug` shows the principal and expiry; the password prints as `[REDACTED]` (it is a
/// [`SecretString`], zeroized on drop, with no `Display`).
#[derive(Debug)]
#[non_exhaustive]
pub struct MintedCredential {
    /// The user or role name on the server; also the `username` the agent side sees.
    pub principal: PrincipalName,
    /// The password.
    pub password: SecretString,
    /// When the server itself stops accepting the credential (PostgreSQL `VALID UNTIL`, the
    /// lease expiry plus the role's grace), or `None` when the server has no such notion and
    /// only revocation ends it (MySQL, Redis).
    pub server_expires_at: Option<OffsetDateTime>,
}

/// Whom a credential is for. Engines whose credential names its holder (signed tokens) read
/// it; no engine puts any of it into SQL or ACL text.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The task id.
    pub task: &'a str,
    /// The agent's name.
    pub agent: &'a str,
    /// The agent's immutable id.
    pub agent_id: &'a str,
    /// The human or event on whose behalf the task runs.
    pub initiator: &'a str,
    /// The lease id.
    pub lease: &'a str,
}

impl MintedCredential {
    /// A credential an engine outside this crate made.
    pub fn new(
        principal: PrincipalName,
        password: SecretString,
        server_expires_at: Option<OffsetDateTime>,
    ) -> Self {
        Self {
            principal,
            password,
            server_expires_at,
        }
    }
}

/// One server on which Custos mints per-lease principals.
///
/// Implementations are cheap to share (`Arc<dyn Engine>`) and safe to call concurrently.
/// Every principal is `custos_<lease id>`; the lease manager writes the lease intent before
/// calling [`Engine::mint`], so a crash between the two leaves a principal the reconciler
/// finds with [`Engine::list_principals`] and removes with [`Engine::revoke`].
pub trait Engine: Send + Sync {
    /// Which server kind this is.
    fn kind(&self) -> EngineKind;

    /// Creates `principal` with the privileges `role` describes, valid until `expires_at`
    /// (plus the role's grace where the server enforces expiry).
    ///
    /// A failed mint leaves no principal behind: the steps run in one transaction where the
    /// server has transactional DDL (PostgreSQL), and are undone otherwise.
    ///
    /// # Errors
    /// [`CredentialError::InvalidRole`] or [`CredentialError::WrongRole`] before anything is
    /// sent; [`CredentialError::Unreachable`]; [`CredentialError::AlreadyExists`] (the existing
    /// principal is left alone); [`CredentialError::Server`] naming the failing step;
    /// [`CredentialError::CleanupFailed`] when undoing a half-made principal failed too.
    fn mint<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
    ) -> EngineFuture<'a, MintedCredential>;

    /// [`Engine::mint`] for `grant`'s holder: what the lease manager calls. Engines whose
    /// credential names its holder override it; the others mint as [`Engine::mint`] does.
    ///
    /// # Errors
    /// As [`Engine::mint`].
    fn mint_for<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
        grant: &'a Grant<'a>,
    ) -> EngineFuture<'a, MintedCredential> {
        let _ = grant;
        self.mint(principal, expires_at, role)
    }

    /// Extends `principal` (made for `role`) to `expires_at`, where the server enforces expiry
    /// itself (PostgreSQL `VALID UNTIL`, plus the role's grace): the server's new expiry, or
    /// `None` for servers without one (MySQL, Redis: the default), where the lease alone
    /// bounds it.
    ///
    /// # Errors
    /// [`CredentialError::WrongRole`]; [`CredentialError::Unreachable`];
    /// [`CredentialError::Server`] (also when the principal no longer exists).
    fn renew<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
    ) -> EngineFuture<'a, Option<OffsetDateTime>> {
        let _ = (principal, expires_at, role);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Removes `principal`: no new logins, its open sessions terminated, then deleted.
    /// Idempotent: revoking a principal that does not exist is `Ok`.
    ///
    /// # Errors
    /// [`CredentialError::Unreachable`] or [`CredentialError::Server`]; the caller retries.
    fn revoke<'a>(&'a self, principal: &'a PrincipalName) -> EngineFuture<'a, ()>;

    /// The principals that exist on the server under `prefix`, sorted.
    ///
    /// # Errors
    /// [`CredentialError::Unreachable`] or [`CredentialError::Server`].
    fn list_principals<'a>(
        &'a self,
        prefix: &'a PrincipalPrefix,
    ) -> EngineFuture<'a, Vec<PrincipalName>>;

    /// Connects and authenticates as the admin and runs a trivial command.
    ///
    /// # Errors
    /// [`CredentialError::Unreachable`] naming `host:port` when the server cannot be reached;
    /// [`CredentialError::Server`] when it refuses the admin.
    fn check(&self) -> EngineFuture<'_, ()>;
}

/// An engine without a server: Custos makes the credential itself (a signed token, a stored
/// value), so there is nothing to revoke it on, to list or to check. Implementing this
/// implements [`Engine`]: revocation, listing and the check succeed with nothing to do, and a
/// renewal moves no server expiry (or is refused when [`Serverless::renewable`] says so).
pub trait Serverless: Send + Sync {
    /// Which kind this is.
    fn kind(&self) -> EngineKind;

    /// Whether a lease of it may be renewed.
    fn renewable(&self) -> bool;

    /// Makes the credential, for `grant`'s holder when the lease manager names one.
    ///
    /// # Errors
    /// As [`Engine::mint`].
    fn issue<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
        grant: Option<&'a Grant<'a>>,
    ) -> EngineFuture<'a, MintedCredential>;
}

impl<T: Serverless> Engine for T {
    fn kind(&self) -> EngineKind {
        Serverless::kind(self)
    }

    fn mint<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
    ) -> EngineFuture<'a, MintedCredential> {
        self.issue(principal, expires_at, role, None)
    }

    fn mint_for<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
        grant: &'a Grant<'a>,
    ) -> EngineFuture<'a, MintedCredential> {
        self.issue(principal, expires_at, role, Some(grant))
    }

    fn renew<'a>(
        &'a self,
        principal: &'a PrincipalName,
        expires_at: OffsetDateTime,
        role: &'a RoleSpec,
    ) -> EngineFuture<'a, Option<OffsetDateTime>> {
        let _ = (principal, expires_at, role);
        let renewed = if self.renewable() {
            Ok(None)
        } else {
            Err(CredentialError::NotRenewable(Serverless::kind(self)))
        };
        Box::pin(std::future::ready(renewed))
    }

    fn revoke<'a>(&'a self, principal: &'a PrincipalName) -> EngineFuture<'a, ()> {
        let _ = principal;
        Box::pin(std::future::ready(Ok(())))
    }

    fn list_principals<'a>(
        &'a self,
        prefix: &'a PrincipalPrefix,
    ) -> EngineFuture<'a, Vec<PrincipalName>> {
        let _ = prefix;
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn check(&self) -> EngineFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Implements [`Engine`] for an engine type by boxing its inherent `mint_inner`,
/// `revoke_inner`, `list_inner` and `check_inner` async methods (and, with `renew = name`, that
/// method for [`Engine::renew`]; without, the server has no expiry to move); `$kind` is its
/// [`EngineKind`]. (The boxing is what keeps the trait usable as `dyn Engine`.)
macro_rules! engine_from_inner_methods {
    ($ty:ty, $kind:expr $(, renew = $renew:ident)?) => {
        impl $crate::engine::Engine for $ty {
            fn kind(&self) -> $crate::error::EngineKind {
                $kind
            }

            fn mint<'a>(
                &'a self,
                principal: &'a $crate::principal::PrincipalName,
                expires_at: ::time::OffsetDateTime,
                role: &'a $crate::role::RoleSpec,
            ) -> $crate::engine::EngineFuture<'a, $crate::engine::MintedCredential> {
                Box::pin(self.mint_inner(principal, expires_at, role))
            }

            $(
            fn renew<'a>(
                &'a self,
                principal: &'a $crate::principal::PrincipalName,
                expires_at: ::time::OffsetDateTime,
                role: &'a $crate::role::RoleSpec,
            ) -> $crate::engine::EngineFuture<'a, Option<::time::OffsetDateTime>> {
                Box::pin(self.$renew(principal, expires_at, role))
            }
            )?

            fn revoke<'a>(
                &'a self,
                principal: &'a $crate::principal::PrincipalName,
            ) -> $crate::engine::EngineFuture<'a, ()> {
                Box::pin(self.revoke_inner(principal))
            }

            fn list_principals<'a>(
                &'a self,
                prefix: &'a $crate::principal::PrincipalPrefix,
            ) -> $crate::engine::EngineFuture<'a, Vec<$crate::principal::PrincipalName>> {
                Box::pin(self.list_inner(prefix))
            }

            fn check(&self) -> $crate::engine::EngineFuture<'_, ()> {
                Box::pin(self.check_inner())
            }
        }
    };
}
pub(crate) use engine_from_inner_methods;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MysqlEngine, PostgresEngine, RedisEngine};

    fn shareable<T: Engine + 'static>() -> Option<std::sync::Arc<dyn Engine>> {
        None::<std::sync::Arc<T>>.map(|e| e as std::sync::Arc<dyn Engine>)
    }

    #[test]
    fn engines_are_object_safe_and_shareable() {
        assert!(shareable::<PostgresEngine>().is_none());
        assert!(shareable::<MysqlEngine>().is_none());
        assert!(shareable::<RedisEngine>().is_none());
    }
}
