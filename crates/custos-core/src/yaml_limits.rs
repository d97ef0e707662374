//! Limits on YAML text checked before it is parsed: nesting depth, documents and aliases.
//!
//! The YAML parser's work grows with the square of the nesting depth (100 000 nested `[` in
//! 200 KB took 39 s of CPU), so text that could nest deeper than [`MAX_DEPTH`] is refused by a
//! linear pre-scan first. The scan does not parse YAML; it estimates the depth of every node
//! from the flow brackets, the block indicators and the indentation.
// INVARIANT: where the scan is unsure it over-estimates depth (counts a bracket it cannot rule
// out, scans a line it cannot prove is block-scalar text), so deep text never slips through;
// the limit is far above what a real resource file uses, so over-estimates stay harmless.

use thiserror::Error;

/// The deepest nesting accepted: flow collections, block collections and indicators together.
pub const MAX_DEPTH: usize = 64;

/// The most documents one text may hold.
pub const MAX_DOCUMENTS: usize = 1000;

/// The most aliases (`*name`) one text may hold.
pub const MAX_ALIASES: usize = 1000;

/// Text over one of the limits, naming the document (1-based) and line where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("YAML nested deeper than {MAX_DEPTH} levels (line {line})")]
    TooDeep {
        /// The document.
        doc: usize,
        /// The line, 1-based.
        line: usize,
    },
    /// More than [`MAX_DOCUMENTS`] documents.
    #[error("more than {MAX_DOCUMENTS} YAML documents (line {line})")]
    TooManyDocuments {
        /// The document.
        doc: usize,
        /// The line, 1-based.
        line: usize,
    },
    /// More than [`MAX_ALIASES`] aliases.
    #[error("more than {MAX_ALIASES} YAML aliases (line {line})")]
    TooManyAliases {
        /// The document.
        doc: usize,
        /// The line, 1-based.
        line: usize,
    },
}

impl LimitError {
    /// The document (1-based) where the limit was passed.
    pub fn doc(&self) -> usize {
        match self {
            LimitError::TooDeep { doc, .. }
            | LimitError::TooManyDocuments { doc, .. }
            | LimitError::TooManyAliases { doc, .. } => *doc,
        }
    }
}

/// Checks `text` against [`MAX_DEPTH`], [`MAX_DOCUMENTS`] and [`MAX_ALIASES`] in one pass,
/// in time linear in its length.
///
/// # Errors
/// The first [`LimitError`] found.
pub fn check(text: &str) -> Result<(), LimitError> {
    let mut scan = Scan::default();
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw).as_bytes();
        scan.line = n + 1;
        scan.line(line)?;
    }
    Ok(())
}

/// A block scalar (`|` or `>`) whose text lines are being skipped.
struct BlockScalar {
    /// Lines must be indented more than this to belong to the scalar (-1 at the top level).
    parent: isize,
    /// The indentation of the text, once known (explicit, or from the first non-blank line).
    content: Option<usize>,
    /// The deepest indentation of the blank lines before the first text line.
    blank_indent: usize,
}

#[derive(Default)]
struct Scan {
    line: usize,
    doc: usize,
    /// The current document has begun (a `---` or some content).
    started: bool,
    /// The current document was closed by `...`; the next content begins another.
    ended: bool,
    /// Open flow collections (`[`, `{`).
    flow: usize,
    /// Columns of the open block nodes.
    indents: Vec<usize>,
    block_scalar: Option<BlockScalar>,
    /// A node may begin at the next significant character (carried over lines in flow context).
    node_start: bool,
    aliases: usize,
}

fn is_blank(b: Option<&u8>) -> bool {
    matches!(b, None | Some(b' ' | b'\t'))
}

fn is_flow_indicator(b: Option<&u8>) -> bool {
    matches!(b, Some(b',' | b'[' | b']' | b'{' | b'}'))
}

fn indent_of(line: &[u8]) -> usize {
    line.iter().take_while(|b| **b == b' ').count()
}

impl Scan {
    fn too_deep(&self) -> LimitError {
        LimitError::TooDeep {
            doc: self.doc.max(1),
            line: self.line,
        }
    }

    /// The depth of the node being scanned: open flow collections plus the block nodes
    /// enclosing it (the outermost node, at depth zero, is not counted).
    fn depth(&self) -> usize {
        self.flow + self.indents.len().saturating_sub(1)
    }

