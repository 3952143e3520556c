//! Reading sops YAML files into the document tree.
//!
//! Structure and scalar styles come from `saphyr-parser`'s event stream.
//! Comments matter too (sops encrypts them and prints them back), and YAML
//! parsers drop them, so they are found in the source text between the spans
//! the parser reports and slotted into the tree where sops puts them: a
//! comment on its own line becomes an entry before the next item of the
//! collection it is indented with (or the last entry of that collection), and
//! a comment after a value on the same line becomes an inline entry just
//! before that value.
//!
//! Untagged plain scalars are typed as sops's YAML library (go-yaml v3) types
//! them, because the type decides the bytes that enter the MAC: `true`, `null`,
//! `0x1F`, `1e6`, `2024-01-02` (a timestamp) are not strings.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use super::limits::{AliasBudget, LimitError, MAX_DEPTH, Shape};
use super::tree::{Comment, MapEntry, SeqEntry, Value};

/// Why a YAML document could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum YamlError {
    /// The text is not valid YAML.
    #[error("invalid YAML at line {line}, column {col}: {reason}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The parser's message.
        reason: String,
    },
    /// The top level is a list or a scalar; sops only handles maps.
    #[error("the top level of the YAML document is a {0}; sops files must be maps")]
    NotAMap(&'static str),
    /// An alias refers to an unknown anchor.
    #[error("an alias refers to an anchor that is not defined")]
    UnknownAnchor,
    /// Too deep, or aliases that expand too far.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

#[derive(Clone)]
struct RawComment {
    /// Character index of the `#`.
    pos: usize,
    col: usize,
    text: String,
    inline: bool,
    /// Only list indicators precede it on its line (`- - # c`): it opens the
    /// collection that the item starts on the next line, as go-yaml reads it.
    after_dash: bool,
}

/// Finds comments outside the given scalar spans (sorted character ranges).
///
/// Only `#` characters are examined, so the cost is one pass of `memchr`
/// over the text plus work proportional to the number of `#`s.
fn find_comments(text: &str, scalars: &[(usize, usize)]) -> Vec<RawComment> {
    let ascii = text.is_ascii();
    let mut out = Vec::new();
    // Character index of the last byte position converted, for non-ASCII text.
    let (mut last_byte, mut last_char) = (0usize, 0usize);
    // Kept across matches so that each byte is searched for a newline once:
    // a long line of `#`s must not cost its length once per `#`.
    let (mut line_start, mut scanned) = (0usize, 0usize);
    // End of the last comment found: a `#` before it is part of that comment.
    let mut comment_end = 0usize;
    for (byte, _) in text.match_indices('#') {
        if byte < comment_end {
            continue;
        }
        if let Some(i) = text[scanned..byte].rfind('\n') {
            line_start = scanned + i + 1;
        }
        scanned = byte;
        let before = &text[line_start..byte];
        if !(before.is_empty() || before.ends_with([' ', '\t'])) {
            continue;
        }
        let pos = if ascii {
            byte
        } else {
            last_char += text[last_byte..byte].chars().count();
            last_byte = byte;
            last_char
        };
        // The scalar span starting at or before `pos`, if any, may cover it.
        let i = scalars.partition_point(|&(start, _)| start <= pos);
        if i > 0 && scalars[i - 1].1 > pos {
            continue;
        }
        let end = text[byte..].find('\n').map_or(text.len(), |e| byte + e);
        comment_end = end;
        let body = text[byte + 1..end]
            .strip_suffix('\r')
            .unwrap_or(&text[byte + 1..end]);
        out.push(RawComment {
            pos,
            col: before.chars().count(),
            text: body.to_owned(),
            // After a document marker it opens the document's content.
            inline: !matches!(before.trim(), "" | "---"),
            after_dash: !before.trim().is_empty() && before.chars().all(|c| matches!(c, '-' | ' ' | '\t')),
        });
    }
    out
}

enum Frame {
    Map {
        entries: Vec<MapEntry>,
        key: Option<String>,
        col: usize,
        anchor: usize,
    },
    Seq {
        entries: Vec<SeqEntry>,
        col: usize,
        anchor: usize,
    },
}

impl Frame {
    fn col(&self) -> usize {
        match self {
            Frame::Map { col, .. } | Frame::Seq { col, .. } => *col,
        }
    }

    /// Places a comment found before the next event into this collection.
    /// Returns false if it must wait (it sits between a key and its value).
    fn take_comment(&mut self, c: &RawComment) -> bool {
        let comment = Comment {
            text: c.text.clone(),
            inline: c.inline,
        };
        match self {
            Frame::Map { entries, key, .. } => {
                if key.is_some() {
                    if c.inline {
                        // `key: # note` above a nested value: sops keeps it before the pair.
                        entries.push(MapEntry::Comment(Comment {
                            inline: false,
                            ..comment
                        }));
                        return true;
                    }
                    return false;
                }
                if c.inline {
                    let at = entries.len().saturating_sub(1);
                    entries.insert(at, MapEntry::Comment(comment));
                } else {
                    entries.push(MapEntry::Comment(comment));
                }
            }
            Frame::Seq { entries, .. } => {
                if c.inline {
                    let at = entries.len().saturating_sub(1);
                    entries.insert(at, SeqEntry::Comment(comment));
                } else {
                    entries.push(SeqEntry::Comment(comment));
                }
            }
        }
        true
    }
}

struct Builder {
    stack: Vec<Frame>,
    /// Each anchored value with its shape, measured once for the alias budget.
    anchors: HashMap<usize, (Value, Shape)>,
    budget: AliasBudget,
    documents: Vec<Value>,
    root: Option<Value>,
    comments: std::collections::VecDeque<RawComment>,
}

impl Builder {
    /// Hands comments located before `pos` to the open collection. Before a
    /// collection starts, a comment after a list item's dash waits for it.
    fn comments_before(&mut self, pos: usize, collection_starts: bool) {
        while let Some(c) = self.comments.front() {
            if c.pos >= pos || (collection_starts && c.after_dash) {
                break;
            }
            let Some(frame) = self.stack.last_mut() else { break };
            let taken = if c.after_dash {
                // Before a scalar item: a comment of the list, before the item.
                frame.take_comment(&RawComment {
                    inline: false,
                    ..c.clone()
                })
            } else {
                frame.take_comment(c)
            };
            if !taken {
                break;
            }
            self.comments.pop_front();
        }
    }

    /// A comment after a list item's dash (`- # c` with the item's collection
    /// on the next lines) is that collection's first entry.
    fn dash_comments_open(&mut self, pos: usize) {
        while let Some(c) = self.comments.front() {
            if c.pos >= pos || !c.after_dash {
                break;
            }
            let c = self.comments.pop_front().expect("checked");
            let comment = Comment {
                text: c.text,
                inline: false,
            };
            match self.stack.last_mut() {
                Some(Frame::Map { entries, .. }) => entries.push(MapEntry::Comment(comment)),
                Some(Frame::Seq { entries, .. }) => entries.push(SeqEntry::Comment(comment)),
                None => {}
            }
        }
    }

    /// Before a collection closes: comments indented at least as deep as its
    /// items are its trailing comments; shallower ones belong further out.
    fn trailing_comments(&mut self, pos: usize) {
        while let Some(c) = self.comments.front() {
            let Some(frame) = self.stack.last_mut() else { break };
            if c.pos >= pos || (!c.inline && c.col < frame.col()) {
                break;
            }
            if !frame.take_comment(c) {
                break;
            }
            self.comments.pop_front();
        }
    }

    fn add(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some(k) => entries.push(MapEntry::Pair(k, value)),
                None => {
                    // A non-scalar key (`? [a, b]: c`); sops cannot use it either.
                    *key = Some(String::new());
                }
            },
            Some(Frame::Seq { entries, .. }) => entries.push(SeqEntry::Item(value)),
        }
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        let pos = span.start.index();
        let line = span.start.line();
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) if self.stack.len() >= MAX_DEPTH => {
                return Err(LimitError::TooDeep { line }.into());
            }
            Event::MappingStart(..) | Event::SequenceStart(..) | Event::Scalar(..) | Event::Alias(_) => {
                self.budget.written(line)?;
            }
            _ => {}
        }
        match event {
            Event::MappingEnd | Event::SequenceEnd => self.trailing_comments(pos),
            Event::DocumentEnd | Event::StreamEnd => {}
            Event::MappingStart(..) | Event::SequenceStart(..) => self.comments_before(pos, true),
            _ => self.comments_before(pos, false),
        }
        match event {
            Event::Nothing | Event::StreamStart | Event::DocumentStart(_) => {}
            Event::StreamEnd => {
                // Comments after an explicit end of the last document (`...`).
                if let Some(Value::Map(entries)) = self.documents.last_mut() {
                    for c in self.comments.drain(..) {
                        entries.push(MapEntry::Comment(Comment {
                            text: c.text,
                            inline: false,
                        }));
                    }
                }
            }
            Event::DocumentEnd => {
                let mut root = self.root.take().unwrap_or(Value::Null);
                match &mut root {
                    Value::Map(entries) => {
                        // Comments after the last item of the document. The
                        // event sits at the next document's `---`: a comment
                        // after that (`--- # c`, or on the lines below) opens
                        // the next document, where sops prints it.
                        while let Some(c) = self.comments.front()
                            && c.pos < pos
                        {
                            let c = self.comments.pop_front().expect("checked");
                            entries.push(MapEntry::Comment(Comment {
                                text: c.text,
                                inline: false,
                            }));
                        }
                    }
                    Value::Null => root = Value::Map(Vec::new()),
                    other => return Err(YamlError::NotAMap(other.kind())),
                }
                self.documents.push(root);
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    key: None,
                    col: span.start.col(),
                    anchor,
                });
                self.dash_comments_open(pos);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq {
                    entries: Vec::new(),
                    col: span.start.col(),
                    anchor,
                });
                self.dash_comments_open(pos);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor) = match self.stack.pop().expect("parser balances collections") {
                    Frame::Map { entries, anchor, .. } => (Value::Map(entries), anchor),
                    Frame::Seq { entries, anchor, .. } => (Value::Seq(entries), anchor),
                };
                if anchor != 0 {
                    let shape = Shape::of(&value);
                    self.budget.anchored(&shape, line)?;
                    self.anchors.insert(anchor, (value.clone(), shape));
                }
                self.add(value);
            }
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(Frame::Map { key: key @ None, .. }) = self.stack.last_mut() {
                    *key = Some(text.into_owned());
                    return Ok(());
                }
                let value = resolve(&text, style, tag.as_deref());
                if anchor != 0 {
                    let shape = Shape::of(&value);
                    self.budget.anchored(&shape, line)?;
                    self.anchors.insert(anchor, (value.clone(), shape));
                }
                self.add(value);
            }
            Event::Alias(id) => {
                let (value, shape) = self.anchors.get(&id).ok_or(YamlError::UnknownAnchor)?;
                // Checked before the copy is made: the copy is what a bomb inflates.
                if self.stack.len() + shape.height > MAX_DEPTH {
                    return Err(LimitError::TooDeep { line }.into());
                }
                self.budget.expand(shape, line)?;
                let value = value.clone();
                if let Some(Frame::Map { key: key @ None, .. }) = self.stack.last_mut() {
                    *key = Some(match value {
                        Value::Str(s) => s,
                        _ => String::new(),
                    });
                    return Ok(());
                }
                self.add(value);
            }
        }
        Ok(())
    }
}

