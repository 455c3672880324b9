//! What clients and replicas receive is correct HTTP whatever the client sends:
//! exact bytes checked with raw sockets and a replica that records everything it
//! reads, over HTTP/1.1, h2c and TLS (h2 and HTTP/1.1).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{chunked_reply, reply, Action, RawReplica};
use crate::support::tls::{connect, TestCa};
use crate::support::*;

const HOST: &str = "api.test";

/// A proxy with plain (HTTP/1.1 + h2c) and TLS listeners in front of `routes`.
struct Wire {
    proxy: TestProxy,
    ca: TestCa,
    _certs: tempfile::TempDir,
}

/// How a test client reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Over {
    /// Plain TCP, HTTP/1.x.
    H1,
    /// TLS with ALPN `http/1.1`.
    H1Tls,
    /// Plain TCP, HTTP/2 with prior knowledge.
    H2c,
    /// TLS with ALPN `h2`.
    H2Tls,
}

const H1_BOTH: [Over; 2] = [Over::H1, Over::H1Tls];
const H2_BOTH: [Over; 2] = [Over::H2c, Over::H2Tls];
const ALL: [Over; 4] = [Over::H1, Over::H1Tls, Over::H2c, Over::H2Tls];

/// One route `/` to one upstream of `backend`, with `extra` lines in the upstream.
fn one_route(backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[route]]
name = "all"
path = "/"
upstream = "pool"

[upstream.pool]
backends = ["{backend}"]
{extra}
"#
    )
}

/// A route and an upstream `rN` per `(prefix, backend, extra upstream lines)`.
fn routes(list: &[(&str, SocketAddr, &str)]) -> String {
    list.iter()
        .enumerate()
        .map(|(i, (path, backend, extra))| {
            format!(
                "[[route]]\nname = \"r{i}\"\npath = \"{path}\"\nupstream = \"r{i}\"\n\n\
                 [upstream.r{i}]\nbackends = [\"{backend}\"]\n{extra}\n\n"
            )
        })
        .collect()
}

impl Wire {
    async fn start(routes: &str) -> Wire {
        let ca = TestCa::new();
        let certs = tempfile::tempdir().unwrap();
        ca.issue(&[HOST]).write(certs.path(), "api");
        let toml = format!(
            r#"
[listen]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
shutdown_grace = "1s"

[log]
access = "off"

[tls]
certs = "{}"
{routes}
"#,
            certs.path().display()
        );
        let proxy = TestProxy::start(&toml).await;
        Wire {
            proxy,
            ca,
            _certs: certs,
        }
    }

    /// Sends `raw` over a fresh HTTP/1.x connection and returns everything the proxy
    /// writes until it closes the connection.
    async fn h1(&self, over: Over, raw: &[u8]) -> String {
        match over {
            Over::H1 => {
                let tcp = TcpStream::connect(self.proxy.http_addr()).await.unwrap();
                exchange(tcp, raw).await
            }
            Over::H1Tls => {
                let tls = connect(
                    self.proxy.https_addr(),
                    Some(HOST),
                    self.ca.client(&[b"http/1.1"]),
                )
                .await
                .unwrap();
                exchange(tls, raw).await
            }
            _ => panic!("{over:?} is not HTTP/1"),
        }
    }

    /// An HTTP/2 connection over h2c or TLS.
    async fn h2(&self, over: Over) -> h2::client::SendRequest<Bytes> {
        match over {
            Over::H2c => {
                let tcp = TcpStream::connect(self.proxy.http_addr()).await.unwrap();
                h2_handshake(tcp).await
            }
            Over::H2Tls => {
                let tls = connect(
                    self.proxy.https_addr(),
                    Some(HOST),
                    self.ca.client(&[b"h2"]),
                )
                .await
                .unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                h2_handshake(tls).await
            }
            _ => panic!("{over:?} is not HTTP/2"),
        }
    }