    fn depth_ok(&self) -> Result<(), LimitError> {
        if self.depth() > MAX_DEPTH {
            return Err(self.too_deep());
        }
        Ok(())
    }

    /// Opens a block node at `col` (if deeper than the innermost) and checks the depth.
    fn push_indent(&mut self, col: usize) -> Result<(), LimitError> {
        if self.indents.last().is_none_or(|last| *last < col) {
            self.indents.push(col);
        }
        self.depth_ok()
    }

    /// Content or `---` seen: the current document begins, or the next one does.
    fn begin(&mut self, marker: bool) -> Result<(), LimitError> {
        if self.ended || (marker && self.started) || self.doc == 0 {
            self.doc += 1;
            self.ended = false;
        }
        self.started = true;
        if self.doc > MAX_DOCUMENTS {
            return Err(LimitError::TooManyDocuments {
                doc: self.doc,
                line: self.line,
            });
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> Result<(), LimitError> {
        let indent = indent_of(line);
        let blank = line[indent..].iter().all(|b| *b == b' ' || *b == b'\t');
        if let Some(bs) = &mut self.block_scalar {
            let min = usize::try_from(bs.parent + 1).unwrap_or(0).max(1);
            if blank {
                if bs.content.is_none() {
                    bs.blank_indent = bs.blank_indent.max(indent);
                }
                return Ok(());
            }
            let content = *bs
                .content
                .get_or_insert(indent.max(min).max(bs.blank_indent));
            if indent >= content {
                return Ok(());
            }
            self.block_scalar = None;
        }
        let marker = |m: &[u8]| line.starts_with(m) && is_blank(line.get(3));
        if marker(b"---") {
            self.begin(true)?;
            self.new_document();
            return self.scan(line, 3, -1);
        }
        if marker(b"...") {
            if self.started {
                self.ended = true;
            }
            self.new_document();
            return Ok(());
        }
        if self.flow == 0 {
            if blank || line[indent] == b'#' {
                return Ok(());
            }
            if indent == 0 && line[0] == b'%' && !self.started {
                return Ok(()); // a directive
            }
            self.begin(false)?;
            while self.indents.last().is_some_and(|last| *last > indent) {
                self.indents.pop();
            }
            self.push_indent(indent)?;
            self.node_start = true;
            let parent = isize::try_from(indent).unwrap_or(isize::MAX);
            self.scan(line, indent, parent)
        } else {
            self.scan(line, 0, -1)
        }
    }

    fn new_document(&mut self) {
        self.flow = 0;
        self.indents.clear();
        self.block_scalar = None;
        self.node_start = true;
    }

    /// Scans one line from byte `from`. `parent` is the column of the innermost block node
    /// on this line so far, which a block scalar's text must be indented past.
    fn scan(&mut self, line: &[u8], from: usize, mut parent: isize) -> Result<(), LimitError> {
        let col = |i: usize| isize::try_from(i).unwrap_or(isize::MAX);
        let mut i = from;
        let mut after_blank = true;
        // Where the last scalar on this line began, the key if a `: ` follows.
        let mut key_col = col(from);
        let mut after_quote = false;
        while i < line.len() {
            let b = line[i];
            if b == b' ' || b == b'\t' {
                after_blank = true;
                i += 1;
                continue;
            }
            if b == b'#' && after_blank {
                return Ok(()); // a comment
            }
            after_blank = false;
            let next = line.get(i + 1);
            let closed_quote = std::mem::take(&mut after_quote);
            if self.node_start {
                match b {
                    b'"' | b'\'' => {
                        key_col = col(i);
                        self.node_start = false;
                        // Quotes are taken to end at the line's end at the latest: a scalar
                        // running on is then scanned as if unquoted, which only over-counts.
                        i = skip_quoted(line, i);
                        after_quote = true;
                        continue;
                    }
                    b'[' | b'{' => {
                        if self.flow == 0 {
                            key_col = col(i);
                        }
                        self.flow += 1;
                        self.depth_ok()?;
                    }
                    b']' | b'}' if self.flow > 0 => {
                        self.flow -= 1;
                        self.node_start = false;
                    }
                    b',' if self.flow > 0 => {}
                    b'-' | b'?' | b':' if self.flow == 0 && is_blank(next) => {
                        parent = col(i);
                        let rest = i + 1 + indent_of(&line[i + 1..]);
                        if rest < line.len() {
                            self.push_indent(rest)?;
                        }
                    }
                    b'?' | b':' if self.flow > 0 && (is_blank(next) || is_flow_indicator(next)) => {
                    }
                    b'|' | b'>' if self.flow == 0 => {
                        let explicit = line[i + 1..]
                            .iter()
                            .take_while(|c| **c != b' ' && **c != b'\t')
                            .find(|c| c.is_ascii_digit())
                            .map(|d| usize::from(*d - b'0'));
                        self.block_scalar = Some(BlockScalar {
                            parent,
                            content: explicit.map(|d| {
                                usize::try_from(parent).map_or(d, |p| p.saturating_add(d))
                            }),
                            blank_indent: 0,
                        });
                        return Ok(());
                    }
                    b'&' | b'!' => {
                        i = self.skip_name(line, i);
                        continue;
                    }
                    b'*' => {
                        self.aliases += 1;
                        if self.aliases > MAX_ALIASES {
                            return Err(LimitError::TooManyAliases {
                                doc: self.doc.max(1),
                                line: self.line,
                            });
                        }
                        self.node_start = false;
                        i = self.skip_name(line, i);
                        continue;
                    }
                    _ => {
                        key_col = col(i);
                        self.node_start = false;
                    }
                }
            } else {
                match b {
                    b'[' | b'{' if self.flow > 0 => {
                        self.flow += 1;
                        self.node_start = true;
                        self.depth_ok()?;
                    }
                    b']' | b'}' if self.flow > 0 => self.flow -= 1,
                    b',' if self.flow > 0 => self.node_start = true,
                    b':' if is_blank(next)
                        || (self.flow > 0 && (closed_quote || is_flow_indicator(next))) =>
                    {
                        self.node_start = true;
                        if self.flow == 0 {
                            parent = key_col;
                            let rest = i + 1 + indent_of(&line[i + 1..]);
                            if rest < line.len() {
                                self.push_indent(rest)?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Skips an anchor, tag or alias name starting at `i`; returns the index after it.
    fn skip_name(&self, line: &[u8], mut i: usize) -> usize {
        i += 1;
        while i < line.len()
            && !is_blank(line.get(i))
            && !(self.flow > 0 && is_flow_indicator(line.get(i)))
        {
            i += 1;
        }
        i
    }
}

/// The index after the quoted scalar opening at `i` (or the line's end if it runs on).
fn skip_quoted(line: &[u8], i: usize) -> usize {
    let quote = line[i];
    let mut j = i + 1;
    while j < line.len() {
        match line[j] {
            b'\\' if quote == b'"' => j += 2,
            b'\'' if quote == b'\'' && line.get(j + 1) == Some(&b'\'') => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn deep(e: Result<(), LimitError>) -> bool {
        matches!(e, Err(LimitError::TooDeep { .. }))
    }

    #[test]
    fn a_hundred_thousand_brackets_are_refused_at_once() {
        for open in ["[", "{", "[ ", "{a: "] {
            let text = format!("kind: Template\nname: t\ntools: {}", open.repeat(100_000));
            let started = Instant::now();
            let e = check(&text).expect_err(open);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the scan stalled"
            );
            assert_eq!(e, LimitError::TooDeep { doc: 1, line: 3 }, "{open}");
            assert_eq!(e.to_string(), "YAML nested deeper than 64 levels (line 3)");
        }
        // Nesting across lines counts too.
        assert!(deep(check(&"[\n".repeat(100))));
    }

    #[test]
    fn depth_up_to_the_limit_is_accepted() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(check(&ok), Ok(()));
        let over = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(deep(check(&over)));
        // Closed collections do not add up.
        assert_eq!(check(&"[[[[[]]]]]\n".repeat(10_000)), Ok(()));
    }

    #[test]
    fn chained_block_indicators_are_refused() {
        assert!(deep(check(&format!("{}x\n", "- ".repeat(100)))));
        assert!(deep(check(&format!("{}x\n", "? ".repeat(100)))));
        assert!(deep(check(&format!("a: {}x\n", "- ".repeat(100)))));
        assert_eq!(check(&format!("{}x\n", "- ".repeat(20))), Ok(()));
    }

    #[test]
    fn deep_indentation_is_refused() {
        let mut text = String::new();
        for d in 0..100 {
            text.push_str(&format!("{}k{d}:\n", " ".repeat(d)));
        }
        assert!(deep(check(&text)));
        // The same keys side by side are flat.
        let flat: String = (0..10_000).map(|d| format!("k{d}:\n  v: 1\n")).collect();
        assert_eq!(check(&flat), Ok(()));
    }

    #[test]
    fn brackets_in_quotes_comments_and_block_text_do_not_count() {
        let many = "[".repeat(200);
        let cases = [
            format!("a: \"{many}\"\n"),
            format!("a: '{many}'\n"),
            format!("a: 'it''s {many}'\n"),
            format!("a: \"esc \\\" {many}\"\n"),
            format!("a: 1 # {many}\n"),
            format!("# {many}\n"),
            format!("a: plain{many}\n"),
            format!("a: |\n  {many}\n  {many}\nb: 1\n"),
            format!("- key: >-\n    {many}\n\n    {many}\n- 2\n"),
            format!("a: [\"{many}\", '{many}']\n"),
        ];
        for text in cases {
            assert_eq!(check(&text), Ok(()), "{text}");
        }
        // Text after a block scalar ends is scanned again.
        assert!(deep(check(&format!("a: |\n  text\nb: {many}\n"))));
        assert!(
            deep(check(&format!("- k: |\n  {many}\n"))),
            "not indented past `k`"
        );
    }

    #[test]
    fn documents_and_aliases_are_capped() {
        let docs = "kind: x\n---\n".repeat(MAX_DOCUMENTS - 1) + "kind: x\n";
        assert_eq!(check(&docs), Ok(()));
        let e = check(&format!("{docs}---\nkind: x\n")).expect_err("too many");
        assert_eq!(e.doc(), MAX_DOCUMENTS + 1);
        assert!(
            e.to_string().contains("more than 1000 YAML documents"),
            "{e}"
        );
        let aliases = format!("a: &x 1\nb: [{}]\n", "*x, ".repeat(MAX_ALIASES + 1));
        assert!(matches!(
            check(&aliases),
            Err(LimitError::TooManyAliases { .. })
        ));
        assert_eq!(check("a: &x 1\nb: *x\n"), Ok(()));
    }

    #[test]
    fn document_numbers_follow_the_markers() {
        let deep_doc = format!("a: {}\n", "[".repeat(100));
        let e = check(&format!("---\na: 1\n---\nb: 2\n...\n{deep_doc}")).expect_err("deep");
        assert_eq!(e.doc(), 3);
        let e = check(&format!("a: 1\n---\n{deep_doc}")).expect_err("deep");
        assert_eq!(e.doc(), 2);
        // Flow state does not leak into the next document.
        assert_eq!(
            check(&format!("a: {}\n---\nb: 1\n", "[".repeat(60))),
            Ok(())
        );
    }

    #[test]
    fn the_repository_examples_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut seen = 0;
        for dir in ["examples", "examples/docs"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    let text = std::fs::read_to_string(&path).expect("read example");
                    assert_eq!(check(&text), Ok(()), "{}", path.display());
                    seen += 1;
                }
            }
        }
        assert!(seen > 0, "no examples found");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// YAML values nested at most `depth` levels, with scalars full of YAML syntax.
    fn value(depth: u32) -> impl Strategy<Value = serde_yaml::Value> {
        let leaf = prop_oneof![
            "[\\[\\]{}:#'\"|>&*!,? a-z-]{0,12}".prop_map(serde_yaml::Value::String),
            any::<i64>().prop_map(serde_yaml::Value::from),
            Just(serde_yaml::Value::Null),
        ];
        leaf.prop_recursive(depth, 256, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_yaml::Value::Sequence),
                prop::collection::vec(("[a-z\\[{:#' -]{1,8}", inner), 0..4).prop_map(|kv| {
                    serde_yaml::Value::Mapping(
                        kv.into_iter()
                            .map(|(k, v)| (serde_yaml::Value::String(k), v))
                            .collect(),
                    )
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn yaml_written_by_serde_yaml_is_accepted(v in value(24)) {
            let text = serde_yaml::to_string(&v).expect("yaml");
            prop_assert_eq!(check(&text), Ok(()), "{}", text);
        }

        #[test]
        fn json_is_accepted(v in value(24)) {
            let text = serde_json::to_string_pretty(&v).expect("json");
            prop_assert_eq!(check(&text), Ok(()), "{}", text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[\\[\\]{}:#'\"|>&*!,?\\- \n\ta-z0-9.%\\\\]{0,200}") {
            let _ = check(&text);
        }
    }
}
