//! Token accounting on answers as they pass: time to first token, inter-token
//! latency, completion chunks and the final `usage` object of OpenAI-shaped streams
//! (`text/event-stream`), or `usage` of a whole JSON answer.
//!
//! Lines are found with memchr in the chunks pingora hands over; nothing is buffered
//! or copied except the unfinished last line of a chunk (kept until the next one), and
//! of a line holding a `usage` object only that value is parsed.
//!
//! In strip mode (the proxy asked for usage, the client did not) every chunk loses
//! its top-level `usage` member (object or `null`) and one comma next to it, and the
//! usage-only event goes whole; all other bytes pass as they came.
//!
//! A `data:` line costs about one pass over its bytes: the token key (`"content":` of
//! a chat delta, `"text":` of a completion) is searched from the start, and `"usage":`
//! only after it, and only when a `{` follows the token (a usage object needs one).
//! Every server we meet (vLLM, SGLang, TGI, llama.cpp server, OpenAI) writes `usage`
//! after `choices`, and most write `"usage":null` into every chunk; a usage object on
//! a line without a token is found wherever it is. The blank line that ends an event
//! is told apart by its first byte, without a search.

use std::ops::Range;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use prometheus::local::LocalHistogram;
use prometheus::Histogram;
use serde::Deserialize;
use sync_wrapper::SyncWrapper;

/// The `usage` object of an OpenAI answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<Details>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Details {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl Usage {
    pub fn cached_tokens(&self) -> Option<u64> {
        self.prompt_tokens_details.and_then(|d| d.cached_tokens)
    }
}

const USAGE_KEY: &[u8] = b"\"usage\":";

/// The key of a stream chunk's `usage` member; a colon follows, after whitespace.
const USAGE_NAME: &[u8] = b"\"usage\"";

/// The searchers of every line, built once (a `memmem::find` builds one per call).
struct Finders {
    usage: Finder<'static>,
    choices: Finder<'static>,
    content: Finder<'static>,
    text: Finder<'static>,
}

static FIND: LazyLock<Finders> = LazyLock::new(|| Finders {
    usage: Finder::new(USAGE_NAME),
    choices: Finder::new(b"\"choices\":"),
    content: Finder::new(b"\"content\":"),
    text: Finder::new(b"\"text\":"),
});

/// Longest unfinished line kept across chunks; longer lines pass unaccounted.
const MAX_CARRY: usize = 256 * 1024;

/// What kind of answer is being metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Json,
}

/// Accounting of one answer.
#[derive(Debug)]
pub struct TokenMeter {
    kind: Kind,
    /// Drop the usage event from what the client receives (the proxy asked for it).
    strip_usage: bool,
    /// The unfinished last line of the previous chunk (JSON: the answer from `usage` on).
    carry: BytesMut,
    /// Stream: the current line outgrew `MAX_CARRY`; it passes unaccounted up to its end.
    long_line: bool,
    /// The blank line ending a stripped usage event goes too.
    skip_blank: bool,
    /// JSON: the last bytes of the previous chunk, for a key split between chunks.
    tail: [u8; USAGE_KEY.len() - 1],
    tail_len: usize,
    /// JSON: `"usage":` was seen; `carry` holds what follows it.
    capturing: bool,
    pub first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Content chunks seen (one token each, as servers stream them).
    pub chunks: u64,
    pub usage: Option<Usage>,
}

/// Gaps between tokens observed by one chunk of the stream.
pub trait TokenSink {
    fn inter_token(&mut self, gap: Duration);
}

/// Gaps not wanted (whole JSON answers have none).
impl TokenSink for () {
    fn inter_token(&mut self, _gap: Duration) {}
}

/// Gaps observed into one answer's own copy of the route's histogram (plain adds, no
/// atomics per token), added to the shared one every `FLUSH_EVERY` gaps, so a long
/// stream shows while it runs, and by [`LocalGaps::flush`] when the request ends.
pub(crate) struct LocalGaps {
    /// `SyncWrapper`: the local histogram is `Send` but not `Sync`, and is only used
    /// through `&mut`.
    local: SyncWrapper<LocalHistogram>,
    pending: u32,
}

const FLUSH_EVERY: u32 = 64;

impl LocalGaps {
    pub(crate) fn new(shared: &Histogram) -> LocalGaps {
        LocalGaps {
            local: SyncWrapper::new(shared.local()),
            pending: 0,
        }
    }

    /// Adds what was observed to the shared histogram.
    pub(crate) fn flush(&mut self) {
        self.local.get_mut().flush();
        self.pending = 0;
    }
}

impl TokenSink for LocalGaps {
    fn inter_token(&mut self, gap: Duration) {
        self.local.get_mut().observe(gap.as_secs_f64());
        self.pending += 1;
        if self.pending == FLUSH_EVERY {
            self.flush();
        }
    }
}

/// What of a line passes in strip mode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edit {
    Keep,
    Drop,
    /// All but this range of the line.
    Cut(Range<usize>),
}

/// What a chunk becomes in strip mode: one range of it while the kept lines are
/// contiguous (no copy), a copy once they are not.
#[derive(Default)]
struct Kept {
    range: Option<Range<usize>>,
    copy: Option<BytesMut>,
}

impl Kept {
    /// Keeps `chunk[r]`.
    fn range(&mut self, chunk: &[u8], r: Range<usize>) {
        if let Some(copy) = &mut self.copy {
            copy.extend_from_slice(&chunk[r]);
            return;
        }
        match &mut self.range {
            None => self.range = Some(r),
            Some(k) if k.end == r.start => k.end = r.end,
            Some(_) => self.copied(chunk).extend_from_slice(&chunk[r]),
        }
    }

