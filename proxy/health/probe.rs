//! One health probe: `GET path` over HTTP/1.1 (or HTTP/2 prior knowledge for h2c
//! pools), judged by status, within the check's timeout.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::{HealthCheck, Protocol};

/// Ok when the backend answered the expected status (any 2xx by default) in time.
pub async fn probe(
    addr: SocketAddr,
    protocol: Protocol,
    check: &HealthCheck,
) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, request(addr, protocol, &check.path)).await {
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) => {
            let ok = match check.expect_status {
                Some(want) => status == want,
                None => (200..300).contains(&status),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
    }
}

async fn request(addr: SocketAddr, protocol: Protocol, path: &str) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io = TokioIo::new(tcp);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "modelgate-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad health path {path:?}: {e}"))?;
    let status = match protocol {
        Protocol::H2c => {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            send.send_request(req)
                .await
                .map_err(|e| e.to_string())?
                .status()
        }
        _ => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            send.send_request(req)
                .await
                .map_err(|e| e.to_string())?
                .status()
        }
    };
    Ok(status.as_u16())
}
