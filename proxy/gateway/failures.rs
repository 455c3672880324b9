//! Backend failure log lines that stay readable in an outage: one WARN line per failed
//! attempt naming the request, route, upstream, backend and reason, but at most one per
//! (upstream, backend, reason) in each [`WINDOW`]; the rest are counted and summed up in
//! one line when the window closes ("backend 10.0.0.5:8000 (upstream llm) refused 1,204
//! connections in the last 10 s").
//!
//! Like the `log` crate's logger it feeds, it is process-wide: the HTTP and HTTPS
//! listeners share one summary. Only failures come here, never a successful request.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use pingora::{Error, ErrorType};

/// How long identical failures are summed up before they are reported again.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Why an attempt on a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    Refused,
    ConnectTimeout,
    ConnectError,
    /// The connection broke before the response headers came.
    Broken,
    /// No response headers within `first_byte_timeout` (or a stalled stream).
    Timeout,
    /// The backend answered 502/503 (or 429 with Retry-After) and was retried.
    Status(u16),
}

impl Reason {
    /// Classifies a pingora error raised while connecting.
    pub(crate) fn of_connect(e: &Error) -> Reason {
        match e.etype() {
            ErrorType::ConnectRefused => Reason::Refused,
            ErrorType::ConnectTimedout => Reason::ConnectTimeout,
            _ => Reason::ConnectError,
        }
    }

    /// Classifies a pingora error raised after the connection was made.
    pub(crate) fn of_proxy(e: &Error) -> Reason {
        match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Reason::Timeout,
            ErrorType::ConnectRefused => Reason::Refused,
            ErrorType::ConnectTimedout => Reason::ConnectTimeout,
            _ => Reason::Broken,
        }
    }

    /// The machine-readable name (the `reason` field).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reason::Refused => "connection_refused",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::ConnectError => "connect_error",
            Reason::Broken => "connection_broken",
            Reason::Timeout => "timeout",
            Reason::Status(_) => "status",
        }
    }

    /// "refused N connections", "timed out N times", ... for the summary line.
    fn summary(self, n: u64) -> String {
        let n = thousands(n);
        match self {
            Reason::Refused => format!("refused {n} connections"),
            Reason::ConnectTimeout => format!("did not accept {n} connections in time"),
            Reason::ConnectError => format!("failed {n} connection attempts"),
            Reason::Broken => format!("broke {n} connections before answering"),
            Reason::Timeout => format!("timed out {n} times"),
            Reason::Status(code) => format!("answered {code} {n} times"),
        }
    }
}

/// One failed attempt, as the gateway saw it.
#[derive(Clone, Copy)]
pub(crate) struct Failure<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub upstream: &'a Arc<str>,
    pub backend: &'a str,
    pub reason: Reason,
    /// The error's own words (pingora's), for the per-request line.
    pub detail: &'a dyn std::fmt::Display,
    /// Whether another backend is tried next.
    pub retrying: bool,
}

type Key = (Arc<str>, String, Reason);

/// Per key, the window's start and the failures not yet reported.
struct Window {
    start: Instant,
    suppressed: u64,
}

/// The process-wide failure summary.
pub(crate) struct FailureLog {
    windows: Mutex<HashMap<Key, Window>>,
}

static LOG: LazyLock<FailureLog> = LazyLock::new(|| {
    // Closes windows that end without a further failure, so the last count of an
    // outage is reported too.
    let spawned = std::thread::Builder::new()
        .name("failure-log".into())
        .spawn(|| loop {
            std::thread::sleep(WINDOW / 10);
            LOG.flush(Instant::now());
        });
    if let Err(e) = spawned {
        log::warn!("failure summaries only on the next failure: cannot start thread: {e}");
    }
    FailureLog::new()
});

/// Records one failed attempt in the process-wide log.
pub(crate) fn record(f: &Failure<'_>) {
    LOG.record(f, Instant::now());
}

impl FailureLog {
    fn new() -> Self {
        FailureLog {
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Logs `f` at WARN if it is the first of its kind in the current window, else
    /// counts it for the summary.
    fn record(&self, f: &Failure<'_>, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::clone(f.upstream), f.backend.to_string(), f.reason);
        if let Some(w) = windows.get_mut(&key) {
            if now.duration_since(w.start) < WINDOW {
                w.suppressed += 1;
                return;
            }
            let (start, n) = (w.start, w.suppressed);
            *w = Window {
                start: now,
                suppressed: 0,
            };
            report(&key, n, now.duration_since(start));
        } else {
            windows.insert(
                key,
                Window {
                    start: now,
                    suppressed: 0,
                },
            );
        }
        drop(windows);
        let next = if f.retrying {
            "; trying another backend"
        } else {
            ""
        };
        log::warn!(
            request_id = f.request_id,
            route = f.route,
            upstream = &**f.upstream,
            backend = f.backend,
            reason = f.reason.name();
            "backend {}: {}{next}",
            f.backend, f.detail
        );
    }

    /// Reports and forgets every window that has ended.
    fn flush(&self, now: Instant) {
        let mut ended = Vec::new();
        {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            windows.retain(|key, w| {
                let age = now.duration_since(w.start);
                if age < WINDOW {
                    return true;
                }
                ended.push((key.clone(), w.suppressed, age));
                false
            });
        }
        for (key, n, age) in ended {
            report(&key, n, age);
        }
    }
}

/// The summary line of a window with more than the one failure logged in full.
fn report(key: &Key, suppressed: u64, age: Duration) {
    if suppressed == 0 {
        return;
    }
    let (upstream, backend, reason) = key;
    let count = suppressed + 1;
    let secs = age.as_secs().max(1);
    log::warn!(
        upstream = &**upstream,
        backend = backend.as_str(),
        reason = reason.name(),
        count = count,
        seconds = secs;
        "backend {backend} (upstream {upstream}) {} in the last {secs} s",
        reason.summary(count)
    );
}

/// `1204` -> `1,204`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1204), "1,204");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn one_line_per_window_then_a_count() {
        let log = FailureLog::new();
        let up: Arc<str> = Arc::from("llm");
        let f = Failure {
            request_id: "r1",
            route: "chat",
            upstream: &up,
            backend: "10.0.0.5:8000",
            reason: Reason::Refused,
            detail: &"refused",
            retrying: true,
        };
        let t0 = Instant::now();
        for i in 0..5 {
            log.record(&f, t0 + Duration::from_millis(i));
        }
        let key = (
            Arc::clone(&up),
            "10.0.0.5:8000".to_string(),
            Reason::Refused,
        );
        assert_eq!(log.windows.lock().unwrap()[&key].suppressed, 4);
        log.flush(t0 + WINDOW / 2);
        assert_eq!(log.windows.lock().unwrap().len(), 1, "window still open");
        log.flush(t0 + WINDOW);
        assert!(log.windows.lock().unwrap().is_empty());
        assert_eq!(Reason::Refused.summary(1204), "refused 1,204 connections");
    }
}