    /// Keeps bytes from outside the chunk (a line carried from the previous one).
    fn bytes(&mut self, chunk: &[u8], bytes: &[u8]) {
        self.copied(chunk).extend_from_slice(bytes);
    }

    /// Keeps what `edit` leaves of the line `chunk[r]`.
    fn line(&mut self, chunk: &[u8], r: Range<usize>, edit: Edit) {
        match edit {
            Edit::Keep => self.range(chunk, r),
            Edit::Drop => {}
            Edit::Cut(cut) => {
                self.range(chunk, r.start..r.start + cut.start);
                self.range(chunk, r.start + cut.end..r.end);
            }
        }
    }

    /// Keeps what `edit` leaves of a line from outside the chunk.
    fn line_bytes(&mut self, chunk: &[u8], line: &[u8], edit: Edit) {
        match edit {
            Edit::Keep => self.bytes(chunk, line),
            Edit::Drop => {}
            Edit::Cut(cut) => {
                self.bytes(chunk, &line[..cut.start]);
                self.bytes(chunk, &line[cut.end..]);
            }
        }
    }

    fn copied(&mut self, chunk: &[u8]) -> &mut BytesMut {
        let range = self.range.take();
        self.copy.get_or_insert_with(|| {
            let mut copy = BytesMut::with_capacity(chunk.len() + 64);
            if let Some(r) = range {
                copy.extend_from_slice(&chunk[r]);
            }
            copy
        })
    }

    /// What passes of `chunk`.
    fn finish(self, chunk: Bytes) -> Bytes {
        match (self.copy, self.range) {
            (Some(copy), _) => copy.freeze(),
            (None, Some(r)) if r == (0..chunk.len()) => chunk,
            (None, Some(r)) => chunk.slice(r),
            (None, None) => Bytes::new(),
        }
    }
}

impl TokenMeter {
    pub fn new(kind: Kind, strip_usage: bool) -> TokenMeter {
        TokenMeter {
            kind,
            strip_usage: strip_usage && kind == Kind::Stream,
            carry: BytesMut::new(),
            long_line: false,
            skip_blank: false,
            tail: [0; USAGE_KEY.len() - 1],
            tail_len: 0,
            capturing: false,
            first_token: None,
            last_token: None,
            chunks: 0,
            usage: None,
        }
    }

    /// Completion tokens: from `usage` when the answer had it, else the chunks seen.
    pub fn completion_tokens(&self) -> u64 {
        self.usage.map_or(self.chunks, |u| u.completion_tokens)
    }

    /// Scans one body chunk as it passes (`end`: the answer's last); in strip mode,
    /// rewrites it without the usage event, holding an unfinished last line until the
    /// chunk that ends it. `sink` gets each inter-token gap.
    pub fn scan(
        &mut self,
        body: &mut Option<Bytes>,
        end: bool,
        now: Instant,
        sink: &mut impl TokenSink,
    ) {
        let kind = self.kind;
        match kind {
            Kind::Json => {
                if let Some(chunk) = body {
                    self.scan_json(chunk);
                }
            }
            Kind::Stream if self.one_event(body, now, sink) => {}
            Kind::Stream if self.strip_usage => self.strip(body, end, now, sink),
            Kind::Stream => {
                if let Some(chunk) = body {
                    self.lines(chunk, now, sink, None);
                }
                if end && !self.carry.is_empty() {
                    let line = std::mem::take(&mut self.carry);
                    self.line(&line, UsageKey::Search, now, sink);
                }
            }
        }
    }

    /// The common chunk, one event as servers write them (a line and the blank line
    /// that ends it, or the line alone), with nothing carried: accounted without the
    /// line loop and, when nothing of it is cut, passed on as it came without the
    /// rewrite's bookkeeping. Whether the chunk was one.
    fn one_event(
        &mut self,
        body: &mut Option<Bytes>,
        now: Instant,
        sink: &mut impl TokenSink,
    ) -> bool {
        if !self.carry.is_empty() || self.long_line || self.skip_blank {
            return false;
        }
        let Some(chunk) = body.as_ref() else {
            return false;
        };
        let Some(nl) = memchr::memchr(b'\n', chunk) else {
            return false;
        };
        let line = &chunk[..=nl];
        if !matches!(&chunk[nl + 1..], b"" | b"\n" | b"\r\n") || line.len() <= 2 {
            return false;
        }
        let usage = match self.strip_usage {
            true => FIND.usage.find(line).map_or(UsageKey::None, UsageKey::At),
            false => UsageKey::Search,
        };
        let edit = self.line(line, usage, now, sink);
        if edit != Edit::Keep {
            let mut kept = Kept::default();
            kept.line(chunk, 0..line.len(), edit);
            let blank = nl + 1..chunk.len();
            if !blank.is_empty() {
                if self.skip_blank {
                    // The blank line goes with the usage event.
                    self.skip_blank = false;
                } else {
                    kept.range(chunk, blank);
                }
            }
            let chunk = body.take().unwrap_or_default();
            *body = Some(kept.finish(chunk));
        }
        true
    }

    /// Strip mode: every complete line passes except the usage event.
    fn strip(
        &mut self,
        body: &mut Option<Bytes>,
        end: bool,
        now: Instant,
        sink: &mut impl TokenSink,
    ) {
        let mut kept = Kept::default();
        let had_body = body.is_some();
        let chunk = body.take().unwrap_or_default();
        self.lines(&chunk, now, sink, Some(&mut kept));
        if end && !self.carry.is_empty() {
            // The answer ended inside a line: it goes out as it came.
            let line = std::mem::take(&mut self.carry);
            let edit = self.line(&line, UsageKey::Search, now, sink);
            kept.line_bytes(&chunk, &line, edit);
        }
        let out = kept.finish(chunk);
        if had_body || !out.is_empty() {
            *body = Some(out);
        }
    }

