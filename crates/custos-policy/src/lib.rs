//! Policy: which tools a task's template allows, at which tier, and the verdict on one call.
//!
//! A [`PermittedCall`] can only be built here (or from a [`HeldCall`] an approval answered):
//! code that calls an upstream must hold one, so nothing reaches an upstream without a
//! verdict. The decision itself is Cedar's: templates and upstream tiers are compiled to Cedar
//! policies (module `cedar`) and each call is evaluated against its template's slice.

mod cedar;
mod raw;

use std::collections::BTreeMap;
use std::sync::Arc;

use custos_core::glob::glob_match;
use custos_core::text::for_display;
use custos_core::{ExposedTool, Reason, TemplateSpec, Tier, UpstreamSpec};
use serde_json::Value;

pub use cedar::Compiled;
pub use raw::{RawPolicyError, SCHEMA, check as check_raw_policy};

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
    proposed_tier: Option<Tier>,
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
            proposed_tier: None,
        }
    }

    /// The tier the tool's own annotations propose ([`custos_core::annotation_tier`]); used
    /// only when its upstream is `trusted` and its `tiers` do not name the tool.
    #[must_use]
    pub fn with_proposed_tier(mut self, tier: Option<Tier>) -> Self {
        self.proposed_tier = tier;
        self
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
    /// The approval request a held call is waiting on (or was answered by).
    pub approval: Option<custos_core::ApprovalId>,
}

/// A call as policy decided it: task, tool, arguments, digest, tier, the policies that
/// decided and the policy version. Reached through a [`PermittedCall`] or a [`HeldCall`];
/// only this crate builds one.
#[derive(Debug, Clone)]
pub struct DecidedCall<'a> {
    task: String,
    tool: ExposedTool,
    upstream: &'a UpstreamSpec,
    arguments: Value,
    digest: String,
    tier: Tier,
    rule: String,
    tiered_by: String,
    policy_version: i64,
    taints: bool,
}

impl DecidedCall<'_> {
    /// Whether the tool is untrusted: content it returns taints the task.
    pub fn taints(&self) -> bool {
        self.taints
    }
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
    /// The arguments (unredacted: redact before showing or storing them).
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
    /// The policies that allowed (or held) it (`template:NAME:tools[i]`, comma-separated), or
    /// `approval:ID`.
    pub fn rule(&self) -> &str {
        &self.rule
    }
    /// The policies that set its tier (comma-separated): what made a held call Tier 3.
    pub fn tiered_by(&self) -> &str {
        &self.tiered_by
    }
    /// The policy version it was decided under.
    pub fn policy_version(&self) -> i64 {
        self.policy_version
    }
}

/// Permission to make exactly one call: this task, this tool, these arguments, under this
/// policy version. Only [`decide`] builds it, or [`HeldCall::into_permitted`].
#[derive(Debug, Clone)]
pub struct PermittedCall<'a>(DecidedCall<'a>);

impl<'a> std::ops::Deref for PermittedCall<'a> {
    type Target = DecidedCall<'a>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A call that needs a human approval before it may run (Tier 3): everything the approval
/// is bound to (task, tool, argument digest, policy version) and what a human needs to
/// judge it. Only [`decide`] builds one; an approval turns it into the one [`PermittedCall`]
/// it allows ([`HeldCall::into_permitted`]).
#[derive(Debug, Clone)]
pub struct HeldCall<'a>(DecidedCall<'a>);

