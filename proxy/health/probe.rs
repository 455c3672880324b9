//! One health probe: `GET path` to a backend through pingora's own connector and the
//! backend's peer, so the check speaks exactly what requests speak (HTTP/1.1, h2c
//! prior knowledge, or TLS with the upstream's CA, SNI and client certificate).
//! With `health.models`, the replica's `/v1/models` is fetched the same way.

use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;

use crate::config::HealthCheck;
use crate::openai::models::{self, ModelList};
use crate::upstream::Backend;

/// The largest `/v1/models` answer read (a replica serving thousands of LoRA
/// adapters stays well under it).
const MODELS_MAX_BYTES: usize = 1024 * 1024;

/// Ok when the backend answered the expected status (any 2xx by default) in time.
pub(super) async fn probe(
    connector: &Connector,
    backend: &Backend,
    check: &HealthCheck,
) -> Result<(), String> {
    let status = async {
        let mut session = get(connector, backend, &check.path).await?;
        let status = status_of(&session)?;
        session.shutdown().await;
        Ok(status)
    };
    match tokio::time::timeout(check.timeout, status).await {
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

/// The models the backend lists on `GET /v1/models` (OpenAI's list shape), within
/// `timeout`. Any other answer is an error; the caller keeps the last good list.
pub(super) async fn fetch_models(
    connector: &Connector,
    backend: &Backend,
    timeout: Duration,
) -> Result<ModelList, String> {
    let fetch = async {
        let mut session = get(connector, backend, models::PATH).await?;
        let status = status_of(&session)?;
        if status != 200 {
            return Err(format!("status {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| format!("read: {}", e.etype().as_str()))?
        {
            if body.len() + chunk.len() > MODELS_MAX_BYTES {
                return Err(format!("answer larger than {MODELS_MAX_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        session.shutdown().await;
        models::parse_list(&body)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

fn status_of(session: &HttpSession) -> Result<u16, String> {
    session
        .response_header()
        .map(|h| h.status.as_u16())
        .ok_or_else(|| "no response".to_string())
}

/// Sends `GET path` and reads the answer's head.
async fn get(connector: &Connector, backend: &Backend, path: &str) -> Result<HttpSession, String> {
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
    Ok(session)
}
