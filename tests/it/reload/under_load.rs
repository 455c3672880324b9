//! Reloads every 100 ms by each trigger, and a graceful binary upgrade, under
//! continuous HTTP/1.1 and HTTP/2 load: no request fails.

use std::time::{Duration, Instant};

use super::*;

/// How long each trigger keeps reloading under load.
const RELOAD_FOR: Duration = Duration::from_secs(10);
const RELOAD_EVERY: Duration = Duration::from_millis(100);

async fn reloads_under_load_fail_nothing(how: How) {
    let r = replicas(&["a1", "a2", "b1", "b2"]).await;
    let set_a = backend_list(&[&r[0], &r[1]]);
    let set_b = backend_list(&[&r[2], &r[3]]);
    let proxy = TestProxy::start(&pool_config(&set_a, "")).await;
    let first = generation(&proxy).await;
    let load = Load::gets(&proxy, 3);
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
async fn a_graceful_binary_upgrade_fails_no_request() {
    let r = replicas(&["a", "b"]).await;
    let mut old = TestProxy::start(&pool_config(&backend_list(&[&r[0], &r[1]]), "")).await;
    let load = Load::gets(&old, 2);
    eventually("load flows", PATIENCE, || async { load.ok() > 20 }).await;
    let log = std::fs::File::create(old.dir().join("new.log")).unwrap();
    let mut new = std::process::Command::new(modelgate_bin())
        .args(["run", "--upgrade", "-c"])
        .arg(old.config_path())
        .current_dir(old.dir())
        .env(
            "RUST_LOG",
            "info,pingora_core::server::bootstrap_services=debug",
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let new_log_file = old.dir().join("new.log");
    let new_log = || std::fs::read_to_string(&new_log_file).unwrap_or_default();
    eventually(
        "the new process waits on the upgrade socket",
        PATIENCE,
        || async { new_log().contains("Trying to receive socks") },
    )
    .await;
    old.signal("QUIT");
    let exited = old.wait_exit(Duration::from_secs(30)).await;
    // Only the new process holds the listeners now: the load keeps flowing.
    let served = load.ok();
    eventually("the new process serves the load", PATIENCE, || async {
        load.ok() > served + 20
    })
    .await;
    let (ok, failed, why) = load.finish().await;
    let new_log = new_log();
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
