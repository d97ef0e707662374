//! Templates and upstream tiers compiled to Cedar, and one call evaluated against them.
//!
//! Every template tool entry becomes a `permit` on `Custos::Action::"call"`; every tier
//! statement of an upstream (its `tiers` entry or `default_tier`, each `tier_rules` entry,
//! each `tainted_tiers` entry) becomes a `permit` on `Custos::Action::"classify"` annotated
//! with `@tier`. A call is allowed when some entry permits it; its tier is the highest tier
//! among the classify policies that hold (or fail to evaluate: fail closed), and never below
//! the lowest tier among the entries that allowed it.
//!
//! Cedar evaluates every policy it is given (about 1–1.5 µs each), so each call is evaluated
//! against a *slice*: the policies that can concern its template and tool, compiled once per
//! registry version on first use and cached with the snapshot.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, Request, RestrictedExpression,
};
use custos_core::glob::glob_match;
use custos_core::rules::exact_decimal;
use custos_core::{ArgConstraint, ArgConstraints, TemplateSpec, Tier, UpstreamSpec};
use serde_json::Value;

/// The annotation that carries a policy's tier.
const TIER: &str = "tier";
/// Slices cached per registry version; past this, slices are built for each call.
const MAX_CACHED_SLICES: usize = 10_000;

/// A slice's key: template, exposed tool, and the tier a trusted upstream's annotations
/// propose for it.
type SliceKey = (String, String, Option<Tier>);

/// The compiled policy of one registry version: slices built on first use, shared by every
/// request decided under that version.
#[derive(Default)]
pub struct Compiled {
    slices: Mutex<HashMap<SliceKey, Arc<Slice>>>,
    authorizer: Authorizer,
    /// The raw policies (`kind: Policy`) of this version: in every slice.
    raw: Vec<crate::raw::RawStatement>,
    /// Why the raw policies of this version do not compile: then nothing is allowed.
    raw_error: Option<String>,
    /// The raw `forbid`s alone, for listing; built on first use.
    forbids: OnceLock<Result<PolicySet, String>>,
    /// [`Compiled::forbids_outright`]'s answers by (template, tool, task, taint).
    outright: Mutex<HashMap<(String, String, String, bool), bool>>,
}

/// The most [`Compiled::forbids_outright`] answers kept.
const MAX_OUTRIGHT: usize = 4096;

impl Compiled {
    /// The compiled policy of a registry version whose raw policies are `policies` (`(name,
    /// Cedar text)`). Raw policies were checked when applied; one that no longer compiles
    /// (say, after an upgrade) makes every call of this version refused, not unchecked.
    pub fn new<'a>(policies: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut raw = Vec::new();
        let mut raw_error = None;
        for (name, text) in policies {
            match crate::raw::compile(name, text) {
                Ok(statements) => raw.extend(statements),
                Err(errors) => {
                    let first = errors.first().map(ToString::to_string).unwrap_or_default();
                    raw_error = Some(format!("policy `{name}` does not compile: {first}"));
                }
            }
        }
        Self {
            raw,
            raw_error,
            ..Self::default()
        }
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.slices.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Compiled").field("slices", &n).finish()
    }
}

/// The policies that concern one tool of one template.
pub(crate) struct Slice {
    call: PolicySet,
    classify: PolicySet,
    /// The `@tier` of each policy that has one, read once here: reading an annotation from a
    /// policy set parses its key each time, which cost more than the evaluation itself.
    call_tiers: HashMap<String, Tier>,
    classify_tiers: HashMap<String, Tier>,
    /// Argument names some policy of the slice reads: the only ones put into the context.
    args: BTreeSet<String>,
    /// Whether the tool's results taint the task.
    pub(crate) untrusted: bool,
    /// The Cedar text of the slice, for `policy explain` (shared, not copied, per call).
    pub(crate) text: Arc<str>,
    /// Whether some policy of the slice may read the task (raw policies can): then the task
    /// is part of what an evaluation depends on.
    reads_task: bool,
    /// Evaluations of this slice for calls that differ in nothing a policy reads: kept when
    /// the slice reads no argument, keyed by the taint (and the task, if read).
    memo: Mutex<HashMap<(Option<String>, bool), Evaluation>>,
}

