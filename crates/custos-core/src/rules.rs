//! Argument-level rules: template tool entries with argument constraints and a tier, upstream
//! tier rules on arguments. Parsed and checked on apply; `custos-policy` compiles them to
//! Cedar.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Tier;

/// The most argument constraints one entry or rule may name.
pub const MAX_ARGS: usize = 32;
/// The most globs one string constraint may list.
pub const MAX_GLOBS: usize = 64;
/// The longest argument name or glob.
pub const MAX_ARG_TEXT: usize = 256;

/// A number bound as written (`max: 100`), checked to fit a Cedar `decimal`: at most four
/// decimal places and less than 900 trillion in magnitude, so comparisons are exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    written: serde_json::Number,
    decimal: String,
}

impl Bound {
    /// The bound as a Cedar `decimal` literal's text (`100.0`).
    pub fn decimal(&self) -> &str {
        &self.decimal
    }
}

/// A JSON number as a Cedar `decimal` text when it is exactly representable (at most four
/// decimal places, magnitude below 9 × 10^14); `None` otherwise.
pub fn exact_decimal(n: &serde_json::Number) -> Option<String> {
    const LIMIT: u64 = 900_000_000_000_000;
    if let Some(i) = n.as_i64() {
        return (i.unsigned_abs() < LIMIT).then(|| format!("{i}.0"));
    }
    if n.as_u64().is_some() {
        return None; // beyond i64, so beyond the limit
    }
    let text = n.to_string();
    if text.contains(['e', 'E']) {
        return None;
    }
    let (int, frac) = text.split_once('.').unwrap_or((&text, "0"));
    let digits = int.trim_start_matches('-');
    let whole: u64 = digits.parse().ok()?;
    (whole < LIMIT
        && !frac.is_empty()
        && frac.len() <= 4
        && frac.bytes().all(|b| b.is_ascii_digit()))
    .then(|| format!("{int}.{frac}"))
}

impl Serialize for Bound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = serde_json::Number::deserialize(d)?;
        let decimal = exact_decimal(&written).ok_or_else(|| {
            de::Error::custom(format!(
                "bound {written} must have at most 4 decimal places and be less than 900 trillion"
            ))
        })?;
        Ok(Bound { written, decimal })
    }
}

/// What one named argument must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgConstraint {
    /// A string matching any of these globs: `*` matches any run of characters, every other
    /// character only itself. Written as a list (`["GB29*", "DE89*"]`) or one string.
    Globs(Vec<String>),
    /// A number within the bounds (inclusive). Written `{min: 1, max: 100}`.
    Range {
        /// The least value allowed.
        min: Option<Bound>,
        /// The greatest value allowed.
        max: Option<Bound>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min: Option<Bound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<Bound>,
}

