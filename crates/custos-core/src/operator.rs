//! Operators: the humans and systems that run Custos, and what each role may do.

use serde::{Deserialize, Serialize};

/// An operator's role. Roles are enforced on every API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: registry changes, operators, tasks, audit.
    Admin,
    /// Starts and ends tasks; reads the registry.
    Initiator,
    /// Answers held calls; reads the registry.
    Approver,
    /// Reads and verifies the audit trail; reads the registry.
    Auditor,
}

/// An operator as listed: never its token, which is shown once at creation and stored only
/// as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorInfo {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was created (Unix ms).
    pub created_at: i64,
    /// Who created it (an operator's name, or `bootstrap`).
    pub created_by: String,
}

/// What an API call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read resources, tasks and operators' names.
    Read,
    /// Apply or delete resources, suspend agents, create operators.
    Administer,
    /// Start and end tasks.
    RunTasks,
    /// Verify and trace the audit trail.
    Audit,
    /// Approve or deny held calls.
    Approve,
}

impl Role {
    /// The lowercase role name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Initiator => "initiator",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
        }
    }

    /// Reads a role name.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Admin, Role::Initiator, Role::Approver, Role::Auditor]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// Whether this role grants `p`.
    pub fn allows(self, p: Permission) -> bool {
        match self {
            Role::Admin => true,
            Role::Initiator => matches!(p, Permission::Read | Permission::RunTasks),
            Role::Approver => matches!(p, Permission::Read | Permission::Approve),
            Role::Auditor => matches!(p, Permission::Read | Permission::Audit),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
