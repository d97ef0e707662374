//! Statement templates in role specs: SQL written by an operator with `{{name}}` and
//! `{{expiration}}` placeholders that Custos fills with values it escaped itself.
//!
//! Parsing checks that a statement is one statement (no `;` before its end), that every
//! placeholder is known, and that no placeholder sits inside a quoted string, a quoted
//! identifier or a comment: the value is quoted by Custos, so an operator who writes
//! `'{{name}}'` gets an error instead of a surprise.
//!
//! INVARIANT: the lexer only decides what to *refuse*. The safety of a rendered statement does
//! not rest on it: every substituted value is a complete escaped identifier or literal built
//! from a [`crate::PrincipalName`] (`[a-z0-9_]`), a validated host pattern or a timestamp, none
//! of which can end a string or identifier the server thinks is open.

/// Longest statement template accepted.
pub(crate) const MAX_STATEMENT_LEN: usize = 8 * 1024;

/// Which server's quoting rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `'..'` (with `E'..'` backslash escapes), `".."`, `$tag$..$tag$`, `--`, nested `/* */`.
    Postgres,
    /// `'..'` and `".."` with backslash escapes, `` `..` ``, `-- `, `#`, `/* */`.
    Mysql,
}

/// A value a template may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placeholder {
    /// The principal: a quoted identifier (PostgreSQL) or account `'user'@'host'` (MySQL).
    Name,
    /// The server-side expiry as a quoted timestamp literal.
    Expiration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Placeholder),
}

