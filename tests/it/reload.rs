//! Hot reload: every trigger (SIGHUP, POST /reload, the file watch, editor renames
//! and ConfigMap-style symlink swaps) under continuous HTTP/1.1 and HTTP/2 load
//! with zero failed requests; bad files and listener changes change nothing;
//! streams and health state survive; the admin token; the graceful binary upgrade.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::Value;

use crate::support::*;

/// How long each trigger keeps reloading under load.
const RELOAD_FOR: Duration = Duration::from_secs(10);
const RELOAD_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug)]
enum How {
    Hup,
    Admin,
    Watch,
}

/// The config text of `proxy` with the backends of `[upstream.pool]` replaced.
fn with_backends(proxy: &TestProxy, backends: &str, extra: &str) -> String {
    pool_config(backends, extra)
        .replace("{http}", &proxy.http_addr().to_string())
        .replace("{admin}", &proxy.admin_addr().to_string())
}

/// Replaces `path` the way editors do: a temp file renamed over it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn post_reload(proxy: &TestProxy) -> (u16, Value) {
    status_and_body(h1().post(proxy.admin_url("/reload")).send().await.unwrap()).await
}

async fn generation(proxy: &TestProxy) -> u64 {
    proxy.admin_json("/config").await["generation"]
        .as_u64()
        .unwrap()
}

/// Which replica answers `/` now.
async fn served_by(proxy: &TestProxy) -> String {
    let (s, v) = status_and_body(h1().get(proxy.url("/")).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    v["replica"].as_str().unwrap().to_string()
}

/// Writes `text` and makes the proxy load it by `how`.
async fn apply(proxy: &TestProxy, how: How, text: &str) {
    match how {
        How::Hup => {
            std::fs::write(proxy.config_path(), text).unwrap();
            proxy.signal("HUP");
        }
        How::Admin => {
            std::fs::write(proxy.config_path(), text).unwrap();
            let (s, v) = post_reload(proxy).await;
            assert_eq!(s, 200, "{v}");
        }
        How::Watch => write_atomically(proxy.config_path(), text),
    }
}

/// Clients sending requests back to back until `stop`; counts (ok, failed) and
/// keeps the first few failures.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(proxy: &TestProxy, per_protocol: usize) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..per_protocol * 2 {
            let client = if i % 2 == 0 { h1() } else { h2() };
            let url = proxy.url(&format!("/load/{i}"));
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut why = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                why.push(format!("body: {e}"));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        },
                        Ok(r) => {
                            let s = r.status();
                            why.push(format!("{s}: {}", r.text().await.unwrap_or_default()));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            why.push(format!("{e:?}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    why.truncate(5);
                }
                why
            }));
        }
        Load {
            ok,
            failed,
            stop,
            tasks,
        }
    }

    /// Stops the clients; returns (ok, failed, sample failures).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut why = Vec::new();
        for t in self.tasks {
            why.extend(t.await.unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            why,
        )
    }
}

async fn replicas(names: &[&str]) -> Vec<ReplicaHandle> {
    spawn_replicas(names, Duration::from_millis(2)).await
}

async fn reloads_under_load_fail_nothing(how: How) {
    let r = replicas(&["a1", "a2", "b1", "b2"]).await;
    let set_a = backend_list(&[&r[0], &r[1]]);
    let set_b = backend_list(&[&r[2], &r[3]]);
    let proxy = TestProxy::start(&pool_config(&set_a, "")).await;
    let first = generation(&proxy).await;
    let load = Load::start(&proxy, 3);
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < RELOAD_FOR {
        n += 1;
        // Balance and caps change too, so each reload really builds new pools.
        let (set, extra) = if n % 2 == 0 {
            (&set_a, "balance = \"round_robin\"")
        } else {
            (&set_b, "max_inflight = 64")
        };
        apply(&proxy, how, &with_backends(&proxy, set, extra)).await;
        tokio::time::sleep(RELOAD_EVERY).await;
    }
    // End on set B, and wait until only B answers.
    apply(&proxy, how, &with_backends(&proxy, &set_b, "")).await;
    eventually("the final backend set serves", PATIENCE, || async {
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(served_by(&proxy).await);
        }
        seen.iter().all(|s| s.starts_with('b'))
    })
    .await;
    let (ok, failed, why) = load.finish().await;
    let last = generation(&proxy).await;
    eprintln!("{how:?}: {n} reloads, generations {first}..{last}, {ok} ok, {failed} failed");
    assert_eq!(
        failed, 0,
        "{how:?}: failed requests during reloads: {why:?}"
    );
    // The load must really overlap the reloads; how many requests that is depends on
    // the machine, so ask for as many as there were reloads, not for a speed.
    assert!(
        ok >= u64::from(n),
        "{how:?}: only {ok} requests went through during {n} reloads"
    );
    assert!(last > first, "{how:?}: no reload happened");
    if !matches!(how, How::Watch) {
        assert!(
            last - first >= u64::from(n) / 2,
            "{how:?}: {n} reloads, generations {first}..{last}"
        );
    }
    assert!(proxy.admin_json("/config").await["last_error"].is_null());
}

