//! SNI picks the exact certificate, then a wildcard, then the default; listed
//! pairs serve the one marked default.

use super::*;

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
