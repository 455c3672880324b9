//! Connection limits and slow clients: slowloris connections are closed after the
//! request-header timeout while everyone else is served, idle keep-alive connections
//! are closed, connection caps (total and per IP) close new connections at once,
//! and oversized request heads get 431.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use modelgate::demo::replica::Replica;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

async fn proxy(listen_extra: &str) -> (TestProxy, modelgate::demo::replica::ReplicaHandle) {
    let replica = Replica::builder("r").spawn().await.unwrap();
    let toml = format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"
{listen_extra}

[[route]]
name = "all"
path = "/"
upstream = "pool"

[upstream.pool]
backends = [{}]
"#,
        backend_list(&[&replica])
    );
    (TestProxy::start(&toml).await, replica)
}

/// True when the peer closed the connection (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an error answer before the close is fine
        }
    }
}

#[tokio::test]
async fn hundreds_of_slowloris_connections_do_not_stop_normal_requests_and_are_closed() {
    let (proxy, replica) = proxy("header_read_timeout = \"3s\"").await;
    let addr = proxy.http_addr();
    const SLOW: usize = 300;
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Half send a partial head, half send nothing at all.
        if i % 2 == 0 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    let start = Instant::now();
    // Keep dribbling bytes on the partial heads while normal clients work.
    let dribble = async {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for s in slow.iter_mut().step_by(2) {
                let _ = s.write_all(b"a").await;
            }
        }
    };
    let normal = async {
        let mut codes = Vec::new();
        for client in [h1(), h2()] {
            for _ in 0..20 {
                codes.push(
                    client
                        .get(proxy.url("/v1/x"))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16(),
                );
            }
        }
        codes
    };
    let ((), codes) = tokio::join!(dribble, normal);
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
    assert_eq!(replica.hits(), 40, "no slow request reached the replica");
    // Every slow connection is closed around the 3 s header deadline, dribbling or not.
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(15)).await,
            "slow connection {i} still open after {:?}",
            start.elapsed()
        );
    }
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "closed before the deadline"
    );
    eventually("open connections fall back", PATIENCE, || async {
        metric_value(&proxy, "modelgate_connections_open").await <= 2.0
    })
    .await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_keepalive_timeout() {
    let (proxy, _replica) = proxy("keepalive_timeout = \"2s\"").await;
    for keep_alive in ["", "Keep-Alive: timeout=3600\r\n"] {
        let mut s = TcpStream::connect(proxy.http_addr()).await.unwrap();
        s.write_all(format!("GET / HTTP/1.1\r\nHost: a\r\n{keep_alive}\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        let idle = Instant::now();
        // Drain the rest of the answer, then wait for the close.
        assert!(
            closed_within(&mut s, Duration::from_secs(15)).await,
            "{keep_alive:?}"
        );
        let waited = idle.elapsed();
        assert!(
            waited >= Duration::from_millis(1500),
            "{keep_alive:?}: closed after {waited:?}"
        );
    }
}

async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends one request and says whether a 200 came back.
async fn served(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; 8192];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200")
    )
}

#[tokio::test]
async fn connection_caps_close_new_connections_at_once_per_ip_and_in_total() {
    let (proxy, _replica) = proxy("max_connections = 12\nmax_connections_per_ip = 4").await;
    let addr = proxy.http_addr();
    let mut held = Vec::new();
    for (n, ip) in [[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]]
        .into_iter()
        .enumerate()
    {
        for _ in 0..4 {
            let mut s = connect_from(ip, addr).await;
            assert!(served(&mut s).await, "{ip:?}");
            held.push(s);
        }
        if n == 0 {
            // Per IP: a fifth connection from 127.0.0.1 is closed at once.
            let mut extra = connect_from(ip, addr).await;
            assert!(closed_within(&mut extra, Duration::from_secs(5)).await);
        }
    }
    // In total: 12 are open, so a first connection from 127.0.0.4 is closed too.
    let mut other = connect_from([127, 0, 0, 4], addr).await;
    assert!(closed_within(&mut other, Duration::from_secs(5)).await);
    assert_eq!(
        metric_value(
            &proxy,
            "modelgate_connections_refused_total{reason=\"max_connections_per_ip\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_value(
            &proxy,
            "modelgate_connections_refused_total{reason=\"max_connections\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_value(&proxy, "modelgate_connections_open").await,
        12.0
    );
    // The held connections are still served; closing some makes room again.
    assert!(served(&mut held[0]).await);
    held.truncate(8);
    eventually("room for new connections", PATIENCE, || async {
        let mut s = connect_from([127, 0, 0, 4], addr).await;
        served(&mut s).await
    })
    .await;
}

#[tokio::test]
async fn too_many_or_too_large_request_headers_get_431() {
    let (proxy, replica) = proxy("max_header_count = 20\nmax_header_bytes = \"4KiB\"").await;
    for client in [h1(), h2()] {
        let mut many = client.get(proxy.url("/"));
        for i in 0..25 {
            many = many.header(format!("x-h{i}"), "v");
        }
        assert_eq!(many.send().await.unwrap().status(), 431);
        let big = client.get(proxy.url("/")).header("x-big", "b".repeat(5000));
        assert_eq!(big.send().await.unwrap().status(), 431);
        let fine = client.get(proxy.url("/")).header("x-ok", "b".repeat(1000));
        assert_eq!(fine.send().await.unwrap().status(), 200);
    }
    assert_eq!(replica.hits(), 2);
}
