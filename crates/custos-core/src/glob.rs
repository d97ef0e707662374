//! Shell-style globs (`*` and `?`) over tool names.

/// Whether `name` matches `pattern`, where `*` matches any run of characters and `?` one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if !is_glob(pattern) {
        return pattern == name;
    }
    // Tool names and template patterns are ASCII: match their bytes without allocating. Any
    // other text is matched by characters, so `?` stays one character.
    if pattern.is_ascii() && name.is_ascii() {
        return matches(pattern.as_bytes(), name.as_bytes(), b'*', b'?');
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches(&p, &n, '*', '?')
}

/// Iterative matcher with backtracking to the last star: linear in practice, no recursion.
fn matches<T: Copy + PartialEq>(p: &[T], n: &[T], star_sym: T, one: T) -> bool {
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(&c) if c == star_sym => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == one || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == star_sym)
}

/// Whether `pattern` contains glob metacharacters.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn matches() {
        assert!(glob_match("files__list_*", "files__list_directory"));
        assert!(glob_match("files__*", "files__read"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*__read_*_file", "files__read_text_file"));
        assert!(!glob_match("files__list_*", "files__read_text_file"));
        assert!(!glob_match("files__read", "files__read_text_file"));
        assert!(!glob_match("a?c", "ac"));
        // Without metacharacters: equality. Beyond ASCII: `?` is one character.
        assert!(glob_match("files__read", "files__read"));
        assert!(glob_match("caf?", "caf\u{e9}"));
        assert!(glob_match("*\u{e9}", "caf\u{e9}"));
        assert!(!glob_match("caf?", "cafe\u{e9}"));
    }
}
