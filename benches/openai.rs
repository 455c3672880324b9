//! The cost of the OpenAI front door next to the same request without it:
//! finding `model` in a chat body (per request) and scanning a streamed answer for
//! tokens and usage (per token), against doing nothing and against parsing a tree.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use modelgate::bench::body::scan;
use modelgate::bench::tokens::{Kind, TokenMeter, TokenSink};
use std::time::{Duration, Instant};

/// A chat request the way the OpenAI SDK sends it: messages first, model after.
fn chat_body(prompt_words: usize, model_first: bool) -> Vec<u8> {
    let prompt: Vec<String> = (0..prompt_words).map(|i| format!("word{i}")).collect();
    let messages = format!(
        r#"[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{}"}}]"#,
        prompt.join(" ")
    );
    let body = if model_first {
        format!(r#"{{"model":"llama-3-8b","messages":{messages},"stream":true,"max_tokens":256}}"#)
    } else {
        format!(r#"{{"messages":{messages},"model":"llama-3-8b","stream":true,"max_tokens":256}}"#)
    };
    body.into_bytes()
}

fn model_routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("model_routing");
    for words in [100usize, 2_000] {
        let last = chat_body(words, false);
        let first = chat_body(words, true);
        g.throughput(Throughput::Bytes(last.len() as u64));
        g.bench_function(format!("model_last_{}B", last.len()), |b| {
            b.iter(|| black_box(scan(black_box(&last))))
        });
        g.bench_function(format!("model_first_{}B", first.len()), |b| {
            b.iter(|| black_box(scan(black_box(&first))))
        });
        g.bench_function(format!("serde_value_tree_{}B", last.len()), |b| {
            b.iter(|| {
                black_box(serde_json::from_slice::<serde_json::Value>(black_box(
                    &last,
                )))
            })
        });
    }
    g.finish();
}

struct Discard;

impl TokenSink for Discard {
    fn inter_token(&mut self, gap: Duration) {
        black_box(gap);
    }
}

/// One token event as vLLM writes it (one event per write).
const EVENT: &str = "data: {\"id\":\"chatcmpl-8c2f\",\"object\":\"chat.completion.chunk\",\"created\":1764490000,\"model\":\"llama-3-8b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" replica\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";

/// The same as SGLang, TGI and OpenAI write it: `"usage":null` in every chunk.
const EVENT_USAGE_NULL: &str = "data: {\"id\":\"chatcmpl-8c2f\",\"object\":\"chat.completion.chunk\",\"created\":1764490000,\"model\":\"llama-3-8b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" replica\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n";

fn token_accounting(c: &mut Criterion) {
    let mut g = c.benchmark_group("token_accounting_per_token");
    let chunk = Bytes::from_static(EVENT.as_bytes());
    let now = Instant::now();
    g.bench_function("without", |b| {
        b.iter(|| {
            let body = Some(black_box(chunk.clone()));
            black_box(body)
        })
    });
    for (event, suffix) in [(EVENT, ""), (EVENT_USAGE_NULL, "_usage_null")] {
        let chunk = Bytes::from_static(event.as_bytes());
        for strip in [false, true] {
            let mut m = TokenMeter::new(Kind::Stream, strip);
            let name = if strip { "with_stream_usage" } else { "with" };
            g.bench_function(format!("{name}{suffix}"), |b| {
                b.iter(|| {
                    let mut body = Some(black_box(chunk.clone()));
                    m.scan(&mut body, false, now, &mut Discard);
                    black_box(body)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, model_routing, token_accounting);
criterion_main!(benches);
