//! What modelgate itself adds to each proxied request, piece by piece, in ns: the
//! request id, the header-size check, the host lookup and route resolution, the
//! metrics of the `logging` hook, and the access log (the hand-off on the request
//! path and the formatting on the writer thread), and an upstream response head as
//! pingora's HTTP/1.1 client reads it and the proxy writes it to the client (names
//! in lower case, and in title case, which makes the head record their case).
//! Backend selection is in
//! `benches/selection.rs`; route tables of 10,000 routes in `benches/routing.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Method, Uri};
use modelgate::bench::access::{self, AccessLog, Entry};
use modelgate::bench::headers;
use modelgate::bench::Metrics;
use modelgate::bench::{request_host, RouteTable};
use pingora::http::{RequestHeader, ResponseHeader};

/// A typical OpenAI-style request head from a client library.
fn request() -> RequestHeader {
    let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None)
        .unwrap_or_else(|e| panic!("{e}"));
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "OpenAI/Python 1.40.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "187"),
        (
            "authorization",
            "Bearer sk-0123456789abcdef0123456789abcdef",
        ),
    ] {
        req.insert_header(k, v).unwrap_or_else(|e| panic!("{e}"));
    }
    req
}

/// An nginx-like response head, lower-case names.
const UPSTREAM_LOWER: [(&str, &str); 5] = [
    ("server", "nginx/1.24.0"),
    ("date", "Wed, 02 Dec 2026 01:58:18 GMT"),
    ("content-type", "text/plain"),
    ("content-length", "3"),
    ("connection", "keep-alive"),
];

/// The same head in title case, as nginx writes it.
const UPSTREAM_TITLE: [(&str, &str); 5] = [
    ("Server", "nginx/1.24.0"),
    ("Date", "Wed, 02 Dec 2026 01:58:18 GMT"),
    ("Content-Type", "text/plain"),
    ("Content-Length", "3"),
    ("Connection", "keep-alive"),
];

/// An upstream response head through the proxy: built as pingora's HTTP/1.1 client
/// parses it (names appended as they came, room for 8 fields more), cloned as the
/// client session hands it on, its hop-by-hop field removed, written to `out` as the
/// HTTP/1.1 server writes it. Returns the bytes written.
fn upstream_head(fields: &[(&'static str, &'static str)], out: &mut Vec<u8>) -> usize {
    let mut head =
        ResponseHeader::build(200, Some(fields.len() + 8)).unwrap_or_else(|e| panic!("{e}"));
    for (name, value) in fields {
        head.append_header(bytes::Bytes::from_static(name.as_bytes()), *value)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut sent = head.clone();
    sent.remove_header("connection");
    out.clear();
    sent.header_to_h1_wire(out);
    out.len()
}

fn entry() -> Entry {
    Entry {
        time: SystemTime::now(),
        request_id: Some(HeaderValue::from_static("5f0c6b3a9d2e4f1a8b7c6d5e4f3a2b1c")),
        client: Some("10.1.2.3:51234".parse().unwrap_or_else(|e| panic!("{e}"))),
        method: Method::POST,
        host: Some(HeaderValue::from_static("api.example.com")),
        uri: Uri::from_static("/v1/chat/completions"),
        route: Some(Arc::from("chat")),
        upstream: Some(Arc::from("llama")),
        backend: Some(Arc::from("10.0.0.7:8000")),
        consumer: None,
        status: 200,
        bytes_in: 187,
        bytes_out: 1432,
        queue_wait: Duration::ZERO,
        ttfb: Some(Duration::from_micros(850)),
        total: Duration::from_millis(12),
        retries: 0,
        reject: None,
        model: Some(Arc::from("llama-3-8b")),
        ttft: Some(Duration::from_micros(850)),
        prompt_tokens: Some(42),
        completion_tokens: Some(311),
    }
}

fn request_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_path");
    let req = request();
    g.bench_function("request_id_new", |b| {
        b.iter(|| black_box(headers::request_id(black_box(&req))))
    });
    let mut with_id = request();
    with_id
        .insert_header("x-request-id", "client-supplied-id-42")
        .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("request_id_from_client", |b| {
        b.iter(|| black_box(headers::request_id(black_box(&with_id))))
    });
    g.bench_function("header_bytes", |b| {
        b.iter(|| black_box(headers::header_bytes(black_box(&req))))
    });

    let mut table = RouteTable::default();
    table.insert(None, "/v1/embeddings", 1usize);
    table.insert(None, "/v1/chat", 2);
    table.insert(None, "/", 3);
    g.bench_function("host_and_route", |b| {
        b.iter(|| {
            let req = black_box(&req);
            let host = request_host(req);
            black_box(table.resolve(&host, req.uri.path()).copied())
        })
    });

    let metrics = Metrics::new(prometheus::Registry::new()).unwrap_or_else(|e| panic!("{e}"));
    let route = metrics.route("chat", "llama");
    g.bench_function("metrics_per_request", |b| {
        b.iter(|| {
            route.request(black_box(200), Some(black_box(0.012)));
            let up = route.upstream();
            up.queue_wait(black_box(0.0));
            up.retries(black_box(0));
            up.first_byte(black_box(0.00085));
        })
    });

    let log = AccessLog::start(
        Some(std::path::Path::new("/dev/null")),
        Arc::clone(&metrics),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("access_log_record", |b| {
        b.iter(|| log.record(black_box(entry())))
    });
    let e = entry();
    let mut line = Vec::with_capacity(512);
    g.bench_function("access_log_format", |b| {
        b.iter(|| {
            line.clear();
            access::format(black_box(&e), &mut line);
            black_box(line.len())
        })
    });

    let mut head = Vec::with_capacity(512);
    g.bench_function("upstream_head_lower_case", |b| {
        b.iter(|| black_box(upstream_head(black_box(&UPSTREAM_LOWER), &mut head)))
    });
    g.bench_function("upstream_head_title_case", |b| {
        b.iter(|| black_box(upstream_head(black_box(&UPSTREAM_TITLE), &mut head)))
    });
    g.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