#[tokio::test]
async fn reloads_every_100ms_by_sighup_fail_no_request() {
    reloads_under_load_fail_nothing(How::Hup).await;
}

#[tokio::test]
async fn reloads_every_100ms_by_post_reload_fail_no_request() {
    reloads_under_load_fail_nothing(How::Admin).await;
}

#[tokio::test]
async fn reloads_every_100ms_by_file_watch_fail_no_request() {
    reloads_under_load_fail_nothing(How::Watch).await;
}

#[tokio::test]
async fn a_broken_file_keeps_the_old_config_serving_and_shows_the_error() {
    let r = replicas(&["old", "new"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let before = generation(&proxy).await;
    let load = Load::start(&proxy, 2);
    let broken = with_backends(
        &proxy,
        &backend_list(&[&r[1]]),
        "max_inflight = -1\nbogus = 1",
    );
    std::fs::write(proxy.config_path(), &broken).unwrap();
    let (s, v) = post_reload(&proxy).await;
    assert_eq!(s, 422, "{v}");
    let errors: Vec<String> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(errors.len() >= 2, "every error is reported: {errors:?}");
    let file = proxy.config_path().display().to_string();
    assert!(
        errors.iter().all(|e| e.starts_with(&format!("{file}:"))),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("max_inflight")),
        "{errors:?}"
    );
    // The file watch sees it too, and also changes nothing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let config = proxy.admin_json("/config").await;
    assert_eq!(config["generation"].as_u64(), Some(before), "{config}");
    assert_eq!(config["file"].as_str(), Some(file.as_str()));
    assert!(config["loaded_at"].as_str().unwrap().ends_with('Z'));
    let shown = config["last_error"].as_array().unwrap();
    assert!(
        shown
            .iter()
            .any(|e| e.as_str().unwrap().contains("max_inflight")),
        "{config}"
    );
    assert_eq!(served_by(&proxy).await, "old");
    let logs = proxy.logs();
    assert!(logs.contains("refused"), "{logs}");

    // Fixed: the next reload applies and clears the error.
    std::fs::write(
        proxy.config_path(),
        with_backends(&proxy, &backend_list(&[&r[1]]), ""),
    )
    .unwrap();
    let (s, v) = post_reload(&proxy).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["generation"].as_u64().unwrap() > before);
    assert_eq!(served_by(&proxy).await, "new");
    assert!(proxy.admin_json("/config").await["last_error"].is_null());
    let (ok, failed, why) = load.finish().await;
    assert_eq!(failed, 0, "{why:?}");
    assert!(ok > 0);
}

