//! Identifiers as types: a task id cannot be passed where an agent id belongs, and every id
//! that comes from outside is checked for its shape (prefix, bounded lowercase base32) once,
//! where it is read.

use serde::Serialize;

/// The longest id suffix accepted (generated ones have 26 characters; migrated ones 32).
const MAX_SUFFIX: usize = 64;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// What every such id starts with.
            pub const PREFIX: &'static str = $prefix;

            /// Reads an id: the prefix, then 1 to 64 characters of `[a-z0-9]`; `None` for
            /// anything else.
            pub fn parse(s: &str) -> Option<Self> {
                let suffix = s.strip_prefix(Self::PREFIX)?;
                let ok = !suffix.is_empty()
                    && suffix.len() <= MAX_SUFFIX
                    && suffix
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                ok.then(|| Self(s.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

id_type!(
    /// A task's id: `task_…`.
    TaskId,
    "task_"
);

id_type!(
    /// An agent registration's immutable id: `agent_…`. A new registration under an old name
    /// gets a new one.
    AgentId,
    "agent_"
);

id_type!(
    /// An approval request's id: `apr_…`.
    ApprovalId,
    "apr_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_a_bounded_lowercase_suffix() {
        assert!(TaskId::parse("task_abc234").is_some());
        assert!(AgentId::parse("agent_0f3a").is_some());
        for bad in [
            "",
            "task_",
            "task",
            "agent_abc",
            "task_ABC",
            "task_a-b",
            "task_a b",
            "task_\u{e9}",
            &format!("task_{}", "a".repeat(65)),
        ] {
            assert_eq!(TaskId::parse(bad), None, "{bad:?}");
        }
        assert!(TaskId::parse(&format!("task_{}", "a".repeat(64))).is_some());
        assert_eq!(
            TaskId::parse("task_x").map(|t| t.to_string()),
            Some("task_x".to_owned())
        );
    }
}
