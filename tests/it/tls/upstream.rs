//! `https` upstreams: the proxy verifies the backend against the configured CA
//! and presents a client certificate (mTLS).

use super::*;

/// A TLS backend that requires a client certificate issued by `ca` and answers
/// every request with the ALPN protocol and whether a client certificate came.
async fn mtls_backend(ca: &TestCa, server: &Issued) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(ca.roots()),
        provider(),
    )
    .build()
    .unwrap();
    let certs = vec![rustls::pki_types::CertificateDer::from(server.der.clone())];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let info = format!(
                    "alpn={} client_cert={}",
                    String::from_utf8_lossy(conn.alpn_protocol().unwrap_or(b"none")),
                    conn.peer_certificates().is_some_and(|c| !c.is_empty())
                );
                let svc = hyper::service::service_fn(move |_req| {
                    let info = info.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from(info),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_verifies_the_backend_and_presents_a_client_certificate() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    let client = ca.issue(&["modelgate.client"]);
    client.write(d, "client");
    let backend = mtls_backend(&ca, &ca.issue(&["backend.test", "127.0.0.1"])).await;
    let stranger = TestCa::new();
    std::fs::write(d.join("stranger.pem"), stranger.pem()).unwrap();
    let dd = d.display();
    let toml = format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[[route]]
name = "good"
path = "/good"
upstream = "good"

[[route]]
name = "by-ip"
path = "/by-ip"
upstream = "by_ip"

[[route]]
name = "wrong-ca"
path = "/wrong-ca"
upstream = "wrong_ca"

[[route]]
name = "no-client-cert"
path = "/no-client-cert"
upstream = "no_client_cert"

[upstream.good]
backends = ["{backend}"]
protocol = "https"
ca = "{dd}/ca.pem"
sni = "backend.test"
client_cert = "{dd}/client.crt"
client_key = "{dd}/client.key"
retries = 0

[upstream.by_ip]
backends = ["{backend}"]
protocol = "https"
ca = "{dd}/ca.pem"
client_cert = "{dd}/client.crt"
client_key = "{dd}/client.key"
retries = 0

[upstream.wrong_ca]
backends = ["{backend}"]
protocol = "https"
ca = "{dd}/stranger.pem"
sni = "backend.test"
client_cert = "{dd}/client.crt"
client_key = "{dd}/client.key"
retries = 0

[upstream.no_client_cert]
backends = ["{backend}"]
protocol = "https"
ca = "{dd}/ca.pem"
sni = "backend.test"
retries = 0

[[route]]
name = "checked"
path = "/checked"
upstream = "checked"

[upstream.checked]
backends = ["{backend}"]
protocol = "https"
ca = "{dd}/ca.pem"
sni = "backend.test"
client_cert = "{dd}/client.crt"
client_key = "{dd}/client.key"

[upstream.checked.health]
interval = "200ms"
timeout = "150ms"

[[route]]
name = "checked-wrong-ca"
path = "/checked-wrong-ca"
upstream = "checked_wrong_ca"

[upstream.checked_wrong_ca]
backends = ["{backend}"]
protocol = "https"
ca = "{dd}/stranger.pem"
sni = "backend.test"
client_cert = "{dd}/client.crt"
client_key = "{dd}/client.key"

[upstream.checked_wrong_ca.health]
interval = "200ms"
timeout = "150ms"
"#
    );
    let proxy = TestProxy::start(&toml).await;
    for path in ["/good", "/by-ip"] {
        let resp = h1().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            resp.text().await.unwrap(),
            "alpn=h2 client_cert=true",
            "{path}"
        );
    }
    for path in ["/wrong-ca", "/no-client-cert"] {
        let resp = h1().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 502, "{path}");
    }
    // Health checks speak TLS with the upstream's CA, SNI and client certificate.
    eventually(
        "the https backend passes its health check",
        PATIENCE,
        || async {
            h1().get(proxy.url("/checked"))
                .send()
                .await
                .unwrap()
                .status()
                == 200
        },
    )
    .await;
    let state =
        |v: &serde_json::Value, up: &str| v["upstreams"][up]["backends"][0]["state"].clone();
    eventually(
        "the wrong-CA pool has been checked a few times",
        PATIENCE,
        || async {
            let v: serde_json::Value = proxy.admin_json("/upstreams").await;
            state(&v, "checked") == "up"
        },
    )
    .await;
    let v: serde_json::Value = proxy.admin_json("/upstreams").await;
    assert_eq!(
        state(&v, "checked_wrong_ca"),
        "unknown",
        "a backend that fails TLS verification never goes up"
    );
    assert_eq!(
        h1().get(proxy.url("/checked-wrong-ca"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
}
