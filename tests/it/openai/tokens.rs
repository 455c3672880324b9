//! Token accounting on OpenAI answers: time to first token, inter-token latency and
//! usage from streams (usage asked for by the proxy and hidden from the client with
//! `stream_usage`) and from whole JSON answers; metrics and access log fields.

use serde_json::{json, Value};

use super::fixture::{backends, chat, front, replica, sse_events, stream_body};
use crate::support::*;

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn accounts(client: reqwest::Client) {
    let r = replica("a", 0, 20).await;
    let proxy = front("stream_usage = true", &backends(&[&r])).await;
    let url = proxy.url("/v1/chat/completions");

    // A stream that did not ask for usage: the replica is asked, the client sees none.
    let mut body = chat("m", "one two three four", true);
    body["max_tokens"] = json!(6);
    let resp = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let events = sse_events(&resp.text().await.unwrap());
    assert_eq!(
        events.len(),
        9,
        "role, 6 tokens, finish, [DONE]: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e.contains("\"usage\"")),
        "{events:?}"
    );
    let sent = r.last_openai_request().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // A stream that asked for usage keeps it.
    body["stream_options"] = json!({"include_usage": true});
    let resp = client.post(&url).json(&body).send().await.unwrap();
    let events = sse_events(&resp.text().await.unwrap());
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6);

    // A whole JSON answer.
    let mut whole = chat("m", "five six", false);
    whole["max_tokens"] = json!(3);
    let resp = client.post(&url).json(&whole).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(r.last_openai_request().unwrap()["stream_options"].is_null());

    // A request's token counts, time to first token and inter-token gaps are recorded
    // when it is logged, which pingora does after the answer's last byte went out: a
    // client can read /metrics before that. Its access log line is written last.
    eventually("access log lines", PATIENCE, || async {
        proxy.logs().matches("\"model\":\"m\"").count() == 3
    })
    .await;
    let text = proxy.admin_text("/metrics").await;
    let labels = r#"{kind="prompt",route="chat",upstream="m"}"#;
    assert_eq!(
        sample(&text, &format!("modelgate_tokens_total{labels}")),
        Some(10.0),
        "{text}"
    );
    let labels = r#"{kind="completion",route="chat",upstream="m"}"#;
    assert_eq!(
        sample(&text, &format!("modelgate_tokens_total{labels}")),
        Some(15.0),
        "{text}"
    );
    let labels = r#"{route="chat",upstream="m"}"#;
    assert_eq!(
        sample(
            &text,
            &format!("modelgate_time_to_first_token_seconds_count{labels}")
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("modelgate_inter_token_latency_seconds_count{labels}")
        ),
        Some(10.0),
        "{text}"
    );

    let logs = proxy.logs();
    let line: Value = logs
        .lines()
        .find(|l| l.contains("\"model\":\"m\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(line["prompt_tokens"], 4);
    assert_eq!(line["completion_tokens"], 6);
    assert!(line["ttft"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn streams_and_answers_are_accounted_http1() {
    accounts(h1()).await;
}

#[tokio::test]
async fn streams_and_answers_are_accounted_h2c() {
    accounts(h2()).await;
}

/// An SSE answer framed by `Content-Length` (a replica that buffers its stream)
/// with the usage event the proxy asked for.
fn sse_with_length() -> Vec<u8> {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
        "data: [DONE]\n\n",
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one response head and its chunked body (to the last chunk) from `s`;
/// the head and the de-chunked body.
async fn read_chunked(s: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).await.unwrap();
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let mut rest = buf[head_end..].to_vec();
    let mut body = Vec::new();
    loop {
        if let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
            if rest.len() >= eol + 2 + size + 2 {
                body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
                rest.drain(..eol + 2 + size + 2);
                if size == 0 {
                    break;
                }
                continue;
            }
        }
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed inside the body");
        rest.extend_from_slice(&b[..n]);
    }
    (head, String::from_utf8(body).unwrap())
}

/// `stream_usage` cuts the usage event the client did not ask for out of an SSE
/// answer, so a `Content-Length` framing no longer holds: an HTTP/1.1 client gets
/// the answer chunked, and the connection stays usable; an HTTP/1.0 client gets it
/// delimited by the close the head announces.
#[tokio::test]
async fn a_shortened_stream_with_a_length_is_sent_chunked_or_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = raw::RawReplica::spawn(|_| raw::Action::Reply(sse_with_length())).await;
    let proxy = front(
        "stream_usage = true",
        &format!("backends = [\"{}\"]", r.addr()),
    )
    .await;
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let request = |version: &str| {
        format!(
            "POST /v1/chat/completions HTTP/{version}\r\nHost: a\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut s = tokio::net::TcpStream::connect(proxy.http_addr())
        .await
        .unwrap();
    for _ in 0..2 {
        s.write_all(request("1.1").as_bytes()).await.unwrap();
        let (head, text) = read_chunked(&mut s).await;
        assert!(!head.contains("connection: close"), "{head}");
        let events = sse_events(&text);
        assert_eq!(events.len(), 3, "{text:?}");
        assert!(!text.contains("usage"), "{text:?}");
        assert_eq!(events[2], "[DONE]");
    }

    let mut s = tokio::net::TcpStream::connect(proxy.http_addr())
        .await
        .unwrap();
    s.write_all(request("1.0").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes after the body")
        .unwrap();
    let out = String::from_utf8_lossy(&out).to_lowercase();
    let (head, text) = out.split_once("\r\n\r\n").unwrap();
    assert!(!head.contains("content-length"), "{head}");
    assert!(!head.contains("keep-alive"), "{head}");
    assert!(text.ends_with("data: [done]\n\n"), "{text:?}");
    assert!(!text.contains("usage"), "{text:?}");
}

/// How a replica attaches `usage` to the chunks that carry `choices` once a request
/// sets `stream_options.include_usage`.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// OpenAI (and vLLM before continuous usage stats): `"usage":null` on each.
    Null,
    /// Continuous usage stats (some vLLM builds and forks): an object on each.
    Every,
    /// llama.cpp server: an object on the finish chunk, which has choices.
    Finish,
}

/// The SSE body of `shape` for three tokens; `usage`: the request asked for usage.
fn shaped_stream(shape: Shape, usage: bool) -> String {
    let u = |c: u64| {
        format!(
            r#"{{"prompt_tokens":5,"completion_tokens":{c},"total_tokens":{}}}"#,
            5 + c
        )
    };
    let member = |c: u64, last: bool| match (usage, shape) {
        (false, _) => String::new(),
        (true, Shape::Null) => ",\"usage\":null".into(),
        (true, Shape::Every) => format!(",\"usage\":{}", u(c)),
        (true, Shape::Finish) if last => format!(",\"usage\":{}", u(c)),
        (true, Shape::Finish) => String::new(),
    };
    let head =
        r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1764490000,"model":"m","#;
    let mut out = format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]{}}}\n\n",
        member(0, false)
    );
    for (i, w) in ["usage", "\\\"usage\\\":", " null"].iter().enumerate() {
        out += &format!(
            "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"finish_reason\":null}}]{},\"system_fingerprint\":\"fp\"}}\n\n",
            member(i as u64 + 1, false)
        );
    }
    out += &format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]{}}}\n\n",
        member(3, true)
    );
    if usage && !matches!(shape, Shape::Finish) {
        out += &format!("data: {head}\"choices\":[],\"usage\":{}}}\n\n", u(3));
    }
    out + "data: [DONE]\n\n"
}