/// The most evaluations one slice keeps.
const MAX_MEMO: usize = 256;

/// What evaluating one call found.
#[derive(Clone)]
pub(crate) struct Evaluation {
    /// The template entries that allowed the call (empty: refused).
    pub(crate) allowed_by: Vec<String>,
    /// The call's tier.
    pub(crate) tier: Tier,
    /// The classify policies that set the tier.
    pub(crate) tiered_by: Vec<String>,
    /// Policies that could not be evaluated (a value of the wrong type).
    pub(crate) errors: Vec<String>,
    /// Raw `forbid` policies that refused the call (or could not be evaluated: fail closed).
    pub(crate) forbidden_by: Vec<String>,
}

/// What one call is evaluated with.
pub(crate) struct Facts<'a> {
    pub(crate) template: &'a str,
    pub(crate) task: &'a str,
    pub(crate) upstream: &'a str,
    pub(crate) tool: &'a str,
    pub(crate) exposed: &'a str,
    pub(crate) arguments: &'a Value,
    pub(crate) tainted: bool,
}

impl Compiled {
    /// Whether a raw `forbid` refuses every call of `exposed` (tool `tool` of `upstream`) by
    /// `task` under `template`, given its taint: what `tools/list` leaves out. Raw policies
    /// cannot read arguments (the shipped schema gives them none), so what a forbid says of a
    /// tool it says of every call of it. One that cannot be evaluated counts as refusing, as on
    /// a call, and raw policies that no longer compile refuse everything. Without raw forbids
    /// this is `false` at once; otherwise each answer is remembered.
    pub fn forbids_outright(
        &self,
        template: &str,
        upstream: &str,
        tool: &str,
        exposed: &str,
        task: &str,
        tainted: bool,
    ) -> bool {
        if self.raw_error.is_some() {
            return true;
        }
        if !self.raw.iter().any(|r| r.forbids) {
            return false;
        }
        let key = (
            template.to_owned(),
            exposed.to_owned(),
            task.to_owned(),
            tainted,
        );
        if let Some(v) = self.outright.lock().ok().and_then(|m| m.get(&key).copied()) {
            return v;
        }
        let set = self.forbids.get_or_init(|| {
            let mut set = PolicySet::new();
            for r in self.raw.iter().filter(|r| r.forbids) {
                set.add(r.policy.clone())
                    .map_err(|e| format!("adding policy `{}`: {e}", r.id))?;
            }
            Ok(set)
        });
        let facts = Facts {
            template,
            task,
            upstream,
            tool,
            exposed,
            arguments: &Value::Null,
            tainted,
        };
        let forbidden = match set {
            Err(_) => true,
            Ok(set) => {
                let request = context(&BTreeSet::new(), &facts).and_then(|ctx| {
                    Request::new(
                        uid("Custos::Task", task)?,
                        uid("Custos::Action", "call")?,
                        uid("Custos::Tool", exposed)?,
                        ctx,
                        None,
                    )
                    .map_err(|e| e.to_string())
                });
                match request {
                    Err(_) => true,
                    Ok(request) => {
                        let r = self
                            .authorizer
                            .is_authorized(&request, set, &Entities::empty());
                        r.diagnostics().reason().next().is_some()
                            || r.diagnostics().errors().next().is_some()
                    }
                }
            }
        };
        if let Ok(mut m) = self.outright.lock() {
            if m.len() >= MAX_OUTRIGHT {
                m.clear();
            }
            m.insert(key, forbidden);
        }
        forbidden
    }

