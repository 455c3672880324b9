//! One health probe: `GET path` to a backend through pingora's own connector and the
//! backend's peer, so the check speaks exactly what requests speak (HTTP/1.1, h2c
//! prior knowledge, or TLS with the upstream's CA, SNI and client certificate).

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;

use crate::config::HealthCheck;
use crate::upstream::Backend;

/// Ok when the backend answered the expected status (any 2xx by default) in time.
pub async fn probe(
    connector: &Connector,
    backend: &Backend,
    check: &HealthCheck,
) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, request(connector, backend, &check.path)).await {
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

async fn request(connector: &Connector, backend: &Backend, path: &str) -> Result<u16, String> {
    // A fresh connection each time: a check must see a replica that stopped
    // accepting, not a pooled connection that still works.
    let (mut session, _) = connector
        .get_http_session(backend.peer())
        .await
        .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
    let set = req
        .insert_header(http::header::HOST, backend.label())
        .and_then(|_| req.insert_header(http::header::USER_AGENT, "modelgate-health"))
        .and_then(|_| req.insert_header(http::header::CONNECTION, "close"));
    set.map_err(|e| e.to_string())?;
    if session.as_http2().is_some() {
        req.remove_header(&http::header::CONNECTION);
    }
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| format!("send: {}", e.etype().as_str()))?;
    session
        .finish_request_body()
        .await
        .map_err(|e| format!("send: {}", e.etype().as_str()))?;
    session
        .read_response_header()
        .await
        .map_err(|e| format!("read: {}", e.etype().as_str()))?;
    let status = session
        .response_header()
        .map(|h| h.status.as_u16())
        .ok_or_else(|| "no response".to_string())?;
    session.shutdown().await;
    Ok(status)
}
