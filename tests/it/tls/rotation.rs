//! Certificates rotate without a restart: new connections get the new one, open
//! ones keep working, and a broken new file keeps the previous certificate.

use super::*;
use modelgate::demo::replica::ReplicaHandle;

/// A proxy serving `api.test` with the first certificate (`v1`) of `ca` from the
/// watched directory `dir`, in front of one replica:
/// `(ca, dir, v1, replica, proxy)`.
async fn rotating_proxy() -> (TestCa, tempfile::TempDir, Issued, ReplicaHandle, TestProxy) {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let v1 = ca.issue(&["api.test"]);
    v1.write(dir.path(), "api");
    let replica = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&config(dir.path(), &one_pool(replica.addr()), "")).await;
    (ca, dir, v1, replica, proxy)
}

#[tokio::test]
async fn rotated_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let (ca, dir, v1, _replica, proxy) = rotating_proxy().await;
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
    let (ca, dir, v1, _replica, proxy) = rotating_proxy().await;
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