impl Serialize for ArgConstraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ArgConstraint::Globs(g) => g.serialize(s),
            ArgConstraint::Range { min, max } => RawRange {
                min: min.clone(),
                max: max.clone(),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ArgConstraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArgConstraint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of string globs, one glob, or {min, max}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ArgConstraint::Globs(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut globs = Vec::new();
                while let Some(g) = seq.next_element::<String>()? {
                    globs.push(g);
                }
                Ok(ArgConstraint::Globs(globs))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let raw = RawRange::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ArgConstraint::Range {
                    min: raw.min,
                    max: raw.max,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Constraints on a call's arguments, by argument name: every one must hold.
pub type ArgConstraints = BTreeMap<String, ArgConstraint>;

fn check_constraints(args: &ArgConstraints) -> Result<(), String> {
    if args.len() > MAX_ARGS {
        return Err(format!("at most {MAX_ARGS} argument constraints"));
    }
    for (name, c) in args {
        if name.is_empty() || name.len() > MAX_ARG_TEXT || name.chars().any(char::is_control) {
            return Err(format!(
                "argument name `{}` must be 1 to {MAX_ARG_TEXT} printable characters",
                crate::text::for_display(name, 40)
            ));
        }
        match c {
            ArgConstraint::Globs(g) if g.is_empty() || g.len() > MAX_GLOBS => {
                return Err(format!("argument `{name}`: list 1 to {MAX_GLOBS} globs"));
            }
            ArgConstraint::Globs(g) => {
                if let Some(bad) = g
                    .iter()
                    .find(|s| s.len() > MAX_ARG_TEXT || s.chars().any(char::is_control))
                {
                    return Err(format!(
                        "argument `{name}`: glob `{}` must be at most {MAX_ARG_TEXT} printable characters",
                        crate::text::for_display(bad, 40)
                    ));
                }
            }
            ArgConstraint::Range {
                min: None,
                max: None,
            } => {
                return Err(format!("argument `{name}`: give `min`, `max` or both"));
            }
            ArgConstraint::Range { min, max } => {
                if let (Some(lo), Some(hi)) = (min, max) {
                    let lo_f = lo.written.as_f64().unwrap_or(f64::NAN);
                    let hi_f = hi.written.as_f64().unwrap_or(f64::NAN);
                    if lo_f > hi_f {
                        return Err(format!("argument `{name}`: `min` is above `max`"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// One entry of a template's `tools`: a glob over exposed names, optionally with argument
/// constraints and a tier. Written as a string (`files__read_*`) or an object
/// (`{tool: bank__send_money, args: {...}, tier: 3}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolEntry {
    /// Exposed tool name (`upstream__tool`) or a glob over such names.
    pub tool: String,
    /// Each named argument must satisfy its constraint, else the entry does not allow the call.
    pub args: ArgConstraints,
    /// This entry's tier; the call's tier is never below what the upstream says.
    pub tier: Option<Tier>,
}

impl ToolEntry {
    /// An entry allowing `pattern` with any arguments.
    pub fn glob(pattern: &str) -> Self {
        Self {
            tool: pattern.to_owned(),
            args: ArgConstraints::new(),
            tier: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        check_constraints(&self.args).map_err(|e| format!("tool `{}`: {e}", self.tool))
    }
}

impl From<&str> for ToolEntry {
    fn from(pattern: &str) -> Self {
        Self::glob(pattern)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolEntry {
    tool: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    args: ArgConstraints,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<Tier>,
}

impl Serialize for ToolEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.args.is_empty() && self.tier.is_none() {
            // Written as a plain glob, stored as one: specs from before entries existed are
            // byte-identical.
            return self.tool.serialize(s);
        }
        RawToolEntry {
            tool: self.tool.clone(),
            args: self.args.clone(),
            tier: self.tier,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ToolEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ToolEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tool name or glob, or {tool, args, tier}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ToolEntry::glob(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let raw = RawToolEntry::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ToolEntry {
                    tool: raw.tool,
                    args: raw.args,
                    tier: raw.tier,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// An upstream rule that raises a tool's tier when its arguments match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRule {
    /// The upstream's own tool name, or a glob over them.
    pub tool: String,
    /// Every named argument must satisfy its constraint for the rule to apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: ArgConstraints,
    /// The tier the call gets when the rule applies (never lowers it).
    pub tier: Tier,
}

impl TierRule {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_tool_glob(&self.tool)?;
        check_constraints(&self.args).map_err(|e| format!("tool `{}`: {e}", self.tool))
    }
}

/// An upstream's own tool name or a glob over them: `[A-Za-z0-9_-*?]`, at most 64.
pub(crate) fn check_tool_glob(pattern: &str) -> Result<(), String> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 64
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*' | b'?'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` must be a tool name or a glob over tool names (letters, digits, `_`, `-`, `*`, `?`; at most 64)",
            crate::text::for_display(pattern, 80)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_both_forms_and_write_back_as_written() {
        let yaml = r#"
- files__read_*
- tool: bank__send_money
  args:
    recipient: ["GB29*", "DE89*"]
    amount: {max: 100.5}
    memo: "inv-*"
  tier: 3
"#;
        let entries: Vec<ToolEntry> = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(entries[0], ToolEntry::glob("files__read_*"));
        let send = &entries[1];
        assert_eq!(send.tier, Some(Tier::T3));
        assert_eq!(
            send.args["recipient"],
            ArgConstraint::Globs(vec!["GB29*".into(), "DE89*".into()])
        );
        assert_eq!(
            send.args["memo"],
            ArgConstraint::Globs(vec!["inv-*".into()])
        );
        let ArgConstraint::Range {
            min: None,
            max: Some(max),
        } = &send.args["amount"]
        else {
            panic!("range")
        };
        assert_eq!(max.decimal(), "100.5");
        let json = serde_json::to_value(&entries).expect("serialises");
        assert_eq!(json[0], "files__read_*");
        assert_eq!(json[1]["args"]["amount"]["max"], 100.5);
        assert_eq!(json[1]["args"]["memo"], serde_json::json!(["inv-*"]));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let err = |y: &str| {
            serde_yaml::from_str::<ToolEntry>(y)
                .expect_err(y)
                .to_string()
        };
        assert!(err("{tool: a__b, args: {n: {max: 1.23456}}}").contains("4 decimal places"));
        assert!(err("{tool: a__b, args: {n: {between: 1}}}").contains("unknown field"));
        assert!(err("{tool: a__b, colour: red}").contains("unknown field"));
        assert!(err("{tool: a__b, tier: 7}").contains("tier"));
        let e: ToolEntry =
            serde_yaml::from_str("{tool: a__b, args: {n: {min: 5, max: 1}}}").expect("parses");
        assert!(e.validate().expect_err("min > max").contains("above"));
        let e: ToolEntry = serde_yaml::from_str("{tool: a__b, args: {n: {}}}").expect("parses");
        assert!(e.validate().is_err());
    }

    #[test]
    fn exact_decimals_only() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).expect("number");
        assert_eq!(exact_decimal(&n("100")).as_deref(), Some("100.0"));
        assert_eq!(exact_decimal(&n("-7")).as_deref(), Some("-7.0"));
        assert_eq!(exact_decimal(&n("0.25")).as_deref(), Some("0.25"));
        assert_eq!(exact_decimal(&n("-1.5")).as_deref(), Some("-1.5"));
        assert_eq!(exact_decimal(&n("100.00001")), None);
        assert_eq!(exact_decimal(&n("1e300")), None);
        assert_eq!(exact_decimal(&n("18446744073709551615")), None);
        assert_eq!(exact_decimal(&n("900000000000000")), None);
    }
}
