//! `modelgate probe URL`: one HTTP GET whose exit code says whether the answer was
//! 2xx, for container health checks (the image carries no curl or wget).

use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// Sends `GET url` over HTTP/1.1 (plain `http://` only) and returns the status code,
/// or what went wrong. Gives up after `timeout`, connect included.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url}: not a URL ({e}); e.g. http://127.0.0.1:9901/readyz"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url}: only http:// URLs can be probed, e.g. http://127.0.0.1:9901/readyz"
        ));
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(format!("{url}: names no host"));
    };
    let target = (
        authority.host().to_string(),
        authority.port_u16().unwrap_or(80),
    );
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async move {
        let get = async {
            let stream = tokio::net::TcpStream::connect(target)
                .await
                .map_err(|e| format!("{url}: cannot connect: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            tokio::spawn(conn);
            let req = Request::get(path)
                .header(HOST, authority.as_str())
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("{url}: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            Ok(resp.status().as_u16())
        };
        tokio::time::timeout(timeout, get)
            .await
            .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
    })
}
