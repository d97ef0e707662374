//! Policy: which tools a task's template allows, at which tier, and the decision on one call.
//!
//! A [`Permit`] can only be built here: code that calls an upstream must hold one.
//! Cedar policies compiled from templates (argument constraints) slot in behind [`decide`].

use custos_core::glob::glob_match;
use custos_core::{Decision, ExposedTool, TemplateSpec, Tier, UpstreamSpec};

/// Why a call was refused: a stable code for metrics and audit, and a message for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `tool_not_allowed`, `unknown_upstream`, `tier4_denied`, `approval_unavailable`, `invalid_tool_name`.
    pub reason: &'static str,
    /// What the agent is told.
    pub message: String,
    /// The tier, when one was classified.
    pub tier: Option<Tier>,
    /// The decision recorded (`deny`; `hold` once approvals exist).
    pub decision: Decision,
}

/// Permission to call one tool. Only [`decide`] builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    tier: Tier,
    rule: String,
    _sealed: (),
}

impl Permit {
    /// The call's tier.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The template rule that allowed it (`template:pattern`).
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

/// The template pattern that allows `exposed`, if any.
pub fn allowing_pattern<'a>(template: &'a TemplateSpec, exposed: &str) -> Option<&'a str> {
    template
        .tools
        .iter()
        .find(|p| glob_match(p, exposed))
        .map(String::as_str)
}

/// Classifies the tier of a call: the upstream's tier for the tool. Argument rules raise it
/// here when templates gain argument constraints.
pub fn classify(upstream: &UpstreamSpec, tool: &str, _arguments: &serde_json::Value) -> Tier {
    upstream.tier_of(tool)
}

/// Whether a tool is listed to an agent running under `template`: allowed and not Tier 4.
pub fn lists(template: &TemplateSpec, upstream: &UpstreamSpec, exposed: &str, tool: &str) -> bool {
    allowing_pattern(template, exposed).is_some() && upstream.tier_of(tool) != Tier::T4
}

/// Decides one call. Deny by default: a tool the template does not name, an unknown
/// upstream, Tier 4 and (until approvals exist) Tier 3 are refused.
///
/// # Errors
/// A [`Refusal`] saying why.
pub fn decide(
    template: &TemplateSpec,
    upstream: Option<&UpstreamSpec>,
    tool: &ExposedTool,
    arguments: &serde_json::Value,
) -> Result<Permit, Refusal> {
    let exposed = tool.to_string();
    let refuse = |reason, message: String, tier| Refusal {
        reason,
        message,
        tier,
        decision: Decision::Deny,
    };
    let Some(pattern) = allowing_pattern(template, &exposed) else {
        return Err(refuse(
            "tool_not_allowed",
            format!(
                "tool `{exposed}` is not allowed by template `{}`",
                template.name
            ),
            None,
        ));
    };
    let Some(upstream) = upstream else {
        return Err(refuse(
            "unknown_upstream",
            format!("tool `{exposed}` names no registered upstream"),
            None,
        ));
    };
    let tier = classify(upstream, &tool.tool, arguments);
    match tier {
        Tier::T4 => Err(refuse(
            "tier4_denied",
            format!("tool `{exposed}` is Tier 4: always refused"),
            Some(tier),
        )),
        Tier::T3 => Err(refuse(
            "approval_unavailable",
            format!(
                "tool `{exposed}` is Tier 3 and needs a human approval, which this Custos does not offer yet"
            ),
            Some(tier),
        )),
        Tier::T1 | Tier::T2 => Ok(Permit {
            tier,
            rule: format!("{}:{pattern}", template.name),
            _sealed: (),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn template() -> TemplateSpec {
        TemplateSpec {
            name: "docs".into(),
            description: None,
            ttl: "30m".into(),
            tools: vec![
                "files__read_text_file".into(),
                "files__list_*".into(),
                "files__danger".into(),
                "files__write_file".into(),
            ],
        }
    }

    fn upstream() -> UpstreamSpec {
        UpstreamSpec {
            name: "files".into(),
            description: None,
            command: Some(vec!["x".into()]),
            url: None,
            tiers: BTreeMap::from([
                ("read_text_file".into(), Tier::T1),
                ("list_directory".into(), Tier::T2),
                ("danger".into(), Tier::T4),
            ]),
            default_tier: Tier::T3,
            timeout: None,
        }
    }

    fn call(name: &str) -> Result<Permit, Refusal> {
        let t = ExposedTool::parse(name).expect("valid name");
        decide(&template(), Some(&upstream()), &t, &serde_json::Value::Null)
    }

    #[test]
    fn allowed_tiers_pass() {
        assert_eq!(
            call("files__read_text_file").expect("allowed").tier(),
            Tier::T1
        );
        let p = call("files__list_directory").expect("allowed by glob");
        assert_eq!((p.tier(), p.rule()), (Tier::T2, "docs:files__list_*"));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            call("files__move_file")
                .expect_err("not in template")
                .reason,
            "tool_not_allowed"
        );
        assert_eq!(
            call("files__danger").expect_err("tier 4").reason,
            "tier4_denied"
        );
        assert_eq!(
            call("files__write_file")
                .expect_err("tier 3 default")
                .reason,
            "approval_unavailable"
        );
        let t = ExposedTool::parse("files__read_text_file").expect("valid");
        assert_eq!(
            decide(&template(), None, &t, &serde_json::Value::Null)
                .expect_err("no upstream")
                .reason,
            "unknown_upstream"
        );
    }

    #[test]
    fn tier4_is_never_listed() {
        assert!(lists(
            &template(),
            &upstream(),
            "files__read_text_file",
            "read_text_file"
        ));
        assert!(!lists(&template(), &upstream(), "files__danger", "danger"));
        assert!(!lists(
            &template(),
            &upstream(),
            "files__move_file",
            "move_file"
        ));
    }
}