    /// Sends one request over `over`; h1 transports close after it. Returns
    /// the status and the body.
    async fn send(&self, over: Over, method: &str, path: &str, body: &str) -> (u16, String) {
        match over {
            Over::H1 | Over::H1Tls => {
                let raw = format!(
                    "{method} {path} HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let out = self.h1(over, raw.as_bytes()).await;
                (status_of(&out), body_of(&out).to_string())
            }
            Over::H2c | Over::H2Tls => {
                let send = self.h2(over).await;
                let chunks: &[&[u8]] = if body.is_empty() {
                    &[]
                } else {
                    &[body.as_bytes()]
                };
                let (status, _, body) = h2_request(send, method, path, &[], chunks, false).await;
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        }
    }
}

/// A kept-alive HTTP/1.x connection reading one framed response at a time.
struct H1Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Wire {
    async fn h1_conn(&self, over: Over) -> H1Conn {
        let io: Box<dyn Io> = match over {
            Over::H1 => Box::new(TcpStream::connect(self.proxy.http_addr()).await.unwrap()),
            Over::H1Tls => Box::new(
                connect(
                    self.proxy.https_addr(),
                    Some(HOST),
                    self.ca.client(&[b"http/1.1"]),
                )
                .await
                .unwrap(),
            ),
            _ => panic!("{over:?} is not HTTP/1"),
        };
        H1Conn {
            io,
            buf: Vec::new(),
        }
    }
}

impl H1Conn {
    /// Writes `raw` and reads one response: its head and its body bytes exactly as
    /// framed on the wire (chunk framing included).
    async fn request(&mut self, raw: &[u8]) -> (String, String) {
        self.io.write_all(raw).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.response())
            .await
            .expect("a response within 10 s")
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.io.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn response(&mut self) -> (String, String) {
        let head_len = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill().await, "closed before a response head");
        };
        let head: String = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
        let lower = head.to_ascii_lowercase();
        let mut end = head_len;
        if lower.contains("transfer-encoding: chunked") {
            loop {
                match httparse::parse_chunk_size(&self.buf[end..]) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        let need = end + n + size as usize + 2;
                        while self.buf.len() < need {
                            assert!(self.fill().await, "closed inside a chunk");
                        }
                        end = need;
                        if size == 0 {
                            break;
                        }
                    }
                    Ok(httparse::Status::Partial) => {
                        assert!(self.fill().await, "closed inside a chunk size")
                    }
                    Err(e) => panic!("bad chunk framing: {e:?}"),
                }
            }
        } else if let Some(len) = lower
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
        {
            end += len.trim().parse::<usize>().unwrap();
            while self.buf.len() < end {
                assert!(self.fill().await, "closed inside a body");
            }
        } else {
            while self.fill().await {}
            end = self.buf.len();
        }
        let body = String::from_utf8_lossy(&self.buf[head_len..end]).into_owned();
        self.buf.drain(..end);
        (head, body)
    }

    /// Whatever arrives until the proxy closes the connection.
    async fn rest(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.fill().await {}
        })
        .await
        .expect("the proxy closes within 10 s");
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, raw: &[u8]) -> String {
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    match read {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!(
            "no close within 10 s; got so far: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// The status code of the first response in `raw`, 0 when there is none.
fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Everything after the first response head.
fn body_of(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The head of the first response in `raw`, lower-cased.
fn head_of(raw: &str) -> String {
    raw.split_once("\r\n\r\n")
        .map_or(raw, |(h, _)| h)
        .to_ascii_lowercase()
}

async fn h2_handshake<S>(io: S) -> h2::client::SendRequest<Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends one HTTP/2 request framed exactly: HEADERS (with `headers`, each its own
/// field), a DATA frame per chunk, and when `empty_end` an empty DATA frame
/// carrying END_STREAM. Returns status, headers and body.
async fn h2_request(
    send: h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    empty_end: bool,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://{HOST}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    h2_send(send, req.body(()).unwrap(), chunks, empty_end).await
}

/// Sends `req` as [`h2_request`] does. A URI without scheme and authority (with
/// the request's default version, HTTP/1.1) goes without `:authority`.
async fn h2_send(
    send: h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
    chunks: &[&[u8]],
    empty_end: bool,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut send = send.ready().await.unwrap();
    let end_now = chunks.is_empty() && !empty_end;
    let (resp, mut stream) = send.send_request(req, end_now).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len() && !empty_end;
        stream
            .send_data(Bytes::copy_from_slice(chunk), last)
            .unwrap();
    }
    if empty_end {
        stream.send_data(Bytes::new(), true).unwrap();
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("h2 response within 10 s")
        .unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (parts.status.as_u16(), parts.headers, out)
}

// --- An h2 request body ended by an empty DATA frame carries one terminator ---

#[tokio::test]
async fn h2_body_ended_by_an_empty_data_frame_is_terminated_once() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    // The body in one frame, in two, and no body at all: each then an empty END_STREAM.
    let shapes: [&[&[u8]]; 3] = [&[b"hello"], &[b"hel", b"lo"], &[]];
    let mut sent = 0;
    for over in H2_BOTH {
        for chunks in shapes {
            let send = wire.h2(over).await;
            let (status, _, body) = h2_request(send, "POST", "/up", &[], chunks, true).await;
            assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{over:?}");
            sent += 1;
            let seen = replica.last();
            let expected: Vec<u8> = chunks.concat();
            assert_eq!(seen.body, expected, "{over:?}");
            let raw = String::from_utf8_lossy(&seen.raw);
            assert_eq!(raw.matches("0\r\n\r\n").count(), 1, "{over:?}: {raw:?}");
        }
    }
    assert_eq!(replica.requests().len(), sent);
    assert!(
        replica.junk().is_empty(),
        "junk after bodies: {:?}",
        replica.junk()
    );
}

/// An h2c replica that ends each response body with an empty DATA frame.
async fn h2c_replica_ending_with_empty_data() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let resp = http::Response::builder().status(200).body(()).unwrap();
                    let Ok(mut stream) = respond.send_response(resp, false) else {
                        return;
                    };
                    let _ = stream.send_data(Bytes::from_static(b"hello"), false);
                    let _ = stream.send_data(Bytes::new(), true);
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn h2_response_ended_by_an_empty_data_frame_reaches_h1_clients_terminated_once() {
    let (addr, _task) = h2c_replica_ending_with_empty_data().await;
    let wire = Wire::start(&one_route(addr, "protocol = \"h2c\"")).await;
    for over in H1_BOTH {
        // Two requests on one connection: a second terminator would corrupt the second.
        let mut conn = wire.h1_conn(over).await;
        for path in ["/a", "/b"] {
            let req = format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
            let (head, body) = conn.request(req.as_bytes()).await;
            assert_eq!(status_of(&head), 200, "{over:?}: {head}");
            assert!(head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"));
            assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n", "{over:?}");
        }
        conn.io.shutdown().await.unwrap();
        assert_eq!(
            conn.rest().await,
            "",
            "{over:?}: bytes after the last terminator"
        );
    }
}

// --- A pooled connection the replica closed: the request goes again on a new one ---

#[tokio::test]
async fn request_on_a_pooled_connection_the_replica_closed_is_sent_again() {
    // Answers the first request of each connection with keep-alive, and closes the
    // connection, unanswered, when a second request arrives on it.
    let replica = RawReplica::spawn(|seen| {
        if seen.index == 0 {
            Action::Reply(reply(200, "ok"))
        } else {
            Action::Close
        }
    })
    .await;
    // No retries: the resend is not a retry on another backend.
    let wire = Wire::start(&one_route(replica.addr(), "retries = 0")).await;
    for over in ALL {
        for method in ["GET", "DELETE", "PUT", "POST", "PATCH"] {
            let body = if matches!(method, "GET" | "DELETE") {
                ""
            } else {
                "prompt"
            };
            let (status, got) = wire.send(over, method, "/x", body).await;
            assert_eq!((status, got.as_str()), (200, "ok"), "{over:?} {method}");
            let last = replica.last();
            assert_eq!(
                last.index, 0,
                "{over:?} {method}: answered on a new connection"
            );
            assert_eq!(
                last.body,
                body.as_bytes(),
                "{over:?} {method}: body replayed"
            );
        }
    }
}

/// Pooled replica connections are taken by whichever worker thread serves the next
/// request. A connection released on one worker and picked up on another could be
/// dropped (pingora's pool woke the request while the idle watch still held a
/// reference), so a fresh replica connection was opened for a request that had an
/// idle one waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_replica_connections_are_reused_by_every_worker() {
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 50;
    let replica = RawReplica::ok("ok").await;
    let proxy = TestProxy::start(&format!(
        "[listen]\nhttp = \"{{http}}\"\nadmin = \"{{admin}}\"\nworkers = 2\n\
         shutdown_grace = \"1s\"\n[log]\naccess = \"off\"\n{}",
        one_route(replica.addr(), "")
    ))
    .await;
    let url = proxy.url("/x");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                // One keep-alive client connection each, requests one after another.
                let client = h1();
                for _ in 0..REQUESTS {
                    let resp = client.get(&url).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                    assert_eq!(resp.text().await.unwrap(), "ok");
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(replica.requests().len(), CLIENTS * REQUESTS);
    // At most CLIENTS requests are in flight at once, so CLIENTS connections suffice;
    // one or two more are a connection released a moment after its client's next
    // request arrived. Dropped pooled connections showed as 13 to 22.
    let opened = replica.connections();
    assert!(
        opened <= CLIENTS + 2,
        "{opened} replica connections for {CLIENTS} clients x {REQUESTS} requests"
    );
}

#[tokio::test]
async fn stale_connection_resend_happens_once_and_only_with_a_replayable_body() {
    // Only the very first request is answered; every later one is cut unanswered.
    let replica = RawReplica::spawn(|seen| {
        if seen.conn == 0 && seen.index == 0 {
            Action::Reply(reply(200, "ok"))
        } else {
            Action::Close
        }
    })
    .await;
    let wire = Wire::start(&one_route(replica.addr(), "retries = 0")).await;
    let mut conn = wire.h1_conn(Over::H1).await;
    let get = format!("GET /x HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    let (head, _) = conn.request(get.as_bytes()).await;
    assert_eq!(status_of(&head), 200);
    // The pooled connection fails, the resend on a new connection fails: 502, and
    // the replica saw the request twice, on two connections.
    let (head, body) = conn.request(get.as_bytes()).await;
    assert_eq!(status_of(&head), 502, "{head}{body}");
    assert_eq!(replica.requests().len(), 3);
    assert_eq!(replica.connections(), 2);

    // A body larger than the replay buffer (64 KiB) cannot be sent again.
    let replica = RawReplica::spawn(|seen| {
        if seen.index == 0 {
            Action::Reply(reply(200, "ok"))
        } else {
            Action::Close
        }
    })
    .await;
    let wire = Wire::start(&one_route(replica.addr(), "retries = 0")).await;
    assert_eq!(wire.send(Over::H1, "GET", "/x", "").await.0, 200);
    let big = "x".repeat(100 * 1024);
    let (status, _) = wire.send(Over::H1, "POST", "/x", &big).await;
    assert_eq!(status, 502);
    assert_eq!(replica.connections(), 1, "not sent again");
}

// --- Dot-segments, doubled and encoded slashes in the path ---

fn chat_routes(backend: SocketAddr) -> String {
    format!(
        r#"
[[route]]
name = "chat"
path = "/v1/chat"
upstream = "pool"

[[route]]
name = "stripped"
path = "/strip"
upstream = "pool"
strip_prefix = true

[upstream.pool]
backends = ["{backend}"]
"#
    )
}

#[tokio::test]
async fn paths_are_normalised_before_routing_and_never_climb_out_of_the_route() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&chat_routes(replica.addr())).await;
    // (sent, status, what the replica receives)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/v1/chat/../../admin/shutdown", 404, None),
        ("/v1/chat/%2e%2e/%2E%2E/admin/shutdown", 404, None),
        ("/v1/chat/.%2e/.%2e/admin", 404, None),
        ("/v1/chat/../chatter", 404, None),
        (
            "/v1/chat/./a/../b?x=1&y=../z",
            200,
            Some("/v1/chat/b?x=1&y=../z"),
        ),
        ("/v1//chat///b", 200, Some("/v1/chat/b")),
        ("/x/../v1/chat/c", 200, Some("/v1/chat/c")),
        ("/v1/chat/%2e", 200, Some("/v1/chat/")),
        ("/strip/../strip/a/./b", 200, Some("/a/b")),
        ("/strip/a/../../../etc", 404, None),
        ("/v1/chat/..%2f..%2fadmin", 400, None),
        ("/v1/chat/a%2Fb", 400, None),
        ("/v1/chat/..%5c..%5cadmin", 400, None),
        ("/v1/chat/%41%62", 200, Some("/v1/chat/%41%62")),
        ("/v1/chat/..;/..;/admin", 400, None),
        ("/v1/chat/..;x=1/admin", 400, None),
        ("/v1/chat/a/.;/b", 400, None),
        ("/v1/chat/%2e%2e;/admin", 400, None),
        ("/strip/..;/x", 400, None),
        ("/v1/chat/a;v=1/b", 200, Some("/v1/chat/a;v=1/b")),
    ];
    for over in ALL {
        for (path, status, forwarded) in cases {
            let before = replica.requests().len();
            let (got, body) = wire.send(over, "GET", path, "").await;
            assert_eq!(got, *status, "{over:?} {path}: {body}");
            let seen = replica.requests();
            match forwarded {
                Some(target) => {
                    assert_eq!(seen.len(), before + 1, "{over:?} {path}");
                    let line = seen[before].request_line().to_string();
                    assert_eq!(line, format!("GET {target} HTTP/1.1"), "{over:?} {path}");
                }
                None => assert_eq!(seen.len(), before, "{over:?} {path} reached the replica"),
            }
        }
    }
}

#[tokio::test]
async fn path_params_cannot_move_a_request_to_another_route() {
    // Java servlet replicas (Tomcat, Jetty, Spring) drop `;params` from every segment
    // before resolving a path; a request whose route would change by that is refused.
    let chat = RawReplica::ok("chat").await;
    let rest = RawReplica::ok("rest").await;
    let wire = Wire::start(&routes(&[
        ("/v1/chat", chat.addr(), ""),
        ("/", rest.addr(), ""),
    ]))
    .await;
    let cases: &[(&str, u16, &str)] = &[
        ("/v1/chat;x/completions", 400, ""),
        ("/v1;x/chat/completions", 400, ""),
        ("/v1/chat;jsessionid=1", 400, ""),
        ("/v1/chat/a;x/..;/..;/..;/other", 400, ""),
        ("/v1/chat/a;x=1/b", 200, "chat"),
        ("/v1/chat/a;x/../b", 200, "chat"),
        ("/other;x/y", 200, "rest"),
        ("/v1/chatter;x", 200, "rest"),
    ];
    for over in ALL {
        for (path, status, body) in cases {
            let seen = chat.requests().len() + rest.requests().len();
            let (got, text) = wire.send(over, "GET", path, "").await;
            assert_eq!(got, *status, "{over:?} {path}: {text}");
            if *status == 200 {
                assert_eq!(text, *body, "{over:?} {path}");
            } else {
                assert_eq!(
                    chat.requests().len() + rest.requests().len(),
                    seen,
                    "{over:?} {path} was forwarded"
                );
            }
        }
    }
}

// --- Chunked framing is never sent to an HTTP/1.0 client ---

#[tokio::test]
async fn http10_clients_get_unknown_length_bodies_delimited_by_close() {
    let replica = RawReplica::spawn(|_| Action::Reply(chunked_reply(&["hello ", "world"]))).await;
    let (h2c, _task) = h2c_replica_ending_with_empty_data().await;
    let wire = Wire::start(&routes(&[
        ("/", replica.addr(), ""),
        ("/h2c", h2c, "protocol = \"h2c\""),
    ]))
    .await;
    for over in H1_BOTH {
        for (path, keepalive, body) in [
            ("/x", "", "hello world"),
            ("/x", "connection: keep-alive\r\n", "hello world"),
            ("/h2c/x", "", "hello"),
        ] {
            let req = format!("GET {path} HTTP/1.0\r\nhost: {HOST}\r\n{keepalive}\r\n");
            // exchange() reads until the proxy closes: the body ends with the connection.
            let out = wire.h1(over, req.as_bytes()).await;
            let head = head_of(&out);
            assert_eq!(status_of(&out), 200, "{over:?} {path}: {out:?}");
            assert!(
                !head.contains("transfer-encoding"),
                "{over:?} {path}: {out:?}"
            );
            assert!(
                !head.contains("connection: keep-alive"),
                "{over:?} {path}: {out:?}"
            );
            assert_eq!(body_of(&out), body, "{over:?} {path}");
        }
    }
    // HTTP/1.1 clients still get chunked framing and keep their connection.
    let mut conn = wire.h1_conn(Over::H1).await;
    let (head, body) = conn
        .request(format!("GET /x HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await;
    assert!(head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    assert!(
        body.ends_with("0\r\n\r\n") && body.contains("hello"),
        "{body:?}"
    );
}

// --- h2 cookie fields become one Cookie line for HTTP/1.1 ---

#[tokio::test]
async fn h2_cookie_fields_are_joined_for_http11_replicas() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    for over in H2_BOTH {
        let send = wire.h2(over).await;
        let cookies = [
            ("cookie", "session=abc"),
            ("cookie", "csrf=xyz"),
            ("cookie", "a=1"),
        ];
        let (status, _, _) = h2_request(send, "GET", "/c", &cookies, &[], false).await;
        assert_eq!(status, 200);
        let seen = replica.last();
        assert_eq!(
            seen.header("cookie"),
            vec!["session=abc; csrf=xyz; a=1".to_string()],
            "{over:?}: {}",
            seen.head
        );
    }
}

// --- Absolute-form request targets reach replicas in origin-form ---

#[tokio::test]
async fn absolute_form_targets_are_sent_in_origin_form_with_their_authority_as_host() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&chat_routes(replica.addr())).await;
    for over in H1_BOTH {
        for (target, host, line, want_host) in [
            (
                "http://api.test/v1/chat/x?q=1",
                "api.test",
                "/v1/chat/x?q=1",
                "api.test",
            ),
            (
                "https://api.test:8443/v1/chat/y",
                "api.test:8443",
                "/v1/chat/y",
                "api.test:8443",
            ),
            (
                "http://api.test/v1/chat/a/../b",
                "api.test",
                "/v1/chat/b",
                "api.test",
            ),
        ] {
            let req = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
            let out = wire.h1(over, req.as_bytes()).await;
            assert_eq!(status_of(&out), 200, "{over:?} {target}: {out}");
            let seen = replica.last();
            assert_eq!(
                seen.request_line(),
                format!("GET {line} HTTP/1.1"),
                "{over:?}"
            );
            assert_eq!(seen.header("host"), vec![want_host.to_string()], "{over:?}");
        }
        // A Host that contradicts the target's authority is refused, not guessed at.
        let req = "GET http://api.test/v1/chat/x HTTP/1.1\r\nhost: other.test\r\n\r\n";
        let out = wire.h1(over, req.as_bytes()).await;
        assert_eq!(status_of(&out), 400, "{over:?}: {out}");
    }
}

#[tokio::test]
async fn absolute_form_authority_replaces_host_when_both_name_one_origin() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&chat_routes(replica.addr())).await;
    // (request-target, Host sent, status, Host and X-Forwarded-Host the replica sees)
    let cases = [
        (
            "http://API.test/v1/chat/x",
            Some("api.test:80"),
            200,
            "API.test",
        ),
        (
            "http://api.test:80/v1/chat/x",
            Some("API.TEST"),
            200,
            "api.test:80",
        ),
        (
            "https://api.test/v1/chat/x",
            Some("Api.Test:443"),
            200,
            "api.test",
        ),
        (
            "https://api.test:443/v1/chat/x",
            Some("api.test"),
            200,
            "api.test:443",
        ),
        ("http://[::1]:80/v1/chat/x", Some("[::1]"), 200, "[::1]:80"),
        (
            "http://api.test:8080/v1/chat/a/../x",
            None,
            200,
            "api.test:8080",
        ),
        ("https://api.test:80/v1/chat/x", Some("api.test"), 400, ""),
        ("http://api.test:443/v1/chat/x", Some("api.test"), 400, ""),
        (
            "http://api.test:8080/v1/chat/x",
            Some("api.test:80"),
            400,
            "",
        ),
        (
            "http://api.test:99999/v1/chat/x",
            Some("api.test:99999"),
            400,
            "",
        ),
        ("http://api.test/v1/chat/x", Some("api.test.other"), 400, ""),
    ];
    for over in H1_BOTH {
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            for (target, host, status, want) in cases {
                // HTTP/1.1 requires Host even with an absolute-form target (RFC 9112 §3.2).
                let status = if host.is_none() && version == "HTTP/1.1" {
                    400
                } else {
                    status
                };
                let host = host.map_or(String::new(), |h| format!("host: {h}\r\n"));
                let req = format!("GET {target} {version}\r\n{host}connection: close\r\n\r\n");
                let before = replica.requests().len();
                let out = wire.h1(over, req.as_bytes()).await;
                let what = format!("{over:?} {req:?}");
                assert_eq!(status_of(&out), status, "{what}: {out}");
                if status != 200 {
                    assert_eq!(replica.requests().len(), before, "{what} was forwarded");
                    continue;
                }
                let seen = replica.last();
                assert_eq!(seen.request_line(), "GET /v1/chat/x HTTP/1.1", "{what}");
                assert_eq!(seen.header("host"), vec![want.to_string()], "{what}");
                assert_eq!(
                    seen.header("x-forwarded-host"),
                    vec![want.to_string()],
                    "{what}"
                );
            }
        }
    }
}

