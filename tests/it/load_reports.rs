//! Replica load reports read from each replica's Prometheus page
//! (`[upstream.X.load] metrics = "/metrics"`): every engine's names, sums over
//! models, failures that never take a replica out, pollers kept across reloads.

use serde_json::Value;

use crate::support::model::{
    busy_and_idle, PageFault, LLAMACPP_METRICS, SGLANG_METRICS, TGI_METRICS, TRITON_METRICS,
};
use crate::support::*;

fn polled(every: &str) -> String {
    format!("[upstream.pool.load]\nmetrics = \"/metrics\"\nevery = \"{every}\"")
}

async fn served_by(url: String) -> String {
    let resp = h1().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["replica"].as_str().unwrap().to_string()
}

/// What `/upstreams` shows `m` last reported (`Null` before any report).
async fn reported(proxy: &TestProxy, m: &Model) -> Value {
    let up = proxy.admin_json("/upstreams").await;
    up["upstreams"]["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == m.addr().to_string())
        .map_or(Value::Null, |b| b["reported"].clone())
}

/// Of 40 short requests sent one after another, how many reach the replica whose
/// page shows a queue of 20 from clients that do not use the proxy.
async fn share_to_busy(page: &str, metrics_on: bool) -> usize {
    let (busy, idle) = busy_and_idle(Reports {
        metrics: Some(page.to_string()),
        orca: false,
    })
    .await;
    let load = if metrics_on {
        polled("1s")
    } else {
        String::new()
    };
    let proxy = TestProxy::start(&pool_config(&model_list(&[&busy, &idle]), &load)).await;
    if metrics_on {
        eventually(
            "the busy replica's queue reaches the proxy",
            PATIENCE,
            || async { reported(&proxy, &busy).await["queue"] == 20.0 },
        )
        .await;
    }
    let mut to_busy = 0;
    for _ in 0..40 {
        to_busy += usize::from(served_by(proxy.url("/x?ms=2")).await == "busy");
    }
    if !metrics_on {
        assert_eq!(busy.metrics_scrapes(), 0, "polled with metrics off");
    }
    to_busy
}

/// With the page read, the replica loaded from outside gets (almost) nothing;
/// without, about half (ties between two idle-looking replicas are random).
async fn page_steers_work_away(page: &str) {
    let off = share_to_busy(page, false).await;
    let on = share_to_busy(page, true).await;
    assert!(
        on <= 3 && off >= 8,
        "to the busy replica: {on} of 40 with metrics on, {off} of 40 off"
    );
}

#[tokio::test]
async fn vllm_page_steers_work_away_from_a_replica_busy_with_other_clients() {
    page_steers_work_away(VLLM_METRICS).await;
}

#[tokio::test]
async fn sglang_page_steers_work_away_from_a_replica_busy_with_other_clients() {
    page_steers_work_away(SGLANG_METRICS).await;
}

#[tokio::test]
async fn tgi_page_steers_work_away_from_a_replica_busy_with_other_clients() {
    page_steers_work_away(TGI_METRICS).await;
}

#[tokio::test]
async fn triton_page_steers_work_away_from_a_replica_busy_with_other_clients() {
    page_steers_work_away(TRITON_METRICS).await;
}

#[tokio::test]
async fn llama_cpp_page_steers_work_away_from_a_replica_busy_with_other_clients() {
    page_steers_work_away(LLAMACPP_METRICS).await;
}

/// One replica serving two models publishes a series per model: queue and running
/// are summed, KV-cache use is the fuller one; `/upstreams` and `/metrics` show it.
#[tokio::test]
async fn gauges_are_summed_over_models_and_shown() {
    let page = "# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{model_name=\"a\"} {waiting}\n\
vllm:num_requests_waiting{model_name=\"b\"} 7\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{model_name=\"a\"} {running}\n\
vllm:num_requests_running{model_name=\"b\"} 2\n\
# TYPE vllm:kv_cache_usage_perc gauge\n\
vllm:kv_cache_usage_perc{model_name=\"a\"} 0.25\n\
vllm:kv_cache_usage_perc{model_name=\"b\"} 0.5\n";
    let m = Model::builder("m")
        .reports(Reports {
            metrics: Some(page.to_string()),
            orca: false,
        })
        .spawn()
        .await;
    m.set_external_waiting(20);
    let proxy = TestProxy::start(&pool_config(&model_list(&[&m]), &polled("200ms"))).await;
    eventually("the report reaches the proxy", PATIENCE, || async {
        reported(&proxy, &m).await["queue"] == 27.0
    })
    .await;
    let r = reported(&proxy, &m).await;
    assert_eq!(r["running"], 2.0, "{r}");
    assert_eq!(r["cache_usage"], 0.5, "{r}");
    assert!(r["at"].is_string(), "{r}");
    let backend = format!("backend=\"{}\",upstream=\"pool\"", m.addr());
    for (gauge, want) in [
        ("modelgate_backend_reported_queue", 27.0),
        ("modelgate_backend_reported_running", 2.0),
        ("modelgate_backend_reported_cache_usage", 0.5),
    ] {
        assert_eq!(
            metric_value(&proxy, &format!("{gauge}{{{backend}}}")).await,
            want,
            "{gauge}"
        );
    }
    // Polled on its own timer: more scrapes come without any request.
    let before = m.metrics_scrapes();
    eventually("the page is polled again", PATIENCE, || async {
        m.metrics_scrapes() >= before + 2
    })
    .await;
    assert_eq!(m.hits(), 0, "polls are not requests");

    // The page stops answering: once the report is older than three intervals the
    // balancer ignores it, and its series leave /metrics (no stale last value).
    m.set_page_fault(PageFault::Status(500));
    eventually("the stale report's series are gone", PATIENCE, || async {
        !proxy
            .admin_text("/metrics")
            .await
            .contains("modelgate_backend_reported_")
    })
    .await;
    m.set_page_fault(PageFault::None);
    eventually("fresh reports show again", PATIENCE, || async {
        metric_value(
            &proxy,
            &format!("modelgate_backend_reported_queue{{{backend}}}"),
        )
        .await
            == 27.0
    })
    .await;
}

/// A page that is garbage, answers 500, or comes later than `every` never takes
/// the replica out: requests keep being served, every failed poll is counted, and
/// the streak is logged once.
#[tokio::test]
async fn unreadable_failing_or_slow_pages_are_counted_and_never_fail_closed() {
    let m = Model::builder("m")
        .reports(Reports {
            metrics: Some("<html><body>metrics moved</body></html>".into()),
            orca: false,
        })
        .spawn()
        .await;
    let proxy = TestProxy::start(&pool_config(&model_list(&[&m]), &polled("200ms"))).await;
    let errors = || {
        metric_value(
            &proxy,
            "modelgate_load_report_errors_total{upstream=\"pool\"}",
        )
    };
    let mut seen = 0.0;
    for fault in [
        None,
        Some(PageFault::Status(500)),
        Some(PageFault::Slow(std::time::Duration::from_secs(1))),
    ] {
        if let Some(f) = fault {
            m.set_reports(Reports {
                metrics: Some(VLLM_METRICS.into()),
                orca: false,
            });
            m.set_page_fault(f);
        }
        eventually("failed polls are counted", PATIENCE, || async {
            errors().await >= seen + 2.0
        })
        .await;
        for _ in 0..3 {
            assert_eq!(served_by(proxy.url("/x")).await, "m", "after {fault:?}");
        }
        seen = errors().await;
        assert_eq!(reported(&proxy, &m).await, Value::Null, "{fault:?}");
    }
    m.set_page_fault(PageFault::None);
    eventually("reports come back", PATIENCE, || async {
        reported(&proxy, &m).await["queue"].is_number()
    })
    .await;
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("no load report").count(),
        1,
        "one streak, one line:\n{logs}"
    );
    assert!(logs.contains("load reports again after"), "{logs}");
}

