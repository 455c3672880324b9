//! Shared helpers for the integration tests: polling, HTTP clients, ports, the
//! proxy-under-test harness ([`TestProxy`]), load generators ([`Load`]) and a
//! WebSocket echo server.

pub mod dns;
mod load;
pub mod model;
mod proxy;
pub mod raw;
pub mod tls;
pub mod tools;
mod ws;

use std::future::Future;
use std::time::{Duration, Instant};

pub use load::Load;
pub use model::{model_list, Model, Reports, VLLM_METRICS};
pub use proxy::{check, check_file, modelgate_bin, TestProxy};
pub use ws::ws_echo_server;

/// Generous default timeout for anything that should "eventually" happen.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often [`eventually`] re-evaluates its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `f` every 20ms until it returns `true`; panics naming `what` if that
/// does not happen within `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `f` every 20ms for `period`; panics naming `what` the first time it
/// returns `false`. For what must not happen (a refused change applied after all).
pub async fn holds_for<F, Fut>(what: &str, period: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < period {
        assert!(
            f().await,
            "after {:?}, no longer true: {what}",
            start.elapsed()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// An HTTP/1.1-only client that ignores proxy environment variables.
pub fn h1() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("building HTTP/1.1 client")
}

/// An h2c (HTTP/2 prior knowledge) client that ignores proxy environment variables.
pub fn h2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("building h2c client")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

/// An address on 127.0.0.1 that refuses connections for as long as the returned
/// socket lives: its port is bound, so no other test's listener can take it (as
/// one could take a [`free_port`] between the check and the use, and then get
/// what was sent there), but never listens. The socket allows address reuse, which
/// Linux honours only for an explicit bind to the port (never for port 0): a test
/// can start a listener on the address while still holding it.
pub fn refusing_addr() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("binding 127.0.0.1:0");
    let addr = socket.local_addr().expect("its address");
    (socket, addr)
}

/// A proxy config with one route `/` to one upstream `pool` of `backends` (TOML
/// array items), plus `extra` lines in `[upstream.pool]`.
pub fn pool_config(backends: &str, extra: &str) -> String {
    format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"
shutdown_grace = "10s"

[[route]]
name = "all"
path = "/"
upstream = "pool"

[upstream.pool]
backends = [{backends}]
{extra}
"#
    )
}

/// `"ip:port", "ip:port"` for a TOML backends array.
pub fn backend_list(replicas: &[&modelgate::demo::replica::ReplicaHandle]) -> String {
    replicas
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Status and JSON body (`Null` when the body is not JSON).
pub async fn status_and_body(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Replicas named `names`, each answering after `delay`.
pub async fn spawn_replicas(
    names: &[&str],
    delay: std::time::Duration,
) -> Vec<modelgate::demo::replica::ReplicaHandle> {
    let mut out = Vec::new();
    for n in names {
        out.push(
            modelgate::demo::replica::Replica::builder(*n)
                .delay(delay)
                .spawn()
                .await
                .unwrap(),
        );
    }
    out
}

/// The value of the first `/metrics` line of `proxy` starting with `series`
/// (e.g. `name{label="v"}`), or 0 when there is none.
pub async fn metric_value(proxy: &TestProxy, series: &str) -> f64 {
    let text = proxy.admin_text("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Rewrites the config file of `proxy` with `from` replaced by `to` and reloads it
/// through `POST /reload`, which answers once the new generation serves.
pub async fn reload_replacing(proxy: &TestProxy, from: &str, to: &str) {
    let text = std::fs::read_to_string(proxy.config_path()).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(proxy.config_path(), text.replace(from, to)).unwrap();
    let resp = h1().post(proxy.admin_url("/reload")).send().await.unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 200, "{v}");
}
