//! `redirect_http_to_https`: the plain listener answers every request with 308 to the
//! same host, path and query on the HTTPS listener (the method and body are kept by
//! clients on 308). The admin listener is a separate service and is not affected.

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::routing::request_host;

/// Where redirects point: the HTTPS port, omitted from URLs when it is 443.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpsRedirect {
    pub port: u16,
}

impl HttpsRedirect {
    /// Writes the 308 (or a 400 when the request names no usable host) as the whole response.
    pub(crate) async fn send(
        self,
        session: &mut Session,
        request_id: Option<&HeaderValue>,
    ) -> pingora::Result<u16> {
        let location = self.location(session);
        let status = if location.is_some() { 308 } else { 400 };
        let mut h = ResponseHeader::build(status, Some(4))?;
        if let Some(loc) = location {
            h.insert_header(http::header::LOCATION, loc)?;
        }
        h.insert_header(http::header::CONTENT_LENGTH, "0")?;
        if let Some(id) = request_id {
            h.insert_header(&super::X_REQUEST_ID, id.clone())?;
        }
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(Bytes::new()), true)
            .await?;
        Ok(status)
    }

    /// `https://host[:port]/path?query`, or `None` when the host is missing or not a
    /// plain host name / IP literal (nothing a client sent is echoed unchecked).
    fn location(self, session: &Session) -> Option<HeaderValue> {
        let req = session.req_header();
        let host = request_host(req);
        let valid = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
            });
        if !valid {
            return None;
        }
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = if path.starts_with('/') { path } else { "/" };
        let mut url = String::with_capacity(8 + host.len() + 6 + path.len());
        url.push_str("https://");
        url.push_str(&host);
        if self.port != 443 {
            url.push(':');
            url.push_str(itoa(self.port, &mut [0u8; 5]));
        }
        url.push_str(path);
        HeaderValue::from_str(&url).ok()
    }
}

/// Decimal digits of `n` without going through the formatter.
fn itoa(mut n: u16, buf: &mut [u8; 5]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("443")
}

#[cfg(test)]
mod tests {
    #[test]
    fn itoa_writes_ports() {
        for n in [0u16, 7, 80, 443, 8443, 65535] {
            assert_eq!(super::itoa(n, &mut [0; 5]), n.to_string());
        }
    }
}
