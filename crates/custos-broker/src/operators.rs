//! Operators: authentication by token and role checks.

use custos_audit::{AuditEvent, Detail, EventKind};
use custos_core::Reason;
use custos_core::names::check_resource_name;
use custos_core::operator::Permission;
use custos_core::{OperatorInfo, Role};
use custos_crypto::PresentedToken;
use custos_crypto::operator_token::{self, OperatorToken};
use custos_store::OperatorRow;
use serde::Serialize;

use crate::{Broker, BrokerError, Source};

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    // Private: an `Operator` exists only once `authenticate_operator` checked its token.
    pub(crate) name: String,
    pub(crate) role: Role,
}

impl Operator {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Fails unless this operator's role grants `p`.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] naming the role.
    pub fn require(&self, p: Permission) -> Result<(), BrokerError> {
        if self.role.allows(p) {
            Ok(())
        } else {
            Err(BrokerError::Forbidden(format!(
                "role `{}` may not do this",
                self.role
            )))
        }
    }
}

/// A newly created operator and its token, shown once.
#[derive(Debug, Serialize)]
pub struct CreatedOperator {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The token. Only its hash is stored.
    pub token: String,
}

impl Broker {
    /// Authenticates an operator token.
    ///
    /// # Errors
    /// [`BrokerError::Unauthenticated`] for any bad token (the reason is audited, not returned).
    pub async fn authenticate_operator(
        &self,
        token: &PresentedToken,
        source: Source,
    ) -> Result<Operator, BrokerError> {
        self.check_source(source)?;
        let token = token.expose();
        if !operator_token::well_formed(token) {
            return Err(self.record_auth_failure("operator", Reason::Malformed, None, source));
        }
        let Some(row) = self
            .inner
            .store
            .operator_by_token_hash(&operator_token::hash(token))
            .await?
        else {
            return Err(self.record_auth_failure("operator", Reason::UnknownToken, None, source));
        };
        let role = stored_role(&row.role)?;
        Ok(Operator {
            name: row.name,
            role,
        })
    }

    /// Creates an operator without an acting operator, at start-up. With `replace` an existing
    /// one is re-keyed (the embedded database, whose token file was lost); without it an
    /// existing operator is left alone and `None` returned (a database shared by replicas).
    ///
    /// # Errors
    /// [`BrokerError`] when the store fails.
    pub async fn bootstrap_operator(
        &self,
        name: &str,
        role: Role,
        replace: bool,
    ) -> Result<Option<OperatorToken>, BrokerError> {
        let token = OperatorToken::generate();
        let row = OperatorRow {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            created_at: self.inner.clock.now_ms(),
            created_by: "bootstrap".to_owned(),
        };
        if replace {
            self.inner
                .store
                .upsert_operator(&row, &token.hash())
                .await?;
        } else {
            match self.inner.store.create_operator(&row, &token.hash()).await {
                Ok(()) => {}
                Err(custos_store::StoreError::Conflict) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        let mut e = AuditEvent::new(EventKind::OperatorCreate);
        e.actor = Some("bootstrap".into());
        e.detail = Some(Detail::OperatorCreate {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
        });
        self.record(e).await?;
        Ok(Some(token))
    }

    /// Creates an operator and returns its token once.
    ///
    /// # Errors
    /// [`BrokerError::Conflict`] when the name is taken; [`BrokerError::Forbidden`] without the admin role.
    pub async fn create_operator(
        &self,
        op: &Operator,
        name: &str,
        role: Role,
    ) -> Result<CreatedOperator, BrokerError> {
        op.require(Permission::Administer)?;
        check_resource_name(name).map_err(|e| BrokerError::Invalid(e.to_string()))?;
        let token = OperatorToken::generate();
        let row = OperatorRow {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            created_at: self.inner.clock.now_ms(),
            created_by: op.name.clone(),
        };
        self.inner
            .store
            .create_operator(&row, &token.hash())
            .await
            .map_err(|e| match e {
                custos_store::StoreError::Conflict => {
                    BrokerError::Conflict(format!("operator `{name}` already exists"))
                }
                other => other.into(),
            })?;
        let mut e = AuditEvent::new(EventKind::OperatorCreate);
        e.actor = Some(op.name.clone());
        e.detail = Some(Detail::OperatorCreate {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
        });
        self.record(e).await?;
        Ok(CreatedOperator {
            name: name.to_owned(),
            role,
            token: token.expose().to_owned(),
        })
    }

    /// All operators (names and roles, never tokens).
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] without the read permission.
    pub async fn list_operators(&self, op: &Operator) -> Result<Vec<OperatorInfo>, BrokerError> {
        op.require(Permission::Read)?;
        self.inner
            .store
            .list_operators()
            .await?
            .into_iter()
            .map(|row| {
                Ok(OperatorInfo {
                    role: stored_role(&row.role)?,
                    name: row.name,
                    created_at: row.created_at,
                    created_by: row.created_by,
                })
            })
            .collect()
    }
}

/// A stored role name as a [`Role`]; anything else is a corrupt row (fail closed).
fn stored_role(role: &str) -> Result<Role, BrokerError> {
    Role::parse(role).ok_or_else(|| {
        tracing::error!(role, "stored operator with an unknown role");
        BrokerError::Unavailable("store")
    })
}
