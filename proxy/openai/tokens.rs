//! Token accounting on answers as they pass: time to first token, inter-token
//! latency, completion chunks and the final `usage` object of OpenAI-shaped streams
//! (`text/event-stream`), or `usage` of a whole JSON answer.
//!
//! Lines are found with memchr in the chunks pingora hands over; nothing is buffered
//! or copied except the unfinished last line of a chunk (kept until the next one), and
//! only a line holding `"usage":` is parsed, with a borrowed serde struct.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use serde::Deserialize;

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

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
}

const USAGE_KEY: &[u8] = b"\"usage\":";

/// The searchers of every line, built once (a `memmem::find` builds one per call).
struct Finders {
    usage: Finder<'static>,
    usage_object: Finder<'static>,
    empty_choices: Finder<'static>,
    content: Finder<'static>,
    text: Finder<'static>,
}

static FIND: LazyLock<Finders> = LazyLock::new(|| Finders {
    usage: Finder::new(USAGE_KEY),
    usage_object: Finder::new(b"\"usage\":{"),
    empty_choices: Finder::new(b"\"choices\":[]"),
    content: Finder::new(b"\"content\":\""),
    text: Finder::new(b"\"text\":\""),
});

/// Longest unfinished line kept across chunks; longer lines are not accounted.
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

impl TokenMeter {
    pub fn new(kind: Kind, strip_usage: bool) -> TokenMeter {
        TokenMeter {
            kind,
            strip_usage: strip_usage && kind == Kind::Stream,
            carry: BytesMut::new(),
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

    /// Scans one body chunk as it passes; in strip mode, rewrites it without the usage
    /// event. `sink` gets each inter-token gap.
    pub fn scan(&mut self, body: &mut Option<Bytes>, now: Instant, sink: &mut impl TokenSink) {
        let Some(chunk) = body.as_ref() else {
            return;
        };
        if self.kind == Kind::Json {
            self.scan_json(chunk);
            return;
        }
        // A chunk of whole lines without usage, nothing carried in: it passes as is,
        // also in strip mode (only the usage event is cut, and it is not here).
        let untouched = !self.strip_usage
            || (self.carry.is_empty()
                && !self.skip_blank
                && chunk.last() == Some(&b'\n')
                && FIND.usage.find(chunk).is_none());
        if untouched {
            self.lines(chunk, now, sink, |_, _| {});
            return;
        }
        // Strip mode: forward every complete line except the usage event; an
        // unfinished last line waits for the next chunk so it is never half sent.
        let carried_in = !self.carry.is_empty();
        let mut out = BytesMut::with_capacity(chunk.len());
        let mut dropped = false;
        self.lines(chunk, now, sink, |line, usage| {
            if usage {
                dropped = true;
            } else {
                out.extend_from_slice(line);
            }
        });
        if carried_in || dropped || !self.carry.is_empty() {
            *body = Some(out.freeze());
        }
    }

    /// Calls `each(line, is_usage)` for every complete line (with its `\n`) of
    /// `carry ++ chunk`, and keeps the unfinished rest in `carry`.
    fn lines(
        &mut self,
        chunk: &[u8],
        now: Instant,
        sink: &mut impl TokenSink,
        mut each: impl FnMut(&[u8], bool),
    ) {
        let mut start = 0;
        if !self.carry.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', chunk) else {
                self.push_carry(chunk);
                return;
            };
            self.push_carry(&chunk[..=nl]);
            let line = std::mem::take(&mut self.carry);
            let usage = self.line(&line, now, sink);
            each(&line, usage);
            start = nl + 1;
        }
        let rest = &chunk[start..];
        let mut pos = 0;
        for nl in memchr::memchr_iter(b'\n', rest) {
            let line = &rest[pos..=nl];
            let usage = self.line(line, now, sink);
            each(line, usage);
            pos = nl + 1;
        }
        if pos < rest.len() {
            self.push_carry(&rest[pos..]);
        }
    }

    fn push_carry(&mut self, bytes: &[u8]) {
        if self.carry.len() + bytes.len() <= MAX_CARRY {
            self.carry.extend_from_slice(bytes);
        }
    }

    /// Accounts one line; true when it is a usage event to strip.
    fn line(&mut self, line: &[u8], now: Instant, sink: &mut impl TokenSink) -> bool {
        if std::mem::take(&mut self.skip_blank) && line.trim_ascii().is_empty() {
            return true;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return false;
        };
        if FIND.usage_object.find(data).is_some() {
            if let Ok(w) = serde_json::from_slice::<WithUsage>(data.trim_ascii()) {
                if w.usage.is_some() {
                    self.usage = w.usage;
                }
                // The usage-only event (empty choices) is the one a client did not ask for.
                let usage_only = FIND.empty_choices.find(data).is_some();
                if !has_token(data) {
                    self.skip_blank = usage_only && self.strip_usage;
                    return self.skip_blank;
                }
            }
        }
        if has_token(data) {
            if let Some(last) = self.last_token {
                sink.inter_token(now.saturating_duration_since(last));
            } else {
                self.first_token = Some(now);
            }
            self.last_token = Some(now);
            self.chunks += 1;
        }
        false
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
                    self.push_carry(&chunk[at..]);
                }
                None => return,
            }
        } else {
            self.push_carry(chunk);
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

/// A chunk carrying generated text: a non-empty `content` (chat) or `text` (completions).
fn has_token(data: &[u8]) -> bool {
    for key in [&FIND.content, &FIND.text] {
        if let Some(at) = key.find(data) {
            if data
                .get(at + key.needle().len())
                .is_some_and(|&b| b != b'"')
            {
                return true;
            }
        }
    }
    false
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

    fn run(meter: &mut TokenMeter, chunks: &[Bytes]) -> (String, Gaps) {
        let t0 = Instant::now();
        let mut gaps = Gaps::default();
        let mut out = String::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut body = Some(c.clone());
            meter.scan(
                &mut body,
                t0 + Duration::from_millis(10 * i as u64),
                &mut gaps,
            );
            out.push_str(std::str::from_utf8(&body.unwrap()).unwrap());
        }
        (out, gaps)
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
                let (out, gaps) = run(&mut m, &chunks);
                assert_eq!(m.chunks, 2, "size {size}");
                assert_eq!(gaps.0.len(), 1);
                assert!(m.first_token.is_some());
                let u = m.usage.unwrap();
                assert_eq!((u.prompt_tokens, u.completion_tokens), (7, 2));
                assert_eq!(u.cached_tokens(), Some(4));
                if strip {
                    assert_eq!(out, whole.replace(STREAM[4], ""), "size {size}");
                } else {
                    assert_eq!(out, whole);
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
            m.scan(&mut body, Instant::now(), &mut Gaps::default());
            // The same buffer, not a copy.
            assert_eq!(body.unwrap().as_ptr(), chunk.as_ptr(), "strip {strip}");
        }
    }

    #[test]
    fn whole_json_usage_is_read_across_chunks() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"a \"usage\": b"}}],"usage":{"prompt_tokens":3,"completion_tokens":16,"total_tokens":19}}"#;
        for size in [1, 5, body.len()] {
            let mut m = TokenMeter::new(Kind::Json, true);
            let chunks: Vec<Bytes> = body.chunks(size).map(Bytes::copy_from_slice).collect();
            let (out, _) = run(&mut m, &chunks);
            assert_eq!(out.as_bytes(), body);
            let u = m.usage.unwrap_or_else(|| panic!("size {size}"));
            assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 16));
        }
    }
}
