//! Backends found by name: a real DNS server on a loopback port whose answers change
//! under load, replicas on 127.0.0.2, 127.0.0.3, ... and no failed request; names in
//! `backends` through the system's resolver; `check` on names it cannot resolve.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use modelgate::demo::replica::{Replica, ReplicaHandle};

use crate::support::dns::{Answer, DnsServer};
use crate::support::*;

const NAME: &str = "replicas.models.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Replicas on 127.0.0.2.. 127.0.0.(1+n), all on one port (DNS gives addresses, the
/// port comes from the config). Retries with another port if one is taken.
async fn replicas_on_one_port(n: u8, delay: Duration) -> (u16, Vec<ReplicaHandle>) {
    'port: loop {
        let port = free_port();
        let mut out = Vec::new();
        for last in 2..2 + n {
            let r = Replica::builder(format!("r{last}"))
                .bind(SocketAddr::new(ip(last), port))
                .delay(delay)
                .spawn()
                .await;
            match r {
                Ok(r) => out.push(r),
                Err(_) => continue 'port,
            }
        }
        return (port, out);
    }
}

/// Backend addresses and states on `/upstreams` for upstream `pool`.
async fn backends(proxy: &TestProxy) -> Vec<(String, String)> {
    let v: serde_json::Value = h1()
        .get(proxy.admin_url("/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out: Vec<(String, String)> = v["upstreams"]["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A proxy whose one upstream `pool` (route `/`) finds `NAME:port` through `dns`
/// every 100 ms; `extra` is appended to `[upstream.pool]`.
async fn discovering(dns: &DnsServer, port: u16, extra: &str) -> TestProxy {
    TestProxy::start(&discovering_config(dns, port, extra)).await
}

fn discovering_config(dns: &DnsServer, port: u16, extra: &str) -> String {
    format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[[route]]
name = "all"
path = "/"
upstream = "pool"

[upstream.pool]
discover = {{ dns = "{NAME}:{port}", every = "100ms", resolver = "{}" }}
{extra}
"#,
        dns.addr()
    )
}

/// Waits until `/upstreams` lists exactly `want` (addresses on `port`), each `up`.
async fn wait_for_set(proxy: &TestProxy, port: u16, want: &[u8], what: &str) {
    let mut expected: Vec<(String, String)> = want
        .iter()
        .map(|&l| (SocketAddr::new(ip(l), port).to_string(), "up".to_string()))
        .collect();
    expected.sort();
    eventually(what, PATIENCE, || {
        let expected = expected.clone();
        async move { backends(proxy).await == expected }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_change_under_load_with_no_failed_request() {
    let dns = DnsServer::start().await;
    let (port, replicas) = replicas_on_one_port(4, Duration::from_millis(20)).await;
    // .6 never passes its health check: discovered, it must stay out of rotation.
    let sick = Replica::builder("sick")
        .bind(SocketAddr::new(ip(6), port))
        .health_status(503)
        .spawn()
        .await
        .unwrap();
    dns.set(NAME, Answer::Addrs(vec![ip(2), ip(3)]));
    let proxy = discovering(
        &dns,
        port,
        r#"max_inflight = 2
retries = 1

[upstream.pool.health]
path = "/health"
interval = "100ms"
timeout = "90ms""#,
    )
    .await;
    wait_for_set(&proxy, port, &[2, 3], "the first answer's two backends, up").await;

    let load = Load::posts(proxy.url("/v1/predict"), 6);
    let served = |r: &ReplicaHandle| r.hits();
    eventually("load flows", PATIENCE, || async { load.ok() > 20 }).await;

    // A replica added: it joins once its health check passes.
    dns.set(NAME, Answer::Addrs(vec![ip(2), ip(3), ip(4)]));
    wait_for_set(&proxy, port, &[2, 3, 4], "127.0.0.4 joins").await;
    let before = served(&replicas[2]);
    eventually("127.0.0.4 gets requests", PATIENCE, || async {
        served(&replicas[2]) > before
    })
    .await;

    // One removed: it finishes what it runs and gets nothing new; the kept ones stay up
    // (their state carries over, no new health checks needed).
    dns.set(NAME, Answer::Addrs(vec![ip(3), ip(4)]));
    wait_for_set(&proxy, port, &[3, 4], "127.0.0.2 leaves").await;
    eventually("127.0.0.2 finishes what it runs", PATIENCE, || async {
        replicas[0].inflight() == 0
    })
    .await;
    let gone = served(&replicas[0]);
    holds_for(
        "a removed replica gets no new requests",
        Duration::from_millis(300),
        || async { served(&replicas[0]) == gone },
    )
    .await;

    // DNS fails, then answers with nothing: the last known set stays, errors are counted.
    let errors = r#"modelgate_discovery_errors_total{upstream="pool"} "#;
    let errors_before = metric_value(&proxy, errors).await;
    dns.set(NAME, Answer::Fail);
    eventually("failed lookups are counted", PATIENCE, || async {
        metric_value(&proxy, errors).await >= errors_before + 2.0
    })
    .await;
    dns.set(NAME, Answer::Addrs(Vec::new()));
    let errors_mid = metric_value(&proxy, errors).await;
    eventually("empty answers are counted", PATIENCE, || async {
        metric_value(&proxy, errors).await >= errors_mid + 2.0
    })
    .await;
    wait_for_set(&proxy, port, &[3, 4], "the last known set is kept").await;

    // Answers again, with a sick newcomer: it is listed but never served.
    dns.set(NAME, Answer::Addrs(vec![ip(3), ip(4), ip(5), ip(6)]));
    let before = served(&replicas[3]);
    eventually("127.0.0.5 gets requests", PATIENCE, || async {
        served(&replicas[3]) > before
    })
    .await;
    let listed = backends(&proxy).await;
    let sick_addr = SocketAddr::new(ip(6), port).to_string();
    assert!(
        listed.iter().any(|(a, s)| a == &sick_addr && s != "up"),
        "{listed:?}"
    );

    let (ok, failed, failures) = load.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} failed of {}: {failures:?}",
        ok + failed
    );
    assert_eq!(
        sick.hits(),
        0,
        "the replica failing its health check got requests"
    );
    assert!(dns.queries() > 10);
    let logs = proxy.logs();
    assert!(logs.contains("DNS lookup failed"), "{logs}");
    for r in &replicas {
        r.shutdown();
    }
}

/// Waits until `series` counts more than `after`.
async fn lookups_fail(proxy: &TestProxy, series: &str, after: f64) {
    eventually("lookups to the silent resolver fail", PATIENCE, || async {
        metric_value(proxy, series).await > after
    })
    .await;
}

/// A reload that points discovery at a DNS server that never answers, then at other
/// names, keeps the backends found so far serving until a new lookup answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_silent_resolver_keeps_the_backends_serving() {
    let dns = DnsServer::start().await;
    // Bound but never read: every query to it times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let (port, replicas) = replicas_on_one_port(3, Duration::from_millis(5)).await;
    dns.set(NAME, Answer::Addrs(vec![ip(2), ip(3)]));
    let other = "other.models.test";
    dns.set(other, Answer::Addrs(vec![ip(4)]));
    let proxy = discovering(&dns, port, "").await;
    wait_for_set(&proxy, port, &[2, 3], "the first answer's two backends").await;
    let load = Load::posts(proxy.url("/v1/predict"), 4);
    eventually("load flows", PATIENCE, || async { load.ok() > 20 }).await;

    let errors = r#"modelgate_discovery_errors_total{upstream="pool"} "#;
    // Only the resolver changes.
    let before = metric_value(&proxy, errors).await;
    reload_replacing(&proxy, &dns.addr().to_string(), &silent_addr).await;
    wait_for_set(&proxy, port, &[2, 3], "the set is kept across the reload").await;
    lookups_fail(&proxy, errors, before).await;
    wait_for_set(&proxy, port, &[2, 3], "the set is kept while lookups fail").await;
    // The names change too.
    let before = metric_value(&proxy, errors).await;
    reload_replacing(&proxy, NAME, other).await;
    wait_for_set(&proxy, port, &[2, 3], "the set is kept across new names").await;
    lookups_fail(&proxy, errors, before).await;
    wait_for_set(
        &proxy,
        port,
        &[2, 3],
        "the set is kept while new names fail",
    )
    .await;
    // Once a lookup of the new names answers, its answer replaces the old set.
    reload_replacing(&proxy, &silent_addr, &dns.addr().to_string()).await;
    wait_for_set(&proxy, port, &[4], "the new names' answer replaces the set").await;
    eventually("127.0.0.4 gets requests", PATIENCE, || async {
        replicas[2].hits() > 0
    })
    .await;
    let (ok, failed, failures) = load.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} failed of {}: {failures:?}",
        ok + failed
    );
    drop(silent);
}

