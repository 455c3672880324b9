//! The mock OpenAI replica behaves like a vLLM server: streams with usage, errors,
//! `/v1/models`, `/metrics` gauges, slots and prefill time that follows the prompt.

use std::time::{Duration, Instant};

use modelgate::demo::replica::Replica;
use serde_json::{json, Value};

use super::fixture::{chat, sse_events};
use crate::support::*;

async fn streamed_chat_with_usage(client: reqwest::Client) {
    let r = Replica::builder("m")
        .models(["llama-3-8b"])
        .token_interval(Duration::from_millis(5))
        .spawn()
        .await
        .unwrap();
    let url = format!("http://{}/v1/chat/completions", r.addr());
    let mut body = chat("llama-3-8b", "hello there", true);
    body["max_tokens"] = json!(5);
    body["stream_options"] = json!({"include_usage": true});
    let resp = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-replica"], "m");
    let events = sse_events(&resp.text().await.unwrap());
    // role, 5 tokens, finish, usage, [DONE]
    assert_eq!(events.len(), 9, "{events:?}");
    assert_eq!(events[8], "[DONE]");
    let chunks: Vec<Value> = events[..8]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["model"], "llama-3-8b");
    let text: String = chunks[1..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text.split(' ').count(), 5, "{text}");
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(chunks[7]["usage"]["prompt_tokens"], 2);
    assert_eq!(chunks[7]["usage"]["completion_tokens"], 5);
    assert_eq!(chunks[7]["usage"]["total_tokens"], 7);

    // Without include_usage there is no usage chunk.
    body["stream_options"] = Value::Null;
    let resp = client.post(&url).json(&body).send().await.unwrap();
    let events = sse_events(&resp.text().await.unwrap());
    assert_eq!(events.len(), 8, "{events:?}");
    assert!(!events.iter().any(|e| e.contains("\"usage\"")));
}

#[tokio::test]
async fn mock_streams_chat_with_usage_http1() {
    streamed_chat_with_usage(h1()).await;
}

#[tokio::test]
async fn mock_streams_chat_with_usage_h2c() {
    streamed_chat_with_usage(h2()).await;
}

#[tokio::test]
async fn mock_answers_whole_completions_models_and_unknown_models() {
    let r = Replica::builder("m")
        .models(["llama-3-8b", "llama-3-8b-lora-a"])
        .token_interval(Duration::from_millis(1))
        .spawn()
        .await
        .unwrap();
    let client = h1();
    let base = format!("http://{}", r.addr());
    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat("llama-3-8b-lora-a", "one two three", false))
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "llama-3-8b-lora-a");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert!(v["choices"][0]["message"]["content"].is_string());

    let resp = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "llama-3-8b", "prompt": "a b", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat("gpt-9", "hi", false))
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["type"], "NotFoundError");

    let (status, v) = status_and_body(
        client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama-3-8b", "llama-3-8b-lora-a"]);
    r.set_models(["other"]);
    let (_, v) = status_and_body(
        client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["data"][0]["id"], "other");
}

#[tokio::test]
async fn mock_reports_waiting_and_running_like_vllm() {
    let r = Replica::builder("m")
        .models(["llama-3-8b"])
        .concurrency(1)
        .token_interval(Duration::from_millis(100))
        .spawn()
        .await
        .unwrap();
    let client = h1();
    let url = format!("http://{}/v1/chat/completions", r.addr());
    let mut body = chat("llama-3-8b", "hi", true);
    body["max_tokens"] = json!(30);
    // Two streams on one slot: one runs, one waits.
    let a = client.post(&url).json(&body).send().await.unwrap();
    let b = client.post(&url).json(&body).send().await.unwrap();
    eventually("one running, one waiting", PATIENCE, || async {
        r.slot_counts() == (1, 1)
    })
    .await;
    let text = client
        .get(format!("http://{}/metrics", r.addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# TYPE vllm:num_requests_waiting gauge"),
        "{text}"
    );
    assert!(
        text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"llama-3-8b\"} 1.0"),
        "{text}"
    );
    assert!(
        text.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"llama-3-8b\"} 1.0"),
        "{text}"
    );
    // A client that leaves frees its slot for the waiting one.
    drop(a);
    drop(b);
    eventually("slots released", PATIENCE, || async {
        r.slot_counts() == (0, 0)
    })
    .await;
}

#[tokio::test]
async fn mock_time_to_first_token_grows_with_uncached_prompt() {
    let r = Replica::builder("m")
        .models(["llama-3-8b"])
        .prefill_per_token(Duration::from_millis(5))
        .spawn()
        .await
        .unwrap();
    let client = h1();
    let url = format!("http://{}/v1/chat/completions", r.addr());
    let prompt: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
    let mut body = chat("llama-3-8b", &prompt.join(" "), false);
    body["max_tokens"] = json!(1);

    let started = Instant::now();
    let (_, first) = status_and_body(client.post(&url).json(&body).send().await.unwrap()).await;
    let cold = started.elapsed();
    // 400 uncached tokens at 5 ms each.
    assert!(cold >= Duration::from_secs(2), "cold prefill took {cold:?}");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    let started = Instant::now();
    let (_, second) = status_and_body(client.post(&url).json(&body).send().await.unwrap()).await;
    let warm = started.elapsed();
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        400
    );
    assert!(warm < cold, "warm {warm:?} vs cold {cold:?}");
}