/// Parses YAML text into one root map per document.
///
/// Files in the subset sops writes are read by the fast line reader; any
/// other YAML goes through the general parser. Both feed the same builder.
pub fn parse(text: &str) -> Result<Vec<Value>, YamlError> {
    let text = &*close_commented_empty_maps(text);
    match super::yaml_subset::events(text) {
        Some(events) => build(text, events),
        None => general(text),
    }
}

/// Parses with the general YAML parser only.
pub fn parse_general(text: &str) -> Result<Vec<Value>, YamlError> {
    general(&close_commented_empty_maps(text))
}

/// sops writes an empty map that carries a comment (`a: {} # c`) as `a: {`,
/// the encrypted comment on the lines below, and `}` alone at column 0.
/// go-yaml reads that (a flow collection ignores indentation) and drops the
/// comment; saphyr refuses the `}`. The shape is rewritten to `a: {}` with
/// the comment lines blanked, keeping every other character at its position.
fn close_commented_empty_maps(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::new();
    let mut done = 0;
    let mut from = 0;
    while let Some(i) = find_open_brace_line(text, from) {
        from = i + 2;
        let mut end = None;
        let mut at = i + 2;
        while at < text.len() {
            let line_end = text[at..].find('\n').map_or(text.len(), |e| at + e);
            let line = &text[at..line_end];
            if line == "}" {
                end = Some(line_end);
                break;
            }
            let t = line.trim_start_matches(' ');
            if !(t.is_empty() || t.starts_with('#')) {
                break;
            }
            at = line_end + 1;
        }
        let Some(end) = end else { continue };
        out.reserve(text.len());
        out.push_str(&text[done..i]);
        out.push_str("{}\n");
        for line in text[i + 2..end - 1].split_inclusive('\n') {
            out.extend(line.chars().map(|c| if c == '\n' { c } else { ' ' }));
        }
        done = end;
        from = end;
    }
    if done == 0 {
        return text.into();
    }
    out.push_str(&text[done..]);
    out.into()
}

