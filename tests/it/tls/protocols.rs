//! What a TLS client meets: ALPN h2 to h1 and h2c backends, the policy (no TLS
//! 1.1, AEAD suites only), session resumption, WebSocket over TLS, and plain HTTP
//! redirected to HTTPS.

use super::*;

#[tokio::test]
async fn h2_clients_reach_h1_and_h2c_backends() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["api.test"]).write(dir.path(), "api");
    let h1 = Replica::builder("h1").spawn().await.unwrap();
    let h2c = Replica::builder("h2c").spawn().await.unwrap();
    let upstreams = format!(
        r#"
[[route]]
name = "h1"
path = "/h1"
upstream = "h1"

[[route]]
name = "h2c"
path = "/h2c"
upstream = "h2c"

[upstream.h1]
backends = ["{}"]

[upstream.h2c]
backends = ["{}"]
protocol = "h2c"
"#,
        h1.addr(),
        h2c.addr()
    );
    let proxy = TestProxy::start(&config(dir.path(), &upstreams, "")).await;
    let client = https_client(&ca.pem(), &["api.test"], proxy.https_addr());
    for (path, replica, backend_version) in
        [("/h1/x", "h1", "HTTP/1.1"), ("/h2c/x", "h2c", "HTTP/2.0")]
    {
        let resp = client
            .post(url(&proxy, "api.test", path))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["replica"], replica, "{body}");
        assert_eq!(body["version"], backend_version, "{body}");
        assert_eq!(body["bytes"], 7, "{body}");
    }
    // HTTP/1.1 over TLS is still offered.
    let tls = connect(
        proxy.https_addr(),
        Some("api.test"),
        ca.client(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let tls = connect(
        proxy.https_addr(),
        Some("api.test"),
        ca.client(&[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// Runs `openssl s_client` against the proxy; (handshake succeeded, output).
fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = crate::support::tools::command(crate::support::tools::OPENSSL)
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "api.test",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn policy_refuses_tls11_and_non_aead_suites() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["api.test"]).write(dir.path(), "api"); // ECDSA P-256 key
    let r = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&config(dir.path(), &one_pool(r.addr()), "")).await;
    let addr = proxy.https_addr();

    // Control: a TLS 1.2 AEAD suite and TLS 1.3 work, and ALPN picks h2.
    let (ok, out) = s_client(
        addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    );
    assert!(ok && out.contains("ECDHE-ECDSA-AES128-GCM-SHA256"), "{out}");
    let (ok, out) = s_client(addr, &["-tls1_3", "-alpn", "h2,http/1.1"]);
    assert!(ok && out.contains("ALPN protocol: h2"), "{out}");

    // TLS 1.1 (the client is allowed to offer it) gets an alert from the server.
    let (ok, out) = s_client(addr, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("SSL alert number") && out.contains("Cipher is (NONE)"),
        "{out}"
    );

    // CBC (non-AEAD) and static-RSA suites only: no common suite.
    let (ok, out) = s_client(
        addr,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:AES128-GCM-SHA256:AES128-SHA",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("alert handshake failure") && out.contains("Cipher is (NONE)"),
        "{out}"
    );
}

#[tokio::test]
async fn sessions_resume() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["api.test"]).write(dir.path(), "api");
    let r = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&config(dir.path(), &one_pool(r.addr()), "")).await;
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[versions])
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        let c = Arc::new(c);
        for round in 0..2 {
            let tls = connect(proxy.https_addr(), Some("api.test"), c.clone())
                .await
                .unwrap();
            let kind = tls.get_ref().1.handshake_kind();
            // One request, so TLS 1.3 tickets sent after the handshake are read.
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("/echo")
                .header("host", "api.test")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
            if round == 1 {
                assert_eq!(
                    kind,
                    Some(rustls::HandshakeKind::Resumed),
                    "{versions:?} second handshake"
                );
            }
        }
    }
}

#[tokio::test]
async fn websocket_over_tls() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["api.test"]).write(dir.path(), "api");
    let echo = ws_echo_server().await;
    let proxy = TestProxy::start(&config(dir.path(), &one_pool(echo), "")).await;
    let tls = connect(
        proxy.https_addr(),
        Some("api.test"),
        ca.client(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://api.test/ws", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}"))).await.unwrap();
        let msg = ws.next().await.unwrap().unwrap();
        assert_eq!(msg, Message::Text(format!("hello {i}")));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn plain_http_redirects_to_https() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["api.test"]).write(dir.path(), "api");
    let r = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&config(
        dir.path(),
        &one_pool(r.addr()),
        "redirect_http_to_https = true",
    ))
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let port = proxy.https_addr().port();
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let resp = client
            .request(method, proxy.url("/v1/predict?x=1&y=%20"))
            .header("host", "API.test:8080")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()["location"],
            format!("https://api.test:{port}/v1/predict?x=1&y=%20").as_str()
        );
        assert!(resp.headers().contains_key("x-request-id"));
    }
    // No Host: nothing to redirect to.
    let resp = client
        .get(proxy.url("/"))
        .header("host", "bad/host")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The admin listener and the HTTPS listener answer as usual.
    let resp = client.get(proxy.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let https = https_client(&ca.pem(), &["api.test"], proxy.https_addr());
    let resp = https
        .get(url(&proxy, "api.test", "/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
