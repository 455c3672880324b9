//! TLS termination with real handshakes against a CA made in each test: SNI picks the
//! certificate, the policy refuses old protocols and non-AEAD suites, ALPN gives h2,
//! certificates rotate without restart, bad certificates are refused (at start) or
//! kept out (on rotation), plain HTTP redirects, and `https` upstreams verify the
//! backend and present a client certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use modelgate::demo::replica::Replica;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::tls::*;
use crate::support::*;

fn config(certs: &Path, upstreams: &str, listen_extra: &str) -> String {
    format!(
        r#"
[listen]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
{listen_extra}

[tls]
certs = "{certs}"

{upstreams}
"#,
        certs = certs.display()
    )
}

fn one_pool(backend: SocketAddr) -> String {
    format!(
        r#"
[[route]]
name = "all"
path = "/"
upstream = "pool"

[upstream.pool]
backends = ["{backend}"]
"#
    )
}

fn url(proxy: &TestProxy, host: &str, path: &str) -> String {
    format!("https://{host}:{}{path}", proxy.https_addr().port())
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let api = ca.issue(&["api.test"]);
    let wild = ca.issue(&["*.models.test"]);
    let fallback = ca.issue(&["fallback.test"]);
    api.write(dir.path(), "api");
    wild.write(dir.path(), "wild");
    fallback.write(dir.path(), "default");
    let r = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&config(dir.path(), &one_pool(r.addr()), "")).await;
    let addr = proxy.https_addr();

    assert!(served_cert(addr, Some("api.test")).await == api.der);
    assert!(served_cert(addr, Some("vision.models.test")).await == wild.der);
    // A wildcard covers one label only.
    assert!(served_cert(addr, Some("a.b.models.test")).await == fallback.der);
    assert!(served_cert(addr, Some("unknown.test")).await == fallback.der);
    assert!(served_cert(addr, None).await == fallback.der);

    // A verifying client gets through on both names, over h2.
    let client = https_client(&ca.pem(), &["api.test", "vision.models.test"], addr);
    for host in ["api.test", "vision.models.test"] {
        let resp = client.get(url(&proxy, host, "/echo")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    }
}

