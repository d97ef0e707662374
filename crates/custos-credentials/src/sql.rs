//! SQL text composed by the engines, and the one place it is handed to sqlx as safe.
//!
//! sqlx only takes `&'static str` SQL unless it is wrapped in `AssertSqlSafe`. DDL cannot bind
//! role names or passwords as parameters, so the engines compose it here from fixed keywords
//! and escaped values, and [`SafeSql::into_sqlx`] is the only call of `AssertSqlSafe` in the
//! crate.

use sqlx::AssertSqlSafe;
use zeroize::Zeroize;

/// SQL text built only from `&'static str` keywords, escaped identifiers and literals, decimal
/// numbers, and statement templates validated by [`crate::template::Template::parse`].
///
/// INVARIANT: no method appends text that could end a quoted context the builder did not open
/// itself. That is what makes [`SafeSql::into_sqlx`] sound.
pub(crate) struct SafeSql(String);

impl SafeSql {
    /// Starts with a fixed keyword.
    pub(crate) fn new(keyword: &'static str) -> Self {
        Self(keyword.to_owned())
    }

    /// Appends fixed SQL.
    pub(crate) fn kw(mut self, keyword: &'static str) -> Self {
        self.0.push_str(keyword);
        self
    }

    /// Appends a PostgreSQL identifier, double-quoted and escaped by `postgres-protocol`.
    pub(crate) fn pg_ident(mut self, ident: &str) -> Self {
        self.0
            .push_str(&postgres_protocol::escape::escape_identifier(ident));
        self
    }

    /// Appends a PostgreSQL string literal, quoted and escaped by `postgres-protocol`.
    pub(crate) fn pg_literal(mut self, literal: &str) -> Self {
        self.0
            .push_str(&postgres_protocol::escape::escape_literal(literal));
        self
    }

    /// Appends a MySQL string literal.
    pub(crate) fn mysql_literal(mut self, literal: &str) -> Self {
        self.0.push_str(&mysql_literal(literal));
        self
    }

    /// Appends a decimal number.
    pub(crate) fn number(mut self, n: u64) -> Self {
        self.0.push_str(&n.to_string());
        self
    }

    /// A rendered statement template: operator-written SQL from a validated role spec whose
    /// placeholders were filled with values escaped by this module.
    pub(crate) fn from_template(rendered: String) -> Self {
        Self(rendered)
    }

    /// Hands the text to sqlx.
    pub(crate) fn into_sqlx(mut self) -> AssertSqlSafe<String> {
        // Safe by the INVARIANT on `SafeSql`: every dynamic part was escaped for the server it
        // goes to, or is a template the operator wrote and Custos validated; no task or agent
        // name is ever part of it (principals are `custos_[a-z0-9]+`).
        AssertSqlSafe(std::mem::take(&mut self.0))
    }
}

impl Drop for SafeSql {
    fn drop(&mut self) {
        // Statements can carry a password verifier (PostgreSQL) or a password (MySQL).
        self.0.zeroize();
    }
}

/// Quotes a MySQL/MariaDB string literal in a way that reads the same with and without
/// `NO_BACKSLASH_ESCAPES`: quotes are doubled and backslashes, which mean different things in
/// the two modes, are dropped (no value the engines quote may contain one: principals,
/// validated host patterns and generated passwords never do).
pub(crate) fn mysql_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' | '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(mysql_literal("a'b\\c"), "'a''bc'");
        let s = SafeSql::new("DROP ROLE ")
            .pg_ident("x\"; DROP ROLE postgres; --")
            .kw(" ")
            .pg_literal("it's")
            .number(7);
        assert_eq!(
            s.into_sqlx().0,
            "DROP ROLE \"x\"\"; DROP ROLE postgres; --\" 'it''s'7"
        );
    }
}