impl<'a> std::ops::Deref for HeldCall<'a> {
    type Target = DecidedCall<'a>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> HeldCall<'a> {
    /// The call an approval allows: exactly this one, under this policy version. The caller
    /// (the approvals stage) has checked that `approval_id` approved this task, tool, digest
    /// and policy version and that it has not been used; the rule becomes `approval:<id>`.
    pub fn into_permitted(self, approval_id: &str) -> PermittedCall<'a> {
        PermittedCall(DecidedCall {
            rule: format!("approval:{approval_id}"),
            ..self.0
        })
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

/// What policy reads: one template, the upstreams, the policy version and its compiled
/// policies, and the task's state.
#[derive(Debug)]
pub struct PolicyView<'a, U> {
    /// The task's template, if it still exists.
    pub template: Option<&'a TemplateSpec>,
    /// Upstreams by name.
    pub upstreams: &'a BTreeMap<String, U>,
    /// The registry's policy version.
    pub version: i64,
    /// The Cedar policies of this version (slices compiled on first use).
    pub compiled: &'a Compiled,
    /// Whether the task is tainted (an untrusted tool returned content to it).
    pub tainted: bool,
}

impl<U> Clone for PolicyView<'_, U> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<U> Copy for PolicyView<'_, U> {}

/// Why a call got the verdict it got: for `custos policy explain`, audit records and logs.
#[derive(Debug, Clone, Default)]
pub struct Explanation {
    /// The template entries that allowed the call (Cedar policy ids).
    pub allowed_by: Vec<String>,
    /// The policies that set its tier.
    pub tiered_by: Vec<String>,
    /// Policies that could not be evaluated on these arguments (counted against the call).
    pub errors: Vec<String>,
    /// Raw `forbid` policies that refused the call.
    pub forbidden_by: Vec<String>,
    /// The tier, when classified.
    pub tier: Option<Tier>,
    /// Whether the task was tainted.
    pub tainted: bool,
    /// The Cedar slice the call was evaluated against.
    pub cedar: Option<Arc<str>>,
}

/// The template pattern that allows `exposed`, if any.
pub fn allowing_pattern<'a>(template: &'a TemplateSpec, exposed: &str) -> Option<&'a str> {
    template
        .tools
        .iter()
        .find(|e| glob_match(&e.tool, exposed))
        .map(|e| e.tool.as_str())
}

/// Whether a tool is listed to an agent running under `template`: some entry names it and
/// its tier before arguments (the upstream's `tiers` or `default_tier`: the base policy of
/// its Cedar slice) is not 4. Argument constraints are checked on the call.
pub fn lists(template: &TemplateSpec, upstream: &UpstreamSpec, exposed: &str, tool: &str) -> bool {
    allowing_pattern(template, exposed).is_some() && upstream.tier_of(tool) != Tier::T4
}

/// Decides one call. Deny by default: an unknown template, a malformed name, a tool the
/// template does not name, arguments no entry allows, an unknown upstream and Tier 4 are
/// refused; Tier 3 is held.
pub fn decide<'a, U: AsRef<UpstreamSpec>>(
    view: PolicyView<'a, U>,
    call: CallRequest,
) -> Verdict<'a> {
    decide_explained(view, call).0
}

