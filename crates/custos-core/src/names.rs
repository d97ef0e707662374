//! Names: of resources, and of the tools the gateway exposes (`upstream__tool`).

use thiserror::Error;

/// The separator between an upstream's name and its tool's name.
pub const TOOL_SEPARATOR: &str = "__";

/// The longest tool name the gateway exposes (the MCP specification's limit).
pub const MAX_TOOL_NAME: usize = 128;

/// A name that breaks the naming rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// A resource name that is empty, too long or has characters outside `[a-z0-9-]`.
    #[error(
        "invalid name `{0}`: use 1 to 63 characters from a-z, 0-9 and `-`, starting with a letter or digit"
    )]
    Resource(String),
    /// An exposed tool name that does not match `^[a-zA-Z0-9_./-]{{1,128}}$` or has no upstream prefix.
    #[error(
        "invalid tool name `{0}`: expected `<upstream>__<tool>` matching ^[a-zA-Z0-9_./-]{{1,128}}$"
    )]
    Tool(String),
}

/// Checks a resource name (agents, templates, upstreams, operators).
///
/// # Errors
/// [`NameError::Resource`] when the name breaks the rule.
pub fn check_resource_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError::Resource(name.to_owned()))
    }
}

/// Whether `name` is a tool name as the MCP specification (2025-11-25) allows it: 1 to 128
/// characters from `A-Z`, `a-z`, `0-9`, `_`, `-`, `.` and `/`. (Names with `.` or `/` pass
/// through unchanged, as an upstream names them; anything else — spaces, commas, other
/// characters — cannot be exposed.)
pub fn is_valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

/// A tool as the gateway exposes it: `<upstream>__<tool>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExposedTool {
    /// The upstream's resource name.
    pub upstream: String,
    /// The tool's name at the upstream.
    pub tool: String,
}

impl ExposedTool {
    /// The exposed name for `tool` behind `upstream`, if it satisfies the client rule.
    pub fn expose(upstream: &str, tool: &str) -> Option<String> {
        let name = format!("{upstream}{TOOL_SEPARATOR}{tool}");
        is_valid_tool_name(&name).then_some(name)
    }

    /// Splits an exposed name at the first `__`.
    ///
    /// # Errors
    /// [`NameError::Tool`] when the name breaks the client rule or has no upstream part.
    pub fn parse(exposed: &str) -> Result<Self, NameError> {
        if !is_valid_tool_name(exposed) {
            return Err(NameError::Tool(exposed.to_owned()));
        }
        match exposed.split_once(TOOL_SEPARATOR) {
            Some((up, tool)) if !up.is_empty() && !tool.is_empty() => Ok(Self {
                upstream: up.to_owned(),
                tool: tool.to_owned(),
            }),
            _ => Err(NameError::Tool(exposed.to_owned())),
        }
    }
}

impl std::fmt::Display for ExposedTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{TOOL_SEPARATOR}{}", self.upstream, self.tool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        assert!(check_resource_name("agent-docs-review-dev").is_ok());
        for bad in ["", "-a", "A", "a_b", "a b", &"a".repeat(64)] {
            assert!(check_resource_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exposed_tools_round_trip() {
        let name = ExposedTool::expose("files", "read_text_file").expect("valid");
        assert_eq!(name, "files__read_text_file");
        let t = ExposedTool::parse(&name).expect("parses");
        assert_eq!(
            (t.upstream.as_str(), t.tool.as_str()),
            ("files", "read_text_file")
        );
        // The specification's characters pass; others, and names over 128 bytes, do not.
        assert_eq!(
            ExposedTool::expose("files", "ns.read/v2").as_deref(),
            Some("files__ns.read/v2")
        );
        let t = ExposedTool::parse("files__ns.read/v2").expect("parses");
        assert_eq!(t.tool, "ns.read/v2");
        for bad in ["a b", "a,b", "ä", "a\n", "a\"b"] {
            assert!(ExposedTool::expose("files", bad).is_none(), "{bad:?}");
        }
        assert!(ExposedTool::expose("files", &"x".repeat(121)).is_some());
        assert!(ExposedTool::expose("files", &"x".repeat(122)).is_none());
        assert!(ExposedTool::parse("files").is_err());
        assert!(ExposedTool::parse("__x").is_err());
        assert!(ExposedTool::parse("files__").is_err());
    }
}
