//! Credentials an upstream takes: which credential role, which part of the minted credential,
//! and where the gateway puts it (an environment variable or argument of a stdio server
//! started for the task, or a header on an HTTP upstream's requests).
//!
//! ```yaml
//! kind: Upstream
//! name: pg
//! command: [node, server-postgres/dist/index.js]
//! scope: task                 # required: a credential serves one task only
//! credentials:
//!   - role: pg-readonly       # a CredentialRole the task's template lists
//!     value: url              # url (default), username, password or token
//!     arg: true               # appended to the command line, in the order written
//!   - role: pg-readonly       # the same role again: the same lease
//!     value: password
//!     env: PGPASSWORD         # or an environment variable of the process
//! ```
//! On an HTTP upstream: `header: Authorization` with an optional `prefix: "Bearer "`. With
//! `lease: call` on any entry, every entry's lease is minted for one tool call, on a
//! connection of its own, and revoked after it.

use serde::{Deserialize, Serialize};

use crate::names::check_resource_name;

/// The most credentials one upstream takes.
pub const MAX_UPSTREAM_CREDENTIALS: usize = 8;

/// The longest header `prefix`.
const MAX_PREFIX: usize = 64;

/// The longest environment variable or header name.
const MAX_TARGET_NAME: usize = 128;

/// Headers the gateway sets itself, which an injected credential may not replace.
const RESERVED_HEADERS: [&str; 10] = [
    "accept",
    "connection",
    "content-length",
    "content-type",
    "host",
    "last-event-id",
    "mcp-protocol-version",
    "mcp-session-id",
    "te",
    "transfer-encoding",
];

/// Which part of a minted credential is injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectValue {
    /// A connection URL to the role's server with the lease's user and password
    /// (`postgresql://user:password@host:port/db`); the default.
    #[default]
    Url,
    /// The lease's user name.
    Username,
    /// The lease's password.
    Password,
    /// The lease's secret as one value: the signed token of a `jwt` role (the password of
    /// the others).
    Token,
}

impl InjectValue {
    fn is_url(&self) -> bool {
        *self == InjectValue::Url
    }
}

/// How long the lease behind an injected value lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseScope {
    /// One set of leases per task connection, renewed as it ages, revoked when the task ends
    /// (`lease: task`, the default).
    #[default]
    Task,
    /// A set of leases per tool call, minted before it on a connection of its own and revoked
    /// after it (`lease: call`).
    Call,
}

impl LeaseScope {
    fn is_task(&self) -> bool {
        *self == LeaseScope::Task
    }
}

/// Where an injected value goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum InjectTarget {
    /// An environment variable of a stdio server's process.
    Env(String),
    /// An argument appended to a stdio server's command line.
    Arg,
    /// A header on each request to an HTTP upstream, its value `prefix` + the credential.
    Header {
        /// The header name.
        name: String,
        /// Text before the credential (`Bearer `).
        prefix: String,
    },
}

/// One credential an upstream takes: the role, the part of the credential, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawUpstreamCredential", into = "RawUpstreamCredential")]
pub struct UpstreamCredential {
    /// The credential role a lease is minted of (one lease per role per connection).
    pub role: String,
    /// What of the credential is injected.
    pub value: InjectValue,
    /// Where it goes.
    pub target: InjectTarget,
    /// Whether its lease serves the task's connection or one call.
    pub lease: LeaseScope,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamCredential {
    role: String,
    #[serde(default, skip_serializing_if = "InjectValue::is_url")]
    value: InjectValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    arg: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "LeaseScope::is_task")]
    lease: LeaseScope,
}

impl TryFrom<RawUpstreamCredential> for UpstreamCredential {
    type Error = String;