// --- Request-line and Host strictness, the same on every listener ---

#[tokio::test]
async fn malformed_request_lines_and_hosts_get_400_and_close_on_every_listener() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    let bad = [
        format!("GET /a b HTTP/1.1\r\nhost: {HOST}\r\n\r\n"),
        format!("GET /a\tb HTTP/1.1\r\nhost: {HOST}\r\n\r\n"),
        format!("GET /a  HTTP/1.1\r\nhost: {HOST}\r\n\r\n"),
        "GET /a HTTP/1.1\r\nx: y\r\n\r\n".to_string(),
        format!("GET /a HTTP/1.1\r\nhost: {HOST}\r\nhost: other.test\r\n\r\n"),
        "GET /a HTTP/1.1\r\nhost: a b\r\n\r\n".to_string(),
    ];
    for over in H1_BOTH {
        for req in &bad {
            // exchange() returns only once the proxy closed the connection.
            let out = wire.h1(over, req.as_bytes()).await;
            assert_eq!(status_of(&out), 400, "{over:?} {req:?}: {out:?}");
        }
        // And it keeps serving.
        assert_eq!(wire.send(over, "GET", "/ok", "").await.0, 200);
    }
    let lines: Vec<_> = replica
        .requests()
        .iter()
        .map(|s| s.request_line().to_string())
        .collect();
    assert!(lines.iter().all(|l| l == "GET /ok HTTP/1.1"), "{lines:?}");
}

