//! The answers modelgate gives itself, instead of a backend's: status, JSON body and
//! headers of SPEC.md, built from static data so rejecting costs no formatting.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Why a request was answered by the proxy rather than a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    NoRoute,
    NoHealthyBackend,
    Overloaded,
    QueueTimeout,
    TooLarge,
    HeadersTooLarge,
    BadGateway,
    GatewayTimeout,
    BadRequest,
    /// Missing or refused credentials on a route with `auth`.
    Unauthorized,
    /// Over the route's rate limit; seconds until a request would pass.
    RateLimited(u64),
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::NoRoute => 404,
            Reject::NoHealthyBackend | Reject::Overloaded | Reject::QueueTimeout => 503,
            Reject::TooLarge => 413,
            Reject::HeadersTooLarge => 431,
            Reject::BadGateway => 502,
            Reject::GatewayTimeout => 504,
            Reject::BadRequest => 400,
            Reject::Unauthorized => 401,
            Reject::RateLimited(_) => 429,
        }
    }

    /// The `reason` label and the JSON `error` value.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::NoRoute => "no_route",
            Reject::NoHealthyBackend => "no_healthy_backend",
            Reject::Overloaded => "overloaded",
            Reject::QueueTimeout => "queue_timeout",
            Reject::TooLarge => "too_large",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::BadGateway => "bad_gateway",
            Reject::GatewayTimeout => "gateway_timeout",
            Reject::BadRequest => "bad_request",
            Reject::Unauthorized => "unauthorized",
            Reject::RateLimited(_) => "rate_limited",
        }
    }

    fn body(self) -> &'static [u8] {
        match self {
            Reject::NoRoute => br#"{"error":"no_route"}"#,
            Reject::NoHealthyBackend => br#"{"error":"no_healthy_backend"}"#,
            Reject::Overloaded => br#"{"error":"overloaded"}"#,
            Reject::QueueTimeout => br#"{"error":"queue_timeout"}"#,
            Reject::TooLarge => br#"{"error":"too_large"}"#,
            Reject::HeadersTooLarge => br#"{"error":"headers_too_large"}"#,
            Reject::BadGateway => br#"{"error":"bad_gateway"}"#,
            Reject::GatewayTimeout => br#"{"error":"gateway_timeout"}"#,
            Reject::BadRequest => br#"{"error":"bad_request"}"#,
            Reject::Unauthorized => br#"{"error":"unauthorized"}"#,
            Reject::RateLimited(_) => br#"{"error":"rate_limited"}"#,
        }
    }

    /// Seconds a client should wait before trying again, for answers that invite it.
    fn retry_after(self) -> Option<u64> {
        match self {
            Reject::NoHealthyBackend => Some(5),
            Reject::Overloaded | Reject::QueueTimeout => Some(1),
            Reject::RateLimited(secs) => Some(secs),
            _ => None,
        }
    }

    /// The full response header, ready to write.
    pub fn header(self, request_id: Option<&http::HeaderValue>) -> pingora::Result<ResponseHeader> {
        let body = self.body();
        let mut h = ResponseHeader::build(self.status(), Some(5))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        if let Some(secs) = self.retry_after() {
            h.insert_header(http::header::RETRY_AFTER, secs)?;
        }
        if self == Reject::Unauthorized {
            h.insert_header(http::header::WWW_AUTHENTICATE, "Bearer realm=\"modelgate\"")?;
        }
        if let Some(id) = request_id {
            h.insert_header(super::X_REQUEST_ID, id.clone())?;
        }
        Ok(h)
    }

    /// Writes this answer as the whole response.
    pub async fn send(
        self,
        session: &mut Session,
        request_id: Option<&http::HeaderValue>,
    ) -> pingora::Result<()> {
        let header = self.header(request_id)?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session
            .write_response_body(Some(Bytes::from_static(self.body())), true)
            .await
    }
}
