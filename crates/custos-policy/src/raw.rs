//! Raw Cedar policies (`kind: Policy`): checked against the schema Custos ships when applied,
//! with the line and column of every problem, and compiled into every slice.
//!
//! What a raw policy may say is limited to what cannot widen access: `forbid` on
//! `Custos::Action::"call"` (refuse calls a template allows) and `permit` on
//! `Custos::Action::"classify"` with `@tier("1".."4")` (raise a call's tier). Granting calls is
//! the templates' job; a raw `permit` on `call` is refused.

use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Effect, EntityUid, Policy, PolicyId, PolicySet, Schema, ValidationMode,
    Validator,
};
use custos_core::Tier;

/// The schema raw policies are validated against: a task calls (or has classified) a tool;
/// the context names the template, task, upstream, tool (exposed and upstream names) and
/// whether the task is tainted. Arguments are not in the schema: constrain them in template
/// entries and upstream tier rules, which compile to Cedar that fails closed on values of the
/// wrong type.
pub const SCHEMA: &str = r#"namespace Custos {
  entity Task;
  entity Tool;
  type CallContext = {
    template: String,
    task: String,
    upstream: String,
    tool: String,
    upstream_tool: String,
    tainted: Bool,
  };
  action "call", "classify" appliesTo {
    principal: [Task],
    resource: [Tool],
    context: CallContext,
  };
}
"#;

/// A problem with a raw policy, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPolicyError {
    /// 1-based line in the policy text, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RawPolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// One raw policy statement as compiled: its stable id and what it does.
#[derive(Debug, Clone)]
pub(crate) struct RawStatement {
    pub(crate) id: String,
    pub(crate) policy: Policy,
    pub(crate) forbids: bool,
    pub(crate) text: String,
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn located(text: &str, d: &dyn miette::Diagnostic, message: String) -> RawPolicyError {
    let at = d
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| position(text, l.offset()));
    RawPolicyError {
        line: at.map(|a| a.0),
        column: at.map(|a| a.1),
        message,
    }
}

fn schema() -> Result<Schema, RawPolicyError> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(s, _warnings)| s)
        .map_err(|e| RawPolicyError {
            line: None,
            column: None,
            message: format!("the shipped schema does not load: {e}"),
        })
}

