//! A fast reader for the YAML that sops itself writes.
//!
//! Encrypted files are mostly `key: ENC[AES256_GCM,...]` lines, hundreds of
//! bytes each, and a general YAML scanner spends most of a decryption's time
//! walking those bytes one character at a time. sops writes a small, regular
//! subset of YAML (block maps and lists indented by spaces, single-line plain
//! or quoted scalars, `|` literal blocks, `{}` and `[]`, comments on their own
//! lines), so this module reads exactly that subset line by line and produces
//! the same events, with the same positions, that `saphyr-parser` would.
//!
//! Anything outside the subset (tabs, anchors, tags, flow collections with
//! content, escapes, multi-line plain or quoted scalars, folded blocks,
//! several documents, non-ASCII text) makes it give up with `None`, and the
//! caller parses with the general parser instead. A differential test checks
//! that both readers build identical trees for every fixture.

use std::borrow::Cow;

use saphyr_parser::{Event, Marker, ScalarStyle, Span};

/// One event and its span, as `saphyr_parser::Parser` yields them.
pub type Spanned<'a> = (Event<'a>, Span);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Seq,
}

struct Open {
    kind: Kind,
    indent: usize,
}

struct Reader<'a> {
    text: &'a str,
    /// Byte offset of each line's start.
    lines: Vec<usize>,
    out: Vec<Spanned<'a>>,
    stack: Vec<Open>,
    /// Set when the last value read continues on the following lines.
    pending: bool,
}

fn is_indicator(b: u8) -> bool {
    matches!(
        b,
        b'[' | b']'
            | b'{'
            | b'}'
            | b','
            | b'#'
            | b'&'
            | b'*'
            | b'!'
            | b'|'
            | b'>'
            | b'\''
            | b'"'
            | b'%'
            | b'@'
            | b'`'
    )
}