/// A parsed statement template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses and checks one statement.
    pub(crate) fn parse(text: &str, dialect: Dialect) -> Result<Self, String> {
        if text.len() > MAX_STATEMENT_LEN {
            return Err(format!("longer than {MAX_STATEMENT_LEN} bytes"));
        }
        if text.trim().is_empty() {
            return Err("empty statement".to_owned());
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        {
            return Err(format!("control character {:?}", c));
        }
        Lexer {
            src: text,
            pos: 0,
            dialect,
            pieces: Vec::new(),
            text_start: 0,
        }
        .run()
    }

    /// The statement with each placeholder replaced by its already-escaped value.
    pub(crate) fn render(&self, name: &str, expiration: &str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Value(Placeholder::Name) => out.push_str(name),
                Piece::Value(Placeholder::Expiration) => out.push_str(expiration),
            }
        }
        out
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    dialect: Dialect,
    pieces: Vec<Piece>,
    text_start: usize,
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn run(mut self) -> Result<Template, String> {
        while self.pos < self.src.len() {
            let rest = self.rest();
            if rest.starts_with("{{") {
                self.placeholder()?;
            } else if rest.starts_with("}}") {
                return Err("`}}` without `{{`".to_owned());
            } else if rest.starts_with(';') {
                if !self.src[self.pos + 1..].trim().is_empty() {
                    return Err("one statement per entry: `;` before the end".to_owned());
                }
                // A final `;` is dropped: the statement is sent on its own.
                self.flush_text();
                self.pos = self.src.len();
                self.text_start = self.pos;
            } else if rest.starts_with("--")
                && (self.dialect == Dialect::Postgres
                    || rest[2..].starts_with(|c: char| c.is_whitespace()))
                || (self.dialect == Dialect::Mysql && rest.starts_with('#'))
            {
                let end = rest.find('\n').map_or(self.src.len(), |i| self.pos + i);
                self.quoted_until(end, "comment")?;
            } else if rest.starts_with("/*") {
                self.block_comment()?;
            } else if rest.starts_with('\'') {
                let backslash = self.dialect == Dialect::Mysql || self.is_e_string();
                self.quoted('\'', backslash, "string")?;
            } else if rest.starts_with('"') {
                let backslash = self.dialect == Dialect::Mysql;
                self.quoted('"', backslash, "quoted identifier or string")?;
            } else if rest.starts_with('`') && self.dialect == Dialect::Mysql {
                self.quoted('`', false, "quoted identifier")?;
            } else if rest.starts_with('$') && self.dialect == Dialect::Postgres {
                self.dollar()?;
            } else {
                let c = rest.chars().next().map_or(1, char::len_utf8);
                self.pos += c;
            }
        }
        self.flush_text();
        if self
            .pieces
            .iter()
            .all(|p| matches!(p, Piece::Text(t) if t.trim().is_empty()))
        {
            return Err("empty statement".to_owned());
        }
        Ok(Template {
            pieces: self.pieces,
        })
    }

    fn flush_text(&mut self) {
        if self.text_start < self.pos {
            self.pieces
                .push(Piece::Text(self.src[self.text_start..self.pos].to_owned()));
        }
    }

    fn placeholder(&mut self) -> Result<(), String> {
        let Some(close) = self.rest().find("}}") else {
            return Err("`{{` without `}}`".to_owned());
        };
        let inner = &self.rest()[2..close];
        let value = match inner.trim() {
            "name" => Placeholder::Name,
            "expiration" => Placeholder::Expiration,
            "password" => {
                return Err(
                    "`{{password}}` is not available: the password never appears in SQL text"
                        .to_owned(),
                );
            }
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(format!(
                    "unknown placeholder `{{{{{shown}}}}}`: use `{{{{name}}}}` or `{{{{expiration}}}}`"
                ));
            }
        };
        self.flush_text();
        self.pieces.push(Piece::Value(value));
        self.pos += close + 2;
        self.text_start = self.pos;
        Ok(())
    }

    /// Whether the `'` at `pos` opens a PostgreSQL `E'..'` string.
    fn is_e_string(&self) -> bool {
        if self.dialect != Dialect::Postgres {
            return false;
        }
        let before = &self.src[..self.pos];
        let mut chars = before.chars().rev();
        match chars.next() {
            Some('e' | 'E') => !chars
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$'),
            _ => false,
        }
    }

    /// Skips a region that must not hold a placeholder, ending at byte `end` (exclusive).
    fn quoted_until(&mut self, end: usize, what: &str) -> Result<(), String> {
        if self.src[self.pos..end].contains("{{") {
            return Err(format!(
                "placeholder inside a {what}: write it bare, Custos quotes the value"
            ));
        }
        self.pos = end;
        Ok(())
    }

    fn quoted(&mut self, quote: char, backslash: bool, what: &str) -> Result<(), String> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let q = quote as u8;
        let mut i = start + 1;
        while i < bytes.len() {
            let b = bytes[i];
            if backslash && b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                // A doubled quote stays inside.
                if bytes.get(i + 1) == Some(&q) {
                    i += 2;
                    continue;
                }
                return self.quoted_until(i + 1, what);
            }
            i += 1;
        }
        Err(format!("unterminated {what}"))
    }

    fn block_comment(&mut self) -> Result<(), String> {
        let nested = self.dialect == Dialect::Postgres;
        let bytes = self.src.as_bytes();
        let mut depth = 0_usize;
        let mut i = self.pos;
        while i < bytes.len() {
            if bytes[i..].starts_with(b"/*") && (nested || depth == 0) {
                depth += 1;
                i += 2;
            } else if bytes[i..].starts_with(b"*/") {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return self.quoted_until(i, "comment");
                }
            } else {
                i += 1;
            }
        }
        Err("unterminated comment".to_owned())
    }

    /// `$tag$ .. $tag$` dollar quoting; a `$` that does not open one is ordinary text.
    fn dollar(&mut self) -> Result<(), String> {
        let prev_is_ident = self.src[..self.pos]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        let rest = self.rest();
        let tag_len = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - 1);
        let tag_body = &rest[1..1 + tag_len];
        let opens = !prev_is_ident
            && rest[1 + tag_len..].starts_with('$')
            && !tag_body.starts_with(|c: char| c.is_ascii_digit());
        if !opens {
            self.pos += 1;
            return Ok(());
        }
        let tag = &rest[..tag_len + 2];
        match rest[tag.len()..].find(tag) {
            Some(i) => {
                let end = self.pos + tag.len() + i + tag.len();
                self.quoted_until(end, "dollar-quoted string")
            }
            None => Err("unterminated dollar-quoted string".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> Result<String, String> {
        Template::parse(s, Dialect::Postgres).map(|t| t.render("<N>", "<E>"))
    }
    fn my(s: &str) -> Result<String, String> {
        Template::parse(s, Dialect::Mysql).map(|t| t.render("<N>", "<E>"))
    }

    #[test]
    fn substitutes_bare_placeholders() {
        assert_eq!(
            pg("GRANT SELECT ON t TO {{name}};").as_deref(),
            Ok("GRANT SELECT ON t TO <N>")
        );
        assert_eq!(
            pg("COMMENT ON ROLE {{ name }} IS 'until' -- x\n").as_deref(),
            Ok("COMMENT ON ROLE <N> IS 'until' -- x\n")
        );
        assert_eq!(
            my("GRANT SELECT ON `db`.* TO {{name}}").as_deref(),
            Ok("GRANT SELECT ON `db`.* TO <N>")
        );
        assert_eq!(
            pg("SELECT $$a;b$$, {{expiration}}").as_deref(),
            Ok("SELECT $$a;b$$, <E>")
        );
        assert_eq!(
            pg("SELECT 'it''s; fine'").as_deref(),
            Ok("SELECT 'it''s; fine'")
        );
    }

    #[test]
    fn refuses_placeholders_in_quotes_and_comments() {
        for s in [
            "GRANT x TO '{{name}}'",
            "GRANT x TO \"{{name}}\"",
            "SELECT $q$ {{name}} $q$",
            "SELECT 1 /* {{name}} */",
            "SELECT 1 -- {{name}}",
            "SELECT E'\\' {{name}}'",
        ] {
            assert!(pg(s).is_err(), "{s}");
        }
        for s in [
            "GRANT x TO '{{name}}'@'%'",
            "SELECT 1 # {{name}}",
            "SELECT `{{name}}`",
            "SELECT '\\' {{name}}'",
        ] {
            assert!(my(s).is_err(), "{s}");
        }
    }

    #[test]
    fn refuses_tricks() {
        for s in [
            "",
            "  ;",
            "GRANT x TO {{name}}; DROP ROLE postgres",
            "GRANT x TO {{nam}}",
            "GRANT x TO {{password}}",
            "GRANT x TO {{name}",
            "GRANT x TO name}}",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT /* unterminated",
            "SELECT $a$ unterminated",
            "SELECT 1\0",
        ] {
            assert!(pg(s).is_err(), "{s:?}");
        }
        assert!(my("SELECT 1; SELECT 2").is_err());
        assert!(pg(&"x".repeat(MAX_STATEMENT_LEN + 1)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_leaves_no_stray_braces(s in "\\PC{0,120}") {
            for dialect in [Dialect::Postgres, Dialect::Mysql] {
                if let Ok(t) = Template::parse(&s, dialect) {
                    // Every `{{` is a placeholder or an error, so none survives rendering.
                    let rendered = t.render("N", "E");
                    proptest::prop_assert!(!rendered.contains("{{"), "{rendered:?}");
                }
            }
        }

        #[test]
        fn quoting_syntax_soup_never_panics(s in "[ a-z{}'\"`$;#*/\\\\eé\n-]{0,80}") {
            let _ = Template::parse(&s, Dialect::Postgres);
            let _ = Template::parse(&s, Dialect::Mysql);
        }
    }
}
