//! The answers modelgate gives itself, instead of a backend's: status, JSON body and
//! headers of SPEC.md, built from static data so rejecting costs no formatting. On
//! routes with `api = "openai"` the body takes OpenAI's error shape
//! (`{"error":{"message","type","param","code"}}`), `code` being the same reason.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Declares [`Reject`] from one table: per answer its status, its reason (the JSON
/// `error` value, the OpenAI `code` and the `reason` label of
/// `modelgate_rejected_total`) and its OpenAI error `type`, `param` and message. The
/// bodies are assembled at compile time, so answering costs no formatting.
macro_rules! rejects {
    ($(
        $(#[$doc:meta])*
        $variant:ident $(($field:ty))? => $status:literal, $reason:literal,
            $kind:literal, $param:literal, $message:literal;
    )*) => {
        /// Why a request was answered by the proxy rather than a backend.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Reject {
            $( $(#[$doc])* $variant $(($field))?, )*
        }

        /// One slot per [`Reject`] variant, in declaration order.
        #[derive(Clone, Copy)]
        enum Slot {
            $( $variant, )*
        }

        impl Reject {
            /// Every reason, in declaration order ([`Reject::slot`] indexes it).
            pub(crate) const REASONS: &'static [&'static str] = &[$( $reason, )*];

            /// This answer's position in [`Reject::REASONS`].
            pub(crate) fn slot(self) -> usize {
                match self {
                    $( Reject::$variant { .. } => Slot::$variant as usize, )*
                }
            }

            pub(crate) fn status(self) -> u16 {
                match self {
                    $( Reject::$variant { .. } => $status, )*
                }
            }

            /// The `reason` label and the JSON `error` value.
            pub(crate) fn reason(self) -> &'static str {
                Self::REASONS[self.slot()]
            }

            /// `{"error":"REASON"}`.
            fn body(self) -> &'static [u8] {
                match self {
                    $( Reject::$variant { .. } => concat!(r#"{"error":""#, $reason, r#""}"#).as_bytes(), )*
                }
            }

            /// The same answer in OpenAI's error shape.
            pub(super) fn openai_body(self) -> &'static [u8] {
                match self {
                    $( Reject::$variant { .. } => concat!(
                        r#"{"error":{"message":""#, $message,
                        r#"","type":""#, $kind,
                        r#"","param":"#, $param,
                        r#","code":""#, $reason, r#""}}"#
                    ).as_bytes(), )*
                }
            }
        }
    };
}

#[rustfmt::skip]
rejects! {
    NoRoute => 404, "no_route",
        "invalid_request_error", "null", "No route serves this request.";
    /// The body's `model` matches no route of its host and path (404).
    ModelNotFound => 404, "model_not_found",
        "invalid_request_error", r#""model""#, "The model does not exist or is not served here; GET /v1/models lists the models served.";
    NoHealthyBackend => 503, "no_healthy_backend",
        "server_error", "null", "No replica of this model is available; retry later.";
    Overloaded => 503, "overloaded",
        "server_error", "null", "Every replica of this model is busy and the queue is full; retry later.";
    QueueTimeout => 503, "queue_timeout",
        "server_error", "null", "The request waited too long for a free replica; retry later.";
    TooLarge => 413, "too_large",
        "invalid_request_error", "null", "The request body is larger than this route accepts.";
    HeadersTooLarge => 431, "headers_too_large",
        "invalid_request_error", "null", "The request headers are too large.";
    BadGateway => 502, "bad_gateway",
        "server_error", "null", "The model server failed before answering.";
    GatewayTimeout => 504, "gateway_timeout",
        "server_error", "null", "The model server did not answer in time.";
    BadRequest => 400, "bad_request",
        "invalid_request_error", "null", "The request is malformed.";
    /// A body to route on that is not a JSON object (400).
    NotJsonObject => 400, "bad_request",
        "invalid_request_error", "null", "The request body must be a JSON object.";
    /// No string `model` where routes differ by model and none takes requests without one (400).
    ModelMissing => 400, "bad_request",
        "invalid_request_error", r#""model""#, "The request body must have a string model field.";
    /// `stream` is not a boolean (400).
    StreamNotBool => 400, "bad_request",
        "invalid_request_error", r#""stream""#, "stream must be true or false.";
    /// The body has more than one top-level `model` (400): servers differ on which counts.
    DuplicateModel => 400, "bad_request",
        "invalid_request_error", r#""model""#, "The request body has more than one model key.";
    DuplicateStream => 400, "bad_request",
        "invalid_request_error", r#""stream""#, "The request body has more than one stream key.";
    DuplicateStreamOptions => 400, "bad_request",
        "invalid_request_error", r#""stream_options""#, "The request body has more than one stream_options key.";
    /// `messages` more than once on a route whose cache affinity reads it (400).
    DuplicateMessages => 400, "bad_request",
        "invalid_request_error", r#""messages""#, "The request body has more than one messages key.";
    /// `prompt` more than once on a route whose cache affinity reads it (400).
    DuplicatePrompt => 400, "bad_request",
        "invalid_request_error", r#""prompt""#, "The request body has more than one prompt key.";
    /// The client sent no body bytes for longer than `body_read_timeout` (408).
    RequestTimeout => 408, "request_timeout",
        "invalid_request_error", "null", "The request body did not arrive in time.";
    /// Missing or refused credentials on a route with `auth`.
    Unauthorized => 401, "unauthorized",
        "invalid_request_error", "null", "Missing or invalid credentials; send Authorization: Bearer KEY.";
    /// Over the route's rate limit; seconds until a request would pass.
    RateLimited(u64) => 429, "rate_limited",
        "requests", "null", "Rate limit reached; retry after the number of seconds in Retry-After.";
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
            h.insert_header(&super::X_REQUEST_ID, id.clone())?;
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
        let all = [
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
            NotJsonObject,
            ModelMissing,
            StreamNotBool,
            DuplicateModel,
            DuplicateStream,
            DuplicateStreamOptions,
            DuplicateMessages,
            DuplicatePrompt,
            RequestTimeout,
            Unauthorized,
            RateLimited(3),
        ];
        assert_eq!(all.len(), Reject::REASONS.len());
        for (i, r) in all.into_iter().enumerate() {
            assert_eq!(r.slot(), i);
            let v: serde_json::Value = serde_json::from_slice(r.openai_body()).unwrap();
            assert_eq!(v["error"]["code"], r.reason());
            assert!(v["error"]["message"].is_string());
            let kind = match r {
                RateLimited(_) => "requests",
                _ if r.status() >= 500 => "server_error",
                _ => "invalid_request_error",
            };
            assert_eq!(v["error"]["type"], kind);
            let plain: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(plain["error"], r.reason());
        }
    }
}