    /// The slice for `exposed` (tool `tool` of `upstream`) under `template`.
    pub(crate) fn slice(
        &self,
        template: &TemplateSpec,
        upstream: &UpstreamSpec,
        tool: &str,
        exposed: &str,
        proposed: Option<Tier>,
    ) -> Result<Arc<Slice>, String> {
        if let Some(e) = &self.raw_error {
            return Err(e.clone());
        }
        let key = (template.name.clone(), exposed.to_owned(), proposed);
        if let Some(s) = self.slices.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(s);
        }
        let slice = Arc::new(build_slice(
            template, upstream, tool, exposed, proposed, &self.raw,
        )?);
        if let Ok(mut m) = self.slices.lock()
            && m.len() < MAX_CACHED_SLICES
        {
            m.insert(key, slice.clone());
        }
        Ok(slice)
    }

    /// Evaluates one call against its slice.
    ///
    /// Evaluation is a pure function of the slice and of what its policies read. A slice that
    /// reads no argument is evaluated once per taint (and per task when a policy may read the
    /// task) and answered from its memo after that.
    pub(crate) fn evaluate(&self, slice: &Slice, facts: &Facts<'_>) -> Result<Evaluation, String> {
        if !slice.args.is_empty() {
            return self.evaluate_now(slice, facts);
        }
        let key = (
            slice.reads_task.then(|| facts.task.to_owned()),
            facts.tainted,
        );
        if let Some(e) = slice.memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(e);
        }
        let evaluation = self.evaluate_now(slice, facts)?;
        if let Ok(mut memo) = slice.memo.lock() {
            if memo.len() >= MAX_MEMO {
                memo.clear();
            }
            memo.insert(key, evaluation.clone());
        }
        Ok(evaluation)
    }

    fn evaluate_now(&self, slice: &Slice, facts: &Facts<'_>) -> Result<Evaluation, String> {
        let context = context(&slice.args, facts)?;
        let principal = uid("Custos::Task", facts.task)?;
        let resource = uid("Custos::Tool", facts.exposed)?;
        let request = |action: &str, ctx: Context| {
            Request::new(
                principal.clone(),
                uid("Custos::Action", action)?,
                resource.clone(),
                ctx,
                None,
            )
            .map_err(|e| e.to_string())
        };
        let entities = Entities::empty();
        let call = self.authorizer.is_authorized(
            &request("call", context.clone())?,
            &slice.call,
            &entities,
        );
        let mut errors: Vec<String> = call.diagnostics().errors().map(error_policy).collect();
        let is_forbid = |id: &str| self.raw.iter().any(|r| r.forbids && r.id == id);
        // A forbid that holds decides; one that cannot be evaluated counts as holding.
        let mut forbidden_by: Vec<String> = if call.decision() == Decision::Deny {
            call.diagnostics()
                .reason()
                .map(ToString::to_string)
                .filter(|id| is_forbid(id))
                .collect()
        } else {
            Vec::new()
        };
        forbidden_by.extend(errors.iter().filter(|id| is_forbid(id)).cloned());
        let allowed_by: Vec<String> =
            if call.decision() == Decision::Allow && forbidden_by.is_empty() {
                call.diagnostics()
                    .reason()
                    .map(ToString::to_string)
                    .collect()
            } else {
                Vec::new()
            };
        // The lowest tier among the entries that allowed it (an entry without a tier says 1).
        let entry_tier = allowed_by
            .iter()
            .map(|id| slice.call_tiers.get(id).copied().unwrap_or(Tier::T1))
            .min()
            .unwrap_or(Tier::T1);
        let classify = self.authorizer.is_authorized(
            &request("classify", context)?,
            &slice.classify,
            &entities,
        );
        let classify_errors: Vec<String> =
            classify.diagnostics().errors().map(error_policy).collect();
        // A tier rule that cannot be evaluated counts as holding: fail closed.
        let mut tiered: Vec<(Tier, String)> = classify
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .chain(classify_errors.iter().cloned())
            .filter_map(|id: String| slice.classify_tiers.get(&id).map(|t| (*t, id)))
            .collect();
        errors.extend(classify_errors);
        tiered.sort();
        // Nothing classified it (cannot happen: the base policy always holds): hold it.
        let class_tier = tiered.last().map_or(Tier::T3, |(t, _)| *t);
        let tier = class_tier.max(entry_tier);
        let tiered_by = tiered
            .iter()
            .filter(|(t, _)| *t == class_tier)
            .map(|(_, id)| id.clone())
            .collect();
        Ok(Evaluation {
            allowed_by,
            tier,
            tiered_by,
            errors,
            forbidden_by,
        })
    }
}

