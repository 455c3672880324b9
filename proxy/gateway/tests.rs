//! How the request path classifies a request, case by case: from its head as pingora
//! parses it off the wire (host, method, stream, upgrade, a body to route on) and from
//! a failed attempt (retry, resend, the answer the client gets).

use tokio::io::AsyncWriteExt;

use super::keepalive::accepts_event_stream;
use super::*;
use crate::config::parse;
use crate::openai::models::asked;
use crate::snapshot::Snapshot;

/// `raw` (a request head, CRLF lines) read off a connection by pingora, as a listener
/// reads it; the error pingora answers 400 with when it refuses the head.
async fn read(raw: &str) -> std::result::Result<Session, Box<Error>> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client.write_all(raw.as_bytes()).await.unwrap();
    let mut session = Session::new_h1(Box::new(server));
    let read = session.read_request().await;
    drop(client);
    match read {
        Ok(true) => Ok(session),
        Ok(false) => panic!("no request in {raw:?}"),
        Err(e) => Err(e),
    }
}

/// A request head that pingora accepts.
async fn head(raw: &str) -> Session {
    match read(raw).await {
        Ok(s) => s,
        Err(e) => panic!("pingora refused {raw:?}: {e}"),
    }
}

/// Checks every case and reports all mismatches at once, by case name.
fn check<T: PartialEq + std::fmt::Debug>(got: impl IntoIterator<Item = (&'static str, T, T)>) {
    let wrong: Vec<String> = got
        .into_iter()
        .filter(|(_, got, want)| got != want)
        .map(|(name, got, want)| format!("{name}: got {got:?}, want {want:?}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn every_request_routes_on_one_host_or_is_refused() {
    // (case, request head, the host it routes on; "400": refused before any hook, by
    // the vendored pingora's validate_request, see vendor/README.md)
    #[rustfmt::skip]
    let cases = [
        ("HTTP/1.1 with Host", "GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n", "a.test"),
        ("Host with a port", "GET /x HTTP/1.1\r\nHost: a.test:8080\r\n\r\n", "a.test"),
        ("Host in capitals", "GET /x HTTP/1.1\r\nHOST: A.Test\r\n\r\n", "a.test"),
        ("field name in mixed case", "GET /x HTTP/1.1\r\nhOsT: a.test\r\n\r\n", "a.test"),
        ("HTTP/1.1 without Host", "GET /x HTTP/1.1\r\n\r\n", "400"),
        ("only other fields", "GET /x HTTP/1.1\r\nAccept: */*\r\n\r\n", "400"),
        ("POST without Host", "POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "400"),
        ("empty Host", "GET /x HTTP/1.1\r\nHost:\r\n\r\n", "400"),
        ("Host with userinfo", "GET /x HTTP/1.1\r\nHost: u@a.test\r\n\r\n", "400"),
        ("Host with a bad port", "GET /x HTTP/1.1\r\nHost: a.test:99999\r\n\r\n", "400"),
        ("two different Hosts", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "400"),
        ("absolute-form without Host", "GET http://a.test/x HTTP/1.1\r\n\r\n", "400"),
        ("absolute-form and its Host", "GET http://A.test/x HTTP/1.1\r\nHost: a.test:80\r\n\r\n", "a.test"),
        ("absolute-form and another Host", "GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n", "400"),
        ("HTTP/1.0 without Host: routes naming no host", "GET /x HTTP/1.0\r\n\r\n", ""),
        ("HTTP/1.0 absolute-form", "GET http://a.test/x HTTP/1.0\r\n\r\n", "a.test"),
    ];
    let mut got = Vec::new();
    for (name, raw, want) in cases {
        let host = match read(raw).await {
            Err(_) => "400".to_string(),
            Ok(mut s) => {
                // request_filter's first step: an absolute-form target becomes the Host.
                headers::absolute_form_to_host(s.req_header_mut()).unwrap();
                request_host(s.req_header()).into_owned()
            }
        };
        got.push((name, host, want.to_string()));
    }
    check(got);
}

#[tokio::test]
async fn malformed_heads_are_refused_before_any_hook() {
    // What routing and content_length rely on pingora to refuse (with a 400).
    #[rustfmt::skip]
    let cases = [
        ("two different Hosts", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
        ("absolute-form naming another host than Host", "GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n"),
        ("differing Content-Lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        ("differing Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n"),
        ("Content-Length not a number", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\n"),
        ("space before the colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        ("no HTTP version", "GET /\r\nHost: a\r\n\r\n"),
    ];
    let mut got = Vec::new();
    for (name, raw) in cases {
        got.push((name, read(raw).await.is_err(), true));
    }
    check(got);
}

#[tokio::test]
async fn only_idempotent_methods_are_sent_again_after_a_break() {
    // (case, method token on the wire, upstream's retry_non_idempotent, may go elsewhere)
    #[rustfmt::skip]
    let cases = [
        ("GET", "GET", false, true),
        ("HEAD", "HEAD", false, true),
        ("PUT", "PUT", false, true),
        ("DELETE", "DELETE", false, true),
        ("OPTIONS", "OPTIONS", false, true),
        ("TRACE", "TRACE", false, true),
        ("POST", "POST", false, false),
        ("PATCH", "PATCH", false, false),
        ("POST with retry_non_idempotent", "POST", true, true),
        ("PATCH with retry_non_idempotent", "PATCH", true, true),
        // Methods are case-sensitive (RFC 9110 9.1): `get` is an unknown method.
        ("lower-case get", "get", false, false),
        ("extension method", "PURGE", false, false),
    ];
    let mut got = Vec::new();
    for (name, method, retry_non_idempotent, want) in cases {
        let s = head(&format!(
            "{method} / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
        let req = s.req_header();
        assert_eq!(req.method.as_str(), method, "{name}");
        got.push((
            name,
            replayable_method(&req.method, retry_non_idempotent),
            want,
        ));
    }
    check(got);
}

fn up(e: ErrorType) -> Box<Error> {
    Error::explain(e, "test").into_up()
}

fn down(e: ErrorType) -> Box<Error> {
    Error::explain(e, "test").into_down()
}

fn neither(e: ErrorType) -> Box<Error> {
    Error::explain(e, "test")
}

#[test]
fn failures_get_the_answer_of_spec_md() {
    use ErrorType::*;
    // (case, error, the answer (None: nobody hears it), the client left, the backend broke)
    #[rustfmt::skip]
    let cases = [
        ("body over max_body", neither(HTTPStatus(413)), Some(Reject::TooLarge), false, false),
        ("backend read timeout", up(ReadTimedout), Some(Reject::GatewayTimeout), false, false),
        ("backend write timeout", up(WriteTimedout), Some(Reject::BadGateway), false, false),
        ("backend refused the connection", up(ConnectRefused), Some(Reject::BadGateway), false, true),
        ("backend connect timeout", up(ConnectTimedout), Some(Reject::BadGateway), false, true),
        ("backend closed mid-answer", up(ConnectionClosed), Some(Reject::BadGateway), false, true),
        ("backend read error", up(ReadError), Some(Reject::BadGateway), false, true),
        ("backend sent a bad head", up(InvalidHTTPHeader), Some(Reject::BadGateway), false, true),
        ("client closed", down(ConnectionClosed), None, true, false),
        ("client read error", down(ReadError), None, true, false),
        ("client write error", down(WriteError), None, true, false),
        ("client sent a bad head", down(InvalidHTTPHeader), Some(Reject::BadRequest), false, false),
        ("client read timeout", down(ReadTimedout), Some(Reject::RequestTimeout), false, false),
        ("internal error", neither(InternalError), Some(Reject::BadGateway), false, false),
    ];
    let mut answers = Vec::new();
    let mut gone = Vec::new();
    let mut broken = Vec::new();
    for (name, e, answer, client_left, backend_broke) in cases {
        answers.push((name, classify(&e), answer));
        gone.push((name, client_went_away(&e), client_left));
        broken.push((name, broke(&e), backend_broke));
    }
    check(answers);
    check(gone);
    check(broken);
}

#[test]
fn refusals_before_the_work_are_retried_elsewhere() {
    // (case, status, header fields, retried on another backend whatever the method)
    #[rustfmt::skip]
    let cases = [
        ("502", 502, &[][..], true),
        ("503", 503, &[], true),
        ("503 with Retry-After", 503, &[("Retry-After", "1")], true),
        ("500: the work may have run", 500, &[], false),
        ("504: the work may have run", 504, &[], false),
        ("429 without Retry-After: passed on", 429, &[], false),
        ("429 with Retry-After", 429, &[("Retry-After", "2")], true),
        ("429 with retry-after in lower case", 429, &[("retry-after", "2")], true),
        ("429 with RETRY-AFTER in capitals", 429, &[("RETRY-AFTER", "2")], true),
        ("200", 200, &[], false),
        ("404", 404, &[("Retry-After", "1")], false),
    ];
    let mut got = Vec::new();
    for (name, status, fields, want) in cases {
        let mut answer = ResponseHeader::build(status, None).unwrap();
        for (k, v) in fields {
            answer.append_header(k.to_string(), *v).unwrap();
        }
        got.push((name, refused(&answer), want));
    }
    check(got);
}

#[test]
fn openai_answers_are_counted_by_their_content_type() {
    // (case, Content-Type, how tokens are counted)
    #[rustfmt::skip]
    let cases = [
        ("event stream", Some("text/event-stream"), Some(Kind::Stream)),
        ("event stream with charset", Some("text/event-stream; charset=utf-8"), Some(Kind::Stream)),
        ("JSON", Some("application/json"), Some(Kind::Json)),
        ("JSON with charset", Some("application/json; charset=utf-8"), Some(Kind::Json)),
        ("event stream in capitals", Some("Text/Event-Stream"), Some(Kind::Stream)),
        ("JSON in capitals, spaced", Some("APPLICATION/JSON ; charset=UTF-8"), Some(Kind::Json)),
        ("JSON lines", Some("application/jsonl"), None),
        ("plain text", Some("text/plain"), None),
        ("NDJSON", Some("application/x-ndjson"), None),
        ("no Content-Type", None, None),
    ];
    let mut got = Vec::new();
    for (name, ct, want) in cases {
        let mut answer = ResponseHeader::build(200, None).unwrap();
        if let Some(ct) = ct {
            answer
                .insert_header(http::header::CONTENT_TYPE, ct)
                .unwrap();
        }
        got.push((name, answer_kind(&answer), want));
    }
    check(got);
}

#[tokio::test]
async fn streams_are_known_by_their_accept_field() {
    // (case, Accept fields, the request wants a stream)
    #[rustfmt::skip]
    let cases = [
        ("event stream", &["text/event-stream"][..], true),
        ("event stream among others", &["application/json, text/event-stream;q=0.9"], true),
        ("JSON only", &["application/json"], false),
        ("event stream in capitals", &["Text/Event-Stream"], true),
        ("list over repeated fields", &["application/json", "text/event-stream"], true),
        ("a longer type", &["text/event-streams"], false),
        ("anything: not a stream request", &["*/*"], false),
        ("no Accept", &[], false),
    ];
    let mut got = Vec::new();
    for (name, accept, want) in cases {
        let fields: String = accept.iter().map(|v| format!("Accept: {v}\r\n")).collect();
        let s = head(&format!(
            "POST /v1/chat HTTP/1.1\r\nHost: a\r\n{fields}Content-Length: 0\r\n\r\n"
        ))
        .await;
        got.push((name, accepts_event_stream(s.req_header()), want));
    }
    check(got);
}

#[tokio::test]
async fn upgrades_reach_the_backend_over_http1() {
    // (case, request head, ALPN the backend offers, ALPN offered for this request)
    let ws = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let shouted =
        "GET /ws HTTP/1.1\r\nHost: a\r\nCONNECTION: UPGRADE\r\nUPGRADE: websocket\r\n\r\n";
    let http10 = "GET /ws HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let plain = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    #[rustfmt::skip]
    let cases = [
        ("WebSocket to an h2-or-h1 backend", ws, ALPN::H2H1, ALPN::H1),
        ("WebSocket to an HTTP/1 backend", ws, ALPN::H1, ALPN::H1),
        ("WebSocket to an h2-only backend", ws, ALPN::H2, ALPN::H2),
        ("Upgrade fields in capitals", shouted, ALPN::H2H1, ALPN::H1),
        ("HTTP/1.0 cannot upgrade", http10, ALPN::H2H1, ALPN::H2H1),
        ("no upgrade", plain, ALPN::H2H1, ALPN::H2H1),
    ];
    let mut got = Vec::new();
    for (name, raw, offer, want) in cases {
        let s = head(raw).await;
        got.push((name, alpn_for(&offer, s.is_upgrade_req()), want));
    }
    check(got);
}

#[tokio::test]
async fn model_lists_are_answered_by_the_proxy() {
    use crate::openai::models::Asked::{List, One};
    // (case, request line, what the proxy answers itself)
    #[rustfmt::skip]
    let cases = [
        ("GET /v1/models", "GET /v1/models", Some(List)),
        ("behind a prefix", "GET /openai/v1/models", Some(List)),
        ("with a query", "GET /v1/models?limit=5", Some(List)),
        ("HEAD", "HEAD /v1/models", Some(List)),
        ("one model", "GET /v1/models/m", Some(One("m"))),
        ("one model with a slash", "GET /v1/models/org/m", Some(One("org/m"))),
        ("one model behind a prefix", "HEAD /x/v1/models/m", Some(One("m"))),
        ("no id", "GET /v1/models/", None),
        ("a longer name", "GET /v1/modelsx", None),
        ("POST", "POST /v1/models", None),
        ("DELETE one", "DELETE /v1/models/m", None),
        ("lower-case get", "get /v1/models", None),
    ];
    let mut got = Vec::new();
    for (name, line, want) in cases {
        let s = head(&format!(
            "{line} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
        got.push((
            name,
            asked(s.req_header()).map(|a| format!("{a:?}")),
            want.map(|a| format!("{a:?}")),
        ));
    }
    check(got);
}

#[tokio::test]
async fn request_ids_are_kept_when_usable() {
    let longest = format!("X-Request-Id: {}", "i".repeat(headers::MAX_REQUEST_ID));
    let long = format!("X-Request-Id: {}", "i".repeat(headers::MAX_REQUEST_ID + 1));
    // (case, header fields, the id kept (None: a new one))
    #[rustfmt::skip]
    let cases = [
        ("client id", vec!["X-Request-Id: abc-1"], Some("abc-1")),
        ("name in capitals", vec!["X-REQUEST-ID: abc-1"], Some("abc-1")),
        ("longest kept", vec![&longest], Some(&longest[14..])),
        ("too long", vec![&long], None),
        ("empty", vec!["X-Request-Id:"], None),
        ("repeated: the first", vec!["X-Request-Id: first", "x-request-id: second"], Some("first")),
        ("none", vec![], None),
    ];
    let mut got = Vec::new();
    for (name, fields, want) in cases {
        let fields: String = fields.iter().map(|f| format!("{f}\r\n")).collect();
        let s = head(&format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n")).await;
        let id = headers::request_id(s.req_header());
        // Never indexed by HPACK, whichever id it is.
        let sensitive = id.is_sensitive();
        let id = id.to_str().unwrap();
        let kept = match want {
            Some(want) => id == want,
            // A new id: 32 hex digits.
            None => id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        };
        got.push((name, kept && sensitive, true));
    }
    check(got);
}

/// An OpenAI endpoint on `/v1` with `routes` (TOML `[[route]]` tables without their
/// header's `path`/`upstream`), built as `run` builds it.
fn endpoint(routes: &[&str]) -> Arc<RouteGroup> {
    let mut src = String::from(
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[upstream.u]\nbackends = [\"127.0.0.1:9001\"]\n",
    );
    for (i, r) in routes.iter().enumerate() {
        src += &format!(
            "[[route]]\nname = \"r{i}\"\npath = \"/v1\"\nupstream = \"u\"\napi = \"openai\"\n{r}\n"
        );
    }
    let config = match parse(&src, std::path::Path::new("t.toml")) {
        Ok(l) => l.config,
        Err(e) => panic!("{e}"),
    };
    let snapshot = Snapshot::build(&config).unwrap();
    Arc::clone(
        snapshot
            .routes
            .resolve("a.test", "/v1/chat/completions")
            .unwrap(),
    )
}

/// What `pick` decided, by the route's name.
fn picked(pick: Pick<'_>) -> String {
    match pick {
        Pick::Route(r) => format!("route {}", r.name),
        Pick::ByModel => "read the body".into(),
        Pick::None => "no route".into(),
    }
}

#[tokio::test]
async fn bodies_are_read_to_route_only_when_they_can_name_a_model() {
    let by_model = endpoint(&["model = \"m\"", ""]);
    let models_only = endpoint(&["model = \"m\""]);
    let plain = endpoint(&[""]);
    let streams = endpoint(&["stream_usage = true"]);
    // (case, endpoint, request line, Content-Type, decision)
    #[rustfmt::skip]
    let cases = [
        ("POST JSON", &by_model, "POST", Some("application/json"), "read the body"),
        ("POST JSON with charset", &by_model, "POST", Some("application/json; charset=utf-8"), "read the body"),
        ("POST without Content-Type", &by_model, "POST", None, "read the body"),
        ("POST multipart", &by_model, "POST", Some("multipart/form-data; boundary=x"), "route r1"),
        ("POST text", &by_model, "POST", Some("text/plain"), "route r1"),
        ("POST image", &by_model, "POST", Some("image/png"), "route r1"),
        ("POST multipart in capitals", &by_model, "POST", Some("Multipart/Form-Data; boundary=x"), "route r1"),
        ("POST JSON in capitals", &by_model, "POST", Some("Application/JSON"), "read the body"),
        ("GET", &by_model, "GET", None, "route r1"),
        ("PUT JSON", &by_model, "PUT", Some("application/json"), "route r1"),
        ("lower-case post", &by_model, "post", Some("application/json"), "route r1"),
        ("GET, no route without a model", &models_only, "GET", None, "no route"),
        ("POST JSON, no model routes", &plain, "POST", Some("application/json"), "route r0"),
        ("POST JSON, stream_usage", &streams, "POST", Some("application/json"), "read the body"),
    ];
    let mut got = Vec::new();
    for (name, group, method, ct, want) in cases {
        let ct_field = ct
            .map(|ct| format!("Content-Type: {ct}\r\n"))
            .unwrap_or_default();
        let s = head(&format!(
            "{method} /v1/chat/completions HTTP/1.1\r\nHost: a.test\r\n{ct_field}Content-Length: 0\r\n\r\n"
        ))
        .await;
        let req = s.req_header();
        let ct = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        got.push((name, picked(group.pick(&req.method, ct)), want.to_string()));
    }
    check(got);
}
