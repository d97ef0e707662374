//! Declarative resources (`Upstream`, `CredentialRole`, `Template`, `Agent`) and their YAML form.
//!
//! A YAML file holds one or more documents, each with a `kind`. Parsing checks every document
//! before any is applied, so one bad document applies nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::credential::CredentialRoleSpec;
use crate::duration::{BoundedDuration, DurationField};
use crate::inject::{InjectTarget, MAX_UPSTREAM_CREDENTIALS, UpstreamCredential};
use crate::names::{TOOL_SEPARATOR, check_resource_name};
use crate::rules::{TierRule, ToolEntry};
use crate::tier::Tier;

/// The longest task TTL a template may allow.
pub const MAX_TEMPLATE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A resource that failed to parse or validate, naming the document and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("document {doc}{what}: {message}")]
pub struct ResourceError {
    /// 1-based position of the document in the file.
    pub doc: usize,
    /// ` (Kind `name`)` when known, else empty.
    pub what: String,
    /// What is wrong, naming the field.
    pub message: String,
}

/// The kinds of resource the registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// An MCP server behind the gateway.
    Upstream,
    /// What a credential lease mints, on which server, for how long.
    CredentialRole,
    /// A permission template for a task type.
    Template,
    /// A registered agent identity.
    Agent,
    /// Raw Cedar policies that forbid calls or raise tiers.
    Policy,
}

impl Kind {
    /// All kinds, in the order they are applied (upstreams and credential roles before the
    /// templates that name them, templates before agents).
    pub const ALL: [Kind; 5] = [
        Kind::Upstream,
        Kind::CredentialRole,
        Kind::Template,
        Kind::Policy,
        Kind::Agent,
    ];

    /// The kind's name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Upstream => "Upstream",
            Kind::CredentialRole => "CredentialRole",
            Kind::Template => "Template",
            Kind::Agent => "Agent",
            Kind::Policy => "Policy",
        }
    }

    /// The prefix of this kind's immutable resource ids (`agent_…`).
    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Upstream => "upstream_",
            Kind::CredentialRole => "credrole_",
            Kind::Template => "template_",
            Kind::Agent => "agent_",
            Kind::Policy => "policy_",
        }
    }

    /// Reads a kind as a user types it: `agent`, `Agents`, `template`, `upstreams`,
    /// `credentialroles`, `credential-role`.
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase().replace(['-', '_'], "");
        let singular = match lower.strip_suffix("ies") {
            Some(stem) => format!("{stem}y"),
            None => lower.strip_suffix('s').unwrap_or(&lower).to_owned(),
        };
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(&singular))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_tier() -> Tier {
    Tier::T3
}

/// The call timeout of an upstream that names none.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds of an upstream's `timeout`.
#[derive(Debug)]
pub enum TimeoutField {}

impl DurationField for TimeoutField {
    const FIELD: &'static str = "timeout";
    const MIN: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_secs(600);
}

/// How long one call to an upstream may take: 1ms to 10m.
pub type CallTimeout = BoundedDuration<TimeoutField>;

/// The bounds of a template's `ttl`.
#[derive(Debug)]
pub enum TtlField {}

impl DurationField for TtlField {
    const FIELD: &'static str = "ttl";
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = MAX_TEMPLATE_TTL;
}

/// The longest a task under a template may live: 1s to 24h.
pub type TemplateTtl = BoundedDuration<TtlField>;

/// A stdio upstream's program and its arguments.
// INVARIANT: at least one element, and the program is not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioCommand(Vec<String>);

impl StdioCommand {
    /// A command line: program first, then its arguments.
    ///
    /// # Errors
    /// A message naming the field when there is no program.
    pub fn new(argv: Vec<String>) -> Result<Self, String> {
        match argv.first() {
            Some(program) if !program.trim().is_empty() => Ok(Self(argv)),
            _ => Err("field `command`: must name a program".into()),
        }
    }

    /// The program to run.
    pub fn program(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// Its arguments.
    pub fn args(&self) -> &[String] {
        self.0.get(1..).unwrap_or_default()
    }

    /// Program and arguments, as written.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// A Streamable HTTP upstream's endpoint.
// INVARIANT: starts with `http://` or `https://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// An `http://` or `https://` URL.
    ///
    /// # Errors
    /// A message naming the field for any other scheme.
    pub fn new(url: String) -> Result<Self, String> {
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(Self(url))
        } else {
            Err(format!(
                "field `url`: `{url}` is not an http:// or https:// URL"
            ))
        }
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the gateway reaches an upstream; written as exactly one of the keys `command` and `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A child process speaking MCP over stdin and stdout (`command: [program, args..]`).
    Stdio {
        /// What to run.
        command: StdioCommand,
    },
    /// A Streamable HTTP MCP endpoint (`url: http://..`).
    Http {
        /// Where.
        url: HttpUrl,
    },
}

/// Who shares one connection to an upstream (one process, for a stdio upstream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UpstreamScope {
    /// One connection serves every task (`scope: shared`, the default).
    #[default]
    Shared,
    /// Each task gets a connection of its own, stopped when the task ends (`scope: task`):
    /// whatever a stdio server holds, such as its environment, never serves another task.
    Task,
}

impl UpstreamScope {
    /// The scope's name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamScope::Shared => "shared",
            UpstreamScope::Task => "task",
        }
    }

    /// Whether this is the default, [`UpstreamScope::Shared`].
    pub fn is_shared(&self) -> bool {
        *self == UpstreamScope::Shared
    }
}