fn error_policy(e: &cedar_policy::AuthorizationError) -> String {
    match e {
        cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id().to_string(),
    }
}

/// The `@tier` of each policy of `set` that has a valid one.
fn tiers_of(set: &PolicySet) -> HashMap<String, Tier> {
    set.policies()
        .filter_map(|p| {
            let tier = p
                .annotation(TIER)
                .and_then(|t| t.parse::<u8>().ok())
                .and_then(|n| Tier::try_from(n).ok())?;
            Some((p.id().to_string(), tier))
        })
        .collect()
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let ty = EntityTypeName::from_str(ty).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// The context of one call: who and what, the task's taint, and the arguments the slice's
/// policies read. A number is a `decimal` when it is exactly one; any other value a policy
/// could compare (a number with more than four decimals, an object, a list, null) is an
/// empty record, so every comparison with it fails to evaluate: an entry does not allow it
/// and a tier rule holds.
fn context(read: &BTreeSet<String>, facts: &Facts<'_>) -> Result<Context, String> {
    let mut args = Vec::new();
    if let Value::Object(map) = facts.arguments {
        for name in read {
            let Some(v) = map.get(name) else { continue };
            let e = match v {
                Value::String(s) => RestrictedExpression::new_string(s.clone()),
                Value::Bool(b) => RestrictedExpression::new_bool(*b),
                Value::Number(n) => match exact_decimal(n) {
                    Some(d) => RestrictedExpression::new_decimal(d),
                    None => opaque()?,
                },
                _ => opaque()?,
            };
            args.push((name.clone(), e));
        }
    }
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    Context::from_pairs([
        ("template".to_owned(), s(facts.template)),
        ("task".to_owned(), s(facts.task)),
        ("upstream".to_owned(), s(facts.upstream)),
        ("tool".to_owned(), s(facts.exposed)),
        ("upstream_tool".to_owned(), s(facts.tool)),
        (
            "tainted".to_owned(),
            RestrictedExpression::new_bool(facts.tainted),
        ),
        (
            "args".to_owned(),
            RestrictedExpression::new_record(args).map_err(|e| e.to_string())?,
        ),
    ])
    .map_err(|e| e.to_string())
}

fn opaque() -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(Vec::new()).map_err(|e| e.to_string())
}

/// A Cedar string literal.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Cedar `like` pattern for a glob whose only wildcard is `*`: the glob as a string
/// literal, `*` left unescaped (a glob has no literal `*`).
fn like_pattern(glob: &str) -> String {
    lit(glob)
}

/// The condition that the tool name matches a tool-name glob. Cedar's `like` has no `?`:
/// it is widened to `*` here and the exact glob is checked before the slice is chosen.
fn tool_condition(glob: &str) -> String {
    if glob.contains(['*', '?']) {
        format!(
            "context.tool like {}",
            like_pattern(&glob.replace('?', "*"))
        )
    } else {
        format!("context.tool == {}", lit(glob))
    }
}

fn arg_conditions(args: &ArgConstraints, used: &mut BTreeSet<String>) -> String {
    let mut out = String::new();
    for (name, c) in args {
        used.insert(name.clone());
        let v = format!("context.args[{}]", lit(name));
        let test = match c {
            ArgConstraint::Globs(globs) => globs
                .iter()
                .map(|g| format!("{v} like {}", like_pattern(g)))
                .collect::<Vec<_>>()
                .join(" || "),
            ArgConstraint::Range { min, max } => {
                let mut parts = Vec::new();
                if let Some(lo) = min {
                    parts.push(format!(
                        "{v}.greaterThanOrEqual(decimal({}))",
                        lit(lo.decimal())
                    ));
                }
                if let Some(hi) = max {
                    parts.push(format!(
                        "{v}.lessThanOrEqual(decimal({}))",
                        lit(hi.decimal())
                    ));
                }
                parts.join(" && ")
            }
        };
        let _ = write!(out, " && (context.args has {} && ({test}))", lit(name));
    }
    out
}

struct Builder {
    set: PolicySet,
    text: String,
}

