//! The OpenAI front door: the mock OpenAI replica, routing by model, `/v1/models`,
//! token accounting from streams.

mod cold;
mod keepalive;
mod mock;
mod models;
mod routing;
mod tokens;

use serde_json::{json, Value};

/// A chat completion request body for `model` with one user message.
pub fn chat(model: &str, prompt: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    })
}

/// The `data:` payloads of an SSE text, in order.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}