impl Serialize for UpstreamScope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for UpstreamScope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = UpstreamScope;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`shared` or `task` in field `scope`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UpstreamScope, E> {
                match v {
                    "shared" => Ok(UpstreamScope::Shared),
                    "task" => Ok(UpstreamScope::Task),
                    other => Err(E::custom(format!(
                        "field `scope`: unknown scope `{}`, expected `shared` or `task`",
                        crate::text::for_display(other, 40)
                    ))),
                }
            }
        }
        d.deserialize_str(Visit)
    }
}

/// An MCP server behind the gateway: a stdio child process or an HTTP endpoint.
///
/// Written in YAML (and stored, and returned by the API) with the keys `name`, `description`,
/// `command` or `url` (exactly one), `tiers`, `default_tier`, `timeout` and `scope`; reading
/// checks every value, so a spec in hand is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawUpstreamSpec", into = "RawUpstreamSpec")]
pub struct UpstreamSpec {
    /// Its tools appear as `<name>__<tool>`. Lowercase letters, digits and `-`.
    pub name: String,
    /// Free text for operators.
    pub description: Option<String>,
    /// How to reach it: `command` (stdio) or `url` (Streamable HTTP).
    pub transport: Transport,
    /// Tool name to tier; a tool not listed gets `default_tier`.
    pub tiers: BTreeMap<String, Tier>,
    /// The tier of a tool not named in `tiers` (default 3: held, which fails closed).
    pub default_tier: Tier,
    /// How long one call may take before the agent gets an error (`timeout`, default `30s`).
    pub timeout: Option<CallTimeout>,
    /// Whether tasks share one connection (`scope: shared`, the default) or each task gets its
    /// own, stopped when the task ends (`scope: task`).
    pub scope: UpstreamScope,
    /// Rules that raise a tool's tier when its arguments match (`tier_rules`).
    pub tier_rules: Vec<TierRule>,
    /// Tools (names or globs) whose results taint the task: web, e-mail, tickets, any
    /// open-world read (`untrusted`).
    pub untrusted: Vec<String>,
    /// A tool's tier once the task is tainted (`tainted_tiers`; never lowers it).
    pub tainted_tiers: BTreeMap<String, Tier>,
    /// Whether the upstream's own tool annotations (`readOnlyHint`, `destructiveHint`,
    /// `openWorldHint`) may propose a lower tier than `default_tier` for tools `tiers` does
    /// not name (`trusted`; default false: annotations are ignored).
    pub trusted: bool,
    /// Credentials minted for each task's connection and injected into it (`credentials`;
    /// only with `scope: task`).
    pub credentials: Vec<UpstreamCredential>,
    /// Whether agents see its tools as `<name>__<tool>` (`prefix: true`, the default) or by
    /// the upstream's own names (`prefix: false`), so agents and tests written against the
    /// server itself work unchanged. Templates, tiers, policies and the audit log name its
    /// tools `<name>__<tool>` either way; a template may reach at most one such upstream
    /// (checked on apply), so no two of its tools share a name.
    pub prefix: bool,
}

/// [`UpstreamSpec`] as written: the YAML and JSON keys, checked into the typed spec.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamSpec {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default)]
    tiers: BTreeMap<String, Tier>,
    #[serde(default = "default_tier")]
    default_tier: Tier,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout: Option<CallTimeout>,
    // Left out when shared, so specs written before `scope` existed read and print as before.
    #[serde(default, skip_serializing_if = "UpstreamScope::is_shared")]
    scope: UpstreamScope,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tier_rules: Vec<TierRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    untrusted: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tainted_tiers: BTreeMap<String, Tier>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    trusted: bool,
    // Left out when true, so specs written before `prefix` existed read and print as before.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    prefix: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    credentials: Vec<UpstreamCredential>,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if takes a reference
fn is_true(b: &bool) -> bool {
    *b
}

impl TryFrom<RawUpstreamSpec> for UpstreamSpec {
    type Error = String;

    fn try_from(raw: RawUpstreamSpec) -> Result<Self, String> {
        let transport = match (raw.command, raw.url) {
            (Some(_), Some(_)) => {
                return Err("set exactly one of `command` and `url`, not both".into());
            }
            (None, None) => return Err("set exactly one of `command` and `url`".into()),
            (Some(argv), None) => Transport::Stdio {
                command: StdioCommand::new(argv)?,
            },
            (None, Some(url)) => Transport::Http {
                url: HttpUrl::new(url)?,
            },
        };
        Ok(Self {
            name: raw.name,
            description: raw.description,
            transport,
            tiers: raw.tiers,
            default_tier: raw.default_tier,
            timeout: raw.timeout,
            scope: raw.scope,
            tier_rules: raw.tier_rules,
            untrusted: raw.untrusted,
            tainted_tiers: raw.tainted_tiers,
            trusted: raw.trusted,
            prefix: raw.prefix,
            credentials: raw.credentials,
        })
    }
}

impl From<UpstreamSpec> for RawUpstreamSpec {
    fn from(spec: UpstreamSpec) -> Self {
        let (command, url) = match spec.transport {
            Transport::Stdio { command } => (Some(command.0), None),
            Transport::Http { url } => (None, Some(url.0)),
        };
        Self {
            name: spec.name,
            description: spec.description,
            command,
            url,
            tiers: spec.tiers,
            default_tier: spec.default_tier,
            timeout: spec.timeout,
            scope: spec.scope,
            tier_rules: spec.tier_rules,
            untrusted: spec.untrusted,
            tainted_tiers: spec.tainted_tiers,
            trusted: spec.trusted,
            prefix: spec.prefix,
            credentials: spec.credentials,
        }
    }
}