impl Builder {
    fn new() -> Self {
        Self {
            set: PolicySet::new(),
            text: String::new(),
        }
    }

    fn add(
        &mut self,
        id: &str,
        tier: Option<Tier>,
        action: &str,
        condition: &str,
    ) -> Result<(), String> {
        let mut src = format!("@id({})\n", lit(id));
        if let Some(t) = tier {
            let _ = writeln!(src, "@tier(\"{}\")", t.number());
        }
        let _ = write!(
            src,
            "permit (principal, action == Custos::Action::\"{action}\", resource)\nwhen {{ {condition} }};\n"
        );
        let policy = Policy::parse(Some(PolicyId::new(id)), &src)
            .map_err(|e| format!("compiling policy `{id}`: {e}"))?;
        self.set
            .add(policy)
            .map_err(|e| format!("compiling policy `{id}`: {e}"))?;
        self.text.push_str(&src);
        self.text.push('\n');
        Ok(())
    }
}

fn build_slice(
    template: &TemplateSpec,
    upstream: &UpstreamSpec,
    tool: &str,
    exposed: &str,
    proposed: Option<Tier>,
    raw: &[crate::raw::RawStatement],
) -> Result<Slice, String> {
    let mut args = BTreeSet::new();
    let mut call = Builder::new();
    for (i, entry) in template.tools.iter().enumerate() {
        if !glob_match(&entry.tool, exposed) {
            continue;
        }
        let condition = format!(
            "context.template == {} && {}{}",
            lit(&template.name),
            tool_condition(&entry.tool),
            arg_conditions(&entry.args, &mut args)
        );
        call.add(
            &format!("template:{}:tools[{i}]", template.name),
            entry.tier,
            "call",
            &condition,
        )?;
    }
    let mut classify = Builder::new();
    let up = &upstream.name;
    let this_tool = tool_condition(exposed);
    match upstream.tiers.get(tool) {
        Some(t) => classify.add(
            &format!("upstream:{up}:tiers:{tool}"),
            Some(*t),
            "classify",
            &this_tool,
        )?,
        // A trusted upstream's own annotations may propose a lower default for this tool.
        None => match proposed.filter(|p| *p < upstream.default_tier) {
            Some(p) => classify.add(
                &format!("upstream:{up}:annotations:{tool}"),
                Some(p),
                "classify",
                &this_tool,
            )?,
            None => classify.add(
                &format!("upstream:{up}:default_tier"),
                Some(upstream.default_tier),
                "classify",
                &this_tool,
            )?,
        },
    }
    for (j, rule) in upstream.tier_rules.iter().enumerate() {
        if !glob_match(&rule.tool, tool) {
            continue;
        }
        let condition = format!(
            "{}{}",
            tool_condition(&format!("{up}__{}", rule.tool)),
            arg_conditions(&rule.args, &mut args)
        );
        classify.add(
            &format!("upstream:{up}:tier_rules[{j}]"),
            Some(rule.tier),
            "classify",
            &condition,
        )?;
    }
    for (pattern, t) in &upstream.tainted_tiers {
        if !glob_match(pattern, tool) {
            continue;
        }
        let condition = format!(
            "context.tainted && {}",
            tool_condition(&format!("{up}__{pattern}"))
        );
        classify.add(
            &format!("upstream:{up}:tainted_tiers:{pattern}"),
            Some(*t),
            "classify",
            &condition,
        )?;
    }
    for r in raw {
        let target = if r.forbids { &mut call } else { &mut classify };
        target
            .set
            .add(r.policy.clone())
            .map_err(|e| format!("adding policy `{}`: {e}", r.id))?;
        target.text.push_str(&r.text);
        target.text.push('\n');
    }
    let untrusted = upstream.untrusted.iter().any(|p| glob_match(p, tool));
    let text: Arc<str> = format!("{}{}", call.text, classify.text).into();
    Ok(Slice {
        call_tiers: tiers_of(&call.set),
        classify_tiers: tiers_of(&classify.set),
        call: call.set,
        classify: classify.set,
        args,
        untrusted,
        text,
        reads_task: !raw.is_empty(),
        memo: Mutex::default(),
    })
}