/// The position of the `{` of the next " {\n" whose space is at or after
/// `from`. Found by the `{` alone (a byte search; base64 has none, so sops's
/// values are passed over at memchr's pace) rather than by a substring
/// search, which on a file of encrypted values took a tenth of the parse.
fn find_open_brace_line(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut at = from;
    loop {
        let brace = at + text[at..].find('{')?;
        if brace > from && bytes[brace - 1] == b' ' && bytes.get(brace + 1) == Some(&b'\n') {
            return Some(brace);
        }
        // `{` is one byte, so a character starts right after it.
        at = brace + 1;
    }
}

fn general(text: &str) -> Result<Vec<Value>, YamlError> {
    let mut events = Vec::new();
    // The builder refuses deep nesting too, but only once every event is read:
    // this stops reading a deep block structure early. A run of `[` or `{` is
    // read ahead by the scanner, whose own limit (255 flow levels, reported as
    // a syntax error) is turned into the same refusal below.
    let mut depth = 0usize;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| match e.info() {
            "recursion limit exceeded" => LimitError::TooDeep {
                line: e.marker().line(),
            }
            .into(),
            _ => YamlError::Syntax {
                line: e.marker().line(),
                col: e.marker().col() + 1,
                reason: e.info().to_owned(),
            },
        })?;
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_DEPTH {
            return Err(LimitError::TooDeep {
                line: span.start.line(),
            }
            .into());
        }
        events.push((event, span));
    }
    build(text, events)
}