#[tokio::test]
async fn listed_pairs_serve_the_one_marked_default() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let a = ca.issue(&["a.test"]);
    let b = ca.issue(&["b.test"]);
    a.write(dir.path(), "a");
    b.write(dir.path(), "b");
    let r = Replica::builder("r").spawn().await.unwrap();
    let d = dir.path().display();
    let toml = format!(
        r#"
[listen]
https = "{{https}}"
admin = "{{admin}}"

[tls]
certs = [{{ cert = "{d}/a.crt", key = "{d}/a.key" }}, {{ cert = "{d}/b.crt", key = "{d}/b.key", default = true }}]
{}"#,
        one_pool(r.addr())
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.https_addr();
    assert!(served_cert(addr, Some("a.test")).await == a.der);
    assert!(served_cert(addr, Some("other.test")).await == b.der);
    assert!(served_cert(addr, None).await == b.der);
}

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
async fn rotated_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let v1 = ca.issue(&["api.test"]);
    v1.write(dir.path(), "api");
    let r = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&config(dir.path(), &one_pool(r.addr()), "")).await;
    let addr = proxy.https_addr();

    // An h2 connection opened before the rotation.
    let tls = connect(addr, Some("api.test"), ca.client(&[b"h2"]))
        .await
        .unwrap();
    assert!(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref() == v1.der.as_slice());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let get = || {
        http::Request::get("https://api.test/echo")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(send.send_request(get()).await.unwrap().status(), 200);

    let v2 = ca.issue(&["api.test"]);
    v2.write(dir.path(), "api");
    eventually("the rotated certificate is served", PATIENCE, || async {
        served_cert(addr, Some("api.test")).await == v2.der
    })
    .await;
    // The connection made before still works, on the same TLS session.
    for _ in 0..3 {
        let resp = send.send_request(get()).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    assert!(!conn.is_finished());

    // A pair added to the directory is served too.
    let added = ca.issue(&["new.test"]);
    added.write(dir.path(), "new");
    eventually("the added certificate is served", PATIENCE, || async {
        served_cert(addr, Some("new.test")).await == added.der
    })
    .await;
    assert!(served_cert(addr, Some("api.test")).await == v2.der);
    let client = https_client(&ca.pem(), &["new.test"], addr);
    let resp = client
        .get(url(&proxy, "new.test", "/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn broken_new_certificate_keeps_the_previous_one() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let v1 = ca.issue(&["api.test"]);
    v1.write(dir.path(), "api");
    let r = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&config(dir.path(), &one_pool(r.addr()), "")).await;
    let addr = proxy.https_addr();

    // Garbage in place of the certificate.
    std::fs::write(
        dir.path().join("api.crt"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    eventually("the broken certificate is rejected", PATIENCE, || async {
        proxy
            .logs()
            .matches("rejected a changed certificate")
            .count()
            >= 1
    })
    .await;
    assert!(served_cert(addr, Some("api.test")).await == v1.der);
    assert!(proxy.logs().contains("api.crt"), "{}", proxy.logs());

    // A valid certificate with somebody else's key.
    let other = ca.issue(&["api.test"]);
    std::fs::write(dir.path().join("api.crt"), &other.cert_pem).unwrap();
    eventually("the mismatched pair is rejected", PATIENCE, || async {
        proxy.logs().contains("does not match the certificate")
    })
    .await;
    assert!(served_cert(addr, Some("api.test")).await == v1.der);

    // Fixing the key brings the new pair in.
    std::fs::write(dir.path().join("api.key"), &other.key_pem).unwrap();
    eventually("the fixed pair is served", PATIENCE, || async {
        served_cert(addr, Some("api.test")).await == other.der
    })
    .await;
    // Both refusals and the swap are counted.
    let reloads = |result: &'static str| {
        let proxy = &proxy;
        async move {
            metric_value(
                proxy,
                &format!("modelgate_tls_cert_reloads_total{{result=\"{result}\"}}"),
            )
            .await
        }
    };
    assert!(reloads("error").await >= 2.0);
    eventually("the swap is counted", PATIENCE, || async {
        reloads("ok").await >= 1.0
    })
    .await;
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

/// One bad-certificate case: files to write, and what `check` must say.
struct Case {
    name: &'static str,
    files: Vec<(&'static str, String)>,
    expect: Vec<&'static str>,
}

#[test]
fn check_and_run_name_the_bad_certificate_file() {
    let ca = TestCa::new();
    let good = ca.issue(&["api.test"]);
    let other = ca.issue(&["api.test"]);
    let now = time::OffsetDateTime::now_utc();
    let expired = ca.issue_between(
        &["api.test"],
        now - time::Duration::days(90),
        now - time::Duration::days(1),
    );
    let cases = vec![
        Case {
            name: "mismatched key",
            files: vec![
                ("api.crt", good.cert_pem.clone()),
                ("api.key", other.key_pem.clone()),
            ],
            expect: vec!["api.key: does not match the certificate in", "api.crt"],
        },
        Case {
            name: "expired",
            files: vec![
                ("api.crt", expired.cert_pem.clone()),
                ("api.key", expired.key_pem.clone()),
            ],
            expect: vec!["api.crt: expired on", "renew it"],
        },
        Case {
            name: "garbage",
            files: vec![
                ("api.crt", "hello\n".into()),
                ("api.key", good.key_pem.clone()),
            ],
            expect: vec!["api.crt: no certificate found"],
        },
        Case {
            name: "swapped",
            files: vec![
                ("api.crt", good.key_pem.clone()),
                ("api.key", good.cert_pem.clone()),
            ],
            expect: vec![
                "api.crt: no certificate found; it holds a private key; did you swap cert and key?",
            ],
        },
        Case {
            name: "key missing",
            files: vec![("api.crt", good.cert_pem.clone())],
            expect: vec!["api.crt: no matching api.key"],
        },
        Case {
            name: "empty dir",
            files: vec![],
            expect: vec!["no NAME.crt + NAME.key pairs found"],
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        for (f, text) in &case.files {
            std::fs::write(certs.join(f), text).unwrap();
        }
        let toml = format!(
            "[listen]\nhttps = \"127.0.0.1:18443\"\n\n[tls]\ncerts = \"certs\"\n{}",
            one_pool("127.0.0.1:9".parse().unwrap())
        );
        let file = dir.path().join("modelgate.toml");
        std::fs::write(&file, toml).unwrap();
        let (ok, out) = check_file(&file);
        assert!(!ok, "{}: check passed:\n{out}", case.name);
        let prefix = format!("{}: tls.certs: {}", file.display(), certs.display());
        assert!(
            out.contains(&prefix),
            "{}: no {prefix:?} in:\n{out}",
            case.name
        );
        for e in &case.expect {
            assert!(out.contains(e), "{}: no {e:?} in:\n{out}", case.name);
        }
        let run = Command::new(modelgate_bin())
            .args(["run", "-c"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{}: run started", case.name);
        assert!(stderr.contains(case.expect[0]), "{}: {stderr}", case.name);
        assert!(!stderr.contains("panicked"), "{}: {stderr}", case.name);
    }

    // A missing directory.
    let (ok, out, _) = check("[listen]\nhttps = \"127.0.0.1:18443\"\n\n[tls]\ncerts = \"no-such-dir\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n\n[upstream.u]\nbackends = [\"127.0.0.1:9\"]\n");
    assert!(!ok);
    assert!(
        out.contains("no-such-dir: cannot read the certificate directory"),
        "{out}"
    );

    // Expiring soon: a warning, still valid.
    let soon = ca.issue_between(
        &["api.test"],
        now - time::Duration::days(80),
        now + time::Duration::days(5),
    );
    let dir = tempfile::tempdir().unwrap();
    soon.write(dir.path(), "api");
    let toml = format!(
        "[listen]\nhttps = \"127.0.0.1:18443\"\n\n[tls]\ncerts = \"{}\"\n{}",
        dir.path().display(),
        one_pool("127.0.0.1:9".parse().unwrap())
    );
    let (ok, out, _) = check(&toml);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:") && out.contains("api.crt: expires on"),
        "{out}"
    );
}

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

/// `modelgate cert` against real TLS: the certificates it writes are served and
/// verified by clients that trust only its CA; failed handshakes (a client that does
/// not trust the certificate, plain HTTP, a client that hangs up mid-handshake) are
/// counted by reason and logged at DEBUG, never at ERROR.
/// `modelgate cert --dir DIR NAMES...`; returns its stdout.
fn dev_cert(dir: &Path, names: &[&str]) -> String {
    let out = Command::new(modelgate_bin())
        .arg("cert")
        .arg("--dir")
        .arg(dir)
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "modelgate cert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn generated_certificates_serve_tls_that_clients_trusting_the_ca_verify() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().join("certs");
    let printed = dev_cert(&dir, &["localhost", "api.test"]);
    let ca_file = dir.join("ca").join("ca.crt");
    assert!(
        printed.contains(&format!("curl --cacert {}", ca_file.display())),
        "{printed}"
    );
    assert!(printed.contains("update-ca-certificates"), "{printed}");
    let ca_pem = std::fs::read_to_string(&ca_file).unwrap();

    let r = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start_with_env(
        &config(&dir, &one_pool(r.addr()), ""),
        &[("RUST_LOG", "info,modelgate::tls::handshake=debug")],
    )
    .await;
    let addr = proxy.https_addr();

    // A client whose only root is the generated CA verifies both names, over h2.
    let client = https_client(&ca_pem, &["localhost", "api.test"], addr);
    for host in ["localhost", "api.test"] {
        let resp = client
            .get(format!("https://{host}:{}/hello", addr.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    }

    // A second run reuses the CA: a new name verifies with the same trust.
    let again = dev_cert(&dir, &["chat.test"]);
    assert!(again.contains("signed with the existing CA"), "{again}");
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), ca_pem);
    let chat = https_client(&ca_pem, &["chat.test"], addr);
    eventually("the new pair is served", PATIENCE, || async {
        chat.get(format!("https://chat.test:{}/", addr.port()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // Failed handshakes: a client trusting another CA (it answers with an alert), plain
    // HTTP on the HTTPS port, and a client that hangs up after half a ClientHello.
    let stranger = TestCa::new();
    let refused = connect(addr, Some("localhost"), stranger.client(&[b"http/1.1"])).await;
    assert!(refused.is_err(), "a client trusting another CA got through");
    let plain = h1()
        .get(format!("http://127.0.0.1:{}/", addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01])
        .await
        .unwrap();
    drop(half);

    for reason in ["alert", "invalid", "closed"] {
        let series = format!("modelgate_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        eventually(&format!("{series} counted"), PATIENCE, || async {
            metric_value(&proxy, &series).await >= 1.0
        })
        .await;
    }
    let logs = proxy.logs();
    assert!(
        logs.contains("DEBUG modelgate::tls::handshake] TLS handshake with 127.0.0.1:"),
        "{logs}"
    );
    assert!(logs.contains("received fatal alert"), "{logs}");
    assert!(
        !logs.contains("ERROR"),
        "handshake failures logged as errors:\n{logs}"
    );
}
