//! Metrics, access log and status page, seen from outside: exact counts after known
//! traffic, a valid exposition, one JSON line per request, a page a browser renders.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    backend_list, eventually, h1, pool_config, refusing_addr, spawn_replicas, tools, TestProxy,
    PATIENCE,
};

const N: usize = 5;

async fn scrape(proxy: &TestProxy) -> String {
    let resp = h1().get(proxy.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until every `(series, value)` holds (metrics are recorded just after the
/// answer is sent), then checks they still hold: nothing was counted twice.
async fn expect_samples(proxy: &TestProxy, want: &[(&str, f64)]) {
    eventually("the expected metric values", PATIENCE, || async {
        let text = scrape(proxy).await;
        want.iter().all(|(s, v)| sample(&text, s) == Some(*v))
    })
    .await;
    let text = scrape(proxy).await;
    for (s, v) in want {
        assert_eq!(sample(&text, s), Some(*v), "{s}\n{text}");
    }
}

fn promtool_check(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let out = tools::command(tools::PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("running promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed:\n{said}\n{text}");
    assert!(said.trim().is_empty(), "promtool lint:\n{said}\n{text}");
    let mut seen = HashSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').unwrap().0;
        assert!(seen.insert(series), "series exposed twice: {series}");
    }
}

#[tokio::test]
async fn every_answer_is_counted_exactly_and_the_exposition_is_valid() {
    let ok = spawn_replicas(&["ok"], Duration::ZERO).await;
    let busy = spawn_replicas(&["busy"], Duration::from_secs(3)).await;
    let (_held, dead) = refusing_addr();
    let proxy = TestProxy::start(&format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[log]
access = "off"

[[route]]
name = "ok"
path = "/ok"
upstream = "good"

[[route]]
name = "broken"
path = "/broken"
upstream = "dead"

[[route]]
name = "busy"
path = "/busy"
upstream = "busy"

[upstream.good]
backends = [{}]

[upstream.dead]
backends = ["{dead}"]
retries = 0

[upstream.busy]
backends = [{}]
max_inflight = 1
queue = {{ size = 0, timeout = "1s" }}
"#,
        backend_list(&[&ok[0]]),
        backend_list(&[&busy[0]]),
    ))
    .await;
    let text = scrape(&proxy).await;
    let upstreams: Value = proxy.admin_json("/upstreams").await;
    assert_eq!(
        sample(&text, "modelgate_config_generation"),
        upstreams["generation"].as_f64()
    );
    assert_eq!(
        sample(&text, "modelgate_config_reloads_total{result=\"error\"}"),
        Some(0.0)
    );
    let version = format!(
        "modelgate_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &version), Some(1.0));

    let c = h1();
    let running = tokio::spawn(c.get(proxy.url("/busy/long")).send());
    eventually("the busy replica is busy", PATIENCE, || async {
        busy[0].inflight() == 1
    })
    .await;
    for i in 0..N {
        // A fresh connection each: the proxy closes the connection after an error answer.
        let status = |p: &str| {
            let c = h1();
            let url = proxy.url(&format!("{p}/{i}"));
            async move { c.get(url).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status("/ok").await, 200);
        assert_eq!(status("/nowhere").await, 404);
        assert_eq!(status("/broken").await, 502);
        assert_eq!(status("/busy").await, 503);
    }
    assert_eq!(running.await.unwrap().unwrap().status(), 200);

    let n = N as f64;
    expect_samples(
        &proxy,
        &[
            (
                "modelgate_requests_total{code=\"200\",route=\"ok\",upstream=\"good\"}",
                n,
            ),
            (
                "modelgate_requests_total{code=\"404\",route=\"\",upstream=\"\"}",
                n,
            ),
            (
                "modelgate_requests_total{code=\"502\",route=\"broken\",upstream=\"dead\"}",
                n,
            ),
            (
                "modelgate_requests_total{code=\"503\",route=\"busy\",upstream=\"busy\"}",
                n,
            ),
            (
                "modelgate_requests_total{code=\"200\",route=\"busy\",upstream=\"busy\"}",
                1.0,
            ),
            (
                "modelgate_rejected_total{reason=\"no_route\",upstream=\"\"}",
                n,
            ),
            (
                "modelgate_rejected_total{reason=\"bad_gateway\",upstream=\"dead\"}",
                n,
            ),
            (
                "modelgate_rejected_total{reason=\"overloaded\",upstream=\"busy\"}",
                n,
            ),
            (
                "modelgate_request_duration_seconds_count{route=\"ok\",upstream=\"good\"}",
                n,
            ),
            (
                "modelgate_upstream_first_byte_seconds_count{upstream=\"good\"}",
                n,
            ),
            (
                "modelgate_upstream_first_byte_seconds_count{upstream=\"busy\"}",
                1.0,
            ),
            ("modelgate_queue_wait_seconds_count{upstream=\"good\"}", n),
            ("modelgate_retries_total{upstream=\"dead\"}", 0.0),
            ("modelgate_client_aborts_total{upstream=\"good\"}", 0.0),
        ],
    )
    .await;
    let text = scrape(&proxy).await;
    // The 3 s request landed in the 5 s bucket; the N instant rejects below 2.5 s.
    let le = |b: &str| {
        sample(
            &text,
            &format!(
                "modelgate_request_duration_seconds_bucket{{route=\"busy\",upstream=\"busy\",le=\"{b}\"}}"
            ),
        )
    };
    assert_eq!(le("2.5"), Some(n), "{text}");
    assert_eq!(le("5"), Some(n + 1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!(
                "modelgate_backend_up{{backend=\"{}\",upstream=\"good\"}}",
                ok[0].addr()
            )
        ),
        Some(1.0)
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(
        !text.contains("/nowhere"),
        "a request path leaked into a label"
    );
    promtool_check(&text);
    dashboard_metrics_exist(&text);
}

/// Every metric the Grafana dashboard queries is one the proxy exposes.
fn dashboard_metrics_exist(text: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana/modelgate.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("modelgate_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                    "the dashboard queries {name}, which is not exposed"
                );
                names += 1;
            }
        }
    }
    assert!(names >= 10, "the dashboard queries too little: {names}");
}

#[tokio::test]
async fn backend_up_follows_health_and_queue_depth_is_live() {
    let r = spawn_replicas(&["a", "b"], Duration::ZERO).await;
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&r[0], &r[1]]),
        // A check that takes 80 ms on a loaded host must not flip a replica down.
        "[upstream.pool.health]\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"900ms\"\nhealthy_after = 1\nunhealthy_after = 1\n",
    ))
    .await;
    let up = |addr: std::net::SocketAddr| {
        let proxy = &proxy;
        async move {
            sample(
                &scrape(proxy).await,
                &format!("modelgate_backend_up{{backend=\"{addr}\",upstream=\"pool\"}}"),
            )
        }
    };
    eventually("both backends up", PATIENCE, || async {
        up(r[0].addr()).await == Some(1.0) && up(r[1].addr()).await == Some(1.0)
    })
    .await;
    r[1].set_health_status(500);
    eventually("b down", PATIENCE, || async {
        up(r[1].addr()).await == Some(0.0)
    })
    .await;
    assert_eq!(up(r[0].addr()).await, Some(1.0));
    r[1].set_health_status(200);
    eventually("b back up", PATIENCE, || async {
        up(r[1].addr()).await == Some(1.0)
    })
    .await;
    let text = scrape(&proxy).await;
    assert_eq!(
        sample(&text, "modelgate_queue_depth{upstream=\"pool\"}"),
        Some(0.0)
    );
    promtool_check(&text);
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request() {
    let r = spawn_replicas(&["a"], Duration::ZERO).await;
    let toml = pool_config(&backend_list(&[&r[0]]), "")
        .replace("[[route]]", "[log]\naccess = \"access.log\"\n\n[[route]]");
    let proxy = TestProxy::start(&toml).await;
    let c = h1();
    let resp = c
        .post(proxy.url("/v1/chat?x=1"))
        .header("x-request-id", "obs-test-1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let log = proxy.dir().join("access.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    eventually("one access log line", PATIENCE, || async {
        lines().len() == 1
    })
    .await;
    let line = &lines()[0];
    assert_eq!(line["request_id"], "obs-test-1");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/chat?x=1");
    assert_eq!(line["route"], "all");
    assert_eq!(line["upstream"], "pool");
    assert_eq!(line["backend"], r[0].addr().to_string());
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 5);
    assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["host"].as_str().unwrap().starts_with("127.0.0.1"));
    assert_eq!(line["retries"], 0);
    assert_eq!(line["reject"], Value::Null);
    for key in ["queue_wait", "ttfb", "total"] {
        assert!(line[key].as_f64().is_some(), "{key} in {line}");
    }
    assert!(line["time"].as_str().unwrap().ends_with('Z'));

    // A proxy-made answer names its reason.
    r[0].shutdown();
    let resp = c.get(proxy.url("/gone")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    eventually("two access log lines", PATIENCE, || async {
        lines().len() == 2
    })
    .await;
    assert_eq!(lines()[1]["reject"], "bad_gateway");
    assert_eq!(lines()[1]["status"], 502);
}

