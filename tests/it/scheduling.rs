//! The wait queue's order on real sockets, in front of a replica that serves one
//! request at a time: priority classes overtake, fair share keeps a flooding
//! consumer from starving another, and `check` names bad scheduling keys by line.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;

async fn queued(proxy: &TestProxy) -> u64 {
    proxy.admin_json("/upstreams").await["upstreams"]["pool"]["queued"]
        .as_u64()
        .unwrap()
}

/// The order requests finished in (the replica serves one at a time, so it is
/// the order the queue served them).
#[derive(Clone, Default)]
struct Finished(Arc<Mutex<Vec<String>>>);

impl Finished {
    /// Sends `GET /name` with `headers` in the background; records `name` once
    /// answered 200.
    fn send(&self, proxy: &TestProxy, name: &str, headers: &[(&'static str, &'static str)]) {
        // The first request holds the replica while the others queue behind it.
        let path = match name {
            "running" => "/running?ms=5000".to_string(),
            _ => format!("/{name}"),
        };
        let mut req = h1().get(proxy.url(&path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (done, name) = (self.clone(), name.to_string());
        tokio::spawn(async move {
            let status = req.send().await.unwrap().status().as_u16();
            assert_eq!(status, 200, "{name}");
            done.0.lock().unwrap().push(name);
        });
    }

    fn list(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A one-at-a-time replica taking `work` per request and a proxy with
/// `max_inflight = 1` and `extra` on its upstream.
async fn one_slot(work: Duration, extra: &str) -> (Model, TestProxy) {
    let replica = Model::builder("single").slots(1).work(work).spawn().await;
    let backends = format!("\"{}\"", replica.addr());
    let proxy = TestProxy::start(&pool_config(
        &backends,
        &format!("max_inflight = 1\n{extra}"),
    ))
    .await;
    (replica, proxy)
}

/// Sends `names` in this order, each queued before the next is sent.
async fn send_queued(
    proxy: &TestProxy,
    done: &Finished,
    names: &[(&str, &[(&'static str, &'static str)])],
) {
    let before = queued(proxy).await;
    for (i, (name, headers)) in names.iter().enumerate() {
        done.send(proxy, name, headers);
        let want = before + i as u64 + 1;
        eventually(&format!("{name} queued"), PATIENCE, || async {
            queued(proxy).await == want
        })
        .await;
    }
}

type Headers = &'static [(&'static str, &'static str)];

/// With a request of `heavy` holding `replica`'s one slot, queues `n` more of
/// `heavy` (named `{prefix}-1` to `{prefix}-n`), then `then`, one after another;
/// returns the names in the order they were answered (the running one first).
async fn served_order(
    proxy: &TestProxy,
    replica: &Model,
    (prefix, heavy, n): (&str, Headers, usize),
    then: &[(&str, Headers)],
) -> Vec<String> {
    let done = Finished::default();
    done.send(proxy, "running", heavy);
    eventually("one request running", PATIENCE, || async {
        replica.inflight() == 1
    })
    .await;
    let flood: Vec<String> = (1..=n).map(|i| format!("{prefix}-{i}")).collect();
    let mut names: Vec<(&str, Headers)> = flood.iter().map(|f| (f.as_str(), heavy)).collect();
    names.extend_from_slice(then);
    send_queued(proxy, &done, &names).await;
    let all = names.len() + 1;
    eventually("all answered", PATIENCE, || async {
        done.list().len() == all
    })
    .await;
    done.list()
}

const BATCH: &[(&str, &str)] = &[("x-priority", "batch")];
const INTERACTIVE: &[(&str, &str)] = &[("x-priority", "interactive")];

#[tokio::test]
async fn interactive_requests_overtake_queued_batch_ones() {
    let (replica, proxy) = one_slot(
        Duration::from_millis(20),
        r#"priority = { header = "x-priority", classes = ["interactive", "default", "batch"] }"#,
    )
    .await;
    let done = Finished::default();
    done.send(&proxy, "running", &[]);
    eventually("one request running", PATIENCE, || async {
        replica.inflight() == 1
    })
    .await;
    send_queued(
        &proxy,
        &done,
        &[
            ("batch-1", BATCH),
            ("batch-2", BATCH),
            ("plain", &[]),
            ("interactive", INTERACTIVE),
        ],
    )
    .await;
    eventually("all answered", PATIENCE, || async {
        done.list().len() == 5
    })
    .await;
    assert_eq!(
        done.list(),
        ["running", "interactive", "plain", "batch-1", "batch-2"]
    );
    // Per-class series: three of the waits were batch and interactive requests (recorded
    // when each request is logged, which may follow its answer's last byte).
    let batch = "modelgate_class_queue_wait_seconds_count{class=\"batch\",upstream=\"pool\"}";
    let interactive =
        "modelgate_class_queue_wait_seconds_count{class=\"interactive\",upstream=\"pool\"}";
    eventually("the per-class waits recorded", PATIENCE, || async {
        metric_value(&proxy, batch).await == 2.0 && metric_value(&proxy, interactive).await == 1.0
    })
    .await;
    let depth = metric_value(
        &proxy,
        "modelgate_class_queue_depth{class=\"batch\",upstream=\"pool\"}",
    )
    .await;
    assert_eq!(depth, 0.0);
}

#[tokio::test]
async fn a_flooding_consumer_does_not_starve_another() {
    let (replica, proxy) = one_slot(
        Duration::from_millis(20),
        "fair_share = \"header:x-tenant\"",
    )
    .await;
    const FLOOD: Headers = &[("x-tenant", "flood")];
    const QUIET: Headers = &[("x-tenant", "quiet")];
    let then = [("quiet-1", QUIET), ("quiet-2", QUIET)];
    let order = served_order(&proxy, &replica, ("flood", FLOOD, 8), &then).await;
    let at = |n: &str| order.iter().position(|x| x == n).unwrap();
    // The quiet consumer joins behind eight flood requests and is served in turn
    // with the flood: its two requests go 2nd/3rd and 4th/5th of the eleven, not last.
    assert!(at("quiet-1") <= 2, "{order:?}");
    assert!(at("quiet-2") <= 4, "{order:?}");
    // Each consumer's own requests stay in arrival order.
    let flood: Vec<String> = (1..=8).map(|i| format!("flood-{i}")).collect();
    let flood_order: Vec<&String> = order.iter().filter(|n| n.starts_with("flood-")).collect();
    assert_eq!(flood_order, flood.iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn fair_share_by_consumer_uses_the_name_auth_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(
        &keys,
        "alice: sk-alice-0123456789\nbob: sk-bob-0123456789\n",
    )
    .unwrap();
    let replica = Model::builder("single")
        .slots(1)
        .work(Duration::from_millis(20))
        .spawn()
        .await;
    let toml = pool_config(
        &format!("\"{}\"", replica.addr()),
        "max_inflight = 1\nfair_share = \"consumer\"",
    )
    .replace(
        "upstream = \"pool\"\n",
        &format!(
            "upstream = \"pool\"\nauth = {{ api_keys_file = \"{}\" }}\n",
            keys.display()
        ),
    );
    let proxy = TestProxy::start(&toml).await;
    const ALICE: Headers = &[("x-api-key", "sk-alice-0123456789")];
    const BOB: Headers = &[("x-api-key", "sk-bob-0123456789")];
    let order = served_order(&proxy, &replica, ("alice", ALICE, 6), &[("bob", BOB)]).await;
    let bob = order.iter().position(|x| x == "bob").unwrap();
    assert!(bob <= 2, "bob waited behind alice's flood: {order:?}");
}

#[test]
fn check_names_bad_scheduling_keys_by_line() {
    let (ok, out, path) = check(
        r#"[listen]
http = "127.0.0.1:8080"

[[route]]
name = "chat"
path = "/"
upstream = "llm"

[upstream.llm]
backends = ["10.0.0.1:8000"]
max_inflight = 2
priority = { header = "x-priority", classes = ["interactive", "batch"] }
fair_share = "tenant"

[upstream.other]
backends = ["10.0.0.2:8000"]
priority = { header = "x-priority", classes = ["default", { name = "batch", max_share = 150 }], max_wait_behind = "soon" }
"#,
    );
    assert!(!ok, "{out}");
    let file = path.display().to_string();
    for want in [
        format!("{file}:12:12: upstream.llm.priority: no class is named \"default\": add default = \"NAME\" naming the class of requests without the header (one of \"interactive\", \"batch\")"),
        format!("{file}:13:14: upstream.llm.fair_share: expected \"consumer\" or \"header:NAME\", found \"tenant\"; e.g. \"header:x-tenant\"; \"consumer\" is the client a route's auth accepted"),
        format!("{file}:17:89: upstream.other.priority.classes[1].max_share: expected a whole number from 1 to 100, found 150; percent of the upstream's in-flight slots this class may use at most"),
        format!("{file}:17:115: upstream.other.priority.max_wait_behind: invalid duration \"soon\""),
    ] {
        assert!(out.contains(&want), "missing:\n{want}\nin:\n{out}");
    }
}
