//! `wake = { url, method }`: the call that lets an autoscaler start an upstream's
//! replicas, made once per cold period (no replica ready) by the first request that
//! finds it cold. A failed call is logged, counted and retried with backoff while
//! requests wait (see [`crate::upstream::WaitQueue::cold`]), never fatal.

use std::sync::Arc;
use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::config::Wake;
use crate::metrics::Metrics;
use crate::upstream::{AfterWake, WaitQueue};

/// How long one wake call may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Calls `wake` in the background for `upstream`, in cold `period` of `queue`
/// (the number its `wake_due` gave). A failed call is
/// made again after its backoff while requests are still waiting in the queue; a
/// request that arrives later, when none are, makes it through `wake_due`.
pub(crate) fn spawn(
    upstream: Arc<str>,
    wake: Wake,
    metrics: Arc<Metrics>,
    queue: Arc<WaitQueue>,
    period: u64,
) {
    tokio::spawn(async move {
        loop {
            let result = tokio::time::timeout(TIMEOUT, call(&wake))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")));
            match &result {
                Ok(()) => log::info!(
                    "upstream {upstream}: no replica ready; called wake {}",
                    wake.url
                ),
                Err(why) => log::warn!(
                    "upstream {upstream}: wake call to {} failed: {why}",
                    wake.url
                ),
            }
            metrics.wake_call(&upstream, result.is_ok());
            match queue.cold().wake_finished(period, result.is_ok()) {
                AfterWake::Done => return,
                AfterWake::RetryIn(backoff) => tokio::time::sleep(backoff).await,
            }
            if queue.is_empty() || !queue.cold().retry_due(period) {
                return;
            }
        }
    });
}

async fn call(wake: &Wake) -> Result<(), String> {
    let host = wake.url.host().ok_or("no host")?;
    let port = wake.url.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let peer = HttpPeer::new(addr, false, String::new());
    let (mut session, _) = Connector::new(None)
        .get_http_session(&peer)
        .await
        .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
    let path = wake.url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(wake.method.clone(), path.as_bytes(), None)
        .map_err(|e| e.to_string())?;
    let authority = wake.url.authority().map_or(host, |a| a.as_str());
    let set = req
        .insert_header(http::header::HOST, authority)
        .and_then(|_| req.insert_header(http::header::USER_AGENT, "modelgate-wake"))
        .and_then(|_| req.insert_header(http::header::CONTENT_LENGTH, "0"))
        .and_then(|_| req.insert_header(http::header::CONNECTION, "close"));
    set.map_err(|e| e.to_string())?;
    let io = |e: pingora::BError| e.etype().as_str().to_string();
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(io)?;
    session.finish_request_body().await.map_err(io)?;
    session.read_response_header().await.map_err(io)?;
    let status = session.response_header().map(|h| h.status);
    session.shutdown().await;
    match status {
        Some(s) if s.is_success() => Ok(()),
        Some(s) => Err(format!("status {}", s.as_u16())),
        None => Err("no response".into()),
    }
}
