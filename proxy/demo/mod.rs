//! `modelgate demo`: a small fleet of in-process model replicas behaving like real ones
//! (two slots each, one slower, one still loading its weights at start) behind the
//! proxy with caps, a queue and health checks, over HTTP and HTTPS (a certificate
//! generated at start). The config is written to a file and served with hot reload on,
//! so editing it shows a reload. Needs no files and no network; every command it prints
//! works as printed.

pub(crate) mod cert;
pub(crate) mod openai;
pub mod replica;

/// `println!` through [`crate::logging::print`]: a closed stdout (`| head`) ends
/// the demo quietly instead of a panic.
macro_rules! println_ {
    ($($t:tt)*) => { crate::logging::print(format_args!("{}\n", format_args!($($t)*))) };
}

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::app::{App, StartError};
use crate::config;

/// Where the demo serves unless told otherwise.
pub const HTTP_ADDR: &str = "127.0.0.1:8080";
pub const HTTPS_ADDR: &str = "127.0.0.1:8443";
pub const ADMIN_ADDR: &str = "127.0.0.1:9901";

/// Requests each demo replica works on at once (the rest wait inside it, as on a model
/// server with that many slots); the config caps each backend at this.
pub const SLOTS: usize = 2;
/// Requests that may wait in the proxy's queue once every slot is taken.
pub const QUEUE: usize = 4;
/// Concurrent requests of the printed burst: more than every slot plus the queue.
pub const BURST: usize = 20;
/// How long the loading replica answers its health check with 503.
pub const LOADING: Duration = Duration::from_secs(6);

/// One demo replica: name, service time per request, and whether it starts loading.
struct Spec {
    name: &'static str,
    delay: Duration,
    loading: bool,
    about: &'static str,
}

const FLEET: [Spec; 3] = [
    Spec {
        name: "replica-a",
        delay: Duration::from_millis(1000),
        loading: false,
        about: "ready",
    },
    Spec {
        name: "replica-b",
        delay: Duration::from_millis(1000),
        loading: true,
        about: "loading weights: /health answers 503 for the first 6 s, then it joins",
    },
    Spec {
        name: "replica-c-slow",
        delay: Duration::from_millis(3000),
        loading: false,
        about: "3x slower: least-outstanding balancing sends it less",
    },
];

/// The demo's listeners.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts the replicas and serves the demo on `addrs` until interrupted.
pub fn run(addrs: Addrs) -> Result<(), StartError> {
    let certs = cert::generate().map_err(|e| StartError(vec![e]))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo-replicas")
        .enable_all()
        .build()
        .map_err(|e| StartError(vec![format!("demo: cannot start replica runtime: {e}")]))?;
    let replicas = runtime
        .block_on(spawn_fleet())
        .map_err(|e| StartError(vec![format!("demo: cannot start replicas: {e}")]))?;

    let backends: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    let file = certs.dir.join("modelgate.toml");
    let toml = demo_config(addrs, &certs, &backends.join(", "));
    std::fs::write(&file, &toml)
        .map_err(|e| StartError(vec![format!("demo: cannot write {}: {e}", file.display())]))?;
    let loaded =
        config::load(&file).map_err(|e| StartError(e.0.iter().map(|e| e.to_string()).collect()))?;
    let app = App::build(&loaded.config)?;
    let (certs_for_banner, file_for_banner) = (certs.clone(), file.clone());

    // Print once the first replica passed its health check, so every line works.
    let snapshot = std::sync::Arc::clone(app.snapshot());
    let names: Vec<(String, SocketAddr)> = replicas
        .iter()
        .map(|r| (r.name().to_string(), r.addr()))
        .collect();
    std::thread::Builder::new()
        .name("demo-banner".into())
        .spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline
                && !snapshot
                    .load()
                    .pools
                    .iter()
                    .any(|p| p.backends().iter().any(|b| b.is_available()))
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            print_banner(addrs, &certs_for_banner, &file_for_banner, &names);
        })
        .map_err(|e| StartError(vec![format!("demo: cannot start: {e}")]))?;
    app.run();
    drop(runtime);
    let _ = std::fs::remove_dir_all(&certs.dir);
    Ok(())
}

/// Serves one demo replica named `name` on `listen` until SIGTERM or SIGINT: the model
/// service of the container examples, from the same image as the proxy.
pub fn run_replica(listen: SocketAddr, name: &str) -> Result<(), StartError> {
    let fail = |what: &str, e: std::io::Error| StartError(vec![format!("demo: {what}: {e}")]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail("cannot start the replica runtime", e))?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // As PID 1 in a container nothing stops on SIGTERM unless it is handled.
        let mut term = signal(SignalKind::terminate()).map_err(|e| fail("signals", e))?;
        let replica = replica::Replica::builder(name)
            .bind(listen)
            .delay(Duration::from_millis(50))
            .spawn()
            .await
            .map_err(|e| fail(&format!("cannot listen on {listen}"), e))?;
        println_!("modelgate demo replica {name} on {}", replica.addr());
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        replica.shutdown();
        Ok(())
    })
}

