//! The answers modelgate gives itself, instead of a backend's: status, JSON body and
//! headers of SPEC.md, built from static data so rejecting costs no formatting. On
//! routes with `api = "openai"` the body takes OpenAI's error shape
//! (`{"error":{"message","type","param","code"}}`), `code` being the same reason.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Why a request was answered by the proxy rather than a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    NoRoute,
    /// The body's `model` matches no route of its host and path (404).
    ModelNotFound,
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

impl From<crate::edge::gate::Refusal> for Reject {
    fn from(r: crate::edge::gate::Refusal) -> Reject {
        match r {
            crate::edge::gate::Refusal::Unauthorized => Reject::Unauthorized,
            crate::edge::gate::Refusal::RateLimited(secs) => Reject::RateLimited(secs),
        }
    }
}

impl Reject {
    pub(crate) fn status(self) -> u16 {
        match self {
            Reject::NoRoute | Reject::ModelNotFound => 404,
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
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Reject::NoRoute => "no_route",
            Reject::ModelNotFound => "model_not_found",
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
            Reject::ModelNotFound => br#"{"error":"model_not_found"}"#,
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

    /// The same answer in OpenAI's error shape.
    pub(super) fn openai_body(self) -> &'static [u8] {
        macro_rules! openai {
            ($message:literal, $type:literal, $param:literal, $code:literal) => {
                concat!(
                    r#"{"error":{"message":""#,
                    $message,
                    r#"","type":""#,
                    $type,
                    r#"","param":"#,
                    $param,
                    r#","code":""#,
                    $code,
                    r#""}}"#
                )
                .as_bytes()
            };
        }
        match self {
            Reject::NoRoute => openai!("No route serves this request.", "invalid_request_error", "null", "no_route"),
            Reject::ModelNotFound => openai!("The model does not exist or is not served here; GET /v1/models lists the models served.", "invalid_request_error", r#""model""#, "model_not_found"),
            Reject::NoHealthyBackend => openai!("No replica of this model is available; retry later.", "server_error", "null", "no_healthy_backend"),
            Reject::Overloaded => openai!("Every replica of this model is busy and the queue is full; retry later.", "server_error", "null", "overloaded"),
            Reject::QueueTimeout => openai!("The request waited too long for a free replica; retry later.", "server_error", "null", "queue_timeout"),
            Reject::TooLarge => openai!("The request body is larger than this route accepts.", "invalid_request_error", "null", "too_large"),
            Reject::HeadersTooLarge => openai!("The request headers are too large.", "invalid_request_error", "null", "headers_too_large"),
            Reject::BadGateway => openai!("The model server failed before answering.", "server_error", "null", "bad_gateway"),
            Reject::GatewayTimeout => openai!("The model server did not answer in time.", "server_error", "null", "gateway_timeout"),
            Reject::BadRequest => openai!("The request body must be a JSON object with a string model field.", "invalid_request_error", "null", "bad_request"),
            Reject::Unauthorized => openai!("Missing or invalid credentials; send Authorization: Bearer KEY.", "invalid_request_error", "null", "unauthorized"),
            Reject::RateLimited(_) => openai!("Rate limit reached; retry after the number of seconds in Retry-After.", "requests", "null", "rate_limited"),
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

    fn body_for(self, openai: bool) -> &'static [u8] {
        if openai {
            self.openai_body()
        } else {
            self.body()
        }
    }

    /// The full response header, ready to write (`openai`: for the OpenAI-shaped body).
    pub(crate) fn header(
        self,
        request_id: Option<&http::HeaderValue>,
        openai: bool,
    ) -> pingora::Result<ResponseHeader> {
        let body = self.body_for(openai);
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

    /// Writes this answer as the whole response, in OpenAI's shape when `openai`.
    pub(crate) async fn send(
        self,
        session: &mut Session,
        request_id: Option<&http::HeaderValue>,
        openai: bool,
    ) -> pingora::Result<()> {
        let header = self.header(request_id, openai)?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session
            .write_response_body(Some(Bytes::from_static(self.body_for(openai))), true)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_openai_body_is_an_openai_error() {
        use Reject::*;
        for r in [
            NoRoute,
            ModelNotFound,
            NoHealthyBackend,
            Overloaded,
            QueueTimeout,
            TooLarge,
            HeadersTooLarge,
            BadGateway,
            GatewayTimeout,
            BadRequest,
        ] {
            let v: serde_json::Value = serde_json::from_slice(r.openai_body()).unwrap();
            assert_eq!(v["error"]["code"], r.reason());
            assert!(v["error"]["message"].is_string());
            let kind = if r.status() >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            };
            assert_eq!(v["error"]["type"], kind);
            let plain: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(plain["error"], r.reason());
        }
    }
}