/// Until its name resolves, the upstream has no backend: requests get a clear 503,
/// `/readyz` says not ready and why (so an orchestrator sends no traffic yet), and the
/// log names the name, the resolver asked and the failure in words.
#[tokio::test]
async fn a_name_that_does_not_resolve_at_start_is_not_ready_until_it_does() {
    let dns = DnsServer::start().await;
    let (port, replicas) = replicas_on_one_port(1, Duration::ZERO).await;
    // Not set: the server answers NXDOMAIN.
    let proxy = TestProxy::start_listening(&discovering_config(&dns, port, "")).await;
    let (status, body) = status_and_body(h1().get(proxy.url("/")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("no_healthy_backend"))
    );
    let readyz = || async {
        let r = h1().get(proxy.admin_url("/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    eventually(
        "/readyz answers once the listeners accept",
        PATIENCE,
        || async { readyz().await.1.contains("upstream") },
    )
    .await;
    assert_eq!(
        readyz().await,
        (
            503,
            format!("not ready: upstream pool has no backend ({NAME}:{port} not resolved yet)\n")
        )
    );
    // The failure is logged in words, without claiming backends that were never found.
    let said = format!(
        "DNS lookup failed: {NAME} via resolver {}: no such name (NXDOMAIN); nothing found by name yet",
        dns.addr()
    );
    eventually("the failed lookup is logged", PATIENCE, || async {
        proxy.logs().contains(&said)
    })
    .await;
    dns.set(NAME, Answer::Addrs(vec![ip(2)]));
    eventually("ready once DNS answers", PATIENCE, || async {
        readyz().await == (200, "ready\n".to_string())
    })
    .await;
    eventually("the replica serves", PATIENCE, || async {
        matches!(h1().get(proxy.url("/")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(replicas[0].hits() > 0);
    // Ready stays ready: a name failing later keeps the last set, and readiness.
    let errors = r#"modelgate_discovery_errors_total{upstream="pool"} "#;
    let before = metric_value(&proxy, errors).await;
    dns.set(NAME, Answer::Fail);
    eventually("failed lookups are counted", PATIENCE, || async {
        metric_value(&proxy, errors).await >= before + 2.0
    })
    .await;
    assert_eq!(readyz().await.0, 200);
    let logs = proxy.logs();
    let said = format!(
        "DNS lookup failed: {NAME} via resolver {}: the server answered SERVFAIL (Server Failure); the last known backends keep serving",
        dns.addr()
    );
    assert!(logs.contains(&said), "{logs}");
    assert!(!logs.contains("Query {"), "{logs}");
}

/// `backends` may mix names and addresses; names use the system's resolver
/// (`localhost` comes from /etc/hosts).
#[tokio::test]
async fn host_names_in_backends_resolve_with_the_system_resolver() {
    let by_name = Replica::builder("by-name").spawn().await.unwrap();
    let by_ip = Replica::builder("by-ip").spawn().await.unwrap();
    let proxy = TestProxy::start(&pool_config(
        &format!(
            "\"localhost:{}\", \"{}\"",
            by_name.addr().port(),
            by_ip.addr()
        ),
        "resolve_every = \"200ms\"\n[upstream.pool.health]\ninterval = \"100ms\"\ntimeout = \"90ms\"",
    ))
    .await;
    let client = h1();
    eventually("both replicas serve", PATIENCE, || async {
        let _ = client.get(proxy.url("/")).send().await;
        by_name.hits() > 0 && by_ip.hits() > 0
    })
    .await;
    let listed = backends(&proxy).await;
    assert!(
        listed
            .iter()
            .any(|(a, s)| a == &by_name.addr().to_string() && s == "up"),
        "{listed:?}"
    );
}

#[test]
fn check_accepts_names_without_resolving_them() {
    let (ok, out, _) = check(
        r#"
[listen]
http = "127.0.0.1:8080"

[[route]]
name = "r"
path = "/"
upstream = "u"

[[route]]
name = "d"
path = "/d"
upstream = "d"

[upstream.u]
backends = ["vision.does-not-exist.invalid:8000", { addr = "10.0.0.5:8000", weight = 2 }]
resolve_every = "10s"

[upstream.d]
discover = { dns = "model.models.svc.cluster.local:8000", every = "5s", resolver = "10.0.0.10:53" }
"#,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("dns vision.does-not-exist.invalid:8000") && out.contains("not now"),
        "{out}"
    );
}

#[test]
fn bad_names_are_reported_with_line_and_fix() {
    let cases = [
        (
            r#"backends = ["vision"]"#,
            "upstream.u.backends[0]: \"vision\" has no port",
        ),
        (
            r#"backends = ["vis ion:8000"]"#,
            "upstream.u.backends[0]: expected \"host:port\" or \"ip:port\"",
        ),
        (
            r#"backends = ["vision:0"]"#,
            "the port must be a number from 1 to 65535",
        ),
        (
            r#"discover = { dns = "10.0.0.5:8000" }"#,
            "upstream.u.discover.dns: 10.0.0.5:8000 is an address, not a name",
        ),
        (
            "discover = { dns = \"a.b:80\" }\nresolve_every = \"1s\"",
            "upstream.u.resolve_every: resolve_every applies to names in backends",
        ),
        (
            r#"discover = { dns = "a.b:80", resolver = "dns.local:53" }"#,
            "upstream.u.discover.resolver: \"dns.local:53\" uses a host name; the resolver must be an IP address",
        ),
    ];
    for (line, want) in cases {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:8080\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n\n[upstream.u]\n{line}\n"
        );
        let (ok, out, path) = check(&text);
        assert!(!ok, "accepted: {line}");
        let at = format!("{}:10:", path.display());
        assert!(
            out.contains(&at) || out.contains(&format!("{}:11:", path.display())),
            "{out}"
        );
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}