/// The tier an MCP tool's annotations propose, read as the specification defines them (a
/// missing hint takes its default: not read-only, destructive, open-world): read-only and
/// closed-world → Tier 1; read-only but open-world, or a closed-world write that is not
/// destructive → Tier 2; anything else proposes nothing (the upstream's `default_tier`).
pub fn annotation_tier(annotations: Option<&serde_json::Value>) -> Option<Tier> {
    let hint = |k: &str, default: bool| {
        annotations
            .and_then(|a| a.get(k))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(default)
    };
    let read_only = hint("readOnlyHint", false);
    let destructive = hint("destructiveHint", true);
    let open_world = hint("openWorldHint", true);
    match (read_only, destructive, open_world) {
        (true, _, false) => Some(crate::Tier::T1),
        (true, _, true) | (false, false, false) => Some(crate::Tier::T2),
        _ => None,
    }
}

impl UpstreamSpec {
    /// The tier of `tool` at this upstream, before argument rules.
    pub fn tier_of(&self, tool: &str) -> Tier {
        self.tiers.get(tool).copied().unwrap_or(self.default_tier)
    }

    /// Whether its credentials are minted per tool call (`lease: call` on any entry).
    pub fn credentials_per_call(&self) -> bool {
        self.credentials
            .iter()
            .any(|c| c.lease == crate::inject::LeaseScope::Call)
    }

    /// The call timeout: `timeout`, else [`DEFAULT_CALL_TIMEOUT`].
    pub fn call_timeout(&self) -> Duration {
        self.timeout
            .as_ref()
            .map_or(DEFAULT_CALL_TIMEOUT, CallTimeout::get)
    }

    fn validate(&self) -> Result<(), String> {
        check_resource_name(&self.name).map_err(|e| format!("field `name`: {e}"))?;
        if self.name.contains(TOOL_SEPARATOR) || self.name.len() > 32 {
            return Err(format!(
                "field `name`: upstream name `{}` must be at most 32 characters and contain no `__`",
                self.name
            ));
        }
        for rule in &self.tier_rules {
            rule.validate()
                .map_err(|e| format!("field `tier_rules`: {e}"))?;
        }
        for pattern in self.untrusted.iter().chain(self.tainted_tiers.keys()) {
            crate::rules::check_tool_glob(pattern)
                .map_err(|e| format!("field `untrusted`/`tainted_tiers`: {e}"))?;
        }
        self.validate_credentials()
    }

    /// Credentials go to one task's connection, and only where its transport takes them.
    fn validate_credentials(&self) -> Result<(), String> {
        if self.credentials.is_empty() {
            return Ok(());
        }
        if self.credentials.len() > MAX_UPSTREAM_CREDENTIALS {
            return Err(format!(
                "field `credentials`: at most {MAX_UPSTREAM_CREDENTIALS} entries"
            ));
        }
        if self.scope != UpstreamScope::Task {
            return Err(
                "field `credentials`: needs `scope: task`, so a credential minted for one task never serves another"
                    .into(),
            );
        }
        let stdio = matches!(self.transport, Transport::Stdio { .. });
        let mut seen = std::collections::HashSet::new();
        for c in &self.credentials {
            match (&c.target, stdio) {
                (InjectTarget::Env(_) | InjectTarget::Arg, false) => {
                    return Err(format!(
                        "field `credentials`: role `{}`: `env` and `arg` are for stdio upstreams (`command`); an HTTP upstream takes a `header`",
                        c.role
                    ));
                }
                (InjectTarget::Header { .. }, true) => {
                    return Err(format!(
                        "field `credentials`: role `{}`: `header` is for HTTP upstreams (`url`); a stdio upstream takes `env` or `arg`",
                        c.role
                    ));
                }
                _ => {}
            }
            let place = match &c.target {
                InjectTarget::Env(name) => Some(format!("env `{name}`")),
                InjectTarget::Header { name, .. } => {
                    Some(format!("header `{}`", name.to_ascii_lowercase()))
                }
                InjectTarget::Arg => None,
            };
            if let Some(place) = place
                && !seen.insert(place.clone())
            {
                return Err(format!("field `credentials`: {place} is set twice"));
            }
        }
        Ok(())
    }
}

impl AsRef<UpstreamSpec> for UpstreamSpec {
    fn as_ref(&self) -> &UpstreamSpec {
        self
    }
}

/// A permission template for a task type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Lowercase letters, digits and `-`.
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The longest a task under this template may live, e.g. `30m` (1s to 24h).
    pub ttl: TemplateTtl,
    /// Exposed tool names (`upstream__tool`) or globs over them (`files__list_*`), each
    /// optionally with argument constraints and a tier.
    pub tools: Vec<ToolEntry>,
    /// Credential roles its tasks may mint leases of (`credentials: [pg-readonly]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// Resources its tasks may list and read: an upstream and a glob over its URIs each
    /// (`resources: [{upstream: files, uri: "file:///srv/docs/*"}]`). None: no resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceEntry>,
    /// Prompts its tasks may list and get: `upstream__prompt` names or globs over them, as
    /// tools are named. None: no prompts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
}

/// Resources a template's tasks may list and read: the URIs of one upstream that match a glob
/// (`*` any run of characters, `/` included; `?` one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceEntry {
    /// The upstream.
    pub upstream: String,
    /// A URI or a glob over URIs; a resource template is listed when its `uriTemplate`
    /// matches it too.
    pub uri: String,
}

