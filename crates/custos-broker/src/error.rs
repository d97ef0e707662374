//! The broker's error: what an edge maps to a status and a stable code.

use thiserror::Error;

/// A use case that did not succeed.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// Authentication failed. Deliberately says nothing about why.
    #[error("authentication required")]
    Unauthenticated,
    /// Authenticated, but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// Too many failed authentications from this source: refused without checking.
    #[error("too many failed authentications from this address; try again later")]
    RateLimited,
    /// A dependency is down; the request was refused (fail closed).
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// A credential engine is not configured, or its server could not mint or revoke; the
    /// message names the role and what failed, never a secret.
    #[error("{0}")]
    CredentialUnavailable(String),
}

impl BrokerError {
    /// A stable code for the API and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::Unauthenticated => "unauthenticated",
            BrokerError::Forbidden(_) => "forbidden",
            BrokerError::NotFound(_) => "not_found",
            BrokerError::Invalid(_) => "invalid_request",
            BrokerError::Conflict(_) => "conflict",
            BrokerError::RateLimited => "rate_limited",
            BrokerError::Unavailable(_) => "unavailable",
            BrokerError::CredentialUnavailable(_) => "credential_unavailable",
        }
    }
}

impl From<custos_store::StoreError> for BrokerError {
    fn from(e: custos_store::StoreError) -> Self {
        match e {
            custos_store::StoreError::Conflict => BrokerError::Conflict("already exists".into()),
            other => {
                tracing::error!(error = %other, "store error");
                BrokerError::Unavailable("store")
            }
        }
    }
}