#[tokio::test]
async fn empty_and_invalid_hosts_get_400_and_close_on_every_listener() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    let bad = [
        "", "a:99999", "a:65536", "a b", "a@b", "a:8x", "[::1", "::1", "a/b", "a%41", ":80",
        "a:80:80", "a\\b",
    ];
    for over in H1_BOTH {
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            for host in bad {
                let req = format!("GET /h {version}\r\nhost: {host}\r\n\r\n");
                // exchange() returns only once the proxy closed the connection.
                let out = wire.h1(over, req.as_bytes()).await;
                assert_eq!(status_of(&out), 400, "{over:?} {req:?}: {out:?}");
            }
            for hosts in [["a.test", "b.test"], ["a.test", "a.test"]] {
                let req = format!(
                    "GET /h {version}\r\nhost: {}\r\nhost: {}\r\n\r\n",
                    hosts[0], hosts[1]
                );
                let out = wire.h1(over, req.as_bytes()).await;
                assert_eq!(status_of(&out), 400, "{over:?} {req:?}: {out:?}");
            }
        }
    }
    for over in H2_BOTH {
        // `host` without `:authority` (HTTP/1.1 to HTTP/2 gateways send this), and
        // `:authority` alone.
        for host in bad {
            let status = wire.h2_with_hosts(over, &[host]).await;
            assert_eq!(status, 400, "{over:?} host {host:?}");
        }
        for authority in ["a:99999", "a:65536", "a@b"] {
            let req = http::Request::builder()
                .uri(format!("https://{authority}/h"))
                .version(http::Version::HTTP_2)
                .body(())
                .unwrap();
            let (status, _, _) = h2_send(wire.h2(over).await, req, &[], false).await;
            assert_eq!(status, 400, "{over:?} :authority {authority:?}");
        }
        let status = wire.h2_with_hosts(over, &["a.test", "b.test"]).await;
        assert_eq!(status, 400, "{over:?} two hosts");
    }
    assert!(replica.requests().is_empty(), "{:?}", replica.requests());
    // Valid hosts of every shape still pass, on every transport.
    for host in [
        "API.test:443",
        "127.0.0.1:8080",
        "[::1]:8080",
        "a_b-c.test",
        "xn--bcher-kva.test",
    ] {
        for over in H1_BOTH {
            let req = format!("GET /h HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
            let out = wire.h1(over, req.as_bytes()).await;
            assert_eq!(status_of(&out), 200, "{over:?} {host}: {out:?}");
            assert_eq!(replica.last().header("host"), vec![host.to_string()]);
        }
        for over in H2_BOTH {
            let status = wire.h2_with_hosts(over, &[host]).await;
            assert_eq!(status, 200, "{over:?} host {host}");
            assert_eq!(replica.last().header("host"), vec![host.to_string()]);
        }
    }
}