/// The longest URI glob of a template's resource entry.
const MAX_URI_PATTERN: usize = 1024;

/// Whether a `upstream__name` pattern (or glob) could name something of `upstream`.
fn pattern_reaches(pattern: &str, upstream: &str) -> bool {
    pattern.starts_with(&format!("{upstream}{TOOL_SEPARATOR}"))
        || crate::glob::glob_match(pattern.split(TOOL_SEPARATOR).next().unwrap_or(""), upstream)
}

impl TemplateSpec {
    /// The upstream whose resource `uri` is, when an entry of this template allows reading it
    /// (the first entry that matches).
    pub fn resource_upstream(&self, uri: &str) -> Option<&str> {
        self.resources
            .iter()
            .find(|e| crate::glob::glob_match(&e.uri, uri))
            .map(|e| e.upstream.as_str())
    }

    /// Whether this template lets its tasks see `upstream`'s resource (or resource template)
    /// `uri`.
    pub fn allows_resource(&self, upstream: &str, uri: &str) -> bool {
        self.resources
            .iter()
            .any(|e| e.upstream == upstream && crate::glob::glob_match(&e.uri, uri))
    }

    /// Whether this template lets its tasks list and get the prompt named `canonical`
    /// (`upstream__prompt`).
    pub fn allows_prompt(&self, canonical: &str) -> bool {
        self.prompts
            .iter()
            .any(|p| crate::glob::glob_match(p, canonical))
    }

    /// Whether some prompt pattern of this template could name a prompt of `upstream`.
    pub fn may_reach_prompts(&self, upstream: &str) -> bool {
        self.prompts.iter().any(|p| pattern_reaches(p, upstream))
    }

    /// Whether some tool pattern of this template could name a tool of `upstream`: only
    /// those upstreams are asked for their tools.
    pub fn may_reach(&self, upstream: &str) -> bool {
        self.tools
            .iter()
            .any(|e| pattern_reaches(&e.tool, upstream))
    }

    /// Whether this template reaches `upstream` at all: for its tools, its prompts or its
    /// resources (what counts for the one upstream exposed without a prefix).
    pub fn reaches(&self, upstream: &str) -> bool {
        self.may_reach(upstream)
            || self.may_reach_prompts(upstream)
            || self.resources.iter().any(|e| e.upstream == upstream)
    }

    /// The template's maximum task TTL.
    pub fn max_ttl(&self) -> Duration {
        self.ttl.get()
    }

    fn validate(&self) -> Result<(), String> {
        check_resource_name(&self.name).map_err(|e| format!("field `name`: {e}"))?;
        for entry in &self.tools {
            let pattern = &entry.tool;
            let chars_ok = !pattern.is_empty()
                && pattern
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*' | b'?'));
            if !chars_ok || !pattern.contains(TOOL_SEPARATOR) {
                return Err(format!(
                    "field `tools`: `{pattern}` must be `<upstream>__<tool>` or a glob over such names"
                ));
            }
            entry
                .validate()
                .map_err(|e| format!("field `tools`: {e}"))?;
        }
        for role in &self.credentials {
            check_resource_name(role).map_err(|e| format!("field `credentials`: {e}"))?;
        }
        for entry in &self.resources {
            check_resource_name(&entry.upstream)
                .map_err(|e| format!("field `resources`: upstream: {e}"))?;
            let ok = !entry.uri.is_empty()
                && entry.uri.len() <= MAX_URI_PATTERN
                && !entry.uri.chars().any(char::is_control);
            if !ok {
                return Err(format!(
                    "field `resources`: uri must be 1 to {MAX_URI_PATTERN} characters without control characters"
                ));
            }
        }
        for pattern in &self.prompts {
            let chars_ok = !pattern.is_empty()
                && pattern.len() <= 128
                && pattern
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*' | b'?'));
            if !chars_ok || !pattern.contains(TOOL_SEPARATOR) {
                return Err(format!(
                    "field `prompts`: `{pattern}` must be `<upstream>__<prompt>` or a glob over such names"
                ));
            }
        }
        Ok(())
    }
}

/// The kind of work an agent does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Archetype {
    /// Writes and changes code.
    Coding,
    /// Runs automated workflows.
    Automation,
    /// Talks to customers.
    CustomerService,
    /// Internal operations.
    InternalOps,
}

/// The most Cedar text one `Policy` resource holds.
pub const MAX_POLICY_TEXT: usize = 64 * 1024;

/// Raw Cedar policies (`kind: Policy`): `forbid` statements on `Custos::Action::"call"` refuse
/// calls a template would allow; `permit` statements on `Custos::Action::"classify"` with a
/// `@tier("N")` annotation raise a call's tier. The text is checked against Custos's schema
/// when applied (by the policy crate; this crate only bounds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Its name; its statements get the ids `policy:<name>[i]`.
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The Cedar text.
    pub cedar: String,
}

impl PolicySpec {
    fn validate(&self) -> Result<(), String> {
        check_resource_name(&self.name).map_err(|e| format!("field `name`: {e}"))?;
        if self.cedar.trim().is_empty() {
            return Err("field `cedar`: empty".into());
        }
        if self.cedar.len() > MAX_POLICY_TEXT {
            return Err(format!(
                "field `cedar`: {} bytes, more than the {MAX_POLICY_TEXT} allowed",
                self.cedar.len()
            ));
        }
        Ok(())
    }
}

