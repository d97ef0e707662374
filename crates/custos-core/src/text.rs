//! Text from outside, made safe to store and to show: bounded in length, and with control
//! characters escaped wherever a human reads it (a newline or an ANSI escape in a tool name
//! must not print as a forged line of `audit trace`).

/// Whether `c` must not reach a terminal or a log line as itself: C0 and C1 controls, DEL,
/// and the Unicode bidirectional overrides and isolates that reorder what is displayed.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// Whether `s` holds any character [`is_unsafe_char`] rejects.
pub fn has_unsafe_chars(s: &str) -> bool {
    s.chars().any(is_unsafe_char)
}

/// `s` with every unsafe character written as `\u{..}` (and `\` as `\\` when anything was
/// escaped, so an escape cannot be forged either). Text without such characters is unchanged.
pub fn escape_unsafe(s: &str) -> std::borrow::Cow<'_, str> {
    if !has_unsafe_chars(s) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// At most `max` bytes of `s`, cut at a character boundary, with `…` appended when cut.
pub fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &s[..end]))
}

/// A value from outside as it may be echoed in a message: at most `max` bytes, escaped.
pub fn for_display(s: &str, max: usize) -> String {
    escape_unsafe(&truncate(s, max)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_forges_lines() {
        assert_eq!(escape_unsafe("files__read"), "files__read");
        assert_eq!(escape_unsafe("a\nb"), "a\\u{a}b");
        assert_eq!(escape_unsafe("\u{1b}[2Kx"), "\\u{1b}[2Kx");
        assert_eq!(escape_unsafe("\u{202e}abc"), "\\u{202e}abc");
        // Once anything is escaped, a literal backslash cannot pose as an escape.
        assert_eq!(escape_unsafe("\\u{a}\n"), "\\\\u{a}\\u{a}");
        assert_eq!(escape_unsafe("é ✓ tab-free"), "é ✓ tab-free");
    }

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("abc", 3), "abc");
        let long = "é".repeat(100);
        let cut = truncate(&long, 11);
        assert!(cut.len() <= 11, "{cut}");
        assert!(cut.ends_with('…'));
        let shown = for_display(&"x\n".repeat(1000), 20);
        assert!(shown.len() < 100 && !shown.contains('\n'), "{shown}");
    }
}