impl Wire {
    /// `GET /h` over HTTP/2 with no `:authority` and these `host` fields (as gateways
    /// converting HTTP/1.1 send it); returns the status.
    async fn h2_with_hosts(&self, over: Over, hosts: &[&str]) -> u16 {
        let mut req = http::Request::builder().uri("/h");
        for host in hosts {
            req = req.header("host", *host);
        }
        let req = req.body(()).unwrap();
        h2_send(self.h2(over).await, req, &[], false).await.0
    }
}

#[tokio::test]
async fn h2_authority_and_host_must_name_the_same_origin() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    // (:scheme://:authority, host, status); the replica gets :authority as Host.
    let cases = [
        ("https://api.test", "API.TEST:443", 200),
        ("https://Api.Test:443", "api.test", 200),
        ("http://api.test:80", "api.test", 200),
        ("http://api.test", "api.test:", 200),
        ("https://api.test", "api.test:8443", 400),
        ("https://api.test", "api.test:80", 400),
        ("http://api.test", "api.test:443", 400),
        ("https://api.test", "other.test", 400),
    ];
    for over in H2_BOTH {
        for (origin, host, status) in cases {
            let before = replica.requests().len();
            let req = http::Request::builder()
                .uri(format!("{origin}/a"))
                .version(http::Version::HTTP_2)
                .header("host", host)
                .body(())
                .unwrap();
            let (got, _, _) = h2_send(wire.h2(over).await, req, &[], false).await;
            assert_eq!(got, status, "{over:?} {origin} host {host}");
            if status == 200 {
                let authority = origin.split_once("://").unwrap().1;
                let seen = replica.last();
                assert_eq!(seen.header("host"), vec![authority.to_string()], "{over:?}");
                assert_eq!(seen.header("x-forwarded-host"), vec![authority.to_string()]);
            } else {
                assert_eq!(replica.requests().len(), before, "{over:?} {origin} {host}");
            }
        }
    }
}

