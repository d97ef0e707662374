//! Policy: which tools a task's template allows, at which tier, and the verdict on one call.
//!
//! A [`PermittedCall`] can only be built here (and, once approvals exist, from an approval):
//! code that calls an upstream must hold one, so nothing reaches an upstream without a
//! verdict. Cedar policies compiled from templates (argument constraints) slot in behind
//! [`decide`].

use std::collections::BTreeMap;

use custos_core::glob::glob_match;
use custos_core::text::for_display;
use custos_core::{ExposedTool, Reason, TemplateSpec, Tier, UpstreamSpec};
use serde_json::Value;

/// How much of a name from outside a message echoes.
const ECHO: usize = 80;

/// One tool call as the agent asked for it, with the digest that binds records (and later
/// approvals) to its exact arguments.
#[derive(Debug, Clone)]
pub struct CallRequest {
    task: String,
    name: String,
    arguments: Value,
    digest: String,
}

impl CallRequest {
    /// A call of `name` with `arguments` for `task`.
    pub fn new(task: &str, name: &str, arguments: Value) -> Self {
        let digest = custos_crypto::argument_digest(&arguments);
        Self {
            task: task.to_owned(),
            name: name.to_owned(),
            arguments,
            digest,
        }
    }

    /// The tool name as the agent sent it (unbounded: bound it before storing or echoing).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the canonical arguments.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The stable code.
    pub reason: Reason,
    /// What the agent is told (bounded, escaped).
    pub message: String,
    /// The tier, when one was classified.
    pub tier: Option<Tier>,
    /// The upstream the tool names, when it parsed.
    pub upstream: Option<String>,
}

/// Permission to make exactly one call: this task, this tool, these arguments, under this
/// policy version. Only [`decide`] builds it.
#[derive(Debug, Clone)]
pub struct PermittedCall<'a> {
    task: String,
    tool: ExposedTool,
    upstream: &'a UpstreamSpec,
    arguments: Value,
    digest: String,
    tier: Tier,
    rule: String,
    policy_version: i64,
}

impl PermittedCall<'_> {
    /// The task the call belongs to.
    pub fn task(&self) -> &str {
        &self.task
    }
    /// The tool, parsed.
    pub fn tool(&self) -> &ExposedTool {
        &self.tool
    }
    /// The upstream serving it.
    pub fn upstream(&self) -> &UpstreamSpec {
        self.upstream
    }
    /// The arguments permitted.
    pub fn arguments(&self) -> &Value {
        &self.arguments
    }
    /// Their digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// The call's tier.
    pub fn tier(&self) -> Tier {
        self.tier
    }
    /// The template rule that allowed it (`template:pattern`).
    pub fn rule(&self) -> &str {
        &self.rule
    }
    /// The policy version it was decided under.
    pub fn policy_version(&self) -> i64 {
        self.policy_version
    }
}

/// A call that needs a human approval before it may run (Tier 3): everything the approval
/// is bound to (task, tool, argument digest, policy version) and what a human needs to
/// judge it. Only [`decide`] builds one; an approval turns it into the one [`PermittedCall`]
/// it allows ([`HeldCall::into_permitted`]).
#[derive(Debug, Clone)]
pub struct HeldCall<'a> {
    task: String,
    tool: ExposedTool,
    upstream: &'a UpstreamSpec,
    arguments: Value,
    digest: String,
    tier: Tier,
    rule: String,
    policy_version: i64,
}

impl<'a> HeldCall<'a> {
    /// The task the call belongs to.
    pub fn task(&self) -> &str {
        &self.task
    }
    /// The tool, parsed.
    pub fn tool(&self) -> &ExposedTool {
        &self.tool
    }
    /// The upstream that would serve it.
    pub fn upstream(&self) -> &UpstreamSpec {
        self.upstream
    }
    /// The arguments held (unredacted: redact before showing or storing them).
    pub fn arguments(&self) -> &Value {
        &self.arguments
    }
    /// The digest of its arguments.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// Its tier.
    pub fn tier(&self) -> Tier {
        self.tier
    }
    /// The rule that held it.
    pub fn rule(&self) -> &str {
        &self.rule
    }
    /// The policy version it was decided under.
    pub fn policy_version(&self) -> i64 {
        self.policy_version
    }

    /// The refusal while no approval can be had.
    pub fn unavailable(&self) -> Refusal {
        Refusal {
            reason: Reason::ApprovalUnavailable,
            message: format!(
                "tool `{}` is Tier 3 and needs a human approval, which this Custos does not offer yet",
                self.tool
            ),
            tier: Some(self.tier),
            upstream: Some(self.tool.upstream.clone()),
        }
    }

