//! Hot reload: every trigger (SIGHUP, POST /reload, the file watch, editor renames
//! and ConfigMap-style symlink swaps) under continuous HTTP/1.1 and HTTP/2 load
//! with zero failed requests; bad files and listener changes change nothing;
//! streams, queues and health state survive; the graceful binary upgrade.

mod refused;
mod survives;
mod timing;
mod triggers;
mod under_load;

use std::path::Path;
use std::time::Duration;

use modelgate::demo::replica::ReplicaHandle;
use serde_json::Value;

use crate::support::*;

#[derive(Clone, Copy, Debug)]
pub(super) enum How {
    Hup,
    Admin,
    Watch,
}

/// The config text of `proxy` with the backends of `[upstream.pool]` replaced.
pub(super) fn with_backends(proxy: &TestProxy, backends: &str, extra: &str) -> String {
    pool_config(backends, extra)
        .replace("{http}", &proxy.http_addr().to_string())
        .replace("{admin}", &proxy.admin_addr().to_string())
}

/// Replaces `path` the way editors do: a temp file renamed over it.
pub(super) fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Writes `text` as the proxy's config and applies it with `POST /reload`,
/// which must succeed; returns its answer.
pub(super) async fn reload_to(proxy: &TestProxy, text: &str) -> Value {
    std::fs::write(proxy.config_path(), text).unwrap();
    let (s, v) = post_reload(proxy).await;
    assert_eq!(s, 200, "{v}");
    v
}

pub(super) async fn post_reload(proxy: &TestProxy) -> (u16, Value) {
    status_and_body(h1().post(proxy.admin_url("/reload")).send().await.unwrap()).await
}

pub(super) async fn generation(proxy: &TestProxy) -> u64 {
    proxy.admin_json("/config").await["generation"]
        .as_u64()
        .unwrap()
}

/// Which replica answers `/` now.
pub(super) async fn served_by(proxy: &TestProxy) -> String {
    let (s, v) = status_and_body(h1().get(proxy.url("/")).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    v["replica"].as_str().unwrap().to_string()
}

/// Writes `text` and makes the proxy load it by `how`.
pub(super) async fn apply(proxy: &TestProxy, how: How, text: &str) {
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

pub(super) async fn replicas(names: &[&str]) -> Vec<ReplicaHandle> {
    spawn_replicas(names, Duration::from_millis(2)).await
}