/// [`decide`], with the reasons.
pub fn decide_explained<'a, U: AsRef<UpstreamSpec>>(
    view: PolicyView<'a, U>,
    call: CallRequest,
) -> (Verdict<'a>, Explanation) {
    let mut why = Explanation {
        tainted: view.tainted,
        ..Explanation::default()
    };
    let refuse = |reason, message: String, upstream: Option<String>, why: Explanation| {
        (
            Verdict::Deny(Refusal {
                reason,
                message,
                tier: why.tier,
                upstream,
                approval: None,
            }),
            why,
        )
    };
    let Some(template) = view.template else {
        return refuse(
            Reason::UnknownTemplate,
            "the task's template no longer exists".into(),
            None,
            why,
        );
    };
    let tool = match ExposedTool::parse(&call.name) {
        Ok(t) => t,
        Err(_) => {
            return refuse(
                Reason::InvalidToolName,
                format!(
                    "invalid tool name `{}`: expected `<upstream>__<tool>` matching ^[a-zA-Z0-9_./-]{{1,128}}$",
                    for_display(&call.name, ECHO)
                ),
                None,
                why,
            );
        }
    };
    let exposed = tool.to_string();
    if allowing_pattern(template, &exposed).is_none() {
        return refuse(
            Reason::ToolNotAllowed,
            format!(
                "tool `{exposed}` is not allowed by template `{}`",
                template.name
            ),
            Some(tool.upstream),
            why,
        );
    }
    let Some(upstream) = view.upstreams.get(&tool.upstream).map(AsRef::as_ref) else {
        return refuse(
            Reason::UnknownUpstream,
            format!("tool `{exposed}` names no registered upstream"),
            Some(tool.upstream),
            why,
        );
    };
    let evaluated = view
        .compiled
        .slice(
            template,
            upstream,
            &tool.tool,
            &exposed,
            call.proposed_tier.filter(|_| upstream.trusted),
        )
        .and_then(|slice| {
            let facts = cedar::Facts {
                template: &template.name,
                task: &call.task,
                upstream: &upstream.name,
                tool: &tool.tool,
                exposed: &exposed,
                arguments: &call.arguments,
                tainted: view.tainted,
            };
            view.compiled.evaluate(&slice, &facts).map(|e| (slice, e))
        });
    let (slice, eval) = match evaluated {
        Ok(v) => v,
        Err(e) => {
            // Fail closed: a policy that cannot be compiled or evaluated allows nothing.
            return refuse(
                Reason::Unavailable,
                format!(
                    "policy for `{exposed}` could not be evaluated: {}",
                    for_display(&e, 200)
                ),
                Some(tool.upstream),
                why,
            );
        }
    };
    why.cedar = Some(slice.text.clone());
    why.allowed_by = eval.allowed_by;
    why.tiered_by = eval.tiered_by;
    why.errors = eval.errors;
    if !eval.forbidden_by.is_empty() {
        let names = eval.forbidden_by.join(", ");
        why.forbidden_by = eval.forbidden_by;
        return refuse(
            Reason::PolicyForbidden,
            format!("tool `{exposed}` is forbidden here by policy {names}"),
            Some(tool.upstream),
            why,
        );
    }
    if why.allowed_by.is_empty() {
        let mut constrained: Vec<&str> = template
            .tools
            .iter()
            .filter(|e| glob_match(&e.tool, &exposed))
            .flat_map(|e| e.args.keys().map(String::as_str))
            .collect();
        constrained.sort_unstable();
        constrained.dedup();
        let names = constrained
            .iter()
            .map(|n| format!("`{}`", for_display(n, 40)))
            .collect::<Vec<_>>()
            .join(", ");
        return refuse(
            Reason::ArgumentNotAllowed,
            format!(
                "the arguments of `{exposed}` are not allowed by template `{}` (constrained: {names})",
                template.name
            ),
            Some(tool.upstream),
            why,
        );
    }
    let tier = eval.tier;
    why.tier = Some(tier);
    let rule = why.allowed_by.join(",");
    let tiered_by = why.tiered_by.join(",");
    let decided = |call: CallRequest, tool: ExposedTool| DecidedCall {
        task: call.task,
        tool,
        upstream,
        arguments: call.arguments,
        digest: call.digest,
        tier,
        rule,
        tiered_by,
        policy_version: view.version,
        taints: slice.untrusted,
    };
    let verdict = match tier {
        Tier::T4 => Verdict::Deny(Refusal {
            reason: Reason::Tier4Denied,
            message: format!("tool `{exposed}` is Tier 4: always refused"),
            tier: Some(tier),
            upstream: Some(tool.upstream),
            approval: None,
        }),
        Tier::T3 => Verdict::Hold(HeldCall(decided(call, tool))),
        Tier::T1 | Tier::T2 => Verdict::Permit(PermittedCall(decided(call, tool))),
    };
    (verdict, why)
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
            resources: Vec::new(),
            prompts: Vec::new(),
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
                tier_rules: Vec::new(),
                untrusted: Vec::new(),
                tainted_tiers: BTreeMap::new(),
                trusted: false,
                credentials: Vec::new(),
                prefix: true,
            },
        )])
    }

    /// A held call's tier, policy version and refusal while no approval can be had.
    type Held = (Tier, i64, String);

    fn verdict(name: &str) -> Result<(Tier, String, i64), Result<Held, Refusal>> {
        let t = template();
        let ups = upstreams();
        let compiled = Compiled::default();
        let view = PolicyView {
            template: Some(&t),
            upstreams: &ups,
            version: 7,
            compiled: &compiled,
            tainted: false,
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
            Verdict::Hold(h) => Err(Ok((h.tier(), h.policy_version(), h.digest().to_owned()))),
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
            (Tier::T1, "template:docs:tools[0]".into(), 7)
        );
        assert_eq!(
            verdict("files__list_directory").expect("allowed by glob"),
            (Tier::T2, "template:docs:tools[1]".into(), 7)
        );
    }

    #[test]
    fn refusals_and_holds() {
        assert_eq!(reason("files__move_file"), Reason::ToolNotAllowed);
        assert_eq!(reason("files__danger"), Reason::Tier4Denied);
        assert_eq!(reason("ghost__x"), Reason::UnknownUpstream);
        assert_eq!(reason("files"), Reason::InvalidToolName);
        match verdict("files__write_file") {
            Err(Ok((tier, version, digest))) => {
                assert_eq!((tier, version), (Tier::T3, 7));
                assert_eq!(
                    digest,
                    custos_crypto::argument_digest(&serde_json::json!({"p": 1}))
                );
            }
            other => panic!("tier 3 must be held: {other:?}"),
        }
        let ups = upstreams();
        let compiled = Compiled::default();
        let none = PolicyView {
            template: None,
            upstreams: &ups,
            version: 1,
            compiled: &compiled,
            tainted: false,
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

#[cfg(test)]
mod argument_tests {
    use custos_core::resource::{Resource, parse_documents};
    use serde_json::json;

    use super::*;

    const BUNDLE: &str = r#"
kind: Template
name: payments
ttl: 30m
tools:
  - bank__get_balance
  - bank__read_inbox
  - bank__pay_any
  - tool: bank__send_money
    args:
      recipient: ["GB29*", "DE89*", "q\"uote\\*"]
      amount: {max: 100}
  - tool: bank__transfer
    args: {amount: {max: 5000}}
    tier: 3
  - tool: bank__transfer
    args: {amount: {max: 10}}
  - bank__notify
---
kind: Upstream
name: bank
command: [bank-server]
tiers: {get_balance: 1, read_inbox: 1, send_money: 2, transfer: 2, pay_any: 2, notify: 2}
tier_rules:
  - {tool: send_money, args: {amount: {min: 50}}, tier: 3}
  - {tool: "transf*", args: {amount: {min: 4000}}, tier: 4}
  - {tool: pay_any, args: {amount: {min: 1000}}, tier: 3}
untrusted: [read_inbox]
tainted_tiers: {send_money: 3, notify: 3}
"#;

    struct Fixture {
        template: TemplateSpec,
        upstreams: BTreeMap<String, UpstreamSpec>,
        compiled: Compiled,
    }

    fn fixture() -> Fixture {
        let mut template = None;
        let mut upstreams = BTreeMap::new();
        for r in parse_documents(BUNDLE).expect("bundle parses") {
            match r {
                Resource::Template(t) => template = Some(t),
                Resource::Upstream(u) => {
                    upstreams.insert(u.name.clone(), u);
                }
                _ => {}
            }
        }
        Fixture {
            template: template.expect("template"),
            upstreams,
            compiled: Compiled::default(),
        }
    }

    /// (verdict, tier, reason) of one call.
    fn run(
        f: &Fixture,
        task: &str,
        tool: &str,
        args: Value,
        tainted: bool,
    ) -> (&'static str, Option<Tier>, Reason) {
        let view = PolicyView {
            template: Some(&f.template),
            upstreams: &f.upstreams,
            version: 3,
            compiled: &f.compiled,
            tainted,
        };
        match decide(view, CallRequest::new(task, tool, args)) {
            Verdict::Permit(p) => ("permit", Some(p.tier()), Reason::Permitted),
            Verdict::Hold(h) => ("hold", Some(h.tier()), Reason::ApprovalPending),
            Verdict::Deny(r) => ("deny", r.tier, r.reason),
        }
    }

    fn call(f: &Fixture, tool: &str, args: Value) -> (&'static str, Option<Tier>, Reason) {
        run(f, "task_1", tool, args, false)
    }

    #[test]
    fn the_same_tool_is_allowed_held_and_denied_by_its_arguments() {
        let f = fixture();
        let send = |recipient: &str, amount: Value| {
            call(
                &f,
                "bank__send_money",
                json!({"recipient": recipient, "amount": amount}),
            )
        };
        assert_eq!(
            send("GB29NWBK1", json!(10)),
            ("permit", Some(Tier::T2), Reason::Permitted)
        );
        // The tier rule's line: 49.9999 below, 50 on it.
        assert_eq!(send("GB29NWBK1", json!(49.9999)).0, "permit");
        assert_eq!(
            send("GB29NWBK1", json!(50)),
            ("hold", Some(Tier::T3), Reason::ApprovalPending)
        );
        // The template's line: 100 allowed (held by the rule), 100.0001 not.
        assert_eq!(send("DE89370400", json!(100)).0, "hold");
        assert_eq!(
            send("DE89370400", json!(100.0001)).2,
            Reason::ArgumentNotAllowed
        );
        // A recipient no glob matches.
        assert_eq!(
            send("FR7630006", json!(10)),
            ("deny", None, Reason::ArgumentNotAllowed)
        );
    }

    #[test]
    fn values_of_the_wrong_shape_fail_closed() {
        let f = fixture();
        let send = |args: Value| call(&f, "bank__send_money", args).2;
        // Missing, a string for a number, a number for a string, too many decimals, a list.
        assert_eq!(
            send(json!({"recipient": "GB29x"})),
            Reason::ArgumentNotAllowed
        );
        assert_eq!(
            send(json!({"recipient": "GB29x", "amount": "10"})),
            Reason::ArgumentNotAllowed
        );
        assert_eq!(
            send(json!({"recipient": 29, "amount": 10})),
            Reason::ArgumentNotAllowed
        );
        assert_eq!(
            send(json!({"recipient": "GB29x", "amount": 10.000001})),
            Reason::ArgumentNotAllowed
        );
        assert_eq!(
            send(json!({"recipient": ["GB29x"], "amount": 10})),
            Reason::ArgumentNotAllowed
        );
        assert_eq!(send(json!(null)), Reason::ArgumentNotAllowed);
        // A tier rule that cannot be evaluated holds: an amount given as text is held, not
        // waved through at the tool's own tier.
        assert_eq!(call(&f, "bank__pay_any", json!({"amount": 10})).0, "permit");
        assert_eq!(call(&f, "bank__pay_any", json!({"amount": 5000})).0, "hold");
        assert_eq!(
            call(&f, "bank__pay_any", json!({"amount": "5000"})).0,
            "hold"
        );
        assert_eq!(
            call(&f, "bank__pay_any", json!({"amount": {"value": 5000}})).0,
            "hold"
        );
        assert_eq!(
            call(&f, "bank__pay_any", json!({"amount": 1e300})).0,
            "hold"
        );
    }

    #[test]
    fn entry_tiers_never_lower_the_upstream_and_tier4_rules_refuse() {
        let f = fixture();
        let transfer = |amount: Value| call(&f, "bank__transfer", json!({"amount": amount}));
        // Two entries allow 5: the lower tier (the second, no tier: the upstream's 2) wins.
        assert_eq!(
            transfer(json!(5)),
            ("permit", Some(Tier::T2), Reason::Permitted)
        );
        // Only the tier-3 entry allows 100.
        assert_eq!(
            transfer(json!(100)),
            ("hold", Some(Tier::T3), Reason::ApprovalPending)
        );
        // The upstream's rule makes 4000 and more Tier 4, whatever the template says.
        assert_eq!(
            transfer(json!(4000)),
            ("deny", Some(Tier::T4), Reason::Tier4Denied)
        );
        assert_eq!(transfer(json!(6000)).2, Reason::ArgumentNotAllowed);
    }

    #[test]
    fn a_tainted_task_is_held_where_an_untainted_one_is_not() {
        let f = fixture();
        let args = json!({"recipient": "GB29x", "amount": 10});
        assert_eq!(
            run(&f, "t", "bank__send_money", args.clone(), false).0,
            "permit"
        );
        assert_eq!(
            run(&f, "t", "bank__send_money", args, true),
            ("hold", Some(Tier::T3), Reason::ApprovalPending)
        );
        // Tools without a tainted tier are unaffected.
        assert_eq!(
            run(&f, "t", "bank__get_balance", json!({}), true).0,
            "permit"
        );
    }

    #[test]
    fn remembered_evaluations_never_answer_for_another_task_or_taint() {
        // A slice that reads no argument is evaluated once and then answered from memory:
        // what a policy reads (the taint, the task) must still tell calls apart.
        let mut f = fixture();
        f.compiled = Compiled::new([(
            "watch",
            "@tier(\"3\")\npermit (principal, action == Custos::Action::\"classify\", resource)\n\
             when { context.task == \"task_2\" || context.tainted };",
        )]);
        for round in 0..3 {
            let balance =
                |task: &str, tainted: bool| run(&f, task, "bank__get_balance", json!({}), tainted);
            assert_eq!(
                balance("task_1", false),
                ("permit", Some(Tier::T1), Reason::Permitted),
                "round {round}"
            );
            assert_eq!(balance("task_2", false).0, "hold", "round {round}");
            assert_eq!(balance("task_1", true).0, "hold", "round {round}");
            assert_eq!(balance("task_1", false).0, "permit", "round {round}");
        }
        // Without raw policies the task is not read: every task shares the memo, the taint
        // still separates.
        let f = fixture();
        for task in ["a", "b", "a"] {
            assert_eq!(
                run(&f, task, "bank__notify", json!({}), false),
                ("permit", Some(Tier::T2), Reason::Permitted)
            );
            assert_eq!(
                run(&f, task, "bank__notify", json!({}), true),
                ("hold", Some(Tier::T3), Reason::ApprovalPending)
            );
        }
    }

    #[test]
    fn raw_forbids_decide_what_is_listed_exactly() {
        let f = fixture();
        let out = |c: &Compiled, tool: &str, task: &str, tainted: bool| {
            c.forbids_outright(
                "payments",
                "bank",
                tool,
                &format!("bank__{tool}"),
                task,
                tainted,
            )
        };
        // No raw forbids: nothing is forbidden outright.
        assert!(!out(&f.compiled, "notify", "t1", false));
        let c = Compiled::new([(
            "no-mail",
            "forbid (principal, action == Custos::Action::\"call\", resource)\n\
             when { context.tool == \"bank__notify\" && (context.tainted || context.task == \"t2\") };",
        )]);
        for _ in 0..2 {
            assert!(!out(&c, "notify", "t1", false), "neither tainted nor t2");
            assert!(out(&c, "notify", "t1", true), "tainted");
            assert!(out(&c, "notify", "t2", false), "task t2");
            assert!(!out(&c, "get_balance", "t2", true), "another tool");
        }
        // Raw policies that no longer compile refuse, and hide, everything.
        let broken = Compiled::new([("broken", "forbid (principal, action, resource) when {")]);
        assert!(out(&broken, "get_balance", "t1", false));
    }

    #[test]
    fn untrusted_tools_are_marked_and_the_decision_ignores_who_asks() {
        let f = fixture();
        let view = PolicyView {
            template: Some(&f.template),
            upstreams: &f.upstreams,
            version: 3,
            compiled: &f.compiled,
            tainted: false,
        };
        let Verdict::Permit(p) = decide(view, CallRequest::new("t", "bank__read_inbox", json!({})))
        else {
            panic!("read_inbox is Tier 1")
        };
        assert!(p.taints());
        let Verdict::Permit(p) =
            decide(view, CallRequest::new("t", "bank__get_balance", json!({})))
        else {
            panic!("get_balance is Tier 1")
        };
        assert!(!p.taints());
        let args = json!({"recipient": "GB29x", "amount": 60});
        let a = run(&f, "task_a", "bank__send_money", args.clone(), false);
        let b = run(&f, "task_b", "bank__send_money", args, false);
        assert_eq!(a, b);
    }

    #[test]
    fn globs_are_literal_except_star_and_quotes_cannot_break_out() {
        let f = fixture();
        let send = |r: &str| call(&f, "bank__send_money", json!({"recipient": r, "amount": 1})).0;
        assert_eq!(send("q\"uote\\anything"), "permit");
        assert_eq!(send("q\"uote"), "deny");
        assert_eq!(send("GB2"), "deny");
        // `?` is not a wildcard in argument globs.
        assert_eq!(send("GB29?"), "permit");
    }

    #[test]
    fn explanations_name_the_deciding_policies() {
        let f = fixture();
        let view = PolicyView {
            template: Some(&f.template),
            upstreams: &f.upstreams,
            version: 3,
            compiled: &f.compiled,
            tainted: false,
        };
        let (_, why) = decide_explained(
            view,
            CallRequest::new(
                "t",
                "bank__send_money",
                json!({"recipient": "GB29x", "amount": 70}),
            ),
        );
        assert_eq!(why.allowed_by, ["template:payments:tools[3]"]);
        assert_eq!(why.tiered_by, ["upstream:bank:tier_rules[0]"]);
        assert_eq!(why.tier, Some(Tier::T3));
        let cedar = why.cedar.expect("slice text");
        assert!(
            cedar.contains("@id(\"upstream:bank:tier_rules[0]\")"),
            "{cedar}"
        );
        assert!(cedar.contains("decimal(\"50.0\")"), "{cedar}");
    }
}
