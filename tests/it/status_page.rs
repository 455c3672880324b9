//! The admin status page behind the admin token, as headless Chromium draws it after a
//! load run: charts with data points, backends, routes; a 1280x800 screenshot is kept
//! under `target/tmp/` as the test's artifact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "status-s3cret";

/// `data-points` of every drawn line of series `key`, in page order.
fn points(dom: &str, key: &str) -> Vec<usize> {
    let mark = format!("data-series=\"{key}\" data-points=\"");
    dom.match_indices(&mark)
        .filter_map(|(at, m)| {
            let rest = &dom[at + m.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

/// Where the screenshot is kept.
fn artifact() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png")
}

#[tokio::test]
async fn the_status_page_charts_a_load_run_behind_the_admin_token() {
    let replicas = [
        modelgate::demo::replica::Replica::builder("fast-a")
            .delay(Duration::from_millis(150))
            .spawn()
            .await
            .unwrap(),
        modelgate::demo::replica::Replica::builder("fast-b")
            .delay(Duration::from_millis(150))
            .spawn()
            .await
            .unwrap(),
        modelgate::demo::replica::Replica::builder("slow")
            .delay(Duration::from_millis(450))
            .spawn()
            .await
            .unwrap(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let toml = pool_config(
        &backend_list(&replicas.iter().collect::<Vec<_>>()),
        "max_inflight = 1\nqueue = { size = 2, timeout = \"1s\" }\n\
         [upstream.pool.health]\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nhealthy_after = 1\n",
    )
    .replace(
        "shutdown_grace",
        &format!("admin_token_file = {:?}\nshutdown_grace", token_file.display().to_string()),
    );
    let proxy = TestProxy::start(&toml).await;

    // Without the token: 401 with a Basic challenge, so a browser asks for it.
    let resp = h1().get(proxy.admin_url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    // The token works as a bearer token and as the Basic password.
    for (user, pass) in [("admin", TOKEN), ("anyone", TOKEN)] {
        let resp = h1()
            .get(proxy.admin_url("/status"))
            .basic_auth(user, Some(pass))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = h1()
        .get(proxy.admin_url("/status"))
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let status = |proxy: &TestProxy| {
        let url = proxy.admin_url("/status");
        async move {
            h1().get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    eventually("every backend up", PATIENCE, || async {
        status(&proxy).await["upstreams"]["pool"]["backends"]
            .as_array()
            .is_some_and(|b| b.len() == 3 && b.iter().all(|b| b["state"] == "up"))
    })
    .await;

    // Load: 8 clients in a loop on 3 replicas capped at 1 with a queue of 2, so some
    // requests queue and some are turned away (503 overloaded; those clients back off
    // for a moment, as real ones do). It runs until the screenshot is taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop) = (proxy.url("/v1/predict"), stop.clone());
        clients.push(tokio::spawn(async move {
            let c = h1();
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = c.post(&url).body("{}").send().await {
                    codes.push(r.status().as_u16());
                    let _ = r.bytes().await;
                    if codes.last() == Some(&503) {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            codes
        }));
    }
    // Points come every 5 s; wait for three steps that saw answers and rejects.
    let charted = |v: &Value, key: &str| {
        v["upstreams"]["pool"]["charts"][key]
            .as_array()
            .map_or(0, |a| {
                a.iter()
                    .filter(|x| x.as_f64().is_some_and(|x| x > 0.0))
                    .count()
            })
    };
    eventually(
        "three chart points with answers and rejects",
        Duration::from_secs(60),
        || async {
            let v = status(&proxy).await;
            charted(&v, "ok") >= 3 && charted(&v, "rejected") >= 1 && charted(&v, "p50") >= 3
        },
    )
    .await;
    let v = status(&proxy).await;
    let up = &v["upstreams"]["pool"];
    assert_eq!(up["max_inflight"], 1);
    let shares: f64 = up["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-6, "shares add up to 1: {up}");
    assert_eq!(v["routes"][0]["name"], "all");
    assert!(v["config"]["generation"].as_u64().is_some());

    // A reload of a broken file is refused; the page says so while the old config serves.
    let good = std::fs::read_to_string(proxy.config_path()).unwrap();
    std::fs::write(
        proxy.config_path(),
        good.replace("max_inflight = 1", "max_inflight = \"one\""),
    )
    .unwrap();
    let resp = h1()
        .post(proxy.admin_url("/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);

    // The page, with the token as the Basic password in the URL (the browser sends it
    // after the challenge, and with every request the page makes).
    let page = proxy
        .admin_url("/")
        .replacen("http://", &format!("http://admin:{TOKEN}@"), 1);
    let p = page.clone();
    let dom = tokio::task::spawn_blocking(move || tools::chromium(&p, "--dump-dom"))
        .await
        .unwrap();
    for key in [
        "ok",
        "rejected",
        "p50",
        "p99",
        "ttfb_p50",
        "queue_depth",
        "inflight",
        "wait_p99",
    ] {
        let drawn = points(&dom, key);
        assert!(
            drawn.iter().any(|&n| n > 1),
            "series {key} drew no line of more than one point: {drawn:?}\n{dom}"
        );
    }
    for r in &replicas {
        assert!(
            dom.contains(&format!("data-addr=\"{}\" data-state=\"up\"", r.addr())),
            "{} not listed as up:\n{dom}",
            r.addr()
        );
    }
    assert!(
        dom.contains("upstream pool") && dom.contains("class=\"route\""),
        "{dom}"
    );
    let banner = dom
        .split("<div id=\"reload-error\">")
        .nth(1)
        .and_then(|rest| rest.split("</div>").next())
        .unwrap_or_default();
    assert!(
        banner.starts_with("last reload rejected") && banner.contains("upstream.pool.max_inflight"),
        "{banner}"
    );
    assert!(
        dom.contains("<span id=\"fetch-error\"></span>"),
        "a fetch failed:\n{dom}"
    );

    let shot = artifact();
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || tools::chromium(&page, &arg))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // 1280x800: the PNG header's width and height.
    assert_eq!(&png[16..24], &[0, 0, 5, 0, 0, 0, 3, 32]);
    println!("status page screenshot: {}", shot.display());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut codes = Vec::new();
    for c in clients {
        codes.extend(c.await.unwrap());
    }
    assert!(codes.contains(&200) && codes.contains(&503), "{codes:?}");
}