/// Parses, validates and classifies one `Policy` resource's text; its statements get the ids
/// `policy:<name>[i]`.
///
/// # Errors
/// Every problem found, each with its line and column when Cedar gives one: a statement that
/// does not parse, does not validate against [`SCHEMA`], or says something raw policies may
/// not (a `permit` on `call`, a `classify` without a valid `@tier`, an action other than
/// those two).
pub(crate) fn compile(name: &str, text: &str) -> Result<Vec<RawStatement>, Vec<RawPolicyError>> {
    let set = PolicySet::from_str(text).map_err(|e| {
        let mut errors: Vec<RawPolicyError> = e
            .iter()
            .map(|one| located(text, one, one.to_string()))
            .collect();
        if errors.is_empty() {
            errors.push(located(text, &e, e.to_string()));
        }
        errors
    })?;
    let result =
        Validator::new(schema().map_err(|e| vec![e])?).validate(&set, ValidationMode::Strict);
    let mut errors: Vec<RawPolicyError> = result
        .validation_errors()
        .map(|e| located(text, e, e.to_string()))
        .collect();
    let call = action_uid("call");
    let classify = action_uid("classify");
    let starts = statement_starts(text);
    let mut out = Vec::new();
    for (i, p) in set.policies().enumerate() {
        let at = starts
            .get(i)
            .map(|&o| position(text, o))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        let refuse = |message: String| RawPolicyError {
            line: at.0,
            column: at.1,
            message,
        };
        let action = match p.action_constraint() {
            ActionConstraint::Eq(a) => Some(a),
            _ => None,
        };
        let forbids = match (p.effect(), action) {
            (Effect::Forbid, Some(a)) if Some(&a) == call.as_ref() => true,
            (Effect::Permit, Some(a)) if Some(&a) == classify.as_ref() => {
                let tier = p
                    .annotation("tier")
                    .and_then(|t| t.parse::<u8>().ok())
                    .and_then(|n| Tier::try_from(n).ok());
                if tier.is_none() {
                    errors.push(refuse(
                        "a `permit` on `Custos::Action::\"classify\"` needs `@tier(\"1\")` to `@tier(\"4\")`".into(),
                    ));
                    continue;
                }
                false
            }
            (Effect::Permit, _) => {
                errors.push(refuse(
                    "raw policies may not grant calls (templates do): use `forbid` on `Custos::Action::\"call\"`, or `permit` on `Custos::Action::\"classify\"` with `@tier`".into(),
                ));
                continue;
            }
            (Effect::Forbid, _) => {
                errors.push(refuse(
                    "a `forbid` must name its action: `action == Custos::Action::\"call\"`".into(),
                ));
                continue;
            }
        };
        let id = format!("policy:{name}[{i}]");
        let policy = p.new_id(PolicyId::new(&id));
        out.push(RawStatement {
            text: format!("@id(\"{id}\")\n{policy}\n"),
            id,
            policy,
            forbids,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Byte offsets of each statement's effect keyword (`permit` / `forbid` followed by `(`),
/// outside string literals and comments: where a problem with the i-th statement is shown.
fn statement_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {
                let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
                let rest = &text[i..];
                if word_start && (rest.starts_with("permit") || rest.starts_with("forbid")) {
                    let after = rest[6..].trim_start();
                    if after.starts_with('(') {
                        out.push(i);
                        i += 6;
                        continue;
                    }
                }
                i += 1;
            }
        }
    }
    out
}

fn action_uid(name: &str) -> Option<EntityUid> {
    EntityUid::from_str(&format!("Custos::Action::\"{name}\"")).ok()
}

/// Checks one `Policy` resource's Cedar text as apply does.
///
/// # Errors
/// Every problem found, with its line and column.
pub fn check(name: &str, text: &str) -> Result<(), Vec<RawPolicyError>> {
    compile(name, text).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_loads_and_good_policies_pass() {
        schema().expect("schema");
        let ok = r#"
@tier("3")
permit (principal, action == Custos::Action::"classify", resource)
when { context.tainted && context.upstream == "mail" };

forbid (principal, action == Custos::Action::"call", resource)
when { context.template == "support" && context.tool like "files__write*" };
"#;
        let compiled = compile("p", ok).expect("valid");
        assert_eq!(compiled.len(), 2);
        assert_eq!(compiled[0].id, "policy:p[0]");
        assert!(!compiled[0].forbids && compiled[1].forbids);
    }

    #[test]
    fn bad_policies_are_refused_with_line_and_column() {
        for (text, line, says) in [
            (
                "forbid (principal, action == Custos::Action::\"call\", resource)\nwhen { context.tainted &&& true };",
                2,
                "",
            ),
            (
                "forbid (principal, action == Custos::Action::\"call\", resource)\nwhen { context.nope };",
                2,
                "nope",
            ),
            (
                "\n\npermit (principal, action == Custos::Action::\"call\", resource);",
                3,
                "may not grant",
            ),
            (
                "permit (principal, action == Custos::Action::\"classify\", resource);",
                1,
                "@tier",
            ),
            (
                "@tier(\"9\")\npermit (principal, action == Custos::Action::\"classify\", resource);",
                2,
                "@tier",
            ),
            (
                "forbid (principal, action, resource);",
                1,
                "must name its action",
            ),
            (
                "forbid (principal, action == Custos::Action::\"call\", resource)\nwhen { context.args.amount > 5 };",
                2,
                "args",
            ),
        ] {
            let errors = check("p", text).expect_err(text);
            let e = &errors[0];
            assert_eq!(e.line, Some(line), "{text}: {errors:?}");
            assert!(e.column.is_some(), "{text}: {errors:?}");
            assert!(e.to_string().contains(says), "{text}: {errors:?}");
        }
    }
}