impl<'a> Reader<'a> {
    fn line(&self, i: usize) -> &'a str {
        let start = self.lines[i];
        let end = self
            .lines
            .get(i + 1)
            .map_or(self.text.trim_end_matches('\n').len().max(start), |&e| e - 1);
        &self.text[start..end]
    }

    fn marker(&self, line: usize, col: usize) -> Marker {
        // ASCII only: character index = byte index.
        Marker::new(self.lines[line] + col, line + 1, col)
    }

    fn span(&self, line: usize, start: usize, end: usize) -> Span {
        Span::new(self.marker(line, start), self.marker(line, end))
    }

    fn at(&self, line: usize, col: usize) -> Span {
        self.span(line, col, col)
    }

    fn push(&mut self, event: Event<'a>, span: Span) {
        self.out.push((event, span));
    }

    fn scalar(&mut self, value: impl Into<Cow<'a, str>>, style: ScalarStyle, span: Span) {
        self.push(Event::Scalar(value.into(), style, 0, None), span);
    }

    /// Index of the next line with content (not blank, not a comment), if any.
    fn next_content(&self, from: usize) -> Option<usize> {
        (from..self.lines.len()).find(|&i| {
            let t = self.line(i).trim_start_matches(' ');
            !t.is_empty() && !t.starts_with('#')
        })
    }

    /// Closes collections indented deeper than `indent`, at the given position.
    fn close_to(&mut self, indent: usize, pos: Span) {
        while self.stack.last().is_some_and(|o| o.indent > indent) {
            let open = self.stack.pop().expect("checked");
            let end = if open.kind == Kind::Map {
                Event::MappingEnd
            } else {
                Event::SequenceEnd
            };
            self.push(end, pos);
        }
    }

    /// Reads a single-line scalar starting at `col`; returns its end column.
    fn inline_scalar(&mut self, line: usize, col: usize) -> Option<usize> {
        let text = self.line(line);
        let rest = &text[col..];
        let b = rest.as_bytes();
        match b[0] {
            b'"' => {
                let close = rest[1..].find('"')? + 1;
                let body = &rest[1..close];
                if body.contains('\\') {
                    return None;
                }
                self.scalar(
                    body.to_owned(),
                    ScalarStyle::DoubleQuoted,
                    self.span(line, col, col + close + 1),
                );
                Some(col + close + 1)
            }
            b'\'' => {
                let mut i = 1;
                let mut value = String::new();
                loop {
                    let next = rest[i..].find('\'')? + i;
                    value.push_str(&rest[i..next]);
                    if rest.as_bytes().get(next + 1) == Some(&b'\'') {
                        value.push('\'');
                        i = next + 2;
                    } else {
                        self.scalar(
                            value,
                            ScalarStyle::SingleQuoted,
                            self.span(line, col, col + next + 1),
                        );
                        return Some(col + next + 1);
                    }
                }
            }
            c if is_indicator(c) => None,
            c @ (b'-' | b'?' | b':') if b.get(1).is_none_or(|&n| n == b' ') => {
                let _ = c;
                None
            }
            _ => {
                let end = find_pair(rest, b' ', b'#').unwrap_or(rest.len());
                let value = rest[..end].trim_end_matches(' ');
                if find_pair(value, b':', b' ').is_some() || value.ends_with(':') {
                    return None;
                }
                // Borrowed: the builder makes the one owned copy.
                self.scalar(value, ScalarStyle::Plain, self.span(line, col, col + value.len()));
                Some(col + value.len())
            }
        }
    }

    /// After a value ends at `end` on `line`, only spaces or a comment may follow.
    fn rest_is_blank(&self, line: usize, end: usize) -> bool {
        let rest = self.line(line)[end..].trim_start_matches(' ');
        rest.is_empty()
            || (rest.starts_with('#')
                && end < self.line(line).len()
                && self.line(line).as_bytes()[end] == b' ')
    }

    /// Reads a `|`, `|-` or `|+` block whose parent is indented at `parent`.
    /// Returns the index of the last line it consumed.
    fn literal(&mut self, line: usize, col: usize, parent: usize) -> Option<usize> {
        let header = &self.line(line)[col..];
        let (chomp, after) = match header.as_bytes().get(1) {
            Some(b'-') => ('-', 2),
            Some(b'+') => ('+', 2),
            _ => ('c', 1),
        };
        let tail = header[after..].trim_start_matches(' ');
        if !(tail.is_empty() || (tail.starts_with('#') && header[after..].starts_with(' '))) {
            return None;
        }
        let mut indent = None;
        let mut last = line;
        let mut body: Vec<&str> = Vec::new();
        for i in line + 1..self.lines.len() {
            let l = self.line(i);
            let spaces = l.len() - l.trim_start_matches(' ').len();
            if l.trim_start_matches(' ').is_empty() {
                if indent.is_some_and(|n| spaces > n) {
                    body.push(&l[indent.unwrap_or(0)..]);
                } else if indent.is_none() && spaces > parent + 1 {
                    // Leading blank lines more indented than the content: let the general parser decide.
                    return None;
                } else {
                    body.push("");
                }
                last = i;
                continue;
            }
            let n = *indent.get_or_insert(spaces);
            if spaces < n || n <= parent {
                break;
            }
            body.push(&l[n..]);
            last = i;
        }
        if indent.is_none() || indent.is_some_and(|n| n <= parent) {
            return None;
        }
        // Trailing blank lines belong to the block only for chomping purposes.
        let content_lines = body.iter().rposition(|l| !l.is_empty()).map_or(0, |p| p + 1);
        let trailing = body.len() - content_lines;
        let mut value = body[..content_lines].join("\n");
        match chomp {
            '-' => {}
            '+' => {
                value.push('\n');
                value.push_str(&"\n".repeat(trailing));
            }
            _ => {
                if content_lines > 0 {
                    value.push('\n');
                }
            }
        }
        let end = self.line(last).len();
        self.scalar(
            value,
            ScalarStyle::Literal,
            Span::new(self.marker(line, col), self.marker(last, end)),
        );
        Some(last)
    }

    /// Reads the value after `key:` (or `- `) at `col` on `line`, in a
    /// collection indented at `parent`. Returns the last line consumed.
    fn value(&mut self, line: usize, col: usize, parent: usize) -> Option<usize> {
        let text = self.line(line);
        let rest = text[col..].trim_start_matches(' ');
        let col = text.len() - rest.len();
        if rest.is_empty() || (rest.starts_with('#') && text.as_bytes()[col - 1] == b' ') {
            // The value is on the following lines, or null.
            return match self.next_content(line + 1) {
                Some(next) if indent_of(self.line(next)) > parent => {
                    self.pending = true;
                    Some(line)
                }
                Some(next)
                    if indent_of(self.line(next)) == parent
                        && self.line(next)[parent..].starts_with('-')
                        && self.stack.last().is_some_and(|o| o.kind == Kind::Map) =>
                {
                    // `key:` followed by `- item` at the key's own indent: valid YAML, rare; not ours.
                    None
                }
                _ => {
                    // An empty value: the general parser reports it as `~`.
                    let at = self.at(line, text.len());
                    self.scalar("~".to_owned(), ScalarStyle::Plain, at);
                    Some(line)
                }
            };
        }
        match rest {
            r if r.starts_with("{}") && self.rest_is_blank(line, col + 2) => {
                self.push(Event::MappingStart(0, None), self.at(line, col));
                self.push(Event::MappingEnd, self.at(line, col + 1));
                Some(line)
            }
            r if r.starts_with("[]") && self.rest_is_blank(line, col + 2) => {
                self.push(Event::SequenceStart(0, None), self.at(line, col));
                self.push(Event::SequenceEnd, self.at(line, col + 1));
                Some(line)
            }
            r if r.starts_with('|') => self.literal(line, col, parent),
            _ => {
                let end = self.inline_scalar(line, col)?;
                if !self.rest_is_blank(line, end) {
                    return None;
                }
                Some(line)
            }
        }
    }

    /// Reads `key: value` at `col`. Returns the last line consumed.
    fn entry(&mut self, line: usize, col: usize) -> Option<usize> {
        let text = self.line(line);
        let rest = &text[col..];
        let key_end = match rest.as_bytes()[0] {
            b'"' | b'\'' => {
                let end = self.inline_scalar(line, col)?;
                if text.as_bytes().get(end) != Some(&b':') {
                    return None;
                }
                end
            }
            c if is_indicator(c) => return None,
            _ => {
                let colon = rest
                    .find(": ")
                    .or_else(|| rest.ends_with(':').then(|| rest.len() - 1))?;
                let key = &rest[..colon];
                if key.is_empty()
                    || key.contains(" #")
                    || key.ends_with(' ')
                    || key.starts_with(['-', '?', ':'])
                {
                    return None;
                }
                self.scalar(key, ScalarStyle::Plain, self.span(line, col, col + colon));
                col + colon
            }
        };
        self.value(line, key_end + 1, col)
    }

    fn run(mut self) -> Option<Vec<Spanned<'a>>> {
        let origin = self.at(0, 0);
        self.push(Event::StreamStart, origin);
        let mut i = 0;
        let mut started = false;
        // Whether the next line may open a collection: at the start, or after `key:`.
        let mut nested_ok = true;
        let mut next = self.next_content(i);
        while let Some(line) = next {
            let text = self.line(line);
            let indent = indent_of(text);
            if text.contains('\t')
                || text.starts_with("---")
                || text.starts_with("...")
                || text.starts_with('%')
            {
                return None;
            }
            if !started {
                self.push(Event::DocumentStart(false), self.at(line, indent));
                started = true;
            }
            let here = self.at(line, indent);
            self.close_to(indent, here);
            let is_item = text[indent..].starts_with("- ") || &text[indent..] == "-";
            let kind = if is_item { Kind::Seq } else { Kind::Map };
            match self.stack.last() {
                Some(o) if o.indent == indent && o.kind == kind => {}
                Some(o) if o.indent == indent => return None,
                _ => {
                    // A new collection: at the top, or as the value of the line above.
                    if !nested_ok {
                        return None;
                    }
                    let start = if is_item {
                        Event::SequenceStart(0, None)
                    } else {
                        Event::MappingStart(0, None)
                    };
                    self.push(start, here);
                    self.stack.push(Open { kind, indent });
                }
            }
            self.pending = false;
            let last = if is_item {
                self.item(line, indent)?
            } else {
                self.entry(line, indent)?
            };
            i = last + 1;
            nested_ok = self.pending;
            next = self.next_content(i);
            // A value complete on its line cannot be followed by deeper lines
            // (that would be a multi-line plain scalar, or invalid).
            if !self.pending {
                let deepest = self.stack.last().map_or(0, |o| o.indent);
                if next.is_some_and(|n| indent_of(self.line(n)) > deepest) {
                    return None;
                }
            }
        }
        if !started {
            return None;
        }
        let end = self.marker(self.lines.len() - 1, self.line(self.lines.len() - 1).len());
        let end = Span::new(end, end);
        self.close_to(0, end);
        if let Some(root) = self.stack.pop() {
            self.push(
                if root.kind == Kind::Map {
                    Event::MappingEnd
                } else {
                    Event::SequenceEnd
                },
                end,
            );
        }
        self.push(Event::DocumentEnd, end);
        self.push(Event::StreamEnd, end);
        Some(self.out)
    }

    /// Reads `- value` at `col`; a `key: value` after the dash opens a map.
    fn item(&mut self, line: usize, col: usize) -> Option<usize> {
        let text = self.line(line);
        let inner = col + 2;
        if text.len() <= inner || text[inner..].starts_with(' ') {
            // `-` alone or `-   x`: nested blocks after a dash are left to the general parser.
            return None;
        }
        let rest = &text[inner..];
        let looks_like_key = match rest.as_bytes()[0] {
            b'"' | b'\'' => false,
            _ => find_pair(rest, b':', b' ').is_some() || rest.ends_with(':'),
        };
        if looks_like_key && !rest.starts_with(['{', '[', '|', '-']) {
            let at = self.at(line, inner);
            self.push(Event::MappingStart(0, None), at);
            self.stack.push(Open {
                kind: Kind::Map,
                indent: inner,
            });
            return self.entry(line, inner);
        }
        self.value(line, inner, col)
    }
}

/// Position of the two-byte sequence `a b` in `s`. Searching for the rarer
/// second byte first keeps this fast on long base64 values.
fn find_pair(s: &str, a: u8, b: u8) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut from = 1;
    while from < bytes.len() {
        // `str::find(char)` is memchr-backed; `a` and `b` are ASCII.
        let i = from + s[from..].find(b as char)?;
        if bytes[i - 1] == a {
            return Some(i - 1);
        }
        from = i + 1;
    }
    None
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Reads `text` if it is in the subset sops writes; `None` means "use the general parser".
pub fn events(text: &str) -> Option<Vec<Spanned<'_>>> {
    if !text.is_ascii() || text.contains('\r') {
        return None;
    }
    let mut lines = vec![0];
    lines.reserve(text.len() / 64);
    lines.extend(
        text.match_indices('\n')
            .map(|(i, _)| i + 1)
            .filter(|&i| i < text.len()),
    );
    Reader {
        text,
        lines,
        out: Vec::new(),
        stack: Vec::new(),
        pending: false,
    }
    .run()
}
