//! A minimal WebSocket echo server for the upgrade/tunnel tests.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

/// Starts a WebSocket echo server on 127.0.0.1:0 (echoes text and binary
/// messages on any path) and returns its address. It runs until the test's
/// runtime shuts down.
pub async fn ws_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding ws echo server");
    let addr = listener.local_addr().expect("ws echo server address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                // Pings and the close handshake are answered by tungstenite
                // itself on the next read.
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