#[tokio::test]
async fn a_listener_change_is_refused_with_the_restart_message() {
    let r = replicas(&["only"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let before = generation(&proxy).await;
    let moved = with_backends(&proxy, &backend_list(&[&r[0]]), "").replace(
        &format!("http = \"{}\"", proxy.http_addr()),
        &format!("http = \"127.0.0.1:{}\"", free_port()),
    );
    std::fs::write(proxy.config_path(), moved).unwrap();
    let (s, v) = post_reload(&proxy).await;
    assert_eq!(s, 422, "{v}");
    let msg = v["errors"][0].as_str().unwrap();
    assert!(msg.contains("listen.http"), "{msg}");
    assert!(msg.contains("restart"), "{msg}");
    assert!(msg.contains("--upgrade"), "{msg}");
    assert_eq!(generation(&proxy).await, before);
    assert_eq!(served_by(&proxy).await, "only");
    let config = proxy.admin_json("/config").await;
    assert!(config["last_error"][0]
        .as_str()
        .unwrap()
        .contains("restart"));
}

#[tokio::test]
async fn an_sse_stream_survives_a_reload_that_removes_its_backend() {
    let r = replicas(&["streamer", "other"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let resp = h1()
        .get(proxy.url("/v1/stream?tokens=8&interval_ms=250"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    // First token arrived: the stream runs on the old generation.
    while !text.contains("data:") {
        text.push_str(&String::from_utf8_lossy(
            &stream.next().await.unwrap().unwrap(),
        ));
    }
    std::fs::write(
        proxy.config_path(),
        with_backends(&proxy, &backend_list(&[&r[1]]), ""),
    )
    .unwrap();
    let (s, v) = post_reload(&proxy).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(served_by(&proxy).await, "other");
    // The removed backend shows as draining while its stream runs.
    let states = |v: Value| -> Vec<(String, String)> {
        v["upstreams"]["pool"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["addr"].as_str().unwrap().to_string(),
                    b["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        states(proxy.admin_json("/upstreams").await),
        vec![
            (r[1].addr().to_string(), "up".to_string()),
            (r[0].addr().to_string(), "draining".to_string()),
        ]
    );
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(text.matches("data:").count(), 9, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    eventually(
        "the drained backend leaves /upstreams",
        PATIENCE,
        || async { states(proxy.admin_json("/upstreams").await).len() == 1 },
    )
    .await;
}

#[tokio::test]
async fn an_editor_style_rename_triggers_a_reload() {
    let r = replicas(&["first", "second"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let before = generation(&proxy).await;
    write_atomically(
        proxy.config_path(),
        &with_backends(&proxy, &backend_list(&[&r[1]]), ""),
    );
    eventually("the renamed file is loaded", PATIENCE, || async {
        served_by(&proxy).await == "second"
    })
    .await;
    assert!(generation(&proxy).await > before);
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_triggers_a_reload() {
    let r = replicas(&["first", "second"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let dir = proxy.dir().to_path_buf();
    // Kubernetes layout: modelgate.toml -> ..data/modelgate.toml, ..data -> ..v1
    let v1 = dir.join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::copy(proxy.config_path(), v1.join("modelgate.toml")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    let link = dir.join("modelgate.toml.link");
    std::os::unix::fs::symlink("..data/modelgate.toml", &link).unwrap();
    std::fs::rename(&link, proxy.config_path()).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = generation(&proxy).await;
    assert_eq!(served_by(&proxy).await, "first");

    let v2 = dir.join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("modelgate.toml"),
        with_backends(&proxy, &backend_list(&[&r[1]]), ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    eventually("the swapped symlink target is loaded", PATIENCE, || async {
        served_by(&proxy).await == "second"
    })
    .await;
    assert!(generation(&proxy).await > before);
}

#[tokio::test]
async fn health_state_survives_a_reload() {
    let up = Replica::builder("up").spawn().await.unwrap();
    let down = Replica::builder("down").spawn().await.unwrap();
    let health = "[upstream.pool.health]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_after = 1\nunhealthy_after = 1";
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&up, &down]), health)).await;
    let states = |v: Value| -> Vec<(String, String)> {
        v["upstreams"]["pool"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["addr"].as_str().unwrap().to_string(),
                    b["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let want = vec![
        (up.addr().to_string(), "up".to_string()),
        (down.addr().to_string(), "down".to_string()),
    ];
    eventually("both up", PATIENCE, || async {
        states(proxy.admin_json("/upstreams").await)
            .iter()
            .all(|(_, s)| s == "up")
    })
    .await;
    down.set_health_status(503);
    eventually("one backend up, one down", PATIENCE, || async {
        states(proxy.admin_json("/upstreams").await) == want
    })
    .await;
    // Slow checks after the reload: any state the new generation shows is carried over.
    let slow = health
        .replace("200ms", "60s")
        .replace("healthy_after = 1", "healthy_after = 3");
    std::fs::write(
        proxy.config_path(),
        with_backends(
            &proxy,
            &backend_list(&[&up, &down]),
            &format!("retries = 0\n{slow}"),
        ),
    )
    .unwrap();
    let (s, v) = post_reload(&proxy).await;
    assert_eq!(s, 200, "{v}");
    // Right after the swap: the up one serves (no trip through unknown), the down
    // one stays down even though it now passes its checks.
    down.set_health_status(200);
    for _ in 0..10 {
        assert_eq!(served_by(&proxy).await, "up");
    }
    let after = proxy.admin_json("/upstreams").await;
    assert_eq!(after["generation"].as_u64(), v["generation"].as_u64());
    assert_eq!(states(after), want);
}

#[tokio::test]
async fn queued_requests_survive_a_reload_and_use_the_new_caps() {
    let r = spawn_replicas(&["slow"], Duration::from_millis(700)).await;
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&r[0]]),
        "max_inflight = 1\nqueue = { size = 10, timeout = \"20s\" }",
    ))
    .await;
    let calls: Vec<_> = (0..4)
        .map(|i| tokio::spawn(h1().get(proxy.url(&format!("/q/{i}"))).send()))
        .collect();
    eventually("three requests queued", PATIENCE, || async {
        proxy.admin_json("/upstreams").await["upstreams"]["pool"]["queued"] == 3
    })
    .await;
    std::fs::write(
        proxy.config_path(),
        with_backends(
            &proxy,
            &backend_list(&[&r[0]]),
            "max_inflight = 4\nqueue = { size = 10, timeout = \"20s\" }",
        ),
    )
    .unwrap();
    let (s, v) = post_reload(&proxy).await;
    assert_eq!(s, 200, "{v}");
    // The raised cap lets the queued requests run at once.
    eventually("the queue drained into the new cap", PATIENCE, || async {
        r[0].inflight() >= 3
    })
    .await;
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(r[0].hits(), 4);
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_the_probes() {
    let r = replicas(&["only"]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let toml = pool_config(&backend_list(&[&r[0]]), "").replace(
        "shutdown_grace",
        &format!(
            "admin_token_file = {:?}\nshutdown_grace",
            token_file.display().to_string()
        ),
    );
    let proxy = TestProxy::start(&toml).await;
    for path in ["/config", "/upstreams"] {
        let resp = h1().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let resp = h1()
            .get(proxy.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let resp = h1()
            .get(proxy.admin_url(path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = h1().post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = h1()
        .post(proxy.admin_url("/reload"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for path in ["/healthz", "/readyz"] {
        let resp = h1().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn a_graceful_binary_upgrade_fails_no_request() {
    let r = replicas(&["a", "b"]).await;
    let mut old = TestProxy::start(&pool_config(&backend_list(&[&r[0], &r[1]]), "")).await;
    let load = Load::start(&old, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = std::fs::File::create(old.dir().join("new.log")).unwrap();
    let mut new = std::process::Command::new(modelgate_bin())
        .args(["run", "--upgrade", "-c"])
        .arg(old.config_path())
        .current_dir(old.dir())
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // The new process waits on the upgrade socket for the listeners.
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let exited = old.wait_exit(Duration::from_secs(30)).await;
    // The new process serves, and then its admin listener too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, why) = load.finish().await;
    let new_log = std::fs::read_to_string(old.dir().join("new.log")).unwrap_or_default();
    let still_new = new.try_wait().unwrap().is_none();
    let after = h1()
        .get(old.url("/"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        exited.is_some(),
        "the old process did not exit; {}",
        old.logs()
    );
    assert!(still_new, "the new process exited: {new_log}");
    assert_eq!(after.ok(), Some(200), "new process log: {new_log}");
    assert_eq!(failed, 0, "{why:?}\nnew process log: {new_log}");
    // The clients ran across the handover; how many requests that is depends on the
    // machine's speed, which this test does not measure.
    assert!(ok > 0, "no request went through during the upgrade");
}

/// A config with `routes` routes over 10 upstreams of `backends`, plus `/new` if `with_new`.
fn big_config(proxy: &TestProxy, routes: usize, backends: &str, with_new: bool) -> String {
    let mut text = format!(
        "[listen]\nhttp = \"{}\"\nadmin = \"{}\"\nshutdown_grace = \"10s\"\n",
        proxy.http_addr(),
        proxy.admin_addr()
    );
    for i in 0..routes {
        text.push_str(&format!(
            "\n[[route]]\nname = \"r{i}\"\npath = \"/r{i}\"\nupstream = \"u{}\"\n",
            i % 10
        ));
    }
    if with_new {
        text.push_str("\n[[route]]\nname = \"new\"\npath = \"/new\"\nupstream = \"u1\"\n");
    }
    for u in 0..10 {
        text.push_str(&format!("\n[upstream.u{u}]\nbackends = [{backends}]\n"));
    }
    text
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Latencies of back-to-back requests by `clients` h1 clients for `for_`.
async fn latencies(proxy: &TestProxy, clients: usize, for_: Duration) -> Vec<Duration> {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (c, url) = (h1(), proxy.url(&format!("/r{i}")));
            tokio::spawn(async move {
                let mut out = Vec::new();
                let start = Instant::now();
                while start.elapsed() < for_ {
                    let t = Instant::now();
                    let r = c.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    out.push(t.elapsed());
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

/// Reload timing for the closing note (not a pass/fail test):
/// `cargo test --release --test it -- --ignored reload_timing --nocapture`.
#[tokio::test]
#[ignore]
async fn reload_timing() {
    let r = replicas(&["a", "b"]).await;
    let backends = backend_list(&[&r[0], &r[1]]);
    let proxy = TestProxy::start(&pool_config(&backends, "")).await;
    std::fs::write(
        proxy.config_path(),
        big_config(&proxy, 1000, &backends, false),
    )
    .unwrap();
    let (s, v) = post_reload(&proxy).await;
    assert_eq!(s, 200, "{v}");
    let c = h1();
    for how in ["file watch", "POST /reload"] {
        let mut ends = Vec::new();
        for round in 0..5 {
            let with_new = round % 2 == 0;
            let text = big_config(&proxy, 1000, &backends, with_new);
            let t = Instant::now();
            let mut took = None;
            if how == "file watch" {
                write_atomically(proxy.config_path(), &text);
            } else {
                std::fs::write(proxy.config_path(), &text).unwrap();
                let (s, v) = post_reload(&proxy).await;
                assert_eq!(s, 200, "{v}");
                took = v["took_ms"].as_f64();
            }
            // First request on the new generation: /new/x turns 200 (or back to 404).
            let want = if with_new { 200 } else { 404 };
            while c.get(proxy.url("/new/x")).send().await.unwrap().status() != want {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ends.push((t.elapsed(), took));
        }
        eprintln!("1,000 routes, {how}: change -> first request on the new generation: {ends:?}");
    }

    let quiet = latencies(&proxy, 4, Duration::from_secs(5)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reloads = {
        let (stop, url, path) = (
            stop.clone(),
            proxy.admin_url("/reload"),
            proxy.config_path().to_path_buf(),
        );
        let texts = [
            big_config(&proxy, 1000, &backends, true),
            big_config(&proxy, 1000, &backends, false),
        ];
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(&path, &texts[n % 2]).unwrap();
                let s = h1().post(&url).send().await.unwrap().status();
                assert_eq!(s, 200);
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };
    let busy = latencies(&proxy, 4, Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let n = reloads.await.unwrap();
    eprintln!(
        "latency without reloads: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        quiet.len(),
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        quiet[quiet.len() - 1]
    );
    eprintln!(
        "latency with a reload of 1,000 routes every 100 ms ({n} reloads): {} requests, p50 {:?}, p99 {:?}, max {:?}",
        busy.len(),
        percentile(&busy, 0.5),
        percentile(&busy, 0.99),
        busy[busy.len() - 1]
    );
}