/// A reload that leaves a replica's load settings alone keeps its poller (no
/// restart, no extra poll); one that changes them restarts it.
#[tokio::test]
async fn a_reload_that_keeps_load_settings_keeps_the_poller() {
    let m = Model::builder("m")
        .reports(Reports {
            metrics: Some(VLLM_METRICS.into()),
            orca: false,
        })
        .spawn()
        .await;
    let config =
        |extra: &str| pool_config(&model_list(&[&m]), &format!("{extra}\n{}", polled("60s")));
    let proxy = TestProxy::start(&config("retries = 1")).await;
    let started = |p: &TestProxy| p.logs().matches("reading vLLM load gauges").count();
    eventually("the first poll", PATIENCE, || async {
        started(&proxy) == 1
    })
    .await;
    let polls = m.metrics_scrapes();
    let reload = |text: String| {
        let text = text
            .replace("{http}", &proxy.http_addr().to_string())
            .replace("{admin}", &proxy.admin_addr().to_string());
        std::fs::write(proxy.config_path(), text).unwrap();
        async {
            let resp = h1().post(proxy.admin_url("/reload")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        }
    };
    reload(config("retries = 2")).await;
    // The next reload changes the load settings; the supervisor takes generations
    // in order, so once its restart shows, the one before has been acted on.
    reload(config("retries = 2").replace("60s", "50s")).await;
    eventually("the poller with new settings starts", PATIENCE, || async {
        started(&proxy) == 2
    })
    .await;
    assert_eq!(
        m.metrics_scrapes(),
        polls + 1,
        "only the changed reload polled anew"
    );
    assert_eq!(started(&proxy), 2, "{}", proxy.logs());
}

/// `pool_config` with fixed listen addresses, for `check`.
fn checked(backends: &str, extra: &str) -> (bool, String) {
    let text = pool_config(backends, extra)
        .replace("{http}", "127.0.0.1:8080")
        .replace("{admin}", "127.0.0.1:9901");
    let (passed, out, _) = check(&text);
    (passed, out)
}

/// `check` accepts the keys and refuses gauge names without a page or that are
/// not metric names.
#[test]
fn check_reads_metric_keys_and_refuses_bad_ones() {
    let (passed, out) = checked(
        "\"127.0.0.1:9\"",
        "[upstream.pool.load]\nmetrics = \"/metrics\"\nevery = \"250ms\"\norca = true\n\
         queue_metric = 'nv_trt_llm_request_metrics{request_type=\"waiting\"}'\n\
         running_metric = \"my_engine:running\"\ncache_metric = \"my_engine_cache_ratio\"",
    );
    assert!(passed, "{out}");
    let (passed, out) = checked(
        "\"127.0.0.1:9\"",
        "[upstream.pool.load]\norca = true\nqueue_metric = \"q\"\n",
    );
    assert!(
        !passed && out.contains("upstream.pool.load.queue_metric"),
        "{out}"
    );
    assert!(out.contains("add metrics = \"/metrics\""), "{out}");
    let (passed, out) = checked(
        "\"127.0.0.1:9\"",
        "[upstream.pool.load]\nmetrics = \"/metrics\"\nrunning_metric = \"running requests\"\n",
    );
    assert!(
        !passed && out.contains("upstream.pool.load.running_metric"),
        "{out}"
    );
    assert!(out.contains("is not a metric name"), "{out}");
}
