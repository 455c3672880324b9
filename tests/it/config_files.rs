//! The command line against real files: every shipped config passes `check`,
//! broken configs are reported with file, line, column, key and fix, and `run`
//! refuses a bad file before binding anything; `check`, `run` and a reload refuse
//! the same files with the same lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn shipped_configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            shipped_configs(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

/// Copies `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Runs `modelgate ARGS` in `dir`; returns (success, stdout, stderr).
fn modelgate_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(modelgate_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under config/ passes `check`. HTTPS examples point at the repository's
/// `certs/` directory, where no private key is ever committed: in a copy of the tree,
/// `check` first fails saying which `modelgate cert` command makes them, then that
/// command is run as printed, as an operator would, and every file passes.
#[test]
fn every_shipped_config_passes_check() {
    let root = tempfile::tempdir().unwrap();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        &root.path().join("config"),
    );
    std::fs::create_dir(root.path().join("certs")).unwrap();

    let mut files = Vec::new();
    shipped_configs(&root.path().join("config"), &mut files);
    assert!(
        files.len() >= 4,
        "expected the default config and examples, found {files:?}"
    );
    let relative = |f: &Path| f.strip_prefix(root.path()).unwrap().display().to_string();
    let mut fixes = Vec::new();
    for f in &files {
        let (ok, _, err) = modelgate_in(root.path(), &["check", "-c", &relative(f)]);
        if !ok {
            let fix = err
                .split('`')
                .find(|s| s.starts_with("modelgate cert "))
                .unwrap_or_else(|| {
                    panic!("{} fails without saying how to fix it:\n{err}", f.display())
                });
            fixes.push(fix.to_string());
        }
    }
    assert!(!fixes.is_empty(), "no shipped config needs certificates");
    for fix in &fixes {
        let args: Vec<&str> = fix.split_whitespace().skip(1).collect();
        let (ok, out, err) = modelgate_in(root.path(), &args);
        assert!(ok, "{fix}: {err}");
        assert!(
            out.contains("curl --cacert ") && out.contains("update-ca-certificates"),
            "{out}"
        );
    }

    let mut https = 0;
    for f in files {
        let (ok, out) = check_file(&f);
        assert!(ok, "{} failed check:\n{out}", f.display());
        assert!(
            out.contains("routes (host path → upstream):")
                && out.contains("upstreams (→ backends):"),
            "summary for {}:\n{out}",
            f.display()
        );
        https += usize::from(out.contains("https "));
    }
    assert!(https >= 1, "no shipped config serves HTTPS");
}

/// `check`'s summary of a valid file: each route with its upstream, each upstream with
/// its policy, cap, queue and health check, then its backends.
#[test]
fn check_prints_routes_upstreams_and_backends() {
    let (ok, out, _) = check(
        r#"
[listen]
http = "127.0.0.1:8080"

[[route]]
name = "chat"
host = "api.example.com"
path = "/v1/chat"
upstream = "llm"

[[route]]
name = "vision"
path = "/v1/vision"
strip_prefix = true
upstream = "vision"

[upstream.llm]
backends = ["10.0.0.1:8000", { addr = "10.0.0.2:8000", weight = 2 }]
max_inflight = 4
queue = { size = 16, timeout = "20s" }

[upstream.llm.health]
path = "/health"
interval = "2s"

[upstream.vision]
backends = ["10.0.1.1:8000"]
"#,
    );
    assert!(ok, "{out}");
    for line in [
        "  chat    api.example.com /v1/chat → llm\n",
        "  vision  (any host) /v1/vision → vision  (prefix stripped)\n",
        "  llm: least_outstanding, http1, cap 4 per backend, queue 16 for 20s, retries 1\n",
        "    health GET /health every 2s (down after 3, up after 2)\n",
        "    ├─ 10.0.0.1:8000\n    └─ 10.0.0.2:8000 (weight 2)\n",
        "  vision: least_outstanding, http1, no cap, retries 1\n    no health check",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

/// `--help` and every command's `--help` show an example.
#[test]
fn help_shows_examples() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out, _) = modelgate_in(here, &["--help"]);
    assert!(ok && out.contains("Examples:\n  modelgate demo"), "{out}");
    for command in ["run", "check", "demo", "probe", "cert"] {
        let (ok, out, err) = modelgate_in(here, &[command, "--help"]);
        assert!(ok, "{command} --help: {err}");
        assert!(
            out.contains("Example") && out.contains(&format!("  modelgate {command} ")),
            "{command} --help has no example:\n{out}"
        );
    }
}

const VALID_TAIL: &str = r#"
[[route]]
name = "r"
path = "/"
upstream = "u"

[upstream.u]
backends = ["127.0.0.1:9001"]
"#;

