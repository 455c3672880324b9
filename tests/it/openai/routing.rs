//! Routing on the JSON body's `model`: exact names, LoRA adapters, prefixes, the
//! model anywhere in the body (also past pingora's 64 KiB retry buffer), unknown
//! models and bad bodies answered in OpenAI's error shape.

use std::time::Duration;

use modelgate::demo::replica::{Replica, ReplicaHandle};

use super::fixture::LISTEN;
use super::fixture::{chat, sse_events};
use crate::support::*;

struct Fleet {
    a: ReplicaHandle,
    b: ReplicaHandle,
    proxy: TestProxy,
}

async fn fleet() -> Fleet {
    let a = Replica::builder("a")
        .models(["llama-3-8b", "llama-3-8b-lora-a"])
        .token_interval(Duration::from_millis(2))
        .spawn()
        .await
        .unwrap();
    let b = Replica::builder("b")
        .models(["org/qwen-7b", "org/qwen-72b"])
        .token_interval(Duration::from_millis(2))
        .spawn()
        .await
        .unwrap();
    let proxy = TestProxy::start(&format!(
        r#"{LISTEN}
[[route]]
name = "llama"
path = "/v1"
model = ["llama-3-8b", "llama-3-8b-lora-a"]
api = "openai"
upstream = "llama"
max_body = "1MiB"

[[route]]
name = "org"
path = "/v1"
model_prefix = "org/"
api = "openai"
upstream = "org"

[upstream.llama]
backends = ["{}"]

[upstream.org]
backends = ["{}"]
"#,
        a.addr(),
        b.addr()
    ))
    .await;
    Fleet { a, b, proxy }
}

/// A body with `model` after a prompt of `words` words.
fn model_last(model: &str, words: usize, stream: bool) -> String {
    let prompt: Vec<String> = (0..words).map(|i| format!("w{i}")).collect();
    format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"stream":{stream},"max_tokens":3,"model":"{model}"}}"#,
        prompt.join(" ")
    )
}

async fn routes_by_model(client: reqwest::Client) {
    let f = fleet().await;
    let url = f.proxy.url("/v1/chat/completions");
    for (model, replica) in [
        ("llama-3-8b", "a"),
        ("llama-3-8b-lora-a", "a"),
        ("org/qwen-72b", "b"),
    ] {
        // model first, not streaming
        let resp = client
            .post(&url)
            .json(&chat(model, "hello", false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-replica"], replica, "{model}");
        let (status, v) = status_and_body(resp).await;
        assert_eq!((status, v["model"].as_str()), (200, Some(model)));

        // model last, after a prompt larger than the 64 KiB retry buffer, streaming
        let body = model_last(model, 20_000, true);
        assert!(body.len() > 100 * 1024);
        let resp = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(resp.headers()["x-replica"], replica);
        let events = sse_events(&resp.text().await.unwrap());
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let last = match replica {
            "a" => f.a.last_openai_request(),
            _ => f.b.last_openai_request(),
        }
        .unwrap();
        // The replica got the whole body, byte for byte as JSON.
        let content = last["messages"][0]["content"].as_str().unwrap();
        assert_eq!(content.split(' ').count(), 20_000);
        assert_eq!(last["model"], model);
    }
}

#[tokio::test]
async fn routes_on_the_body_model_http1() {
    routes_by_model(h1()).await;
}

#[tokio::test]
async fn routes_on_the_body_model_h2c() {
    routes_by_model(h2()).await;
}

#[tokio::test]
async fn a_chunked_body_with_the_model_last_is_routed_and_replayed_whole() {
    let f = fleet().await;
    let body = model_last("org/qwen-7b", 30_000, false);
    let chunks: Vec<bytes::Bytes> = body
        .as_bytes()
        .chunks(7_000)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    for client in [h1(), h2()] {
        let stream =
            futures_util::stream::iter(chunks.clone().into_iter().map(Ok::<_, std::io::Error>));
        let resp = client
            .post(f.proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-replica"], "b");
        let (status, v) = status_and_body(resp).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["usage"]["prompt_tokens"], 30_000);
    }
}

async fn unknown_models_and_bad_bodies_get_openai_errors(client: reqwest::Client) {
    let f = fleet().await;
    let url = f.proxy.url("/v1/chat/completions");
    let resp = client
        .post(&url)
        .json(&chat("gpt-9", "hi", false))
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(v["error"]["message"].is_string());

    for bad in ["not json", "[1,2]", r#"{"model": 7}"#] {
        let resp = client
            .post(&url)
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        let (status, v) = status_and_body(resp).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{bad}");
    }

    // Over the llama route's 1 MiB max_body, with the model last: 413, OpenAI shape.
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .body(model_last("llama-3-8b", 200_000, false))
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], "too_large");

    // The proxy keeps serving everyone else.
    let resp = client
        .post(&url)
        .json(&chat("llama-3-8b", "still there?", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(f.a.hits() + f.b.hits(), 1);

    let metrics = f.proxy.admin_text("/metrics").await;
    assert!(
        metrics.contains(r#"modelgate_rejected_total{reason="model_not_found",upstream=""} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_models_and_bad_bodies_get_openai_errors_http1() {
    unknown_models_and_bad_bodies_get_openai_errors(h1()).await;
}

#[tokio::test]
async fn unknown_models_and_bad_bodies_get_openai_errors_h2c() {
    unknown_models_and_bad_bodies_get_openai_errors(h2()).await;
}
