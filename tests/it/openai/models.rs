//! `GET /v1/models` answered by modelgate: configured names of upstreams that can
//! serve now, plus what healthy replicas list themselves (`health.models`), behind
//! the endpoint's auth.

use std::time::Duration;

use modelgate::demo::replica::Replica;
use serde_json::Value;

use super::fixture::LISTEN;
use crate::support::*;

async fn ids(client: &reqwest::Client, url: &str, key: Option<&str>) -> (u16, Vec<String>) {
    let mut req = client.get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let (status, v) = status_and_body(req.send().await.unwrap()).await;
    if status != 200 {
        return (status, Vec::new());
    }
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"].as_array().unwrap();
    for m in data {
        assert_eq!(m["object"], "model", "{m}");
        assert!(m["created"].is_u64() && m["owned_by"].is_string(), "{m}");
    }
    let ids = data
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    (status, ids)
}

async fn lists_reachable_models(client: reqwest::Client) {
    let llama = Replica::builder("llama")
        .models(["llama-3-8b", "llama-3-8b-lora-a"])
        .spawn()
        .await
        .unwrap();
    let org = Replica::builder("org")
        .models(["org/qwen-7b", "not-routed-here"])
        .spawn()
        .await
        .unwrap();
    let dead = Replica::builder("dead")
        .models(["dead-model"])
        .health_status(503)
        .spawn()
        .await
        .unwrap();
    let secret = Replica::builder("secret")
        .models(["secret-model"])
        .spawn()
        .await
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("keys.txt");
    std::fs::write(&keys_file, "alice: sk-alice-0123456789\n").unwrap();
    let proxy = TestProxy::start(&format!(
        r#"{LISTEN}
[[route]]
name = "llama"
path = "/v1"
model = "llama-3-8b"
api = "openai"
upstream = "llama"

[[route]]
name = "org"
path = "/v1"
model_prefix = "org/"
api = "openai"
upstream = "org"

[[route]]
name = "dead"
path = "/v1"
model = "dead-model"
api = "openai"
upstream = "dead"

[[route]]
name = "secret"
path = "/v1"
model = "secret-model"
api = "openai"
upstream = "secret"
auth = {{ api_keys_file = "{}" }}

[upstream.llama]
backends = ["{}"]

[upstream.org]
backends = ["{}"]
[upstream.org.health]
path = "/health"
interval = "100ms"
timeout = "80ms"
models = true

[upstream.dead]
backends = ["{}"]
[upstream.dead.health]
path = "/health"
interval = "100ms"
timeout = "80ms"
models = true

[upstream.secret]
backends = ["{}"]
"#,
        keys_file.display(),
        llama.addr(),
        org.addr(),
        dead.addr(),
        secret.addr(),
    ))
    .await;
    let url = proxy.url("/v1/models");
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Config names of serving upstreams, plus the org replica's own prefix-routed
    // model; not the adapter nobody routes, not the model routed elsewhere, not the
    // down replica's, not the model behind auth the client did not pass.
    eventually(
        "org replica's models listed",
        Duration::from_secs(10),
        || async { ids(&client, &url, None).await == (200, want(&["llama-3-8b", "org/qwen-7b"])) },
    )
    .await;
    assert_eq!(
        ids(&client, &url, Some("sk-alice-0123456789")).await,
        (200, want(&["llama-3-8b", "org/qwen-7b", "secret-model"]))
    );
    // One model, in OpenAI's model-object shape (an id may hold a slash); HEAD
    // answers like GET without a body; an unknown or unreachable one is 404.
    let (status, m) = status_and_body(
        client
            .get(proxy.url("/v1/models/org/qwen-7b"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        (&m["id"], &m["object"]),
        (&"org/qwen-7b".into(), &"model".into()),
        "{m}"
    );
    assert!(m["created"].is_u64() && m["owned_by"].is_string(), "{m}");
    let (status, m) = status_and_body(
        client
            .get(proxy.url("/v1/models/llama-3-8b"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &m["owned_by"]), (200, &"llama".into()), "{m}");
    for unknown in [
        "/v1/models/nope",
        "/v1/models/secret-model",
        "/v1/models/dead-model",
    ] {
        let (status, e) =
            status_and_body(client.get(proxy.url(unknown)).send().await.unwrap()).await;
        assert_eq!(status, 404, "{unknown}: {e}");
        assert_eq!(e["error"]["code"], "model_not_found", "{unknown}: {e}");
    }
    for path in ["/v1/models", "/v1/models/llama-3-8b"] {
        let get = client.get(proxy.url(path)).send().await.unwrap();
        let head = client.head(proxy.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "{path}");
        assert_eq!(head.headers()["content-type"], "application/json", "{path}");
        assert_eq!(
            head.headers().get("content-length"),
            get.headers().get("content-length"),
            "{path}"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    // Nothing reached the replicas (the org replica's hits are the checker's polls).
    assert_eq!(llama.hits() + secret.hits(), 0);

    // The replica's list is followed; a failing list keeps the last one and the
    // replica serving.
    org.set_models(["org/qwen-72b", "org/qwen-7b"]);
    eventually("new list", Duration::from_secs(10), || async {
        ids(&client, &url, None).await.1 == want(&["llama-3-8b", "org/qwen-72b", "org/qwen-7b"])
    })
    .await;
    org.set_fail(Some(500));
    let checks = org.health_checks();
    eventually("more checks", Duration::from_secs(10), || async {
        org.health_checks() > checks + 3
    })
    .await;
    assert_eq!(
        ids(&client, &url, None).await.1,
        want(&["llama-3-8b", "org/qwen-72b", "org/qwen-7b"])
    );
    org.set_fail(None);
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&super::fixture::chat("org/qwen-72b", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A replica that goes down takes its models out.
    org.set_health_status(503);
    eventually("org models gone", Duration::from_secs(10), || async {
        ids(&client, &url, None).await.1 == want(&["llama-3-8b"])
    })
    .await;
    drop(keys);
}

#[tokio::test]
async fn lists_reachable_models_http1() {
    lists_reachable_models(h1()).await;
}

#[tokio::test]
async fn lists_reachable_models_h2c() {
    lists_reachable_models(h2()).await;
}

#[tokio::test]
async fn model_list_is_behind_the_endpoint_auth() {
    let r = Replica::builder("r").models(["m"]).spawn().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("keys.txt");
    std::fs::write(&keys_file, "alice: sk-alice-0123456789\n").unwrap();
    let proxy = TestProxy::start(&format!(
        r#"
[listen]
http = "{{http}}"

[[route]]
name = "m"
path = "/v1"
api = "openai"
upstream = "m"
auth = {{ api_keys_file = "{}" }}

[upstream.m]
backends = ["{}"]
"#,
        keys_file.display(),
        r.addr()
    ))
    .await;
    let client = h1();
    let resp = client.get(proxy.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    // A route without model names lists none of its own; it names no model.
    assert_eq!(
        ids(
            &client,
            &proxy.url("/v1/models"),
            Some("sk-alice-0123456789")
        )
        .await,
        (200, Vec::new())
    );
    assert_eq!(r.hits(), 0);
}