/// A replica that streams in `shape`, one HTTP chunk per event, usage only when
/// asked for.
async fn shaped_replica(shape: Shape) -> raw::RawReplica {
    raw::RawReplica::spawn(move |seen| {
        let req: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        let usage = req["stream_options"]["include_usage"] == true;
        let mut resp =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for event in shaped_stream(shape, usage).split_inclusive("\n\n") {
            resp.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
        }
        resp.extend_from_slice(b"0\r\n\r\n");
        raw::Action::Reply(resp)
    })
    .await
}

/// `stream_usage`: a client that did not ask for usage receives the replica's chunks
/// without their top-level `usage` member (object or `null`; text that looks like
/// one stays) and without the usage-only event, byte for byte otherwise, while the
/// usage is metered; a client that asked receives the stream as sent.
async fn usage_members_hidden(client: reqwest::Client) {
    for shape in [Shape::Null, Shape::Every, Shape::Finish] {
        let r = shaped_replica(shape).await;
        let proxy = front(
            "stream_usage = true",
            &format!("backends = [\"{}\"]", r.addr()),
        )
        .await;
        let url = proxy.url("/v1/chat/completions");
        let resp = client
            .post(&url)
            .json(&stream_body(3))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{shape:?}");
        let text = resp.text().await.unwrap();
        assert_eq!(text, shaped_stream(shape, false), "{shape:?}");
        let sent: Value = serde_json::from_slice(&r.requests()[0].body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true, "{shape:?}");

        let mut asked = stream_body(3);
        asked["stream_options"] = json!({"include_usage": true});
        let resp = client.post(&url).json(&asked).send().await.unwrap();
        let text = resp.text().await.unwrap();
        assert_eq!(text, shaped_stream(shape, true), "{shape:?}");

        eventually("access log lines", PATIENCE, || async {
            proxy.logs().matches("\"model\":\"m\"").count() == 2
        })
        .await;
        for line in proxy
            .logs()
            .lines()
            .filter(|l| l.contains("\"model\":\"m\""))
        {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["prompt_tokens"], 5, "{shape:?}");
            assert_eq!(line["completion_tokens"], 3, "{shape:?}");
        }
    }
}

#[tokio::test]
async fn usage_members_are_hidden_from_clients_that_did_not_ask_http1() {
    usage_members_hidden(h1()).await;
}

#[tokio::test]
async fn usage_members_are_hidden_from_clients_that_did_not_ask_h2c() {
    usage_members_hidden(h2()).await;
}
