//! Host and path routing, strip_prefix, forwarding headers, request ids, 404s.

use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::Value;

use crate::support::*;

async fn routed_proxy() -> (TestProxy, [ReplicaHandle; 4]) {
    let vision = Replica::builder("vision").spawn().await.unwrap();
    let chat = Replica::builder("chat").spawn().await.unwrap();
    let eu = Replica::builder("eu").spawn().await.unwrap();
    let fallback = Replica::builder("fallback").spawn().await.unwrap();
    let toml = format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[[route]]
name = "vision"
host = "api.example.com"
path = "/v1/vision"
upstream = "vision"
strip_prefix = true

[[route]]
name = "chat"
host = "api.example.com"
path = "/v1"
upstream = "chat"

[[route]]
name = "eu"
host = "*.eu.example.com"
path = "/"
upstream = "eu"

[[route]]
name = "fallback"
path = "/v1/vision/long/prefix"
upstream = "fallback"

[upstream.vision]
backends = [{}]
[upstream.chat]
backends = [{}]
[upstream.eu]
backends = [{}]
[upstream.fallback]
backends = [{}]
"#,
        backend_list(&[&vision]),
        backend_list(&[&chat]),
        backend_list(&[&eu]),
        backend_list(&[&fallback]),
    );
    (TestProxy::start(&toml).await, [vision, chat, eu, fallback])
}

const HOSTS: [&str; 3] = ["api.example.com", "a.b.eu.example.com", "other.org"];

/// HTTP/1.1 and h2c clients that resolve the test host names to the proxy, so the
/// host travels the way real clients send it (`Host` or `:authority`).
fn clients(proxy: &TestProxy) -> [reqwest::Client; 2] {
    let build = |h2: bool| {
        let mut b = reqwest::Client::builder().no_proxy();
        b = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        for h in HOSTS {
            b = b.resolve(h, proxy.http_addr());
        }
        b.build().unwrap()
    };
    [build(false), build(true)]
}

async fn get(client: &reqwest::Client, proxy: &TestProxy, host: &str, path: &str) -> (u16, Value) {
    let url = format!("http://{host}:{}{path}", proxy.http_addr().port());
    let resp = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix_over_h1_and_h2() {
    let (proxy, _replicas) = routed_proxy().await;
    for client in clients(&proxy) {
        let (s, v) = get(&client, &proxy, "api.example.com", "/v1/vision/predict?x=1").await;
        assert_eq!((s, v["replica"].as_str()), (200, Some("vision")));
        assert_eq!(v["path"], "/predict?x=1", "strip_prefix keeps the query");

        let (s, v) = get(&client, &proxy, "api.example.com", "/v1/vision").await;
        assert_eq!((s, v["replica"].as_str()), (200, Some("vision")));
        assert_eq!(v["path"], "/");

        // Prefixes match whole segments: /v1/visionary is chat's, not vision's.
        let (s, v) = get(&client, &proxy, "api.example.com", "/v1/visionary").await;
        assert_eq!((s, v["replica"].as_str()), (200, Some("chat")));
        assert_eq!(v["path"], "/v1/visionary", "no strip on chat");

        // The host route wins over the longer host-less prefix.
        let (s, v) = get(&client, &proxy, "api.example.com", "/v1/vision/long/prefix").await;
        assert_eq!(v["replica"].as_str(), Some("vision"), "{s}");

        let (s, v) = get(&client, &proxy, "a.b.eu.example.com", "/anything").await;
        assert_eq!((s, v["replica"].as_str()), (200, Some("eu")));

        let (s, v) = get(&client, &proxy, "other.org", "/v1/vision/long/prefix/x").await;
        assert_eq!((s, v["replica"].as_str()), (200, Some("fallback")));

        let (s, v) = get(&client, &proxy, "other.org", "/v1/chat").await;
        assert_eq!(s, 404);
        assert_eq!(v, serde_json::json!({"error": "no_route"}));
    }
}

#[tokio::test]
async fn h2_requests_keep_their_authority_when_the_path_is_rewritten() {
    let (proxy, _replicas) = routed_proxy().await;
    // reqwest sends :authority from the URL over h2; point it at the routed host.
    let url = format!(
        "http://api.example.com:{}/v1/vision/x",
        proxy.http_addr().port()
    );
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .resolve("api.example.com", proxy.http_addr())
        .build()
        .unwrap();
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["replica"], "vision");
    assert_eq!(v["path"], "/x");
    assert_eq!(
        v["headers"]["host"],
        format!("api.example.com:{}", proxy.http_addr().port())
    );
}

#[tokio::test]
async fn forwarding_headers_and_request_ids() {
    let (proxy, _replicas) = routed_proxy().await;
    let chat = format!(
        "http://api.example.com:{}/v1/chat",
        proxy.http_addr().port()
    );
    for client in clients(&proxy) {
        let resp = client
            .get(&chat)
            .header("x-forwarded-for", "203.0.113.7")
            .header("connection", "x-secret")
            .header("x-secret", "hop-by-hop")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(generated.len(), 32, "a fresh 128-bit hex id: {generated}");
        let v: Value = resp.json().await.unwrap();
        let h = &v["headers"];
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["x-forwarded-host"],
            format!("api.example.com:{}", proxy.http_addr().port())
        );
        assert_eq!(h["x-request-id"], generated.as_str());
        assert!(
            h.get("x-secret").is_none(),
            "headers named in Connection are dropped: {h}"
        );

        let resp = client
            .get(&chat)
            .header("x-request-id", "client-id-42")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "client-id-42");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["headers"]["x-request-id"], "client-id-42");
    }
    // Rejections carry the id too.
    let resp = h1()
        .get(proxy.url("/nope"))
        .header("x-request-id", "r-404")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "r-404");
    assert_eq!(resp.headers()["content-type"], "application/json");
}