// --- Short requests are answered on the plain listener (HTTP/1.1 or h2c detection) ---

#[tokio::test]
async fn requests_shorter_than_the_h2_preface_are_answered() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    for req in [
        "GET / HTTP/1.0\r\n\r\n",
        "HEAD / HTTP/1.0\r\n\r\n",
        "GET /\r\n\r\n",
    ] {
        let out = wire.h1(Over::H1, req.as_bytes()).await;
        assert!(status_of(&out) > 0, "{req:?}: {out:?}");
    }
    // Byte by byte, too.
    let mut tcp = TcpStream::connect(wire.proxy.http_addr()).await.unwrap();
    for b in b"GET / HTTP/1.0\r\n\r\n" {
        tcp.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = exchange(tcp, b"").await;
    assert_eq!(status_of(&out), 200, "{out:?}");
    // The h2c preface split over several writes is still h2c.
    let mut tcp = TcpStream::connect(wire.proxy.http_addr()).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let send = h2_handshake(PrefixSent(tcp, 16)).await;
    let (status, _, _) = h2_request(send, "GET", "/", &[], &[], false).await;
    assert_eq!(status, 200);
}

/// A stream whose first `n` bytes of the h2 preface were already written by hand.
struct PrefixSent(TcpStream, usize);

impl AsyncRead for PrefixSent {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefixSent {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // Swallow the part of the preface already on the wire.
        if self.1 > 0 {
            let skip = self.1.min(buf.len());
            self.1 -= skip;
            return std::task::Poll::Ready(Ok(skip));
        }
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

// --- HTTP/1.0 without Host reaches the replica with one ---

#[tokio::test]
async fn http10_requests_without_host_reach_the_replica_with_one() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    for over in H1_BOTH {
        let out = wire.h1(over, b"GET /h HTTP/1.0\r\nX: y\r\n\r\n").await;
        assert_eq!(status_of(&out), 200, "{over:?}: {out:?}");
        let seen = replica.last();
        assert_eq!(seen.request_line(), "GET /h HTTP/1.1");
        assert_eq!(
            seen.header("host"),
            vec![replica.addr().to_string()],
            "{over:?}"
        );
    }
}

// --- TLS 1.2 renegotiation is refused with an alert, not a stall ---

#[tokio::test]
async fn tls12_renegotiation_gets_a_no_renegotiation_alert() {
    let replica = RawReplica::ok("ok").await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    let addr = wire.proxy.https_addr().to_string();
    // `R` on s_client's input asks for a renegotiation (its input stays open, so it
    // waits for the server's answer).
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr,
            "-servername",
            HOST,
            "-tls1_2",
            "-msg",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running openssl s_client (apt-get install openssl)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut text = String::new();
    // The session summary ends the handshake; from then on s_client reads its input.
    let handshake = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            let done = line.contains("Verify return code");
            text.push_str(&line);
            text.push('\n');
            if done {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, handshake)
        .await
        .expect("the TLS 1.2 handshake completes");
    stdin.write_all(b"R\n").await.unwrap();
    let rest = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            text.push_str(&line);
            text.push('\n');
        }
        child.wait_with_output().await.unwrap()
    };
    let out = tokio::time::timeout(Duration::from_secs(10), rest)
        .await
        .expect("the server answers a renegotiation within 10 s");
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("no_renegotiation") || text.contains("no renegotiation"),
        "{text}"
    );
    drop(stdin);
}

