//! Token accounting on OpenAI answers: time to first token, inter-token latency and
//! usage from streams (usage asked for by the proxy and hidden from the client with
//! `stream_usage`) and from whole JSON answers; metrics and access log fields.

use serde_json::{json, Value};

use super::fixture::{backends, chat, front, replica, sse_events};
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