/// A registered agent: one identity, one owner, its allowed templates and its public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Lowercase letters, digits and `-`.
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The accountable human (an e-mail address or a team).
    pub owner: String,
    /// What kind of agent this is.
    pub archetype: Archetype,
    /// Templates this agent may run tasks under.
    pub templates: Vec<String>,
    /// Its Ed25519 public key, PEM (`-----BEGIN PUBLIC KEY-----`), as `custos agent keygen` prints it.
    pub public_key: String,
}

impl AgentSpec {
    fn validate(&self) -> Result<(), String> {
        check_resource_name(&self.name).map_err(|e| format!("field `name`: {e}"))?;
        if self.owner.trim().is_empty() {
            return Err("field `owner`: must name the accountable human".into());
        }
        for t in &self.templates {
            check_resource_name(t).map_err(|e| format!("field `templates`: {e}"))?;
        }
        if !self.public_key.contains("-----BEGIN PUBLIC KEY-----") {
            return Err(
                "field `public_key`: expected a PEM public key (`-----BEGIN PUBLIC KEY-----`)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// One declarative resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// An MCP server.
    Upstream(UpstreamSpec),
    /// A credential role.
    CredentialRole(CredentialRoleSpec),
    /// A permission template.
    Template(TemplateSpec),
    /// An agent identity.
    Agent(AgentSpec),
    /// Raw Cedar policies.
    Policy(PolicySpec),
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Upstream(_) => Kind::Upstream,
            Resource::CredentialRole(_) => Kind::CredentialRole,
            Resource::Template(_) => Kind::Template,
            Resource::Agent(_) => Kind::Agent,
            Resource::Policy(_) => Kind::Policy,
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Upstream(s) => &s.name,
            Resource::CredentialRole(s) => &s.name,
            Resource::Template(s) => &s.name,
            Resource::Agent(s) => &s.name,
            Resource::Policy(s) => &s.name,
        }
    }

    /// The spec as JSON, without `kind` (as stored).
    pub fn spec_json(&self) -> serde_json::Value {
        let v = match self {
            Resource::Upstream(s) => serde_json::to_value(s),
            Resource::CredentialRole(s) => serde_json::to_value(s),
            Resource::Template(s) => serde_json::to_value(s),
            Resource::Agent(s) => serde_json::to_value(s),
            Resource::Policy(s) => serde_json::to_value(s),
        };
        v.unwrap_or(serde_json::Value::Null)
    }

    /// The resource as the user writes it: `kind` first, then the spec.
    pub fn to_document(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert("kind".into(), self.kind().as_str().into());
        if let serde_json::Value::Object(spec) = self.spec_json() {
            doc.extend(spec);
        }
        serde_json::Value::Object(doc)
    }

    /// Rebuilds a resource from its stored JSON spec.
    ///
    /// # Errors
    /// A message when the stored spec no longer deserializes.
    pub fn from_spec_json(kind: Kind, spec: serde_json::Value) -> Result<Self, String> {
        let r = match kind {
            Kind::Upstream => serde_json::from_value(spec).map(Resource::Upstream),
            Kind::CredentialRole => serde_json::from_value(spec).map(Resource::CredentialRole),
            Kind::Template => serde_json::from_value(spec).map(Resource::Template),
            Kind::Agent => serde_json::from_value(spec).map(Resource::Agent),
            Kind::Policy => serde_json::from_value(spec).map(Resource::Policy),
        };
        r.map_err(|e| e.to_string())
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Resource::Upstream(s) => s.validate(),
            Resource::CredentialRole(s) => s.validate(),
            Resource::Template(s) => s.validate(),
            Resource::Agent(s) => s.validate(),
            Resource::Policy(s) => s.validate(),
        }
    }
}

/// Parses and validates every document of a multi-document YAML text.
///
/// Empty documents are skipped. A name given twice for the same kind is an error.
///
/// # Errors
/// The first [`ResourceError`], naming the document and the field.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ResourceError> {
    // Deep nesting costs the parser quadratic time: refuse it before parsing.
    crate::yaml_limits::check(text).map_err(|e| ResourceError {
        doc: e.doc(),
        what: String::new(),
        message: e.to_string(),
    })?;
    let mut out: Vec<Resource> = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let err = |what: String, message: String| ResourceError {
            doc: n,
            what,
            message,
        };
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| err(String::new(), format!("invalid YAML: {e}")))?;
        let mut map = match value {
            serde_yaml::Value::Null => continue,
            serde_yaml::Value::Mapping(m) => m,
            _ => {
                return Err(err(
                    String::new(),
                    "expected a mapping with a `kind` field".into(),
                ));
            }
        };
        let kind_value = map
            .remove("kind")
            .ok_or_else(|| err(String::new(), "missing field `kind`".into()))?;
        let kind_str = kind_value.as_str().unwrap_or_default().to_owned();
        let name = map.get("name").and_then(|v| v.as_str()).map(str::to_owned);
        let what = match &name {
            Some(nm) => format!(" ({kind_str} `{nm}`)"),
            None => format!(" ({kind_str})"),
        };
        let rest = serde_yaml::Value::Mapping(map);
        let parsed = match kind_str.as_str() {
            "Upstream" => serde_yaml::from_value(rest).map(Resource::Upstream),
            "CredentialRole" => serde_yaml::from_value(rest).map(Resource::CredentialRole),
            "Template" => serde_yaml::from_value(rest).map(Resource::Template),
            "Agent" => serde_yaml::from_value(rest).map(Resource::Agent),
            "Policy" => serde_yaml::from_value(rest).map(Resource::Policy),
            other => {
                return Err(err(
                    String::new(),
                    format!(
                        "field `kind`: unknown kind `{other}`, expected `Upstream`, `CredentialRole`, `Template`, `Policy` or `Agent`"
                    ),
                ));
            }
        };
        let resource = parsed.map_err(|e| err(what.clone(), e.to_string()))?;
        resource.validate().map_err(|m| err(what.clone(), m))?;
        if out
            .iter()
            .any(|r| r.kind() == resource.kind() && r.name() == resource.name())
        {
            return Err(err(
                what,
                "the same kind and name appear twice in this file".into(),
            ));
        }
        out.push(resource);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