// --- Pipelined HTTP/1.1 requests are answered in order ---

/// Requests sent back to back in one write (RFC 9112 section 9.3.2), with a
/// Content-Length body, a chunked body and none, are each answered, in order, and
/// reach the replica whole; the last asks to close, so the proxy closes after it.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let replica = RawReplica::spawn(|seen| Action::Reply(reply(200, seen.request_line()))).await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    for over in H1_BOTH {
        let raw = format!(
            "POST /a HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 5\r\n\r\nhello\
             GET /b HTTP/1.1\r\nhost: {HOST}\r\n\r\n\
             POST /c HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             GET /d HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n"
        );
        let before = replica.requests().len();
        let out = wire.h1(over, raw.as_bytes()).await;
        // Each answer's body is its request line.
        let at: Vec<_> = ["/a", "/b", "/c", "/d"]
            .iter()
            .map(|p| out.find(&format!(" {p} HTTP/1.1")))
            .collect();
        assert!(at.iter().all(Option::is_some), "{over:?}: {out:?}");
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "{over:?} order: {out:?}"
        );
        assert_eq!(out.matches("HTTP/1.1 200").count(), 4, "{over:?}: {out:?}");
        let seen = &replica.requests()[before..];
        let bodies: Vec<_> = seen.iter().map(|s| s.body.clone()).collect();
        assert_eq!(
            bodies,
            [b"hello".to_vec(), vec![], b"abc".to_vec(), vec![]],
            "{over:?}"
        );
    }
}

