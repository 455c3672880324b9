//! Runs the real `modelgate` binary as the proxy under test.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{refusing_addr, PATIENCE, POLL_INTERVAL};

const START_ATTEMPTS: usize = 3;

/// Path of the `modelgate` binary built by cargo for these tests, or `MODELGATE_BIN`
/// (to compare against another build, e.g. in the ignored measurement tests).
pub fn modelgate_bin() -> PathBuf {
    std::env::var_os("MODELGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_modelgate")))
}

/// A running `modelgate run` process with its config and log in a temp dir.
/// Killed (SIGKILL) and reaped on drop.
pub struct TestProxy {
    child: Child,
    dir: TempDir,
    config: PathBuf,
    log: PathBuf,
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
    /// The three ports, held (bound, not listening) for as long as this lives.
    _ports: Vec<tokio::net::TcpSocket>,
}

enum Startup {
    Ready,
    Exited(ExitStatus),
    /// Another process answered on the admin port picked for this one (a port
    /// found free and taken by someone else before this proxy bound it).
    NotOurs,
    TimedOut,
}

impl TestProxy {
    /// Starts the proxy with `toml` as its config. `{http}`, `{https}` and `{admin}`
    /// are replaced by `127.0.0.1:<port>`, ports held for this proxy while it lives.
    /// Waits until the admin listener answers `GET /readyz` with 200 (or, without an
    /// `{admin}` placeholder, until the HTTP listener accepts connections). Retries
    /// with fresh ports if the process exits before becoming ready.
    pub async fn start(toml: &str) -> TestProxy {
        Self::start_with_env(toml, &[]).await
    }

    /// [`TestProxy::start`] for a proxy that is not expected to be ready yet: waits
    /// only until the HTTP listener accepts connections.
    pub async fn start_listening(toml: &str) -> TestProxy {
        Self::start_waiting(toml, &[], false).await
    }

    /// [`TestProxy::start`] with extra environment variables for the process.
    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> TestProxy {
        Self::start_waiting(toml, env, toml.contains("{admin}")).await
    }