/// The lines a user pastes: what each replica is, then commands that each work.
fn print_banner(
    addrs: Addrs,
    certs: &cert::DemoCerts,
    file: &Path,
    replicas: &[(String, SocketAddr)],
) {
    let Addrs { http, https, admin } = addrs;
    let ca = certs.ca.display();
    let host = format!("localhost:{}", https.port());
    let cfg = file.display();
    println_!(
        "modelgate demo: {} model replicas with {SLOTS} slots each behind the proxy",
        replicas.len()
    );
    for ((name, addr), spec) in replicas.iter().zip(&FLEET) {
        println_!(
            "- {name} on {addr}: {:.1} s per request, {}",
            spec.delay.as_secs_f64(),
            spec.about
        );
    }
    let burst_body = r#"'{"input":"burst"}'"#;
    println_!(
        r#"
The proxy caps each replica at max_inflight = {SLOTS} and queues {QUEUE} more requests;
past that it answers 503 overloaded at once instead of piling work on the replicas.
Paste these lines (each answer names the replica that served it, in its body or in
the x-replica header):

  curl -s http://{admin}/upstreams        # replica-b is "unknown" or "down" until its weights load
  curl -s http://{http}/v1/predict -d '{{"input":"hello"}}'
  curl -sN 'http://{http}/v1/stream?tokens=10'        # tokens streamed as server-sent events
  curl -s http://{http}/v1/models                     # OpenAI API, as vLLM serves it
  curl -sN http://{http}/v1/chat/completions -H 'content-type: application/json' -d '{{"model":"demo","stream":true,"max_tokens":8,"messages":[{{"role":"user","content":"hello"}}]}}'
  curl -s --cacert {ca} https://{host}/v1/predict -d '{{"input":"over https"}}'
  curl -sN --http2 --cacert {ca} 'https://{host}/v1/stream?tokens=5'
  for i in $(seq {BURST}); do echo "$(curl -s -w ' %{{http_code}} in %{{time_total}}s' http://{http}/v1/predict -d {burst_body})" & done; wait
  curl -s http://{admin}/metrics | grep -E '^modelgate_(rejected_total|queue_wait_seconds_count)'
  curl -s http://{http}/nothing-here     # 404 no_route

The burst: {BURST} requests at once; the first ones run at once, the queued ones take
longer (see their times), the rest get {{"error":"overloaded"}} with status 503.

Status page (15 minutes of charts; each replica's state, in-flight and share): http://{admin}/
Access log: one JSON line per request on stderr.

Hot reload: the running config is {cfg}
Edit it (any editor), for example raise the cap, and watch the log say it reloaded:
  sed -i 's/^max_inflight = {SLOTS}$/max_inflight = 4/' {cfg}
  curl -s http://{admin}/config          # generation 2 within a second of the edit

(HTTPS uses a certificate for localhost signed by a CA made for this run: {ca})
Ctrl-C stops the demo."#
    );
}

/// Spawns [`FLEET`]; the loading replica fails its health check for [`LOADING`].
async fn spawn_fleet() -> std::io::Result<Vec<replica::ReplicaHandle>> {
    let mut out = Vec::new();
    for spec in &FLEET {
        let health = if spec.loading { 503 } else { 200 };
        let r = replica::Replica::builder(spec.name)
            .delay(spec.delay)
            .concurrency(SLOTS)
            .health_status(health)
            .spawn()
            .await?;
        if spec.loading {
            let loaded = r.clone();
            tokio::spawn(async move {
                tokio::time::sleep(LOADING).await;
                loaded.set_health_status(200);
            });
        }
        out.push(r);
    }
    Ok(out)
}

fn demo_config(addrs: Addrs, certs: &cert::DemoCerts, backends: &str) -> String {
    let Addrs { http, https, admin } = addrs;
    let (cert, key) = (certs.cert.display(), certs.key.display());
    format!(
        r#"# modelgate demo config: edit and save; the running proxy reloads it.
[listen]
http = "{http}"
https = "{https}"
admin = "{admin}"
shutdown_grace = "1s"

[tls]
certs = [{{ cert = "{cert}", key = "{key}" }}]

[[route]]
name = "demo"
path = "/v1"
upstream = "demo"

[upstream.demo]
backends = [{backends}]
balance = "least_outstanding"
max_inflight = {SLOTS}
queue = {{ size = {QUEUE}, timeout = "20s" }}
retries = 1
first_byte_timeout = "30s"

[upstream.demo.health]
path = "/health"
interval = "1s"
timeout = "500ms"
healthy_after = 1
unhealthy_after = 2
"#
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_config_is_valid() {
        let addrs = super::Addrs {
            http: ([127, 0, 0, 1], 1).into(),
            https: ([127, 0, 0, 1], 2).into(),
            admin: ([127, 0, 0, 1], 3).into(),
        };
        let certs = super::cert::DemoCerts {
            dir: "/d".into(),
            ca: "/d/ca.crt".into(),
            cert: "/d/localhost.crt".into(),
            key: "/d/localhost.key".into(),
        };
        let toml = super::demo_config(addrs, &certs, r#""127.0.0.1:4""#);
        let loaded = crate::config::parse(&toml, std::path::Path::new("demo.toml"));
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }
}
