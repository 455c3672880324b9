//! `modelgate demo` starts, and every command and URL it prints works as printed and
//! shows what it says: caps and a queue that answer a burst with `overloaded`, a
//! stream, a replica that joins once loaded, and a hot reload of the printed file.

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
fn demo_prints_lines_that_work() {
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

    // Commands are the lines indented by two spaces; URLs to open end a line.
    let mut commands = Vec::new();
    let mut urls = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("  ") && !line.starts_with("   ") {
            commands.push(line.trim().replace("curl ", "curl --max-time 30 "));
        } else if let Some(url) = line
            .split_whitespace()
            .last()
            .filter(|w| w.starts_with("http://"))
        {
            urls.push(url.to_string());
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let printed = |what: &str| commands.iter().filter(|c| c.contains(what)).count();
    assert!(printed("/v1/predict") >= 3, "{commands:?}");
    assert!(printed("/v1/stream") >= 2, "{commands:?}");
    assert!(
        printed("\"stream\":true") == 1 && printed("/v1/models") == 1,
        "{commands:?}"
    );
    assert!(
        printed("https://") >= 2 && printed("--cacert") >= 2,
        "{commands:?}"
    );
    assert_eq!(printed("for i in"), 1, "no burst: {commands:?}");
    assert_eq!(printed("sed -i"), 1, "no reload line: {commands:?}");
    assert!(
        urls.iter().any(|u| u == &format!("http://{admin}/")),
        "{urls:?}"
    );

    // Ready once the admin endpoint says so.
    let deadline = Instant::now() + PATIENCE;
    let readyz = format!("curl -s -o /dev/null -w '%{{http_code}}' http://{admin}/readyz");
    while run(&readyz).1 != "200" {
        assert!(Instant::now() < deadline, "demo never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    for cmd in &commands {
        if cmd.contains("/config") {
            // The edit before it is picked up by the file watch within about a second.
            let deadline = Instant::now() + PATIENCE;
            loop {
                let (ok, out) = run(cmd);
                assert!(ok, "{cmd} failed: {out}");
                if out.contains("\"generation\":2") && out.contains("\"last_error\":null") {
                    break;
                }
                assert!(Instant::now() < deadline, "no reload after the edit: {out}");
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        let (ok, out) = run(cmd);
        assert!(ok, "{cmd} failed: {out}");
        if cmd.starts_with("for i in") {
            check_burst(&out);
        } else if cmd.contains("/v1/chat/completions") {
            assert!(out.contains("chat.completion.chunk"), "{cmd}: {out}");
            assert!(out.trim_end().ends_with("data: [DONE]"), "{cmd}: {out}");
        } else if cmd.contains("/v1/models") {
            assert!(
                out.contains(r#""object":"list""#) && out.contains(r#""id":"demo""#),
                "{out}"
            );
        } else if cmd.contains("/v1/stream") {
            assert!(out.contains("data: [DONE]"), "{cmd}: {out}");
            assert!(out.contains("\"replica\":\"replica-"), "{cmd}: {out}");
        } else if cmd.contains("/v1/") {
            assert!(out.contains("\"replica\":\"replica-"), "{cmd}: {out}");
        } else if cmd.contains("nothing-here") {
            assert_eq!(out.trim(), r#"{"error":"no_route"}"#);
        } else if cmd.contains("/metrics") {
            assert!(
                out.contains(r#"modelgate_rejected_total{reason="overloaded",upstream="demo"}"#),
                "{out}"
            );
        } else if cmd.contains("/upstreams") {
            assert!(
                out.contains("\"max_inflight\"") || out.contains("\"inflight\""),
                "{out}"
            );
        }
    }

    // The loading replica joined and served.
    let (_, out) = run(&format!("curl -s http://{admin}/upstreams"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let states: Vec<&str> = v["upstreams"]["demo"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["up", "up", "up"], "{out}");

    for url in &urls {
        let (ok, out) = run(&format!("curl -sf --max-time 10 {url}"));
        assert!(ok && out.contains("<html"), "{url}: {out}");
    }
}

/// The burst's lines: some served (the later ones after waiting in the queue), and the
/// rest refused at once with `overloaded`; nothing else.
fn check_burst(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), modelgate::demo::BURST, "{out}");
    let mut served = Vec::new();
    let mut overloaded = 0;
    for line in &lines {
        let (body, rest) = line.rsplit_once(" in ").unwrap_or((line, ""));
        let secs: f64 = rest.trim_end_matches('s').parse().unwrap_or(0.0);
        if body.ends_with(" 200") && body.contains("\"replica\":\"replica-") {
            served.push(secs);
        } else if body == r#"{"error":"overloaded"} 503"# {
            overloaded += 1;
        } else {
            panic!("unexpected burst answer {line:?} in\n{out}");
        }
    }
    assert!(overloaded >= 1, "nothing was refused:\n{out}");
    assert!(served.len() >= modelgate::demo::SLOTS, "{out}");
    // Queued requests waited for a slot: one service time (1 s) at least, plus their own.
    let longest = served.iter().copied().fold(0.0, f64::max);
    assert!(longest >= 1.9, "nothing visibly queued:\n{out}");
}

fn run(cmd: &str) -> (bool, String) {
    tools::path(tools::CURL);
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