    /// Accounts every complete line of `carry ++ chunk`, keeps the unfinished rest in
    /// `carry`, and in strip mode (`kept`) records the lines that pass.
    fn lines(
        &mut self,
        chunk: &[u8],
        now: Instant,
        sink: &mut impl TokenSink,
        mut kept: Option<&mut Kept>,
    ) {
        let mut start = 0;
        if self.long_line || !self.carry.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', chunk) else {
                self.push_carry(chunk, kept, 0..chunk.len());
                return;
            };
            start = nl + 1;
            if std::mem::take(&mut self.long_line) {
                if let Some(k) = kept.as_deref_mut() {
                    k.range(chunk, 0..start);
                }
            } else {
                self.carry.extend_from_slice(&chunk[..start]);
                let mut line = std::mem::take(&mut self.carry);
                let edit = self.line(&line, UsageKey::Search, now, sink);
                if let Some(k) = kept.as_deref_mut() {
                    k.line_bytes(chunk, &line, edit);
                }
                line.clear();
                self.carry = line; // its buffer serves the next carried line
            }
        }
        let mut pos = start;
        // Lines kept as they came from `kept_from` on: told to `kept` in one range,
        // when a line is cut or at the end (most chunks are kept whole).
        let mut kept_from = start;
        while let Some(len) = line_len(&chunk[pos..]) {
            let end = pos + len;
            // A line of two bytes or fewer (the blank line that ends every event) is
            // no `data:` line: it passes without a call, unless it ends a cut event.
            if len > 2 || self.skip_blank {
                let edit = self.line(&chunk[pos..end], UsageKey::Search, now, sink);
                if edit != Edit::Keep {
                    if let Some(k) = kept.as_deref_mut() {
                        if kept_from < pos {
                            k.range(chunk, kept_from..pos);
                        }
                        k.line(chunk, pos..end, edit);
                    }
                    kept_from = end;
                }
            }
            pos = end;
        }
        if let Some(k) = kept.as_deref_mut() {
            if kept_from < pos {
                k.range(chunk, kept_from..pos);
            }
        }
        if pos < chunk.len() {
            self.push_carry(chunk, kept, pos..chunk.len());
        }
    }

    /// Carries `chunk[r]`, the start or middle of a line; a line longer than
    /// `MAX_CARRY` is given up: what was carried of it passes, and so does the rest.
    fn push_carry(&mut self, chunk: &[u8], kept: Option<&mut Kept>, r: Range<usize>) {
        if !self.long_line && self.carry.len() + r.len() <= MAX_CARRY {
            self.carry.extend_from_slice(&chunk[r]);
            return;
        }
        if let Some(k) = kept {
            if !self.carry.is_empty() {
                k.bytes(chunk, &self.carry);
            }
            k.range(chunk, r);
        }
        self.carry = BytesMut::new();
        self.long_line = true;
    }

    /// Accounts one line (`usage`: where its first `"usage"` key is, as far as
    /// known); in strip mode, what of it passes.
    fn line(
        &mut self,
        line: &[u8],
        usage: UsageKey,
        now: Instant,
        sink: &mut impl TokenSink,
    ) -> Edit {
        if std::mem::take(&mut self.skip_blank) && line.trim_ascii().is_empty() {
            return Edit::Drop;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return Edit::Keep;
        };
        let token = token_at(data);
        let edit = if self.strip_usage {
            let key = match usage {
                UsageKey::None => None,
                UsageKey::At(at) => Some(at - 5),
                UsageKey::Search => FIND.usage.find(data),
            };
            match key {
                Some(key) => self.usage_member(data, key, token.is_none()),
                None => Edit::Keep,
            }
        } else {
            // A usage object after the token needs a `{` after it (token lines have
            // none, or `"usage":null`); a line without a token is searched whole.
            let from = token.unwrap_or(0);
            if memchr::memchr(b'{', &data[from..]).is_some() {
                if let Some((_, Some(u))) = FIND
                    .usage
                    .find(&data[from..])
                    .and_then(|k| member_value(data, from + k))
                {
                    self.usage = Some(u);
                }
            }
            Edit::Keep
        };
        if token.is_some() {
            if let Some(last) = self.last_token {
                sink.inter_token(now.saturating_duration_since(last));
            } else {
                self.first_token = Some(now);
            }
            self.last_token = Some(now);
            self.chunks += 1;
        }
        match edit {
            Edit::Cut(r) => Edit::Cut(r.start + 5..r.end + 5),
            e => e,
        }
    }

    /// Strip mode: finds the top-level `usage` member of a `data:` payload (an object
    /// or `null`, wherever it is; the first `"usage"` key is at `key`), reads a usage
    /// object, and says what passes: the usage-only event (no text, `"choices":[]`)
    /// not at all, any other chunk without the member and one comma next to it (byte
    /// ranges of `data`).
    fn usage_member(&mut self, data: &[u8], mut key: usize, no_token: bool) -> Edit {
        loop {
            if let Some((end, usage)) = member_value(data, key) {
                if closes_top_level(&data[end..]) {
                    if usage.is_some() {
                        self.usage = usage;
                        if no_token && empty_choices(data) {
                            // The blank line that ends the event goes with it.
                            self.skip_blank = true;
                            return Edit::Drop;
                        }
                    }
                    return Edit::Cut(member_range(data, key, end));
                }
            }
            let from = key + USAGE_NAME.len();
            match FIND.usage.find(&data[from..]) {
                Some(at) => key = from + at,
                None => return Edit::Keep,
            }
        }
    }

    /// A whole JSON answer: `usage` is near its end; keep from the last `"usage":`.
    fn scan_json(&mut self, chunk: &Bytes) {
        let k = USAGE_KEY.len();
        if !self.capturing {
            let start = match memchr::memmem::rfind(chunk, USAGE_KEY) {
                Some(at) => Some(at + k),
                None => {
                    // The key may straddle the previous chunk's end.
                    let mut seam = [0u8; 2 * USAGE_KEY.len()];
                    let t = self.tail_len;
                    let e = chunk.len().min(k);
                    seam[..t].copy_from_slice(&self.tail[..t]);
                    seam[t..t + e].copy_from_slice(&chunk[..e]);
                    memchr::memmem::find(&seam[..t + e], USAGE_KEY).map(|at| at + k - t)
                }
            };
            self.keep_tail(chunk);
            match start {
                Some(at) => {
                    self.capturing = true;
                    self.push_json(&chunk[at..]);
                }
                None => return,
            }
        } else {
            self.push_json(chunk);
        }
        let mut it = serde_json::Deserializer::from_slice(&self.carry).into_iter::<Usage>();
        match it.next() {
            Some(Ok(u)) => self.usage = Some(u),
            Some(Err(e)) if e.is_eof() => return,
            None => return, // nothing after the key yet
            _ => {}
        }
        self.capturing = false;
        self.carry.clear();
    }

    fn push_json(&mut self, bytes: &[u8]) {
        if self.carry.len() + bytes.len() <= MAX_CARRY {
            self.carry.extend_from_slice(bytes);
        }
    }

    /// Keeps the last `USAGE_KEY.len() - 1` bytes seen.
    fn keep_tail(&mut self, chunk: &[u8]) {
        let cap = self.tail.len();
        if chunk.len() >= cap {
            self.tail.copy_from_slice(&chunk[chunk.len() - cap..]);
            self.tail_len = cap;
        } else {
            let keep = (cap - chunk.len()).min(self.tail_len);
            self.tail
                .copy_within(self.tail_len - keep..self.tail_len, 0);
            self.tail[keep..keep + chunk.len()].copy_from_slice(chunk);
            self.tail_len = keep + chunk.len();
        }
    }
}