kind: Upstream
name: files
command: [node, server.js, /srv]
tiers:
  read_text_file: 1
  write_file: 2
default_tier: 3
---
kind: Template
name: docs-review
ttl: 30m
tools: [files__read_text_file, "files__list_*"]
---
kind: Agent
name: agent-docs-review-dev
owner: alice@example.com
archetype: internal-ops
templates: [docs-review]
public_key: |
  -----BEGIN PUBLIC KEY-----
  MCowBQYDK2VwAyEA
  -----END PUBLIC KEY-----
"#;

    #[test]
    fn parses_the_design_minimum() {
        let rs = parse_documents(GOOD).expect("parses");
        assert_eq!(rs.len(), 3);
        let Resource::Upstream(u) = &rs[0] else {
            panic!("not an upstream")
        };
        assert_eq!(u.tier_of("read_text_file"), Tier::T1);
        assert_eq!(u.tier_of("anything"), Tier::T3);
        assert_eq!(rs[2].name(), "agent-docs-review-dev");
    }

    #[test]
    fn unknown_field_names_document_and_field() {
        let text = GOOD.replace("ttl: 30m", "ttl: 30m\ntool: [x]");
        let e = parse_documents(&text).expect_err("must fail");
        assert_eq!(e.doc, 2);
        assert!(e.to_string().contains("Template `docs-review`"), "{e}");
        assert!(e.to_string().contains("unknown field `tool`"), "{e}");
    }

    #[test]
    fn rejects_bad_values() {
        let cases = [
            ("kind: Nope\nname: x\n", "unknown kind"),
            ("name: x\n", "missing field `kind`"),
            (
                "kind: Template\nname: t\nttl: 30q\ntools: []\n",
                "field `ttl`",
            ),
            ("kind: Template\nname: t\nttl: 48h\ntools: []\n", "between"),
            (
                "kind: Template\nname: t\nttl: 1m\ntools: [nounderscore]\n",
                "field `tools`",
            ),
            ("kind: Upstream\nname: u\n", "exactly one"),
            ("kind: Upstream\nname: u\nurl: ftp://x\n", "field `url`"),
            (
                "kind: Upstream\nname: u\nurl: http://x\ntiers: {a: 7}\n",
                "tier",
            ),
            ("kind: Upstream\nname: U\nurl: http://x\n", "field `name`"),
            (
                "kind: Upstream\nname: u\ncommand: [x]\nurl: http://x\n",
                "exactly one of `command` and `url`, not both",
            ),
            ("kind: Upstream\nname: u\ncommand: []\n", "field `command`"),
            (
                "kind: Upstream\nname: u\ncommand: [\" \"]\n",
                "field `command`: must name a program",
            ),
            (
                "kind: Upstream\nname: u\nurl: http://x\ntimeout: 11m\n",
                "field `timeout`: `11m` must be between 1ms and 10m",
            ),
            (
                "kind: Upstream\nname: u\nurl: http://x\ntimeout: 0s\n",
                "field `timeout`: `0s` must be between 1ms and 10m",
            ),
            (
                "kind: Upstream\nname: u\nurl: http://x\ntimeout: soon\n",
                "field `timeout`: invalid duration `soon`",
            ),
            (
                "kind: Upstream\nname: u\nurl: http://x\ntimeout: 5\n",
                "field `timeout`",
            ),
            (
                "kind: Upstream\nname: u\nurl: http://x\nscope: tenant\n",
                "field `scope`: unknown scope `tenant`, expected `shared` or `task`",
            ),
            (
                "kind: Upstream\nname: u\nurl: http://x\nscope: [task]\n",
                "field `scope`",
            ),
            (
                "kind: Template\nname: t\nttl: 500ms\ntools: []\n",
                "field `ttl`: `500ms` must be between 1s and 24h",
            ),
            ("[1, 2]", "mapping"),
            ("kind: Template\nname: t\nttl: [1m\n", "invalid YAML"),
        ];
        for (text, needle) in cases {
            let e = parse_documents(text).expect_err(text);
            assert!(e.to_string().contains(needle), "{text:?} gave {e}");
        }
    }

    #[test]
    fn values_are_typed_once_read() {
        let text = GOOD
            .replace(
                "default_tier: 3",
                "default_tier: 3\ntimeout: 1m30s\nscope: task",
            )
            .replace(
                "command: [node, server.js, /srv]",
                "url: https://mcp.example/mcp",
            );
        let rs = parse_documents(&text).expect("parses");
        let Resource::Upstream(u) = &rs[0] else {
            panic!("not an upstream")
        };
        assert!(
            matches!(&u.transport, Transport::Http { url } if url.as_str() == "https://mcp.example/mcp")
        );
        assert_eq!(u.scope, UpstreamScope::Task);
        let Resource::Template(t) = &rs[1] else {
            panic!("not a template")
        };
        assert_eq!(t.max_ttl(), Duration::from_secs(1800));
        assert_eq!(u.call_timeout(), Duration::from_secs(90));
        assert_eq!(u.timeout.as_ref().map(CallTimeout::as_str), Some("1m30s"));
    }

    #[test]
    fn json_shape_is_what_the_user_wrote() {
        let text = GOOD.replace("default_tier: 3", "default_tier: 3\ntimeout: 90s");
        let rs = parse_documents(&text).expect("parses");
        assert_eq!(
            rs[0].to_document(),
            serde_json::json!({
                "kind": "Upstream",
                "name": "files",
                "command": ["node", "server.js", "/srv"],
                "tiers": {"read_text_file": 1, "write_file": 2},
                "default_tier": 3,
                "timeout": "90s",
            })
        );
        assert_eq!(
            rs[1].spec_json(),
            serde_json::json!({
                "name": "docs-review",
                "ttl": "30m",
                "tools": ["files__read_text_file", "files__list_*"],
            })
        );
        let task = parse_documents("kind: Upstream\nname: u\nurl: http://x\nscope: task\n")
            .expect("task scope");
        assert_eq!(task[0].spec_json()["scope"], "task");
        assert_eq!(task[0].spec_json()["url"], "http://x");
    }

    #[test]
    fn an_upstream_takes_credentials_only_per_task_and_where_its_transport_can() {
        let ok = parse_documents(
            "kind: Upstream\nname: pg\ncommand: [node, pg.js]\nscope: task\ncredentials:\n  - {role: pg-ro, arg: true}\n  - {role: pg-ro, value: password, env: PGPASSWORD}\n",
        )
        .expect("stdio with credentials");
        let Resource::Upstream(spec) = &ok[0] else {
            panic!("not an upstream")
        };
        assert_eq!(spec.credentials.len(), 2);
        assert_eq!(
            ok[0].spec_json()["credentials"],
            serde_json::json!([{"role": "pg-ro", "arg": true}, {"role": "pg-ro", "value": "password", "env": "PGPASSWORD"}])
        );
        parse_documents(
            "kind: Upstream\nname: api\nurl: http://x/mcp\nscope: task\ncredentials: [{role: tok, value: password, header: Authorization, prefix: 'Bearer '}]\n",
        )
        .expect("http with a header");
        for (yaml, says) in [
            (
                "kind: Upstream\nname: pg\ncommand: [x]\ncredentials: [{role: r, arg: true}]\n",
                "needs `scope: task`",
            ),
            (
                "kind: Upstream\nname: pg\nurl: http://x\nscope: task\ncredentials: [{role: r, env: A}]\n",
                "`env` and `arg` are for stdio",
            ),
            (
                "kind: Upstream\nname: pg\ncommand: [x]\nscope: task\ncredentials: [{role: r, header: X-A}]\n",
                "`header` is for HTTP",
            ),
            (
                "kind: Upstream\nname: pg\ncommand: [x]\nscope: task\ncredentials: [{role: r, env: A}, {role: s, env: A}]\n",
                "env `A` is set twice",
            ),
        ] {
            let err = parse_documents(yaml).expect_err(yaml);
            assert!(err.to_string().contains(says), "{yaml}: {err}");
        }
    }
    #[test]
    fn specs_stored_before_typing_still_load() {
        // The JSON the store holds for specs applied by earlier versions.
        let up = serde_json::json!({
            "name": "fx", "command": ["python3", "fx.py"], "timeout": "5s",
            "tiers": {"echo": 1}, "default_tier": 3,
        });
        let r = Resource::from_spec_json(Kind::Upstream, up.clone()).expect("upstream loads");
        let Resource::Upstream(u) = &r else {
            panic!("not an upstream")
        };
        assert_eq!(u.call_timeout(), Duration::from_secs(5));
        assert_eq!(u.scope, UpstreamScope::Shared);
        let Transport::Stdio { command } = &u.transport else {
            panic!("not stdio")
        };
        assert_eq!(
            (command.program(), command.args()),
            ("python3", &["fx.py".to_owned()][..])
        );
        assert_eq!(r.spec_json(), up);
        let tpl = serde_json::json!({"name": "t", "ttl": "10m", "tools": ["fx__*"]});
        let r = Resource::from_spec_json(Kind::Template, tpl.clone()).expect("template loads");
        assert_eq!(r.spec_json(), tpl);
    }

    #[test]
    fn duplicate_names_rejected() {
        let text = "kind: Template\nname: t\nttl: 1m\ntools: []\n---\nkind: Template\nname: t\nttl: 2m\ntools: []\n";
        assert!(
            parse_documents(text)
                .expect_err("dup")
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let text = format!("kind: Template\nname: t\ntools: {}", "[".repeat(100_000));
        let e = parse_documents(&text).expect_err("too deep");
        assert_eq!(
            e.to_string(),
            "document 1: YAML nested deeper than 64 levels (line 3)"
        );
    }

    const ROLE: &str = "kind: CredentialRole
name: pg-readonly
engine: postgres
default_ttl: 5m
max_ttl: 15m
connection_env: APP_PG_ADMIN
role:
  groups: [app_readonly]
  grace: 10s
---
kind: Template
name: db-reader
ttl: 30m
tools: []
credentials: [pg-readonly]
";

    #[test]
    fn credential_roles_parse_and_templates_name_them() {
        let rs = parse_documents(ROLE).expect("parses");
        let Resource::CredentialRole(r) = &rs[0] else {
            panic!("not a credential role")
        };
        assert_eq!(r.engine, crate::CredentialEngine::Postgres);
        assert_eq!(r.default_ttl.get(), Duration::from_secs(300));
        assert_eq!(
            r.engine_document(),
            serde_json::json!({"engine": "postgres", "groups": ["app_readonly"], "grace": "10s"})
        );
        assert_eq!(
            rs[0].spec_json(),
            serde_json::json!({
                "name": "pg-readonly", "engine": "postgres", "default_ttl": "5m",
                "max_ttl": "15m", "connection_env": "APP_PG_ADMIN",
                "role": {"groups": ["app_readonly"], "grace": "10s"},
            })
        );
        let Resource::Template(t) = &rs[1] else {
            panic!("not a template")
        };
        assert_eq!(t.credentials, ["pg-readonly"]);
        // A template without credentials reads and prints as before.
        let plain = parse_documents("kind: Template\nname: t\nttl: 1m\ntools: []\n").expect("t");
        assert!(plain[0].spec_json().get("credentials").is_none());
        assert_eq!(Kind::parse("credentialroles"), Some(Kind::CredentialRole));
        assert_eq!(Kind::parse("credential-role"), Some(Kind::CredentialRole));
    }

    #[test]
    fn bad_credential_roles_name_the_field() {
        let cases = [
            (
                ROLE.replace("max_ttl: 15m", "max_ttl: 2h"),
                "field `max_ttl`: `2h` must be between 1s and 1h",
            ),
            (
                ROLE.replace("default_ttl: 5m", "default_ttl: 20m"),
                "field `default_ttl`: `20m` is longer than `max_ttl` `15m`",
            ),
            (
                ROLE.replace("engine: postgres", "engine: oracle"),
                "unknown variant `oracle`",
            ),
            (
                ROLE.replace(
                    "connection_env: APP_PG_ADMIN",
                    "connection_env: postgres://u:p@h/db",
                ),
                "field `connection_env`",
            ),
            (
                ROLE.replace("connection_env: APP_PG_ADMIN", "admin_url: x"),
                "unknown field `admin_url`",
            ),
            (
                ROLE.replace("credentials: [pg-readonly]", "credentials: [PG]"),
                "field `credentials`",
            ),
            (
                ROLE.replace("  grace: 10s", "  engine: redis"),
                "field `role`: `engine`",
            ),
        ];
        for (text, needle) in cases {
            let e = parse_documents(&text).expect_err(needle);
            assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn kinds_parse_loosely() {
        assert_eq!(Kind::parse("agents"), Some(Kind::Agent));
        assert_eq!(Kind::parse("Template"), Some(Kind::Template));
        assert_eq!(Kind::parse("x"), None);
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::parse_documents;
    use crate::duration::parse_duration;
    use crate::glob::glob_match;
    use crate::names::ExposedTool;

    proptest! {
        // Whatever an operator or the network sends, parsing answers with a value or an error.
        #[test]
        fn parsers_never_panic(text in "\\PC{0,300}") {
            let _ = parse_documents(&text);
            let _ = parse_duration(&text);
            let _ = ExposedTool::parse(&text);
        }

        #[test]
        fn yaml_shaped_input_never_panics(
            kind in prop::sample::select(vec!["Upstream", "Template", "Agent", "x"]),
            body in "[a-z_: \\n\\[\\]{},*0-9-]{0,200}",
        ) {
            let _ = parse_documents(&format!("kind: {kind}\n{body}"));
        }

        #[test]
        fn a_literal_pattern_matches_only_itself(a in "[a-z_]{0,20}", b in "[a-z_]{0,20}") {
            prop_assert_eq!(glob_match(&a, &b), a == b);
            prop_assert!(glob_match("*", &b));
            let prefix = format!("{}*", &a);
            let prefixed = format!("{a}{b}");
            prop_assert!(glob_match(&prefix, &prefixed));
        }

        #[test]
        fn exposed_names_round_trip(up in "[a-z0-9-]{1,20}", tool in "[a-zA-Z0-9_./-]{1,30}") {
            prop_assume!(!up.contains("__"));
            if let Some(name) = ExposedTool::expose(&up, &tool) {
                let t = ExposedTool::parse(&name).expect("exposed names parse");
                prop_assert_eq!(t.upstream, up);
                prop_assert_eq!(t.tool, tool);
            }
        }
    }

    #[test]
    fn annotations_propose_tiers_only_when_they_say_safe() {
        use serde_json::json;
        let t = |a: serde_json::Value| super::annotation_tier(Some(&a));
        assert_eq!(
            t(json!({"readOnlyHint": true, "openWorldHint": false})),
            Some(crate::Tier::T1)
        );
        assert_eq!(
            t(json!({"readOnlyHint": true})),
            Some(crate::Tier::T2),
            "open-world by default"
        );
        assert_eq!(
            t(json!({"destructiveHint": false, "openWorldHint": false})),
            Some(crate::Tier::T2)
        );
        assert_eq!(
            t(json!({"destructiveHint": false})),
            None,
            "open-world write"
        );
        assert_eq!(
            t(json!({"openWorldHint": false})),
            None,
            "destructive by default"
        );
        assert_eq!(
            super::annotation_tier(None),
            None,
            "no annotations: destructive, open-world"
        );
        assert_eq!(
            t(json!({"readOnlyHint": "yes"})),
            None,
            "not a boolean: the default"
        );
    }
}
