//! Declarative resources (`Upstream`, `Template`, `Agent`) and their YAML form.
//!
//! A YAML file holds one or more documents, each with a `kind`. Parsing checks every document
//! before any is applied, so one bad document applies nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::duration::parse_duration;
use crate::names::{TOOL_SEPARATOR, check_resource_name};
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
    /// A permission template for a task type.
    Template,
    /// A registered agent identity.
    Agent,
}

impl Kind {
    /// All kinds, in the order they are applied (upstreams before templates before agents).
    pub const ALL: [Kind; 3] = [Kind::Upstream, Kind::Template, Kind::Agent];

    /// The kind's name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Upstream => "Upstream",
            Kind::Template => "Template",
            Kind::Agent => "Agent",
        }
    }

    /// The prefix of this kind's immutable resource ids (`agent_…`).
    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Upstream => "upstream_",
            Kind::Template => "template_",
            Kind::Agent => "agent_",
        }
    }

    /// Reads a kind as a user types it: `agent`, `Agents`, `template`, `upstreams`.
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(singular))
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

/// An MCP server behind the gateway: a stdio child process or an HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Its tools appear as `<name>__<tool>`. Lowercase letters, digits and `-`.
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A stdio MCP server: program and arguments. Exactly one of `command` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A Streamable HTTP MCP server. Exactly one of `command` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Tool name to tier; a tool not listed gets `default_tier`.
    #[serde(default)]
    pub tiers: BTreeMap<String, Tier>,
    /// The tier of a tool not named in `tiers` (default 3: held, which fails closed).
    #[serde(default = "default_tier")]
    pub default_tier: Tier,
    /// How long one call may take before the agent gets an error (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl UpstreamSpec {
    /// The tier of `tool` at this upstream, before argument rules.
    pub fn tier_of(&self, tool: &str) -> Tier {
        self.tiers.get(tool).copied().unwrap_or(self.default_tier)
    }

    /// The call timeout.
    pub fn call_timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(30))
    }

    fn validate(&self) -> Result<(), String> {
        check_resource_name(&self.name).map_err(|e| format!("field `name`: {e}"))?;
        if self.name.contains(TOOL_SEPARATOR) || self.name.len() > 32 {
            return Err(format!(
                "field `name`: upstream name `{}` must be at most 32 characters and contain no `__`",
                self.name
            ));
        }
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => {
                return Err("set exactly one of `command` and `url`, not both".into());
            }
            (None, None) => return Err("set exactly one of `command` and `url`".into()),
            (Some(cmd), None) if cmd.is_empty() || cmd[0].trim().is_empty() => {
                return Err("field `command`: must name a program".into());
            }
            (None, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(format!(
                    "field `url`: `{url}` is not an http:// or https:// URL"
                ));
            }
            _ => {}
        }
        if let Some(t) = &self.timeout {
            let d = parse_duration(t).map_err(|e| format!("field `timeout`: {e}"))?;
            if d.is_zero() || d > Duration::from_secs(600) {
                return Err(format!(
                    "field `timeout`: `{t}` must be between 1ms and 10m"
                ));
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
    /// The longest a task under this template may live, e.g. `30m` (at most 24h).
    pub ttl: String,
    /// Exposed tool names (`upstream__tool`) or globs over them (`files__list_*`).
    pub tools: Vec<String>,
}

impl TemplateSpec {
    /// The template's maximum task TTL.
    pub fn max_ttl(&self) -> Duration {
        parse_duration(&self.ttl).unwrap_or(Duration::ZERO)
    }

    fn validate(&self) -> Result<(), String> {
        check_resource_name(&self.name).map_err(|e| format!("field `name`: {e}"))?;
        let ttl = parse_duration(&self.ttl).map_err(|e| format!("field `ttl`: {e}"))?;
        if ttl.is_zero() || ttl > MAX_TEMPLATE_TTL {
            return Err(format!(
                "field `ttl`: `{}` must be between 1s and 24h",
                self.ttl
            ));
        }
        for pattern in &self.tools {
            let chars_ok = !pattern.is_empty()
                && pattern
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*' | b'?'));
            if !chars_ok || !pattern.contains(TOOL_SEPARATOR) {
                return Err(format!(
                    "field `tools`: `{pattern}` must be `<upstream>__<tool>` or a glob over such names"
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
    /// A permission template.
    Template(TemplateSpec),
    /// An agent identity.
    Agent(AgentSpec),
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Upstream(_) => Kind::Upstream,
            Resource::Template(_) => Kind::Template,
            Resource::Agent(_) => Kind::Agent,
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Upstream(s) => &s.name,
            Resource::Template(s) => &s.name,
            Resource::Agent(s) => &s.name,
        }
    }

    /// The spec as JSON, without `kind` (as stored).
    pub fn spec_json(&self) -> serde_json::Value {
        let v = match self {
            Resource::Upstream(s) => serde_json::to_value(s),
            Resource::Template(s) => serde_json::to_value(s),
            Resource::Agent(s) => serde_json::to_value(s),
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
            Kind::Template => serde_json::from_value(spec).map(Resource::Template),
            Kind::Agent => serde_json::from_value(spec).map(Resource::Agent),
        };
        r.map_err(|e| e.to_string())
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Resource::Upstream(s) => s.validate(),
            Resource::Template(s) => s.validate(),
            Resource::Agent(s) => s.validate(),
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
            "Template" => serde_yaml::from_value(rest).map(Resource::Template),
            "Agent" => serde_yaml::from_value(rest).map(Resource::Agent),
            other => {
                return Err(err(
                    String::new(),
                    format!(
                        "field `kind`: unknown kind `{other}`, expected `Upstream`, `Template` or `Agent`"
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
            ("[1, 2]", "mapping"),
            ("kind: Template\nname: t\nttl: [1m\n", "invalid YAML"),
        ];
        for (text, needle) in cases {
            let e = parse_documents(text).expect_err(text);
            assert!(e.to_string().contains(needle), "{text:?} gave {e}");
        }
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
        fn exposed_names_round_trip(up in "[a-z0-9-]{1,20}", tool in "[a-zA-Z0-9_-]{1,30}") {
            prop_assume!(!up.contains("__"));
            if let Some(name) = ExposedTool::expose(&up, &tool) {
                let t = ExposedTool::parse(&name).expect("exposed names parse");
                prop_assert_eq!(t.upstream, up);
                prop_assert_eq!(t.tool, tool);
            }
        }
    }
}