/// (config text, expected `LINE:COL: key: message` fragments).
fn broken() -> Vec<(String, Vec<&'static str>)> {
    let listen = "[listen]\nhttp = \"127.0.0.1:8080\"\n";
    vec![
        (
            format!("[listen]\nhttp = \"127.0.0.1:8080\"\nadmn = \"127.0.0.1:9901\"\n{VALID_TAIL}"),
            vec![":3:1: listen.admn: unknown key `admn`; did you mean `admin`?"],
        ),
        (
            format!("{listen}\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"nope\"\n\n[upstream.u]\nbackends = [\"127.0.0.1:9001\"]\n"),
            vec![":7:12: route[0].upstream: upstream \"nope\" is not defined; defined upstreams: u"],
        ),
        (
            format!("{listen}{VALID_TAIL}\n[[route]]\nname = \"r\"\npath = \"/b\"\nupstream = \"u\"\n"),
            vec![":13:8: route[1].name: route name \"r\" is already used by route[0] (line 4)"],
        ),
        (
            format!("{listen}\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n\n[upstream.u]\nbackends = []\n"),
            vec![":10:12: upstream.u.backends: the list is empty; add at least one \"ip:port\""],
        ),
        (
            format!("{listen}{VALID_TAIL}connect_timeout = \"2 parsecs\"\n"),
            vec![":11:19: upstream.u.connect_timeout: invalid duration \"2 parsecs\""],
        ),
        (
            format!("{listen}{VALID_TAIL}max_inflight = \"four\"\n"),
            vec![":11:16: upstream.u.max_inflight: expected a whole number >= 0, found \"four\"; use 0 for unlimited"],
        ),
        (
            format!("{listen}\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\nmax_body = \"lots\"\n\n[upstream.u]\nbackends = [\"127.0.0.1:9001\"]\n"),
            vec![":8:12: route[0].max_body:"],
        ),
        (
            format!("{listen}\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n\n[upstream.u]\nbackends = [\"localhost\", {{ addr = \"127.0.0.1:9002\", weight = 0 }}]\nbalance = \"fastest\"\n"),
            vec![
                ":10:13: upstream.u.backends[0]: \"localhost\" has no port; write it as \"host:port\"",
                ":10:62: upstream.u.backends[1].weight: expected a whole number from 1 to 1000, found 0",
                ":11:11: upstream.u.balance: expected one of \"least_outstanding\", \"round_robin\", \"consistent_hash\", \"cache_affinity\", found \"fastest\"",
            ],
        ),
        (
            format!("{listen}{VALID_TAIL}retries = \n"),
            vec![":11:"],
        ),
        (
            format!("{listen}{VALID_TAIL}max_inflight = \"auto\"\nmax_inflight_min = 0\n[upstream.u.load]\norca = true\nmetrics = \"/metrics\"\nqueue_metric = \"q r\"\n"),
            vec![
                ":12:20: upstream.u.max_inflight_min: expected a whole number >= 1, found 0",
                ":16:16: upstream.u.load.queue_metric: \"q r\" is not a metric name",
            ],
        ),
    ]
}

#[test]
fn broken_configs_name_file_line_key_and_fix() {
    for (text, expected) in broken() {
        let (ok, out, path) = check(&text);
        assert!(!ok, "check accepted:\n{text}");
        for want in expected {
            let line = format!("{}{want}", path.display());
            assert!(
                out.contains(&line),
                "missing\n  {line}\nin\n{out}\nfor config:\n{text}"
            );
        }
        assert!(out.contains("error(s); nothing was changed"), "{out}");
    }
}

/// The `path:line:col: ...` lines of `out` that name `path`, with the path
/// written as `FILE` (each tool reads its own copy). The closing count, which
/// says what each tool does about it, is left out.
fn errors_about(out: &str, path: &Path) -> std::collections::BTreeSet<String> {
    let file = format!("{}:", path.display());
    out.lines()
        .filter_map(|l| l.find(&file).map(|at| &l[at + file.len()..]))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| format!("FILE:{l}"))
        .collect()
}