    /// The call an approval allows: exactly this one, under this policy version. The caller
    /// (the approvals stage) has checked that `approval_id` approved this task, tool, digest
    /// and policy version and that it has not been used; the rule becomes `approval:<id>`.
    pub fn into_permitted(self, approval_id: &str) -> PermittedCall<'a> {
        PermittedCall {
            task: self.task,
            tool: self.tool,
            upstream: self.upstream,
            arguments: self.arguments,
            digest: self.digest,
            tier: self.tier,
            rule: format!("approval:{approval_id}"),
            policy_version: self.policy_version,
        }
    }
}

/// The verdict on one call.
#[derive(Debug, Clone)]
pub enum Verdict<'a> {
    /// Let it through.
    Permit(PermittedCall<'a>),
    /// Hold it for a human.
    Hold(HeldCall<'a>),
    /// Refuse it.
    Deny(Refusal),
}

/// What policy reads from the registry: one template, the upstreams, the policy version.
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a, U> {
    /// The task's template, if it still exists.
    pub template: Option<&'a TemplateSpec>,
    /// Upstreams by name.
    pub upstreams: &'a BTreeMap<String, U>,
    /// The registry's policy version.
    pub version: i64,
}

/// The template pattern that allows `exposed`, if any.
pub fn allowing_pattern<'a>(template: &'a TemplateSpec, exposed: &str) -> Option<&'a str> {
    template
        .tools
        .iter()
        .find(|p| glob_match(p, exposed))
        .map(String::as_str)
}

/// The tier of a call: the upstream's tier for the tool. Argument rules raise it here when
/// templates gain argument constraints. The one place tiers are classified: listing and
/// deciding both come here.
pub fn classify(upstream: &UpstreamSpec, tool: &str, _arguments: &Value) -> Tier {
    upstream.tier_of(tool)
}

/// Whether a tool is listed to an agent running under `template`: allowed and, without
/// arguments, not Tier 4.
pub fn lists(template: &TemplateSpec, upstream: &UpstreamSpec, exposed: &str, tool: &str) -> bool {
    allowing_pattern(template, exposed).is_some()
        && classify(upstream, tool, &Value::Null) != Tier::T4
}

/// Decides one call. Deny by default: an unknown template, a malformed name, a tool the
/// template does not name, an unknown upstream and Tier 4 are refused; Tier 3 is held.
pub fn decide<'a, U: AsRef<UpstreamSpec>>(
    view: PolicyView<'a, U>,
    call: CallRequest,
) -> Verdict<'a> {
    let refuse = |reason, message: String, upstream: Option<String>| {
        Verdict::Deny(Refusal {
            reason,
            message,
            tier: None,
            upstream,
        })
    };
    let Some(template) = view.template else {
        return refuse(
            Reason::UnknownTemplate,
            "the task's template no longer exists".into(),
            None,
        );
    };
    let tool = match ExposedTool::parse(&call.name) {
        Ok(t) => t,
        Err(_) => {
            return refuse(
                Reason::InvalidToolName,
                format!(
                    "invalid tool name `{}`: expected `<upstream>__<tool>` matching ^[a-zA-Z0-9_-]{{1,64}}$",
                    for_display(&call.name, ECHO)
                ),
                None,
            );
        }
    };
    let exposed = tool.to_string();
    let Some(pattern) = allowing_pattern(template, &exposed) else {
        return refuse(
            Reason::ToolNotAllowed,
            format!(
                "tool `{exposed}` is not allowed by template `{}`",
                template.name
            ),
            Some(tool.upstream),
        );
    };
    let Some(upstream) = view.upstreams.get(&tool.upstream).map(AsRef::as_ref) else {
        return refuse(
            Reason::UnknownUpstream,
            format!("tool `{exposed}` names no registered upstream"),
            Some(tool.upstream),
        );
    };
    let tier = classify(upstream, &tool.tool, &call.arguments);
    let rule = format!("{}:{pattern}", template.name);
    match tier {
        Tier::T4 => Verdict::Deny(Refusal {
            reason: Reason::Tier4Denied,
            message: format!("tool `{exposed}` is Tier 4: always refused"),
            tier: Some(tier),
            upstream: Some(tool.upstream),
        }),
        Tier::T3 => Verdict::Hold(HeldCall {
            task: call.task,
            tool,
            upstream,
            arguments: call.arguments,
            digest: call.digest,
            tier,
            rule,
            policy_version: view.version,
        }),
        Tier::T1 | Tier::T2 => Verdict::Permit(PermittedCall {
            task: call.task,
            tool,
            upstream,
            arguments: call.arguments,
            digest: call.digest,
            tier,
            rule,
            policy_version: view.version,
        }),
    }
}

