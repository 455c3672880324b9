//! A replica that records exactly the bytes it receives and answers by a script:
//! a strict HTTP/1.1 origin (like uvicorn's h11) that treats anything but a
//! well-framed request as junk, answers it 400 and closes, as real servers do.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the replica received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Connection number, from 0 in accept order.
    pub conn: usize,
    /// Request number on its connection, from 0.
    pub index: usize,
    /// The request head, request line to the blank line, exactly as received.
    pub head: String,
    /// The body after de-chunking.
    pub body: Vec<u8>,
    /// Head and body exactly as received (chunk framing included).
    pub raw: Vec<u8>,
}

impl Seen {
    /// The request line without its CRLF.
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// What the replica does with a request.
pub enum Action {
    /// Write these bytes and keep reading the connection.
    Reply(Vec<u8>),
    /// Close without answering.
    Close,
}

/// Everything the replica saw.
#[derive(Debug, Default)]
pub struct Log {
    pub connections: usize,
    pub requests: Vec<Seen>,
    /// Bytes that did not parse as a request where one was expected.
    pub junk: Vec<Vec<u8>>,
}

type Script = dyn Fn(&Seen) -> Action + Send + Sync;

/// The running replica; stops when dropped.
pub struct RawReplica {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawReplica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawReplica {
    /// Starts on `127.0.0.1:0`, answering each request with `script`.
    pub async fn spawn(script: impl Fn(&Seen) -> Action + Send + Sync + 'static) -> RawReplica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let script: Arc<Script> = Arc::new(script);
        let l = Arc::clone(&log);
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let conn = {
                    let mut log = l.lock().unwrap();
                    log.connections += 1;
                    log.connections - 1
                };
                tokio::spawn(serve(sock, conn, Arc::clone(&l), Arc::clone(&script)));
            }
        });
        RawReplica { addr, log, task }
    }

    /// A replica answering every request 200 with `body` and keep-alive.
    pub async fn ok(body: &'static str) -> RawReplica {
        RawReplica::spawn(move |_| Action::Reply(reply(200, body))).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    /// The last request seen; panics when there is none.
    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the replica saw no request")
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }

    pub fn junk(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().junk.clone()
    }
}

/// `HTTP/1.1 <status>` with a Content-Length body.
pub fn reply(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `HTTP/1.1 200` with the parts as chunks of a chunked body.
pub fn chunked_reply(parts: &[&str]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for p in parts {
        out.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

async fn serve(mut sock: TcpStream, conn: usize, log: Arc<Mutex<Log>>, script: Arc<Script>) {
    let mut buf = Vec::new();
    let mut index = 0;
    loop {
        let parsed = loop {
            match parse(&buf) {
                Parse::Partial => {}
                other => break other,
            }
            let mut chunk = [0u8; 16 * 1024];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if !buf.is_empty() {
                        log.lock().unwrap().junk.push(buf);
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let (len, head, body) = match parsed {
            Parse::Request { len, head, body } => (len, head, body),
            Parse::Invalid | Parse::Partial => {
                log.lock().unwrap().junk.push(buf);
                let _ = sock
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
        };
        let raw: Vec<u8> = buf.drain(..len).collect();
        let seen = Seen {
            conn,
            index,
            head,
            body,
            raw,
        };
        index += 1;
        let action = script(&seen);
        log.lock().unwrap().requests.push(seen);
        match action {
            Action::Reply(bytes) => {
                if sock.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Action::Close => return,
        }
    }
}

enum Parse {
    Partial,
    Invalid,
    Request {
        len: usize,
        head: String,
        body: Vec<u8>,
    },
}

/// Parses one request at the start of `buf`, strictly (RFC 9112 framing).
fn parse(buf: &[u8]) -> Parse {
    if buf.is_empty() {
        return Parse::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Invalid,
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let chunked = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    if chunked {
        let mut pos = head_len;
        let mut body = Vec::new();
        loop {
            match httparse::parse_chunk_size(&buf[pos..]) {
                Ok(httparse::Status::Complete((n, 0))) => {
                    // No trailers: the last chunk is followed by the final CRLF.
                    let rest = &buf[pos + n..];
                    if rest.len() < 2 {
                        return Parse::Partial;
                    }
                    if &rest[..2] != b"\r\n" {
                        return Parse::Invalid;
                    }
                    return Parse::Request {
                        len: pos + n + 2,
                        head,
                        body,
                    };
                }
                Ok(httparse::Status::Complete((n, size))) => {
                    let size = size as usize;
                    let start = pos + n;
                    if buf.len() < start + size + 2 {
                        return Parse::Partial;
                    }
                    if &buf[start + size..start + size + 2] != b"\r\n" {
                        return Parse::Invalid;
                    }
                    body.extend_from_slice(&buf[start..start + size]);
                    pos = start + size + 2;
                }
                Ok(httparse::Status::Partial) => return Parse::Partial,
                Err(_) => return Parse::Invalid,
            }
        }
    }
    let length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| String::from_utf8_lossy(h.value).trim().parse::<usize>());
    let length = match length {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Parse::Invalid,
    };
    if buf.len() < head_len + length {
        return Parse::Partial;
    }
    Parse::Request {
        len: head_len + length,
        head,
        body: buf[head_len..head_len + length].to_vec(),
    }
}