/// `modelgate run -c path`, which must exit (refusing the file) within
/// [`PATIENCE`]; returns its stderr.
fn run_refusing(path: &Path) -> String {
    let mut child = Command::new(modelgate_bin())
        .args(["run", "-c"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("run accepted {}", path.display());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One rule set for all three ways a file is read: `check`, `run` and a reload of
/// a running proxy refuse each broken config with the same `file:line:col` lines.
#[tokio::test]
async fn check_run_and_reload_refuse_a_bad_config_alike() {
    let r = spawn_replicas(&["only"], std::time::Duration::ZERO).await;
    let good = format!("[listen]\nhttp = \"{{http}}\"\n{VALID_TAIL}")
        .replace("127.0.0.1:9001", &r[0].addr().to_string());
    let proxy = TestProxy::start(&good).await;
    let http = proxy.http_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    for (n, (text, _)) in broken().into_iter().enumerate() {
        // The running proxy's listener, so a reload sees no listener change.
        let text = text.replace("127.0.0.1:8080", &http);
        let (ok, out, path) = check(&text);
        assert!(!ok, "check accepted:\n{text}");
        let by_check = errors_about(&out, &path);
        assert!(!by_check.is_empty(), "{out}");

        let file = dir.path().join(format!("bad{n}.toml"));
        std::fs::write(&file, &text).unwrap();
        let by_run = errors_about(&run_refusing(&file), &file);
        assert_eq!(by_run, by_check, "run and check differ on:\n{text}");

        let seen = proxy.logs().len();
        std::fs::write(proxy.config_path(), &text).unwrap();
        proxy.signal("HUP");
        let by_reload = || errors_about(&proxy.logs()[seen..], proxy.config_path());
        eventually("the reload is refused", PATIENCE, || async {
            by_reload().len() >= by_check.len()
        })
        .await;
        assert_eq!(by_reload(), by_check, "reload and check differ on:\n{text}");
    }
    // Still serving the first file.
    let resp = h1().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn run_refuses_a_bad_file_before_binding() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        format!("[listen]\nhttp = \"127.0.0.1:{port}\"\n{VALID_TAIL}retries = \"x\"\n"),
    )
    .unwrap();
    let out = Command::new(modelgate_bin())
        .args(["run", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream.u.retries"), "{stderr}");
    assert!(stderr.contains("not starting"), "{stderr}");
    // Nothing was left bound.
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn run_reports_a_listener_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busy.toml");
    std::fs::write(&file, format!("[listen]\nhttp = \"{addr}\"\n{VALID_TAIL}")).unwrap();
    let out = Command::new(modelgate_bin())
        .args(["run", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("listen.http: cannot listen on {addr}")),
        "{stderr}"
    );
}

/// `check FILE` and `run FILE` take the file as `-c FILE` does; both at once is refused
/// naming the two.
#[test]
fn the_config_file_may_be_given_without_c() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(
        &file,
        format!("[listen]\nhttp = \"127.0.0.1:8080\"\n{VALID_TAIL}"),
    )
    .unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = file.display().to_string();
    let (ok, out, err) = modelgate_in(here, &["check", &path]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{path}: ok")), "{out}");
    let (ok, _, err) = modelgate_in(here, &["check", "/nonexistent/modelgate.toml"]);
    assert!(
        !ok && err.contains("/nonexistent/modelgate.toml: cannot read"),
        "{err}"
    );
    // `run FILE` reads that file: its listener address is the one refused.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    std::fs::write(&file, format!("[listen]\nhttp = \"{addr}\"\n{VALID_TAIL}")).unwrap();
    let (ok, _, err) = modelgate_in(here, &["run", &path]);
    assert!(
        !ok && err.contains(&format!("cannot listen on {addr}")),
        "{err}"
    );
    let (ok, _, err) = modelgate_in(here, &["check", "-c", &path, &path]);
    assert!(
        !ok && err.contains("--config") && err.contains("[FILE]"),
        "{err}"
    );
}

#[test]
fn version_and_missing_file() {
    let out = Command::new(modelgate_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("modelgate {}", env!("CARGO_PKG_VERSION"))
    );

    let out = Command::new(modelgate_bin())
        .args(["check", "-c", "/nonexistent/modelgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/modelgate.toml: cannot read")
    );
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(
        &file,
        format!(
            "[listen]\nhttp = \"127.0.0.1:{}\"\n{VALID_TAIL}",
            free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(modelgate_bin())
        .args(["--log-format", "json", "run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = 0;
    for line in lines.by_ref().take(3) {
        let line = line.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["msg"].is_string() && v["ts"].is_string(),
            "{line}"
        );
        seen += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, 3);
}

/// A reader that stops reading (`modelgate check ... | head -1`, here a pipe whose
/// read end is closed before anything is written): every command that prints ends
/// quietly with success instead of panicking on the broken pipe.
#[test]
fn commands_that_print_end_quietly_when_their_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("modelgate.toml");
    std::fs::write(
        &config,
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[[route]]\nname = \"a\"\npath = \"/\"\n\
         upstream = \"u\"\n[upstream.u]\nbackends = [\"10.0.0.1:80\"]\n",
    )
    .unwrap();
    let certs = dir.path().join("certs");
    let runs: [&[&std::ffi::OsStr]; 2] = [
        &["check".as_ref(), "-c".as_ref(), config.as_os_str()],
        &[
            "cert".as_ref(),
            "--dir".as_ref(),
            certs.as_os_str(),
            "localhost".as_ref(),
        ],
    ];
    for args in runs {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(modelgate_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    }
}

/// A closed stderr (a pipe whose read end is gone): a command whose messages go
/// there ends with the status it would have had, not a panic's 101.
#[test]
fn commands_end_with_their_status_when_stderr_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[listen]\nhttp = \"nowhere\"\n").unwrap();
    let missing = dir.path().join("missing.toml");
    for (args, code) in [
        (["check", "-c", bad.to_str().unwrap()], 1),
        (["check", "-c", missing.to_str().unwrap()], 1),
        (["run", "-c", bad.to_str().unwrap()], 1),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(modelgate_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(writer)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {:?}", out.status);
    }
}
