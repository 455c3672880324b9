//! Bad certificate files are refused by `check` and `run` alike, naming the file.

use super::*;

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
