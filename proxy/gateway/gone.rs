//! Watching the client of a waiting request (queued, held for a replica to start):
//! the request leaves as soon as its client closes or resets the connection, or
//! resets its HTTP/2 stream, whether or not its body has been read.
//!
//! HTTP/1 is watched on the socket, not by reading it: a body not yet read must
//! reach the replica intact, and bytes sent after it (a pipelined request) are not
//! an abort. The kernel reports a received FIN (`EPOLLRDHUP`) and a reset
//! (`EPOLLHUP`) even with unread data in its buffer, so a half-close counts as
//! gone, as nginx treats it (`ngx_http_upstream_check_broken_connection`). Over TLS
//! the socket under the session is watched: a TLS client closing sends
//! `close_notify` and a FIN, and the FIN is what is seen.

use std::io;

use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Resolves when the client of a waiting request disconnects: an HTTP/2 stream
/// reset or connection close, an HTTP/1 connection closed (FIN) or reset. Polled
/// only while the request waits, so requests that never wait pay nothing.
pub(super) async fn client_gone(session: &mut Session) {
    let downstream = session.as_downstream_mut();
    if let Some(closed) = downstream.watch_h2_stream_close() {
        let _ = closed.await;
        return;
    }
    match socket_of(downstream) {
        Some(socket) => peer_closed(socket).await,
        None => read_after_body(downstream).await,
    }
}

/// A registration of the connection's socket of its own: a duplicate descriptor,
/// because one socket cannot be registered twice with the runtime's epoll, and the
/// session's registration must keep its readiness for the reads to come. It is
/// typed a `TcpStream` only to be registered (a Unix socket's readiness works the
/// same); nothing is read or written through it, and dropping it closes only the
/// duplicate. `None` for a stream without a socket, or when the descriptor cannot
/// be duplicated.
fn socket_of(downstream: &ServerSession) -> Option<TcpStream> {
    let fd = downstream
        .stream()?
        .socket_fd()?
        .try_clone_to_owned()
        .ok()?;
    TcpStream::from_std(std::net::TcpStream::from(fd)).ok()
}

/// Resolves once the peer has closed its side (FIN) or reset the connection. Data
/// arriving (body bytes, a pipelined request, TLS records) wakes it, and it waits
/// on; nothing is read, so the session reads the same bytes later.
async fn peer_closed(socket: TcpStream) {
    loop {
        let Ok(seen) = socket.ready(Interest::READABLE).await else {
            // The runtime is going away; nothing to watch with.
            return std::future::pending().await;
        };
        if seen.is_read_closed() || seen.is_error() {
            return;
        }
        // Clears this registration's readable state (never its closed state): the
        // next wake is new data or the close.
        let _ = socket.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}

/// Without a socket to watch: an HTTP/1 connection closing once its request body is
/// read (a read then consumes nothing the replica needs). Requests still sending a
/// body are not watched.
async fn read_after_body(downstream: &mut ServerSession) {
    if downstream.is_body_done() {
        // Any outcome (close, error, stray bytes) means this request cannot go on.
        let _ = downstream.read_body_or_idle(true).await;
        return;
    }
    std::future::pending::<()>().await
}
