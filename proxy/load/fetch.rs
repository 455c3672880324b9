//! One poll of a replica's Prometheus page: `GET path` through pingora's connector
//! and the backend's own peer (HTTP/1.1, h2c or TLS, as its requests go), the
//! connection kept for the next poll.

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;

use crate::upstream::Backend;

/// Largest page read; vLLM's with a few models and all its histograms is ~100 KiB.
const MAX_PAGE: usize = 8 << 20;

/// The page's text, or why there is none (connect, status, size, encoding).
pub(super) async fn fetch(
    connector: &Connector,
    backend: &Backend,
    path: &str,
    keep_for: std::time::Duration,
) -> Result<String, String> {
    let io = |what: &str, e: Box<pingora::Error>| format!("{what}: {}", e.etype().as_str());
    let (mut session, _) = connector
        .get_http_session(backend.peer())
        .await
        .map_err(|e| io("connect", e))?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
    // Plain Prometheus text: prometheus_client answers OpenMetrics only when asked.
    let set = req
        .insert_header(http::header::HOST, backend.label())
        .and_then(|_| req.insert_header(http::header::USER_AGENT, "modelgate-load"))
        .and_then(|_| req.insert_header(http::header::ACCEPT, "text/plain;version=0.0.4"));
    set.map_err(|e| e.to_string())?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| io("send", e))?;
    session
        .finish_request_body()
        .await
        .map_err(|e| io("send", e))?;
    session
        .read_response_header()
        .await
        .map_err(|e| io("read", e))?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    if status != 200 {
        session.shutdown().await;
        return Err(format!("status {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| io("read", e))?
    {
        if body.len() + chunk.len() > MAX_PAGE {
            session.shutdown().await;
            return Err(format!("page larger than {} MiB", MAX_PAGE >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(session, backend.peer(), Some(keep_for))
        .await;
    String::from_utf8(body).map_err(|_| "page is not UTF-8".to_string())
}
