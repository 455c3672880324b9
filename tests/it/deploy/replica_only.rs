//! `modelgate demo --replica-only`: the image's stand-in model server.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Kills the child if the test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn replica_only_serves_one_replica_and_stops_on_sigterm() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Child(
        Command::new(modelgate_bin())
            .args([
                "demo",
                "--replica-only",
                "--listen",
                &addr,
                "--name",
                "model-1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = h1();
    let health = format!("http://{addr}/health");
    eventually("the replica answers /health", PATIENCE, || async {
        client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let resp = client
        .post(format!("http://{addr}/v1/predict"))
        .body(r#"{"input":"hi"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_body(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replica"], "model-1", "{body}");

    // As PID 1 in a container, SIGTERM must stop it (docker stop, a Pod deletion).
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut exited = None;
    eventually(
        "the replica exits on SIGTERM",
        Duration::from_secs(5),
        || {
            exited = child.0.try_wait().unwrap();
            std::future::ready(exited.is_some())
        },
    )
    .await;
    assert!(exited.unwrap().success());
}

#[test]
fn replica_only_needs_listen() {
    let out = Command::new(modelgate_bin())
        .args(["demo", "--replica-only"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