/// The status page as headless Chromium renders it after its scripts ran.
fn rendered(url: &str) -> String {
    tools::chromium(url, "--dump-dom")
}

/// The rendered `<tr>` of backend `addr`, if any.
fn backend_row(dom: &str, addr: std::net::SocketAddr) -> Option<String> {
    let at = dom.find(&format!("data-addr=\"{addr}\""))?;
    let end = dom[at..].find("</tr>")? + at;
    Some(dom[at..end].to_string())
}

#[tokio::test]
async fn the_status_page_shows_backends_and_a_replica_going_down() {
    let r = spawn_replicas(&["a", "b"], Duration::ZERO).await;
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&r[0], &r[1]]),
        // A check that takes 80 ms on a loaded host must not flip a replica down.
        "[upstream.pool.health]\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"900ms\"\nhealthy_after = 1\nunhealthy_after = 1\n",
    ))
    .await;
    let state = |addr: std::net::SocketAddr| {
        let proxy = &proxy;
        async move {
            let v: Value = proxy.admin_json("/upstreams").await;
            v["upstreams"]["pool"]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["addr"] == addr.to_string())
                .map(|b| b["state"].as_str().unwrap().to_string())
        }
    };
    eventually("both backends up", PATIENCE, || async {
        state(r[0].addr()).await.as_deref() == Some("up")
            && state(r[1].addr()).await.as_deref() == Some("up")
    })
    .await;
    let page = h1().get(proxy.admin_url("/")).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    for external in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(external), "external asset: {external}");
    }

    let url = proxy.admin_url("/");
    let dom = tokio::task::spawn_blocking(move || rendered(&url))
        .await
        .unwrap();
    for b in &r {
        let row =
            backend_row(&dom, b.addr()).unwrap_or_else(|| panic!("{} not shown:\n{dom}", b.addr()));
        assert!(row.contains("data-state=\"up\""), "{row}");
    }
    assert!(dom.contains("upstream pool"), "{dom}");

    r[1].set_health_status(500);
    eventually("b down", PATIENCE, || async {
        state(r[1].addr()).await.as_deref() == Some("down")
    })
    .await;
    let url = proxy.admin_url("/");
    let dom = tokio::task::spawn_blocking(move || rendered(&url))
        .await
        .unwrap();
    let row = backend_row(&dom, r[1].addr()).unwrap();
    assert!(
        row.contains("data-state=\"down\"") && row.contains(">down<"),
        "{row}"
    );
    let row = backend_row(&dom, r[0].addr()).unwrap();
    assert!(row.contains("data-state=\"up\""), "{row}");
}

#[tokio::test]
async fn reload_metrics_follow_real_reloads() {
    let r = spawn_replicas(&["a", "b"], Duration::ZERO).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let generation = |text: &str| sample(text, "modelgate_config_generation").unwrap();
    let first = generation(&scrape(&proxy).await);

    let good = std::fs::read_to_string(proxy.config_path())
        .unwrap()
        .replace(&r[0].addr().to_string(), &r[1].addr().to_string());
    std::fs::write(proxy.config_path(), &good).unwrap();
    let resp = h1().post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let now = body["generation"].as_f64().unwrap();
    assert!(now > first);

    std::fs::write(
        proxy.config_path(),
        format!("{good}\nnot toml at all = = =\n"),
    )
    .unwrap();
    assert_eq!(
        h1().post(proxy.admin_url("/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        422
    );
    // The file watch may also have tried the broken file: count at least our one.
    eventually("reload counters follow", PATIENCE, || async {
        let text = scrape(&proxy).await;
        sample(&text, "modelgate_config_reloads_total{result=\"ok\"}").unwrap_or(0.0) >= 1.0
            && sample(&text, "modelgate_config_reloads_total{result=\"error\"}").unwrap_or(0.0)
                >= 1.0
            && generation(&text) == now
    })
    .await;
}
