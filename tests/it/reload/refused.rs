//! Reloads that are refused (a broken file, a changed listener) change nothing
//! and say why, with file and line, in the answer, `/config` and the log.

use super::*;

#[tokio::test]
async fn a_broken_file_keeps_the_old_config_serving_and_shows_the_error() {
    let r = replicas(&["old", "new"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let before = generation(&proxy).await;
    let load = Load::gets(&proxy, 2);
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
    // The file watch (every 200 ms) sees it too, and also changes nothing.
    holds_for(
        "the broken file is never applied",
        Duration::from_millis(800),
        || async { generation(&proxy).await == before },
    )
    .await;
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
    let v = reload_to(&proxy, &with_backends(&proxy, &backend_list(&[&r[1]]), "")).await;
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