// --- Header names keep their case and order through the proxy ---

/// The fields of `head` (request or status line skipped) whose name is one of `names`,
/// compared case-insensitively, as written (`Name: value`) and in order.
fn fields_among(head: &str, names: &[&str]) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(name, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        })
        .map(str::to_string)
        .collect()
}

/// `Name: value` fields, the values numbered with `prefix`.
fn numbered_fields(names: &[&str], prefix: &str) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{name}: {prefix}{i}"))
        .collect()
}

#[tokio::test]
async fn header_names_keep_their_case_and_order_both_ways() {
    // Names in the form a head writes without recording case (title case for the
    // names pingora knows, lower case for the rest) first, then others, a repeated
    // name in two cases: the point where a head starts recording case, and every
    // field on either side of it, must come out as it went in.
    const REQUEST_NAMES: [&str; 7] = [
        "accept",
        "X-Mixed-Case",
        "X-MIXED-case",
        "User-agent",
        "x-lower",
        "X-Trace-ID",
        "content-TYPE",
    ];
    const RESPONSE_NAMES: [&str; 6] = [
        "Content-Type",
        "x-replica-lower",
        "X-Replica-Case",
        "X-REPLICA-UPPER",
        "x-replica-UPPER",
        "Cache-control",
    ];
    let response_fields = numbered_fields(&RESPONSE_NAMES, "r");
    let response_head: String = response_fields.iter().map(|f| format!("{f}\r\n")).collect();
    let replica = RawReplica::spawn(move |_| {
        Action::Reply(
            format!("HTTP/1.1 200 OK\r\n{response_head}Content-Length: 2\r\n\r\nok").into_bytes(),
        )
    })
    .await;
    let wire = Wire::start(&one_route(replica.addr(), "")).await;
    for over in H1_BOTH {
        let mut conn = wire.h1_conn(over).await;
        // In its default form up to the mixed-case fields, or not from the first one.
        for host in ["Host", "host"] {
            let mut names = vec![host];
            names.extend(REQUEST_NAMES);
            let mut fields = vec![format!("{host}: {HOST}")];
            fields.extend(numbered_fields(&REQUEST_NAMES, "q"));
            let request_head: String = fields.iter().map(|f| format!("{f}\r\n")).collect();
            let (head, body) = conn
                .request(format!("GET /case HTTP/1.1\r\n{request_head}\r\n").as_bytes())
                .await;
            assert_eq!(body, "ok", "{over:?}: {head}");
            let seen = replica.last();
            assert_eq!(
                fields_among(&seen.head, &names),
                fields,
                "{over:?} request: {}",
                seen.head
            );
            assert_eq!(
                fields_among(&head, &RESPONSE_NAMES),
                response_fields,
                "{over:?} response: {head}"
            );
        }
    }
}