/// Where a line's first `"usage"` key is, as far as known (strip mode).
#[derive(Debug, Clone, Copy)]
enum UsageKey {
    /// The line has none.
    None,
    /// It starts this many bytes into the line.
    At(usize),
    /// Not known: the line is searched.
    Search,
}

/// The length of the complete line at the start of `rest` (with its `\n`), `None` if
/// it does not end in `rest`. The blank line that ends every event is told apart
/// without a search.
fn line_len(rest: &[u8]) -> Option<usize> {
    match rest {
        [] => None,
        [b'\n', ..] => Some(1),
        [b'\r', b'\n', ..] => Some(2),
        _ => memchr::memchr(b'\n', rest).map(|nl| nl + 1),
    }
}

/// The value of the `"usage"` key at `key` in `data` when it is `null` or a usage
/// object: where the value ends, and the usage. `\"usage":` ends a key (or string)
/// that only ends in `usage`: not this one.
fn member_value(data: &[u8], key: usize) -> Option<(usize, Option<Usage>)> {
    if key > 0 && data[key - 1] == b'\\' {
        return None;
    }
    let from = key + USAGE_NAME.len();
    let from = from + past_colon(&data[from..])?;
    let (len, usage) = usage_value(&data[from..])?;
    Some((from + len, usage))
}

/// The length of the whitespace and `:` at the start of `rest` (after a key).
fn past_colon(rest: &[u8]) -> Option<usize> {
    let ws = rest.len() - rest.trim_ascii_start().len();
    (rest.get(ws) == Some(&b':')).then_some(ws + 1)
}

/// The value at the start of `rest` (after leading whitespace) when it is `null` or
/// a usage object: the length of `rest` up to the value's end, and the usage. Only
/// the value is parsed.
fn usage_value(rest: &[u8]) -> Option<(usize, Option<Usage>)> {
    let v = rest.len() - rest.trim_ascii_start().len();
    match rest.get(v)? {
        b'n' => rest[v..].starts_with(b"null").then_some((v + 4, None)),
        b'{' => {
            let mut it = serde_json::Deserializer::from_slice(&rest[v..]).into_iter::<Usage>();
            let usage = it.next()?.ok()?;
            Some((v + it.byte_offset(), Some(usage)))
        }
        _ => None,
    }
}