    async fn start_waiting(toml: &str, env: &[(&str, &str)], readyz: bool) -> TestProxy {
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut proxy = Self::spawn(toml, env);
            match proxy.wait_ready(readyz).await {
                Startup::Ready => return proxy,
                Startup::Exited(status) => {
                    failures.push_str(&format!(
                        "--- attempt {attempt}: exited with {status} before ready; log:\n{}\n",
                        proxy.logs()
                    ));
                }
                Startup::NotOurs => {
                    failures.push_str(&format!(
                        "--- attempt {attempt}: another process answered on admin {}\n",
                        proxy.admin
                    ));
                }
                Startup::TimedOut => panic!(
                    "modelgate not ready after {PATIENCE:?} (http {}, admin {}); config:\n{}\nlog:\n{}",
                    proxy.http,
                    proxy.admin,
                    std::fs::read_to_string(&proxy.config).unwrap_or_default(),
                    proxy.logs()
                ),
            }
        }
        panic!("modelgate failed to start after {START_ATTEMPTS} attempts\n{failures}");
    }

    fn spawn(toml: &str, env: &[(&str, &str)]) -> TestProxy {
        // Held from here on, so no other test's listener is handed one of them before
        // the proxy binds it (the proxy's bind shares the address, as the holder's
        // does); a port found free and let go could be taken in the meantime.
        let (ports, addrs): (Vec<_>, Vec<_>) = (0..3).map(|_| refusing_addr()).unzip();
        let (http, admin, https) = (addrs[0], addrs[1], addrs[2]);
        let text = toml
            .replace("{http}", &http.to_string())
            .replace("{https}", &https.to_string())
            .replace("{admin}", &admin.to_string());

        let dir = tempfile::Builder::new()
            .prefix("modelgate-it-")
            .tempdir()
            .expect("creating temp dir for the proxy");
        let config = dir.path().join("modelgate.toml");
        std::fs::write(&config, text).expect("writing modelgate.toml");
        let log = dir.path().join("proxy.log");
        let out = File::create(&log).expect("creating proxy.log");
        let err = out.try_clone().expect("cloning proxy.log handle");

        let mut cmd = Command::new(modelgate_bin());
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", modelgate_bin().display()));
        TestProxy {
            child,
            dir,
            config,
            log,
            http,
            https,
            admin,
            _ports: ports,
        }
    }

    async fn wait_ready(&mut self, has_admin: bool) -> Startup {
        let client = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("building readiness client");
        let readyz = self.admin_url("/readyz");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Startup::Exited(status);
            }
            let ready = if has_admin {
                matches!(client.get(&readyz).send().await, Ok(r) if r.status() == 200)
            } else {
                tokio::net::TcpStream::connect(self.http).await.is_ok()
            };
            if ready {
                if has_admin && !self.answers_for_itself(&client).await {
                    return Startup::NotOurs;
                }
                return Startup::Ready;
            }
            if start.elapsed() >= PATIENCE {
                return Startup::TimedOut;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether the admin listener that answered is this proxy's: its `/config`
    /// names a file in this proxy's temp dir (an admin token, which hides it, is
    /// taken on trust).
    async fn answers_for_itself(&self, client: &reqwest::Client) -> bool {
        let Ok(resp) = client.get(self.admin_url("/config")).send().await else {
            return false;
        };
        if resp.status() == 401 {
            return true;
        }
        // The temp dir's name is unique; the path may be shown canonicalized.
        let ours = self.dir.path().file_name().map(|n| n.to_string_lossy());
        let config = resp.json::<serde_json::Value>().await.ok();
        match (config.as_ref().and_then(|v| v["file"].as_str()), ours) {
            (Some(file), Some(ours)) => file.contains(&*ours),
            _ => false,
        }
    }

    /// The proxy's HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The proxy's HTTPS listener (when the config has `{https}`).
    pub fn https_addr(&self) -> SocketAddr {
        self.https
    }

    /// The proxy's admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://<http addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `http://<admin addr><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The JSON answer of an admin endpoint (`/upstreams`, `/config`), with no token.
    /// Panics, naming the path, when the endpoint does not answer JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let resp = super::h1()
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin listener: {e}"));
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin listener: not JSON: {e}"))
    }

    /// The text answer of an admin endpoint (`/metrics`), with no token. Panics,
    /// naming the path, when it cannot be read.
    pub async fn admin_text(&self, path: &str) -> String {
        super::h1()
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin listener: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin listener: {e}"))
    }

    /// Process id of the proxy.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Current resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, key: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {path}:\n{status}"))
    }

    /// The config file the proxy was started with (may be rewritten for reload tests).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The proxy's temp dir (config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the proxy wrote to stdout/stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The first access-log line (JSON, in the proxy's output) for which `matches`
    /// holds, once it is written; `what` names it in the failure after [`PATIENCE`].
    /// Metrics are recorded when a request is logged, so a test that reads counters
    /// of a request waits for its line first.
    pub async fn access_line(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let find = || {
            self.logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| matches(v))
        };
        super::eventually(
            &format!("the access-log line of {what}"),
            PATIENCE,
            || async { find().is_some() },
        )
        .await;
        find().unwrap_or_default()
    }

    /// Sends a signal by name, e.g. `"TERM"`, `"HUP"`, `"INT"`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -{sig} {} failed: {status}",
            self.pid()
        );
    }

    /// Waits up to `timeout` for the proxy to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("polling proxy process") {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- modelgate log ({}) ---\n{}",
                self.config.display(),
                self.logs()
            );
        }
    }
}

/// Writes `toml` to a temp file and runs `modelgate check -c <file>`.
/// Returns (success, stderr + stdout, path the config was written to; the
/// file is gone by the time this returns).
pub fn check(toml: &str) -> (bool, String, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("modelgate-check-")
        .tempdir()
        .expect("creating temp dir for check");
    let path = dir.path().join("modelgate.toml");
    std::fs::write(&path, toml).expect("writing config for check");
    let (ok, output) = check_file(&path);
    drop(dir);
    (ok, output, path)
}

/// Runs `modelgate check -c <path>`; returns (success, stderr + stdout).
pub fn check_file(path: &Path) -> (bool, String) {
    let out = Command::new(modelgate_bin())
        .arg("check")
        .arg("-c")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} check: {e}", modelgate_bin().display()));
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.success(), text)
}
