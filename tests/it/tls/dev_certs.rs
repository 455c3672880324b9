//! `modelgate cert` against real TLS: the certificates it writes are served and
//! verified by clients that trust only its CA; failed handshakes (a client that
//! does not trust the certificate, plain HTTP, a client that hangs up
//! mid-handshake) are counted by reason and logged at DEBUG, never at ERROR.

use super::*;

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