fn build<'a>(text: &str, mut events: Vec<(Event<'a>, Span)>) -> Result<Vec<Value>, YamlError> {
    // One converter (and one ASCII check of the text) for both passes.
    let mut offsets = CharOffsets::new(text);
    go_line_breaks(text, &mut events, &mut offsets);
    let scalars: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|(e, s)| match e {
            Event::Scalar(_, style, ..) => Some(scalar_extent(text, &mut offsets, *style, s)),
            _ => None,
        })
        .collect();
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget: AliasBudget::new(text.len()),
        documents: Vec::new(),
        root: None,
        comments: find_comments(text, &scalars).into(),
    };
    for (event, span) in events {
        builder.event(event, span)?;
    }
    Ok(builder.documents)
}

/// U+2028 and U+2029 as go-yaml reads them.
///
/// go-yaml follows YAML 1.1, where they are line breaks; saphyr follows YAML
/// 1.2, where they are text. sops writes a string holding one (and no `\n`)
/// as a single-quoted scalar broken at that character, the next line indented,
/// or inside a literal block as a break followed by the block's indentation.
/// go-yaml folds that indentation away and the MAC was computed without it,
/// so it is removed here too. Only these two styles need it: sops escapes the
/// characters in double quotes, and plain scalars cannot hold them.
fn go_line_breaks(text: &str, events: &mut [(Event<'_>, Span)], offsets: &mut CharOffsets) {
    const BREAKS: [char; 2] = ['\u{2028}', '\u{2029}'];
    // One character each: memchr-backed searches, cheap on megabytes of base64.
    let has_break = |t: &str| t.contains('\u{2028}') || t.contains('\u{2029}');
    // ASCII text holds neither.
    if offsets.ascii || !has_break(text) {
        return;
    }
    for (event, span) in events {
        let Event::Scalar(value, style, ..) = event else {
            continue;
        };
        if !has_break(value) {
            continue;
        }
        let folded = match style {
            // A break and the blanks around it become the break alone.
            ScalarStyle::SingleQuoted => {
                let mut out = String::with_capacity(value.len());
                let mut run = String::new();
                for c in value.chars() {
                    match c {
                        ' ' | '\t' | '\u{2028}' | '\u{2029}' => run.push(c),
                        _ => {
                            flush_blank_run(&mut out, &mut run);
                            out.push(c);
                        }
                    }
                }
                flush_blank_run(&mut out, &mut run);
                out
            }
            ScalarStyle::Literal => {
                let header = offsets.byte(text, span.start.index());
                let indent = literal_indent(&text[header..], value);
                let mut out = String::with_capacity(value.len());
                let mut skip = 0;
                for c in value.chars() {
                    if c == ' ' && skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    skip = if BREAKS.contains(&c) { indent } else { 0 };
                    out.push(c);
                }
                out
            }
            _ => continue,
        };
        *value = folded.into();
    }
}

/// Blanks next to a U+2028/U+2029 are folded away; a run without one stays.
fn flush_blank_run(out: &mut String, run: &mut String) {
    if run.contains(['\u{2028}', '\u{2029}']) {
        out.extend(run.chars().filter(|c| !matches!(c, ' ' | '\t')));
    } else {
        out.push_str(run);
    }
    run.clear();
}

/// The content indentation of the literal block whose header starts `source`,
/// found by comparing its first non-blank line with saphyr's value for it.
fn literal_indent(source: &str, value: &str) -> usize {
    let lead = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let has_text = |l: &&str| !l.trim_start_matches(' ').is_empty();
    let src = source.split('\n').skip(1).find(has_text).map_or(0, lead);
    let val = value.split('\n').find(has_text).map_or(0, lead);
    src.saturating_sub(val)
}

/// The characters a scalar occupies. saphyr's span of a quoted scalar runs
/// to the end of its line, over any comment after it: that span ends at the
/// closing quote instead.
fn scalar_extent(text: &str, offsets: &mut CharOffsets, style: ScalarStyle, span: &Span) -> (usize, usize) {
    let (start, end) = (span.start.index(), span.end.index());
    let quote = match style {
        ScalarStyle::SingleQuoted => '\'',
        ScalarStyle::DoubleQuoted => '"',
        _ => return (start, end),
    };
    let from = offsets.byte(text, start);
    let mut chars = text[from..].chars();
    if chars.next() != Some(quote) {
        return (start, end);
    }
    let mut n = 1;
    let mut escaped = false;
    while let Some(c) = chars.next() {
        n += 1;
        match c {
            '\\' if quote == '"' && !escaped => escaped = true,
            // `''` inside single quotes is an escaped quote.
            '\'' if quote == '\'' && chars.clone().next() == Some('\'') => {
                chars.next();
                n += 1;
            }
            c if c == quote && !escaped => return (start, (start + n).min(end)),
            _ => escaped = false,
        }
    }
    (start, end)
}

/// Converts saphyr's character positions to byte offsets, walking forward.
/// In ASCII text (all that sops writes for most files, and all that the
/// fast reader takes) the two are the same and nothing is walked.
struct CharOffsets {
    ascii: bool,
    chars: usize,
    bytes: usize,
}

impl CharOffsets {
    fn new(text: &str) -> CharOffsets {
        CharOffsets {
            ascii: text.is_ascii(),
            chars: 0,
            bytes: 0,
        }
    }

    fn byte(&mut self, text: &str, char_index: usize) -> usize {
        if self.ascii {
            return char_index.min(text.len());
        }
        if char_index < self.chars {
            (self.chars, self.bytes) = (0, 0);
        }
        let skip = char_index - self.chars;
        let advance = text[self.bytes..]
            .char_indices()
            .nth(skip)
            .map_or(text.len() - self.bytes, |(i, _)| i);
        self.bytes += advance;
        self.chars = char_index;
        self.bytes
    }
}

/// Types a scalar as go-yaml v3 does when decoding into `interface{}`.
fn resolve(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag
        && tag.is_yaml_core_schema()
    {
        return match tag.suffix.as_str() {
            "str" => Value::Str(text.to_owned()),
            "binary" => {
                use base64::Engine;
                let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                match base64::engine::general_purpose::STANDARD.decode(cleaned) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(s) => Value::Str(s),
                        Err(e) => Value::Bytes(e.into_bytes()),
                    },
                    Err(_) => Value::Str(text.to_owned()),
                }
            }
            _ => resolve_plain(text),
        };
    }
    match style {
        ScalarStyle::Plain => resolve_plain(text),
        _ => Value::Str(text.to_owned()),
    }
}

fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return Value::Str(text.to_owned());
    }
    if let Some(t) = timestamp(text) {
        return Value::Time(t);
    }
    let plain: String = text.chars().filter(|&c| c != '_').collect();
    if let Some(i) = go_parse_int(&plain) {
        return Value::Int(i);
    }
    if is_yaml_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_owned())
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, then `0x`, `0o`, `0b`,
/// a leading `0` for octal, or decimal.
fn go_parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(d) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
        (8, d)
    } else if let Some(d) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
        (2, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).ok()
}

/// go-yaml's float shape: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && matches!(b[i], b'-' | b'+') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        i += 1;
        if i < b.len() && matches!(b[i], b'-' | b'+') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// go-yaml's timestamp forms (`2006-1-2`, `2006-1-2T15:4:5.999999999Z07:00`,
/// with `t` or a space for `T`), returned as Go's `MarshalText` spells them.
fn timestamp(s: &str) -> Option<String> {
    fn num(s: &str, min: usize, max: usize) -> Option<(u32, &str)> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        if n < min || n > max {
            return None;
        }
        Some((s[..n].parse().ok()?, &s[n..]))
    }
    let (year, rest) = num(s, 4, 4)?;
    let rest = rest.strip_prefix('-')?;
    let (month, rest) = num(rest, 1, 2)?;
    let rest = rest.strip_prefix('-')?;
    let (day, rest) = num(rest, 1, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let date = format!("{year:04}-{month:02}-{day:02}");
    if rest.is_empty() {
        return Some(format!("{date}T00:00:00Z"));
    }
    let with_zone = rest.starts_with(['T', 't']);
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (h, rest) = num(rest, 1, 2)?;
    let rest = rest.strip_prefix(':')?;
    let (m, rest) = num(rest, 1, 2)?;
    let rest = rest.strip_prefix(':')?;
    let (sec, mut rest) = num(rest, 1, 2)?;
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let mut frac = String::new();
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return None;
        }
        frac = r[..n].trim_end_matches('0').to_owned();
        rest = &r[n..];
    }
    let zone = if with_zone {
        match rest {
            "Z" => "Z".to_owned(),
            z if z.len() == 6 && z.starts_with(['+', '-']) && &z[3..4] == ":" => {
                if &z[1..3] == "00" && &z[4..6] == "00" {
                    "Z".to_owned()
                } else {
                    z.to_owned()
                }
            }
            _ => return None,
        }
    } else if rest.is_empty() {
        "Z".to_owned()
    } else {
        return None;
    };
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    Some(format!("{date}T{h:02}:{m:02}:{sec:02}{frac}{zone}"))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_brace_of_a_commented_empty_map_is_found_as_the_substring_search_finds_it() {
        let texts = [
            "a: {\n# c\n}\nb: {}\n",
            "{\n {\n",
            " {\n",
            "\u{e9} {\n x: { }\n y: {\n",
            "a:{\nb: {x\nc: {\n",
            "no brace at all\n",
            "ends with a space and brace {",
        ];
        for text in texts {
            let mut from = 0;
            while from <= text.len() {
                let want = text[from..].find(" {\n").map(|i| from + i + 1);
                assert_eq!(find_open_brace_line(text, from), want, "{text:?} from {from}");
                from += text[from..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }

    #[test]
    fn character_positions_become_byte_offsets_in_any_order() {
        for text in [
            "key: 'value' # note\n",
            "k\u{e9}y: '\u{2028}v\u{e9}' # \u{1f600}\n",
            "",
        ] {
            let want = |i: usize| text.char_indices().nth(i).map_or(text.len(), |(b, _)| b);
            let mut offsets = CharOffsets::new(text);
            let n = text.chars().count();
            // Forward, backward and past the end, as the callers may ask.
            for i in (0..=n + 2).chain((0..=n).rev()).chain([n / 2, 1, n + 5]) {
                assert_eq!(offsets.byte(text, i), want(i), "{text:?} at {i}");
            }
        }
    }

    #[test]
    fn plain_scalars_are_typed_like_go_yaml() {
        assert_eq!(resolve_plain("0x1F"), Value::Int(31));
        assert_eq!(resolve_plain("0o17"), Value::Int(15));
        assert_eq!(resolve_plain("1_000"), Value::Int(1000));
        assert_eq!(resolve_plain("1e6"), Value::Float(1e6));
        assert_eq!(resolve_plain("yes"), Value::Str("yes".into()));
        assert_eq!(
            resolve_plain("2024-01-02"),
            Value::Time("2024-01-02T00:00:00Z".into())
        );
        assert_eq!(
            resolve_plain("2024-01-02T03:04:05.500Z"),
            Value::Time("2024-01-02T03:04:05.5Z".into())
        );
        assert_eq!(resolve_plain("1.2.3"), Value::Str("1.2.3".into()));
    }

    #[test]
    fn comments_keep_their_place() {
        let docs = parse("# head\na: 1 # line\nb:\n  c: 2\n  # foot of b\n# before d\nd: x\n").unwrap();
        let Value::Map(entries) = &docs[0] else { panic!() };
        let shape: Vec<String> = entries
            .iter()
            .map(|e| match e {
                MapEntry::Pair(k, _) => k.clone(),
                MapEntry::Comment(c) => format!("#{}{}", c.text, if c.inline { "(inline)" } else { "" }),
            })
            .collect();
        assert_eq!(shape, ["# head", "# line(inline)", "a", "b", "# before d", "d"]);
        let Some(Value::Map(b)) = docs[0].get("b") else {
            panic!()
        };
        assert!(matches!(&b[1], MapEntry::Comment(c) if c.text == " foot of b"));
    }

    #[test]
    fn hash_inside_a_quoted_string_is_not_a_comment() {
        let docs = parse("a: 'x # y'\nb: \"#z\"\n").unwrap();
        assert_eq!(docs[0].get("a"), Some(&Value::Str("x # y".into())));
        let Value::Map(entries) = &docs[0] else { panic!() };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn line_and_paragraph_separators_break_lines_as_in_go_yaml() {
        // What sops 3.11 wrote for these strings (left unencrypted).
        let text = "? 'k\u{2028}    z'\n: s\nlit: |\n    a\u{2028}    b\n    c\u{2029}\u{2029}    d\n\
                    n:\n    v: 'x \u{2028}            y'\n    l:\n        - 'i\u{2028}              j'\n\
                    \x20       - |-\n          m\n          n\u{2028}           o\n";
        let docs = parse(text).unwrap();
        let d = &docs[0];
        assert_eq!(d.get("k\u{2028}z"), Some(&Value::Str("s".into())), "{}", d.dump());
        assert_eq!(
            d.get("lit"),
            Some(&Value::Str("a\u{2028}b\nc\u{2029}\u{2029}d\n".into()))
        );
        let n = d.get("n").unwrap();
        assert_eq!(n.get("v"), Some(&Value::Str("x\u{2028}y".into())));
        let l = n.get("l").unwrap();
        assert_eq!(l.item(0), Some(&Value::Str("i\u{2028}j".into())));
        // Only the block's indentation goes: the space after it is content.
        assert_eq!(l.item(1), Some(&Value::Str("m\nn\u{2028} o".into())));
    }

    #[test]
    fn an_empty_map_with_its_comment_and_brace_below_reads_as_go_yaml_reads_it() {
        // What sops 3.11 wrote for `a: {} # c` at two depths.
        let text = "a: {\n    #ENC[c]\n}\nx:\n    b: {\n        #ENC[d]\n        #ENC[e]\n}\n    d: 1\n";
        for docs in [parse(text).unwrap(), parse_general(text).unwrap()] {
            assert_eq!(docs[0].dump(), r#"{"a": {}, "x": {"b": {}, "d": 1}}"#);
        }
        // The same characters inside a literal block are text.
        let text = "k: |\n    a {\n    #c\n    }\n";
        assert_eq!(
            parse(text).unwrap()[0].get("k"),
            Some(&Value::Str("a {\n#c\n}\n".into()))
        );
    }

    #[test]
    fn a_comment_after_a_document_marker_opens_that_document() {
        let text = "# h1\na: 1\n# t1\n---\n# c2\nb: 2\n--- # c3\nc: 3\n# tail\n";
        let dumps: Vec<String> = parse(text).unwrap().iter().map(Value::dump).collect();
        assert_eq!(
            dumps,
            [
                r#"{#" h1", "a": 1, #" t1"}"#,
                r#"{#" c2", "b": 2}"#,
                r#"{#" c3", "c": 3, #" tail"}"#
            ]
        );
    }

    #[test]
    fn a_comment_after_a_quoted_scalar_is_kept() {
        for text in ["l:\n  - \"a \\\" b\" # c\n", "l:\n  - 'a '' b' # c\n"] {
            let fast = crate::sops::yaml_subset::events(text).map(|e| build(text, e).unwrap()[0].dump());
            let general = parse_general(text).unwrap()[0].dump();
            assert!(general.contains(r#"#" c"i"#), "{text:?}: {general}");
            if let Some(fast) = fast {
                assert_eq!(fast, general);
            }
        }
    }

    #[test]
    fn a_hash_inside_a_comment_is_part_of_it() {
        // As sops reads it: one comment, ` b # c`. A line of `#`s made one
        // comment per `#`, each holding the rest of the line: quadratic memory.
        let docs = parse("a: x # b # c\n").unwrap();
        let Value::Map(entries) = &docs[0] else { panic!() };
        assert_eq!(entries.len(), 2);
        assert!(matches!(&entries[0], MapEntry::Comment(c) if c.text == " b # c" && c.inline));
        let long = format!("a: x{}\n", " #".repeat(200_000));
        let docs = parse(&long).unwrap();
        let Value::Map(entries) = &docs[0] else { panic!() };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn aliases_expand_to_copies_of_their_anchor() {
        let docs = parse("a: &x {b: 1, c: [1, &s two]}\nd: *x\ne: *s\n").unwrap();
        assert_eq!(docs[0].get("d"), docs[0].get("a"));
        assert_eq!(docs[0].get("e"), Some(&Value::Str("two".into())));
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let mut bomb = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            bomb.push_str(&format!(
                "l{i}: &l{i} [{}]\n",
                vec![format!("*l{}", i - 1); 9].join(", ")
            ));
        }
        // l4 expands to 9^4 + ... nodes, the first alias past go-yaml's ratio.
        assert!(matches!(
            parse(&bomb),
            Err(YamlError::Limit(LimitError::ExcessiveAliasing { line: 4, .. }))
        ));
    }

    #[test]
    fn nested_anchors_count_their_copies() {
        // No alias at all, but every anchor keeps a copy of what it holds:
        // 100 nested anchors around 64 KiB would copy 6.4 MiB of a 66 KB file.
        let mut text = String::new();
        for i in 0..99 {
            text.push_str(&format!("{}k{i}: &a{i}\n", " ".repeat(i)));
        }
        text.push_str(&format!("{}s: {}\n", " ".repeat(99), "x".repeat(64 * 1024)));
        assert!(matches!(
            parse(&text),
            Err(YamlError::Limit(LimitError::AliasBytes { .. }))
        ));
    }

    #[test]
    fn nesting_past_the_limit_is_refused_in_every_style() {
        let flow = |n: usize| format!("a: {}1{}\n", "[".repeat(n), "]".repeat(n));
        parse(&flow(MAX_DEPTH - 1)).unwrap();
        for text in [
            flow(MAX_DEPTH),
            flow(10_000),
            format!("a:\n  {}x\n", "- ".repeat(MAX_DEPTH)),
            (0..=MAX_DEPTH)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect::<String>(),
        ] {
            assert!(
                matches!(parse(&text), Err(YamlError::Limit(LimitError::TooDeep { .. }))),
                "{}",
                &text[..40]
            );
        }
        // An alias counts at the depth it is used.
        let deep = flow(60);
        let used = format!("{deep}b: {}*d{}\n", "[".repeat(50), "]".repeat(50)).replacen("a: ", "a: &d ", 1);
        assert!(matches!(
            parse(&used),
            Err(YamlError::Limit(LimitError::TooDeep { line: 2 }))
        ));
    }

    #[test]
    fn top_level_list_is_refused() {
        assert_eq!(parse("- a\n").unwrap_err(), YamlError::NotAMap("list"));
    }
}

#[cfg(test)]
mod differential {
    //! The fast reader of the subset sops writes must build exactly the tree
    //! the general parser builds, for every YAML fixture it accepts.
    use super::*;

    fn dump(r: &Result<Vec<Value>, YamlError>) -> String {
        match r {
            Ok(docs) => docs.iter().map(Value::dump).collect::<Vec<_>>().join("\n---\n"),
            Err(e) => format!("error: {e}"),
        }
    }

    fn yaml_fixtures() -> Vec<std::path::PathBuf> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut files = Vec::new();
        for dir in ["enc", "plain", "neg", "classes/enc", "classes/plain"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "yaml") {
                    files.push(p);
                }
            }
        }
        files
    }

    #[test]
    fn fast_reader_agrees_with_the_general_parser_on_every_fixture() {
        let mut accepted = 0;
        for path in yaml_fixtures() {
            let text = std::fs::read_to_string(&path).unwrap();
            let Some(events) = crate::sops::yaml_subset::events(&text) else {
                continue;
            };
            accepted += 1;
            let fast = build(&text, events);
            let general = parse_general(&text);
            let (f, g) = (dump(&fast), dump(&general));
            if f != g {
                let at = f.bytes().zip(g.bytes()).position(|(a, b)| a != b).unwrap_or(0);
                panic!(
                    "{}: fast {:?} vs general {:?}",
                    path.display(),
                    &f[at.saturating_sub(80)..(at + 80).min(f.len())],
                    &g[at.saturating_sub(80)..(at + 80).min(g.len())]
                );
            }
        }
        // Every file real sops encrypted must take the fast path.
        assert!(accepted >= 25, "only {accepted} fixtures took the fast path");
    }

    #[test]
    fn fast_reader_declines_what_it_does_not_know() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: [1, 2]\n",
            "a: \"x\\ty\"\n",
            "a: plain\n  continued\n",
            "a: >\n  folded\n",
            "a:\n- b\n",
            "---\na: 1\n---\nb: 2\n",
            "a: ключ\n",
            "a:\n\tb: 1\n",
            "a:\n    b: 1\n  c: 2\n",
        ] {
            assert!(crate::sops::yaml_subset::events(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn fast_reader_handles_the_shapes_sops_writes() {
        for text in [
            "# head\na: 1\nb:\n    c: 'it''s'\n    d: \"q\"\n    # foot\nl:\n    - x\n    - k: v\n      m: w\n    - {}\n    - []\ne: |\n    line\n\n    more\nf: |-\n    strip\ng:\n",
            "s: |+\n    keep\n\n\nt: x # note\n",
        ] {
            let events = crate::sops::yaml_subset::events(text).expect(text);
            assert_eq!(dump(&build(text, events)), dump(&parse_general(text)), "{text:?}");
        }
    }
}
