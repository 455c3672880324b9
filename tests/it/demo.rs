//! `modelgate demo` starts, and every curl line it prints works as printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_prints_curl_lines_that_answer() {
    let http = format!("127.0.0.1:{}", free_port());
    let https = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(modelgate_bin())
        .args([
            "demo", "--http", &http, "--https", &https, "--admin", &admin,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Demo(child);

    let mut curl_lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(cmd) = line.trim_start().strip_prefix("curl ") {
            curl_lines.push(format!("curl --max-time 20 {cmd}"));
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert!(curl_lines.len() >= 5, "{curl_lines:?}");
    assert!(
        curl_lines
            .iter()
            .filter(|l| l.contains("https://") && l.contains("--cacert"))
            .count()
            >= 2,
        "no HTTPS lines: {curl_lines:?}"
    );

    // Ready once the admin endpoint says so.
    let deadline = Instant::now() + PATIENCE;
    let readyz = format!("curl -s -o /dev/null -w '%{{http_code}}' http://{admin}/readyz");
    while run(&readyz).1 != "200" {
        assert!(Instant::now() < deadline, "demo never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    for cmd in &curl_lines {
        let (ok, out) = run(cmd);
        assert!(ok, "{cmd} failed: {out}");
        if cmd.contains("/v1/") {
            assert!(
                out.contains("\"replica\":\"replica-"),
                "{cmd} did not name a replica: {out}"
            );
        }
        if cmd.contains("/v1/stream") {
            assert!(out.contains("data: [DONE]"), "{out}");
        }
        if cmd.contains("nothing-here") {
            assert_eq!(out.trim(), r#"{"error":"no_route"}"#);
        }
    }
}

fn run(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