/// Whether `rest`, what follows a member's value, ends the object the member is in
/// and that object is the whole payload: the first bracket closed outside strings
/// is its last byte. `rest` is short wherever `usage` is: most servers write it last.
fn closes_top_level(rest: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut bytes = rest.iter().enumerate();
    while let Some((i, &b)) = bytes.next() {
        match b {
            b'"' => {
                // Skip the string, escapes and all.
                while let Some((_, &c)) = bytes.next() {
                    match c {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return rest[i + 1..].trim_ascii().is_empty(),
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    false
}

/// The bytes of `data` to cut for the member from `key` to `end`: with the comma
/// before it, or else the one after it (and the whitespace between), so the object
/// stays valid JSON and everything else stays as it was.
fn member_range(data: &[u8], key: usize, end: usize) -> Range<usize> {
    let before = data[..key].trim_ascii_end();
    if before.last() == Some(&b',') {
        return before.len() - 1..end;
    }
    let after = data[end..].trim_ascii_start();
    if let Some(next) = after.strip_prefix(b",") {
        return key..data.len() - next.trim_ascii_start().len();
    }
    key..end
}

/// Where generated text starts in a `data:` payload (just past its key): a non-empty
/// `content` string (chat) or `text` string (completions); `None` on chunks without
/// text (the role chunk, the finish chunk, usage, tool calls).
fn token_at(data: &[u8]) -> Option<usize> {
    for key in [&FIND.content, &FIND.text] {
        if let Some((at, value)) = string_value(data, key) {
            if value.first().is_some_and(|&b| b != b'"') {
                return Some(at);
            }
        }
    }
    None
}

/// The first string value of `key` in `data`: the offset past the key, and the bytes
/// after the string's opening quote. Values of other types (`"content":null` of a tool
/// call, `"content":[` of logprobs) are skipped.
fn string_value<'a>(data: &'a [u8], key: &Finder<'_>) -> Option<(usize, &'a [u8])> {
    let mut from = 0;
    while let Some(at) = key.find(&data[from..]) {
        from += at + key.needle().len();
        if let Some(value) = data[from..].trim_ascii_start().strip_prefix(b"\"") {
            return Some((from, value));
        }
    }
    None
}

/// A chunk with `"choices":[]`, as the usage-only event has.
fn empty_choices(data: &[u8]) -> bool {
    FIND.choices.find(data).is_some_and(|at| {
        data[at + FIND.choices.needle().len()..]
            .trim_ascii_start()
            .strip_prefix(b"[")
            .is_some_and(|rest| rest.trim_ascii_start().first() == Some(&b']'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Gaps(Vec<Duration>);

    impl TokenSink for Gaps {
        fn inter_token(&mut self, gap: Duration) {
            self.0.push(gap);
        }
    }

    const STREAM: &[&str] = &[
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n",
        "data: [DONE]\n\n",
    ];

    /// Scans `chunks` in order, chunk `i` at `t0 + i ms`; what the client receives and
    /// the gaps.
    fn run(meter: &mut TokenMeter, chunks: &[Bytes], t0: Instant) -> (Vec<u8>, Gaps) {
        let mut gaps = Gaps::default();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut body = Some(c.clone());
            let end = i + 1 == chunks.len();
            meter.scan(&mut body, end, t0 + ms(i), &mut gaps);
            out.extend_from_slice(&body.unwrap_or_default());
        }
        (out, gaps)
    }

    fn ms(i: usize) -> Duration {
        Duration::from_millis(i as u64)
    }

    #[test]
    fn counts_tokens_and_reads_usage_in_any_split() {
        let whole = STREAM.concat();
        for size in [1, 3, 7, 50, whole.len()] {
            for strip in [false, true] {
                let chunks: Vec<Bytes> = whole
                    .as_bytes()
                    .chunks(size)
                    .map(Bytes::copy_from_slice)
                    .collect();
                let mut m = TokenMeter::new(Kind::Stream, strip);
                let (out, gaps) = run(&mut m, &chunks, Instant::now());
                assert_eq!(m.chunks, 2, "size {size}");
                assert_eq!(gaps.0.len(), 1);
                assert!(m.first_token.is_some());
                let u = m.usage.unwrap();
                assert_eq!((u.prompt_tokens, u.completion_tokens), (7, 2));
                assert_eq!(u.cached_tokens(), Some(4));
                if strip {
                    assert_eq!(out, whole.replace(STREAM[4], "").as_bytes(), "size {size}");
                } else {
                    assert_eq!(out, whole.as_bytes());
                }
            }
        }
    }

    #[test]
    fn chunks_without_usage_pass_untouched() {
        for strip in [false, true] {
            let mut m = TokenMeter::new(Kind::Stream, strip);
            let chunk = Bytes::from_static(STREAM[1].as_bytes());
            let mut body = Some(chunk.clone());
            m.scan(&mut body, false, Instant::now(), &mut Gaps::default());
            // The same buffer, not a copy.
            assert_eq!(body.unwrap().as_ptr(), chunk.as_ptr(), "strip {strip}");
        }
    }

    #[test]
    fn a_stripped_usage_event_leaves_a_view_of_the_chunk() {
        let mut m = TokenMeter::new(Kind::Stream, true);
        // Usage, then [DONE]: what passes is the end of the same buffer.
        let chunk = Bytes::from([STREAM[4], STREAM[5]].concat());
        let mut body = Some(chunk.clone());
        m.scan(&mut body, false, Instant::now(), &mut Gaps::default());
        let body = body.unwrap();
        assert_eq!(body, STREAM[5]);
        assert_eq!(body.as_ptr(), chunk[STREAM[4].len()..].as_ptr());
        // Lines on both sides of the usage event: a copy of them.
        let chunk = Bytes::from([STREAM[3], STREAM[4], STREAM[5]].concat());
        let mut body = Some(chunk);
        m.scan(&mut body, true, Instant::now(), &mut Gaps::default());
        assert_eq!(body.unwrap(), [STREAM[3], STREAM[5]].concat());
        // A chunk that was only the usage event: nothing of it.
        let mut body = Some(Bytes::from(STREAM[4]));
        m.scan(&mut body, false, Instant::now(), &mut Gaps::default());
        assert_eq!(body.unwrap(), "");
    }

    #[test]
    fn an_answer_ending_inside_a_line_loses_nothing() {
        for strip in [false, true] {
            let mut m = TokenMeter::new(Kind::Stream, strip);
            let cut = &STREAM[1][..STREAM[1].len() - 2];
            let chunks = [Bytes::from(STREAM[0]), Bytes::from(cut)];
            let (out, _) = run(&mut m, &chunks, Instant::now());
            assert_eq!(out, [STREAM[0], cut].concat().as_bytes(), "strip {strip}");
            assert_eq!(m.chunks, 1);
        }
    }

    #[test]
    fn a_line_longer_than_the_carry_passes_whole() {
        let long = format!("data: {{\"x\":\"{}\"}}\n\n", "a".repeat(MAX_CARRY + 10));
        let whole = [STREAM[1], &long, STREAM[2], STREAM[4], STREAM[5]].concat();
        let chunks: Vec<Bytes> = whole
            .as_bytes()
            .chunks(4096)
            .map(Bytes::copy_from_slice)
            .collect();
        let mut m = TokenMeter::new(Kind::Stream, true);
        let (out, gaps) = run(&mut m, &chunks, Instant::now());
        assert_eq!(out, whole.replace(STREAM[4], "").as_bytes());
        assert_eq!((m.chunks, gaps.0.len()), (2, 1));
        assert_eq!(m.usage.map(|u| u.completion_tokens), Some(2));
    }

    /// A stream as some server writes it: its events, what a client that did not ask
    /// for usage must receive of them, which event carries the first token, the
    /// tokens it streams and its usage `(prompt, completion)`.
    struct Recorded {
        name: &'static str,
        events: Vec<String>,
        stripped: Vec<String>,
        first_token: usize,
        tokens: u64,
        usage: Option<(u64, u64)>,
    }

    impl Recorded {
        /// `events(true)` is the stream as sent, `events(false)` the same without
        /// its `usage` members; `usage_event` is cut whole.
        fn new(
            name: &'static str,
            events: impl Fn(bool) -> Vec<String>,
            usage_event: Option<usize>,
            tokens: u64,
            usage: Option<(u64, u64)>,
        ) -> Recorded {
            let mut stripped = events(false);
            if let Some(i) = usage_event {
                stripped.remove(i);
            }
            Recorded {
                name,
                events: events(true),
                stripped,
                first_token: 1,
                tokens,
                usage,
            }
        }

        fn whole(&self) -> String {
            self.events.concat()
        }
    }

    fn demo(endpoint: crate::demo::openai::Endpoint) -> Recorded {
        let events: Vec<String> = crate::demo::openai::sample_stream(endpoint, 12, 5, true)
            .iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect();
        let chat = matches!(endpoint, crate::demo::openai::Endpoint::Chat);
        let n = events.len();
        let mut r = Recorded::new(
            if chat {
                "demo chat"
            } else {
                "demo completions"
            },
            |_| events.clone(),
            Some(n - 2),
            12,
            Some((5, 12)),
        );
        r.first_token = usize::from(chat);
        r
    }

    /// vLLM: no `usage` key on token chunks, `"choices":[]` with usage at the end;
    /// with `continuous_usage_stats`, usage on every chunk too, after `choices`.
    fn vllm(continuous: bool) -> Recorded {
        let events = |members: bool| {
            let head = r#"{"id":"chatcmpl-1f0c9a6e2b","object":"chat.completion.chunk","created":1764490000,"model":"meta-llama/Llama-3.1-8B-Instruct","#;
            let usage = |c: u64| {
                if continuous && members {
                    format!(
                        r#","usage":{{"prompt_tokens":17,"total_tokens":{},"completion_tokens":{c}}}"#,
                        17 + c
                    )
                } else {
                    String::new()
                }
            };
            let mut events = vec![format!(
                "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]{}}}\n\n",
                usage(0)
            )];
            let words = [
                "The",
                " quick",
                " \\\"brown\\\"",
                " fox",
                "\\n",
                " jumps",
                " \u{e9}t\u{e9}",
            ];
            for (i, w) in words.iter().enumerate() {
                events.push(format!(
                    "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"logprobs\":null,\"finish_reason\":null}}]{}}}\n\n",
                    usage(i as u64 + 1)
                ));
            }
            events.push(format!(
                "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}}]{}}}\n\n",
                usage(7)
            ));
            events.push(format!(
                "data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":17,\"total_tokens\":24,\"completion_tokens\":7,\"prompt_tokens_details\":{{\"cached_tokens\":16}}}}}}\n\n"
            ));
            events.push("data: [DONE]\n\n".into());
            events
        };
        let name = if continuous {
            "vllm continuous usage"
        } else {
            "vllm"
        };
        Recorded::new(name, events, Some(9), 7, Some((17, 7)))
    }

    /// OpenAI (and older vLLM, SGLang, TGI): `"usage":null` on every chunk, usage
    /// after `choices`, other members after it.
    fn usage_null() -> Recorded {
        let events = |members: bool| {
            let head = r#"{"id":"chatcmpl-Bx9","object":"chat.completion.chunk","created":1764490000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_8bda4d3a2c","#;
            let null = if members { ",\"usage\":null" } else { "" };
            let mut events = vec![format!(
                "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}]{null},\"obfuscation\":\"Rz\"}}\n\n"
            )];
            for w in ["Hi", "!", " How", " can"] {
                events.push(format!(
                    "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"logprobs\":null,\"finish_reason\":null}}]{null},\"obfuscation\":\"q8Xb\"}}\n\n"
                ));
            }
            events.push(format!(
                "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"length\"}}]{null},\"obfuscation\":\"x\"}}\n\n"
            ));
            events.push(format!(
                "data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":4,\"total_tokens\":12,\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0}}}},\"obfuscation\":\"Yy\"}}\n\n"
            ));
            events.push("data: [DONE]\n\n".into());
            events
        };
        Recorded::new("usage null", events, Some(6), 4, Some((8, 4)))
    }

    /// llama.cpp server (and older vLLM completions): `choices` first, usage (and
    /// timings) on the finish chunk, whose choices are not empty. Written here with
    /// `\r\n` line ends, which SSE allows.
    fn llama_cpp() -> Recorded {
        let events = |members: bool| {
            let tail = r#""created":1764490000,"id":"chatcmpl-Zq1","model":"qwen2.5-0.5b-instruct-q4_k_m.gguf","system_fingerprint":"b5123-a0b1c2d3","object":"chat.completion.chunk""#;
            let mut events = vec![format!(
                "data: {{\"choices\":[{{\"finish_reason\":null,\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":null}}}}],{tail}}}\r\n\r\n"
            )];
            for w in ["Sure", ",", " here"] {
                events.push(format!(
                    "data: {{\"choices\":[{{\"finish_reason\":null,\"index\":0,\"delta\":{{\"content\":\"{w}\"}}}}],{tail}}}\r\n\r\n"
                ));
            }
            let usage = if members {
                r#","usage":{"completion_tokens":3,"prompt_tokens":21,"total_tokens":24}"#
            } else {
                ""
            };
            events.push(format!(
                "data: {{\"choices\":[{{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{{}}}}],{tail}{usage},\"timings\":{{\"prompt_n\":21,\"predicted_n\":3,\"predicted_ms\":31.2}}}}\r\n\r\n"
            ));
            events.push("data: [DONE]\r\n\r\n".into());
            events
        };
        Recorded::new("llama.cpp", events, None, 3, Some((21, 3)))
    }

    /// `usage` before `choices`, with the whitespace of Python's `json.dumps`
    /// (`", "` and `": "`), on every chunk: first of all members, then after `id`,
    /// then spaced around its colon; the usage event has it first as well.
    fn usage_first() -> Recorded {
        let events = |members: bool| {
            let m = |s: &'static str| if members { s } else { "" };
            let tok = |w: &str| {
                format!("{{\"index\": 0, \"delta\": {{\"content\": \"{w}\"}}, \"finish_reason\": null}}")
            };
            vec![
                format!(
                    "data: {{{}\"id\": \"c1\", \"choices\": [{{\"index\": 0, \"delta\": {{\"role\": \"assistant\"}}}}]}}\n\n",
                    m("\"usage\": null, ")
                ),
                format!("data: {{{}\"choices\": [{}]}}\n\n", m("\"usage\": {\"prompt_tokens\": 6, \"completion_tokens\": 1}, "), tok("One")),
                format!("data: {{\"id\": \"c1\"{}, \"choices\": [{}]}}\n\n", m(", \"usage\": null"), tok(" two")),
                format!("data: {{\"id\": \"c1\"{} , \"choices\": [{}] }}\n\n", m(", \"usage\" : { \"prompt_tokens\" : 6 , \"completion_tokens\" : 3 }"), tok(" usage\\\": null")),
                format!(
                    "data: {{\"id\": \"c1\", \"usage\": {{\"prompt_tokens\": 6, \"completion_tokens\": 3}}, \"choices\": []}}\n\n"
                ),
                "data: [DONE]\n\n".into(),
            ]
        };
        Recorded::new("usage first", events, Some(4), 3, Some((6, 3)))
    }

    fn recorded() -> Vec<Recorded> {
        vec![
            demo(crate::demo::openai::Endpoint::Chat),
            demo(crate::demo::openai::Endpoint::Completions),
            vllm(false),
            vllm(true),
            usage_null(),
            llama_cpp(),
            usage_first(),
        ]
    }

    /// Scans `whole` cut at `cuts` and checks everything against `r`: the first token
    /// at the time of the chunk its line ends in, one gap fewer than tokens, usage,
    /// and what the client receives.
    fn check(r: &Recorded, strip: bool, cuts: &[usize]) {
        let whole = r.whole();
        let bytes = whole.as_bytes();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(bytes.len());
        let chunks: Vec<Bytes> = bounds
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
            .collect();
        let t0 = Instant::now();
        let mut m = TokenMeter::new(Kind::Stream, strip);
        let (out, gaps) = run(&mut m, &chunks, t0);
        let at = format!("{} strip {strip} cuts {cuts:?}", r.name);
        // The first token line ends with the first '\n' of its event.
        let before: usize = r.events[..r.first_token].iter().map(String::len).sum();
        let first_nl = before + r.events[r.first_token].find('\n').unwrap();
        let chunk_of_nl = bounds.iter().filter(|&&b| b <= first_nl).count() - 1;
        assert_eq!(m.first_token, Some(t0 + ms(chunk_of_nl)), "{at}");
        assert_eq!(m.chunks, r.tokens, "{at}");
        assert_eq!(gaps.0.len() as u64, r.tokens - 1, "{at}");
        assert_eq!(
            m.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            r.usage,
            "{at}"
        );
        let expected = if strip {
            r.stripped.concat()
        } else {
            whole.clone()
        };
        assert_eq!(String::from_utf8_lossy(&out), expected, "{at}");
    }

    #[test]
    fn recorded_streams_split_at_every_byte_count_the_same() {
        for r in recorded() {
            for strip in [false, true] {
                check(&r, strip, &[]);
                for cut in 1..r.whole().len() {
                    check(&r, strip, &[cut]);
                }
            }
        }
    }

    /// One event per chunk (as servers write them), and each line its own chunk.
    #[test]
    fn recorded_streams_event_by_event_and_line_by_line_count_the_same() {
        for r in recorded() {
            let whole = r.whole();
            let mut events = Vec::new();
            let mut lines = Vec::new();
            let mut at = 0;
            for e in &r.events {
                at += e.len();
                events.push(at);
            }
            for (i, b) in whole.bytes().enumerate() {
                if b == b'\n' {
                    lines.push(i + 1);
                }
            }
            for strip in [false, true] {
                for cuts in [&events, &lines] {
                    let cuts: Vec<usize> =
                        cuts.iter().copied().filter(|&c| c < whole.len()).collect();
                    check(&r, strip, &cuts);
                }
            }
        }
    }

    #[test]
    fn recorded_streams_split_at_random_count_the_same() {
        let mut rng = fastrand::Rng::with_seed(13);
        for r in recorded() {
            let len = r.whole().len();
            for strip in [false, true] {
                for _ in 0..300 {
                    let mut cuts: Vec<usize> =
                        (0..rng.usize(2..40)).map(|_| rng.usize(1..len)).collect();
                    cuts.sort_unstable();
                    cuts.dedup();
                    check(&r, strip, &cuts);
                }
            }
        }
    }

    #[test]
    fn tokens_need_text_and_usage_an_object() {
        let lines: &[(&str, bool)] = &[
            (r#"data: {"choices":[{"delta":{"content":"a"}}]}"#, true),
            (r#"data: {"choices":[{"delta":{"content": "a"}}]}"#, true),
            (r#"data: {"choices":[{"text":"a"}]}"#, true),
            (r#"data: {"choices":[{"delta":{"content":""}}]}"#, false),
            (
                r#"data: {"choices":[{"delta":{"content":null,"tool_calls":[]}}]}"#,
                false,
            ),
            (
                r#"data: {"choices":[{"delta":{"reasoning_content":"a"}}]}"#,
                false,
            ),
            (
                r#"data: {"choices":[{"logprobs":{"content":[]},"delta":{"content":"a"}}]}"#,
                true,
            ),
            (
                r#"data: {"choices":[{"delta":{"content":"\"content\":\""}}]}"#,
                true,
            ),
            ("data: [DONE]", false),
            (": keep-alive", false),
        ];
        for &(line, token) in lines {
            let mut m = TokenMeter::new(Kind::Stream, false);
            let mut body = Some(Bytes::from(format!("{line}\n")));
            m.scan(&mut body, false, Instant::now(), &mut Gaps::default());
            assert_eq!(m.chunks, u64::from(token), "{line}");
        }
        let mut m = TokenMeter::new(Kind::Stream, true);
        let mut body = Some(Bytes::from_static(
            b"data: {\"choices\": [ ], \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 1}}\n\n",
        ));
        m.scan(&mut body, false, Instant::now(), &mut Gaps::default());
        assert_eq!(m.usage.map(|u| u.prompt_tokens), Some(3));
        assert_eq!(body.unwrap(), "", "spaced JSON is stripped too");
    }

    /// Comments, runs of blank lines, CRLF line ends, `data:` without a space, a `{`
    /// in a token, usage on token lines (`null`, an object, nested in a choice, in a
    /// string) and `[DONE]`, cut at every byte: only `data:` lines with text count,
    /// usage is read wherever it is, and a client that did not ask receives no
    /// top-level `usage` member and no usage-only event, all else as it came.
    #[test]
    fn comments_blank_lines_and_crlf_split_at_every_byte() {
        let events = |members: bool| {
            let m = |s: &'static str| if members { s } else { "" };
            let mut e = vec![
                ": keep-alive\n\n".to_owned(),
                "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n".into(),
                "\n\n\r\n".into(),
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{{\"}}}}]{}}}\n\n", m(",\"usage\":null")),
                ": ping\r\n\r\n".into(),
                format!(
                    "data: {{\"choices\":[{{\"delta\":{{\"content\":\"a\"}},\"usage\":null}}]{}}}\r\n\r\n",
                    m(",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}")
                ),
                format!(
                    "data:{{{}\"choices\":[{{\"text\":\"b\",\"x\":{{\"usage\":{{}}}}}}],\"tool\":\"{{\\\"usage\\\":null}}\"}}\n\n",
                    m("\"usage\":null,")
                ),
            ];
            if members {
                e.push("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":3}}\n\n".into());
            }
            e.push("data: [DONE]\n\n".into());
            e.concat()
        };
        let whole = events(true);
        let bytes = whole.as_bytes();
        for strip in [false, true] {
            for cut in 0..bytes.len() {
                let chunks = [
                    Bytes::copy_from_slice(&bytes[..cut]),
                    Bytes::copy_from_slice(&bytes[cut..]),
                ];
                let mut m = TokenMeter::new(Kind::Stream, strip);
                let (out, gaps) = run(&mut m, &chunks, Instant::now());
                let at = format!("strip {strip} cut {cut}");
                assert_eq!((m.chunks, gaps.0.len()), (3, 2), "{at}");
                let u = m.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
                assert_eq!(u, Some((3, 3)), "{at}");
                let expected = if strip { events(false) } else { whole.clone() };
                assert_eq!(String::from_utf8_lossy(&out), expected, "{at}");
            }
        }
    }

    #[test]
    fn whole_json_usage_is_read_across_chunks() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"a \"usage\": b"}}],"usage":{"prompt_tokens":3,"completion_tokens":16,"total_tokens":19}}"#;
        for size in [1, 5, body.len()] {
            let mut m = TokenMeter::new(Kind::Json, true);
            let chunks: Vec<Bytes> = body.chunks(size).map(Bytes::copy_from_slice).collect();
            let (out, _) = run(&mut m, &chunks, Instant::now());
            assert_eq!(out, body);
            let u = m.usage.unwrap_or_else(|| panic!("size {size}"));
            assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 16));
        }
    }
}