    fn try_from(raw: RawUpstreamCredential) -> Result<Self, String> {
        check_resource_name(&raw.role).map_err(|e| format!("field `credentials.role`: {e}"))?;
        let target = match (raw.env, raw.arg, raw.header) {
            (Some(env), false, None) => {
                check_env_name(&env)?;
                InjectTarget::Env(env)
            }
            (None, true, None) => InjectTarget::Arg,
            (None, false, Some(name)) => {
                check_header_name(&name)?;
                InjectTarget::Header {
                    name,
                    prefix: String::new(),
                }
            }
            _ => {
                return Err(format!(
                    "field `credentials`: role `{}` needs exactly one of `env`, `arg: true` and `header`",
                    raw.role
                ));
            }
        };
        let target = match (target, raw.prefix) {
            (t, None) => t,
            (InjectTarget::Header { name, .. }, Some(prefix)) => {
                if prefix.chars().count() > MAX_PREFIX
                    || !prefix.chars().all(|c| c == ' ' || c.is_ascii_graphic())
                {
                    return Err(format!(
                        "field `credentials.prefix`: at most {MAX_PREFIX} printable ASCII characters"
                    ));
                }
                InjectTarget::Header { name, prefix }
            }
            (_, Some(_)) => {
                return Err("field `credentials.prefix`: only a `header` takes a prefix".into());
            }
        };
        Ok(Self {
            role: raw.role,
            value: raw.value,
            target,
            lease: raw.lease,
        })
    }
}

impl From<UpstreamCredential> for RawUpstreamCredential {
    fn from(c: UpstreamCredential) -> Self {
        let (env, arg, header, prefix) = match c.target {
            InjectTarget::Env(e) => (Some(e), false, None, None),
            InjectTarget::Arg => (None, true, None, None),
            InjectTarget::Header { name, prefix } => (
                None,
                false,
                Some(name),
                (!prefix.is_empty()).then_some(prefix),
            ),
        };
        Self {
            role: c.role,
            value: c.value,
            env,
            arg,
            header,
            prefix,
            lease: c.lease,
        }
    }
}

fn check_env_name(name: &str) -> Result<(), String> {
    if crate::credential::is_env_name(name) {
        Ok(())
    } else {
        Err(format!(
            "field `credentials.env`: `{}` is not an environment variable name (letters, digits and `_`, not starting with a digit)",
            crate::text::for_display(name, 64)
        ))
    }
}

fn check_header_name(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name.len() <= MAX_TARGET_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!(
            "field `credentials.header`: `{}` is not a header name",
            crate::text::for_display(name, 64)
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "field `credentials.header`: `{name}` is set by the gateway itself"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Result<UpstreamCredential, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn each_target_reads_and_prints_as_written() {
        for (yaml, target) in [
            (
                "role: pg\nenv: DATABASE_URL\n",
                InjectTarget::Env("DATABASE_URL".into()),
            ),
            ("role: pg\narg: true\n", InjectTarget::Arg),
            (
                "role: pg\nvalue: password\nheader: Authorization\nprefix: 'Bearer '\n",
                InjectTarget::Header {
                    name: "Authorization".into(),
                    prefix: "Bearer ".into(),
                },
            ),
        ] {
            let c = read(yaml).expect(yaml);
            assert_eq!(c.target, target, "{yaml}");
            assert_eq!(c.role, "pg");
            let again: UpstreamCredential =
                serde_yaml::from_str(&serde_yaml::to_string(&c).expect("print")).expect("reread");
            assert_eq!(again, c);
        }
        assert_eq!(
            read("role: pg\narg: true\n").expect("arg").value,
            InjectValue::Url
        );
    }

    #[test]
    fn a_credential_goes_to_exactly_one_place_with_a_safe_name() {
        for (yaml, says) in [
            ("role: pg\n", "exactly one of"),
            ("role: pg\nenv: A\narg: true\n", "exactly one of"),
            ("role: pg\nenv: A\nheader: X-Key\n", "exactly one of"),
            ("role: pg\nenv: 'A=B'\n", "not an environment variable name"),
            ("role: pg\nenv: 1A\n", "not an environment variable name"),
            ("role: pg\nheader: 'X Key'\n", "not a header name"),
            (
                "role: pg\nheader: \"X-Key\\r\\nEvil\"\n",
                "not a header name",
            ),
            ("role: pg\nheader: Host\n", "set by the gateway"),
            ("role: pg\nheader: mcp-session-id\n", "set by the gateway"),
            (
                "role: pg\nheader: X-Key\nprefix: \"a\\r\\nb\"\n",
                "printable ASCII",
            ),
            ("role: pg\nenv: A\nprefix: x\n", "only a `header`"),
            ("role: PG\nenv: A\n", "credentials.role"),
            ("role: pg\nenv: A\nvalue: secret\n", "unknown variant"),
            ("role: pg\nenv: A\nextra: 1\n", "unknown field"),
        ] {
            let err = read(yaml).expect_err(yaml);
            assert!(err.contains(says), "{yaml}: {err}");
        }
    }
}