#[cfg(test)]
mod tests {
    use custos_core::{StdioCommand, Transport, UpstreamScope};

    use super::*;

    fn template() -> TemplateSpec {
        TemplateSpec {
            name: "docs".into(),
            description: None,
            ttl: "30m".parse().expect("ttl"),
            tools: vec![
                "files__read_text_file".into(),
                "files__list_*".into(),
                "files__danger".into(),
                "files__write_file".into(),
                "ghost__x".into(),
            ],
            credentials: Vec::new(),
        }
    }

    fn upstreams() -> BTreeMap<String, UpstreamSpec> {
        BTreeMap::from([(
            "files".to_owned(),
            UpstreamSpec {
                name: "files".into(),
                description: None,
                transport: Transport::Stdio {
                    command: StdioCommand::new(vec!["x".into()]).expect("command"),
                },
                tiers: BTreeMap::from([
                    ("read_text_file".into(), Tier::T1),
                    ("list_directory".into(), Tier::T2),
                    ("danger".into(), Tier::T4),
                ]),
                default_tier: Tier::T3,
                timeout: None,
                scope: UpstreamScope::Shared,
            },
        )])
    }

    /// A held call's tier, policy version and refusal while no approval can be had.
    type Held = (Tier, i64, Refusal);

    fn verdict(name: &str) -> Result<(Tier, String, i64), Result<Held, Refusal>> {
        let t = template();
        let ups = upstreams();
        let view = PolicyView {
            template: Some(&t),
            upstreams: &ups,
            version: 7,
        };
        match decide(
            view,
            CallRequest::new("task_1", name, serde_json::json!({"p": 1})),
        ) {
            Verdict::Permit(p) => {
                assert_eq!(p.task(), "task_1");
                assert_eq!(p.digest(), custos_crypto::argument_digest(p.arguments()));
                Ok((p.tier(), p.rule().to_owned(), p.policy_version()))
            }
            Verdict::Hold(h) => Err(Ok((h.tier(), h.policy_version(), h.unavailable()))),
            Verdict::Deny(r) => Err(Err(r)),
        }
    }

    fn reason(name: &str) -> Reason {
        match verdict(name) {
            Err(Err(r)) => r.reason,
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn allowed_tiers_pass_with_rule_and_version() {
        assert_eq!(
            verdict("files__read_text_file").expect("allowed"),
            (Tier::T1, "docs:files__read_text_file".into(), 7)
        );
        assert_eq!(
            verdict("files__list_directory").expect("allowed by glob"),
            (Tier::T2, "docs:files__list_*".into(), 7)
        );
    }

    #[test]
    fn refusals_and_holds() {
        assert_eq!(reason("files__move_file"), Reason::ToolNotAllowed);
        assert_eq!(reason("files__danger"), Reason::Tier4Denied);
        assert_eq!(reason("ghost__x"), Reason::UnknownUpstream);
        assert_eq!(reason("files"), Reason::InvalidToolName);
        match verdict("files__write_file") {
            Err(Ok((tier, version, unavailable))) => {
                assert_eq!((tier, version), (Tier::T3, 7));
                assert_eq!(unavailable.reason, Reason::ApprovalUnavailable);
            }
            other => panic!("tier 3 must be held: {other:?}"),
        }
        let ups = upstreams();
        let none = PolicyView {
            template: None,
            upstreams: &ups,
            version: 1,
        };
        assert!(matches!(
            decide(
                none,
                CallRequest::new("t", "files__read_text_file", Value::Null)
            ),
            Verdict::Deny(Refusal {
                reason: Reason::UnknownTemplate,
                ..
            })
        ));
    }

    #[test]
    fn echoed_names_are_bounded_and_escaped() {
        let huge = format!("\u{1b}[31m{}\n", "x".repeat(4 << 20));
        let Err(Err(r)) = verdict(&huge) else {
            panic!("refused")
        };
        assert!(r.message.len() < 300, "{}", r.message.len());
        assert!(!r.message.contains('\u{1b}') && !r.message.contains('\n'));
    }

    #[test]
    fn tier4_is_never_listed() {
        let ups = upstreams();
        let u = &ups["files"];
        assert!(lists(
            &template(),
            u,
            "files__read_text_file",
            "read_text_file"
        ));
        assert!(!lists(&template(), u, "files__danger", "danger"));
        assert!(!lists(&template(), u, "files__move_file", "move_file"));
    }
}
