//! The access log: one JSON line per request, written by a thread of its own.
//!
//! The request path only moves an [`Entry`] (owned, cheap-to-clone fields) into a
//! bounded channel; formatting and I/O happen on the writer thread. When the writer
//! falls behind, lines are dropped and counted (`modelgate_access_log_dropped_total`)
//! rather than slowing requests down.

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};

use super::Metrics;

/// Lines that may wait for the writer before new ones are dropped.
const BACKLOG: usize = 16 * 1024;

/// One request, as the access log records it.
pub struct Entry {
    pub time: SystemTime,
    pub request_id: Option<HeaderValue>,
    pub client: Option<SocketAddr>,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    /// The authenticated consumer (API key name or JWT `sub`), on routes with auth.
    pub consumer: Option<Arc<str>>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub queue_wait: Duration,
    pub ttfb: Option<Duration>,
    pub total: Duration,
    pub retries: u32,
    pub reject: Option<&'static str>,
    /// OpenAI requests: the body's `model`, time to first token and usage.
    pub model: Option<Arc<str>>,
    pub ttft: Option<Duration>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// What the writer thread receives. Entries go by value: the bounded channel holds
/// its slots already, and a box would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Line {
    Entry(Entry),
    /// Write and flush everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// The sending side, shared by every worker thread.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Line>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Starts the writer thread on stderr or on `file` (appended, created if missing).
    pub fn start(file: Option<&Path>, metrics: Arc<Metrics>) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match file {
            None => Box::new(std::io::stderr()),
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(BACKLOG);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AccessLog { tx, metrics })
    }

    /// Queues one line; never blocks.
    pub fn record(&self, entry: Entry) {
        match self.tx.try_send(Line::Entry(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped()
            }
        }
    }

    /// Waits until every line queued so far is written and flushed, for at most
    /// `within` (a writer stuck on a full pipe must not keep the process from
    /// exiting). Returns whether it was. For the last lines before the process exits.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let (done_tx, done_rx) = sync_channel(1);
        let mut marker = Line::Flush(done_tx);
        loop {
            match self.tx.try_send(marker) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    marker = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        done_rx.recv_timeout(left).is_ok()
    }
}

fn write_lines(rx: Receiver<Line>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Line::Entry(entry) => {
                    line.clear();
                    format(&entry, &mut line);
                    if out.write_all(&line).is_err() {
                        return;
                    }
                }
                Line::Flush(done) => {
                    if out.flush().is_err() {
                        return;
                    }
                    let _ = done.try_send(());
                }
            }
            next = rx.try_recv().ok();
        }
        // Flush whenever the backlog is empty: lines appear promptly when idle and
        // in large writes under load.
        if out.flush().is_err() {
            return;
        }
    }
}

fn str_of(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e6
}

/// Writes `entry` as one JSON object and a newline, straight into `out`: strings go
/// through serde_json's escaper, numbers through `write!`, no intermediate tree.
pub fn format(entry: &Entry, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let path = entry
        .uri
        .path_and_query()
        .map_or_else(|| entry.uri.path(), |p| p.as_str());
    let host = str_of(&entry.host).or_else(|| entry.uri.host());
    // Writing into a Vec cannot fail.
    let _ = (|| -> std::io::Result<()> {
        out.extend_from_slice(b"{\"time\":");
        json_str(out, Some(&crate::timefmt::rfc3339_millis(entry.time)));
        out.extend_from_slice(b",\"request_id\":");
        json_str(out, str_of(&entry.request_id));
        out.extend_from_slice(b",\"client\":");
        match entry.client {
            Some(c) => write!(out, "\"{c}\"")?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        json_str(out, Some(entry.method.as_str()));
        out.extend_from_slice(b",\"host\":");
        json_str(out, host);
        out.extend_from_slice(b",\"path\":");
        json_str(out, Some(path));
        out.extend_from_slice(b",\"route\":");
        json_str(out, entry.route.as_deref());
        out.extend_from_slice(b",\"upstream\":");
        json_str(out, entry.upstream.as_deref());
        out.extend_from_slice(b",\"backend\":");
        json_str(out, entry.backend.as_deref());
        out.extend_from_slice(b",\"consumer\":");
        json_str(out, entry.consumer.as_deref());
        write!(
            out,
            ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"queue_wait\":{},\"ttfb\":",
            entry.status,
            entry.bytes_in,
            entry.bytes_out,
            secs(entry.queue_wait)
        )?;
        match entry.ttfb {
            Some(t) => write!(out, "{}", secs(t))?,
            None => out.extend_from_slice(b"null"),
        }
        write!(
            out,
            ",\"total\":{},\"retries\":{},\"reject\":",
            secs(entry.total),
            entry.retries
        )?;
        json_str(out, entry.reject);
        out.extend_from_slice(b",\"model\":");
        json_str(out, entry.model.as_deref());
        out.extend_from_slice(b",\"ttft\":");
        match entry.ttft {
            Some(t) => write!(out, "{}", secs(t))?,
            None => out.extend_from_slice(b"null"),
        }
        for (key, n) in [
            (&b",\"prompt_tokens\":"[..], entry.prompt_tokens),
            (&b",\"completion_tokens\":"[..], entry.completion_tokens),
        ] {
            out.extend_from_slice(key);
            match n {
                Some(n) => write!(out, "{n}")?,
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    })();
}

/// A JSON string (escaped) or `null`.
fn json_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            if serde_json::to_writer(&mut *out, s).is_err() {
                out.extend_from_slice(b"null");
            }
        }
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let entry = Entry {
            time: UNIX_EPOCH,
            // Client-controlled text must stay one valid JSON string.
            request_id: Some(HeaderValue::from_static("a\"b\\c")),
            client: Some(SocketAddr::from(([10, 0, 0, 1], 5555))),
            method: Method::POST,
            host: Some(HeaderValue::from_static("api.example.com")),
            uri: Uri::from_static("/v1/chat?x=%221"),
            route: Some("chat".into()),
            upstream: Some("llm".into()),
            backend: Some("127.0.0.1:9001".into()),
            consumer: Some("team-a".into()),
            status: 200,
            bytes_in: 12,
            bytes_out: 345,
            queue_wait: Duration::from_millis(5),
            ttfb: Some(Duration::from_millis(250)),
            total: Duration::from_secs(2),
            retries: 1,
            reject: None,
            model: Some("llama-3-8b".into()),
            ttft: Some(Duration::from_millis(120)),
            prompt_tokens: Some(12),
            completion_tokens: None,
        };
        let mut out = Vec::new();
        format(&entry, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/v1/chat?x=%221");
        assert_eq!(v["request_id"], "a\"b\\c");
        assert_eq!(v["client"], "10.0.0.1:5555");
        assert_eq!(v["host"], "api.example.com");
        assert_eq!(v["backend"], "127.0.0.1:9001");
        assert_eq!(v["consumer"], "team-a");
        assert_eq!(v["ttfb"], 0.25);
        assert_eq!(v["retries"], 1);
        assert_eq!(v["reject"], serde_json::Value::Null);
        assert_eq!(v["model"], "llama-3-8b");
        assert_eq!(v["ttft"], 0.12);
        assert_eq!(v["prompt_tokens"], 12);
        assert_eq!(v["completion_tokens"], serde_json::Value::Null);
    }
}
