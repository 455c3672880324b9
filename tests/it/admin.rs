//! The admin API: what each endpoint answers, wrong methods and unknown paths,
//! and the admin token that guards everything but the probes.

use crate::support::*;

#[tokio::test]
async fn every_endpoint_answers_and_the_rest_is_405_or_404() {
    let r = spawn_replicas(&["only"], std::time::Duration::ZERO).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let resp = h1().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap(), body, "{path}");
    }
    let upstreams = proxy.admin_json("/upstreams").await;
    assert_eq!(
        upstreams["upstreams"]["pool"]["backends"][0]["addr"],
        r[0].addr().to_string(),
        "{upstreams}"
    );
    assert!(
        upstreams["upstreams"]["pool"]["backends"][0]["latency_ms"].is_null(),
        "no estimate before the first answer: {upstreams}"
    );
    let resp = h1().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    eventually("the first answer measured", PATIENCE, || async {
        let u = proxy.admin_json("/upstreams").await;
        u["upstreams"]["pool"]["backends"][0]["latency_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0)
    })
    .await;
    let config = proxy.admin_json("/config").await;
    let file = proxy.config_path().display().to_string();
    assert_eq!(config["file"].as_str(), Some(file.as_str()), "{config}");
    assert!(config["last_error"].is_null(), "{config}");
    let status = proxy.admin_json("/status").await;
    assert!(status.is_object(), "{status}");
    let metrics = proxy.admin_text("/metrics").await;
    assert!(metrics.contains("# TYPE modelgate_"), "{metrics}");
    let page = h1().get(proxy.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    let generation = config["generation"].as_u64().unwrap();
    let (s, v) = status_and_body(h1().post(proxy.admin_url("/reload")).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["generation"].as_u64().unwrap() > generation, "{v}");

    for (method, path) in [
        (reqwest::Method::POST, "/upstreams"),
        (reqwest::Method::GET, "/reload"),
        (reqwest::Method::DELETE, "/config"),
    ] {
        let resp = h1()
            .request(method.clone(), proxy.admin_url(path))
            .send()
            .await
            .unwrap();
        let (s, v) = status_and_body(resp).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (405, Some("method_not_allowed")),
            "{method} {path}"
        );
    }
    let (s, v) = status_and_body(h1().get(proxy.admin_url("/nope")).send().await.unwrap()).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_the_probes() {
    let r = spawn_replicas(&["only"], std::time::Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let toml = pool_config(&backend_list(&[&r[0]]), "").replace(
        "shutdown_grace",
        &format!(
            "admin_token_file = {:?}\nshutdown_grace",
            token_file.display().to_string()
        ),
    );
    let proxy = TestProxy::start(&toml).await;
    for path in ["/config", "/upstreams"] {
        let resp = h1().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let resp = h1()
            .get(proxy.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let resp = h1()
            .get(proxy.admin_url(path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = h1().post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = h1()
        .post(proxy.admin_url("/reload"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for path in ["/healthz", "/readyz"] {
        let resp = h1().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}
