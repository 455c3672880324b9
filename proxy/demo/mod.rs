//! `modelgate demo`: three in-process model replicas (one slower) on loopback with the
//! proxy in front over HTTP and HTTPS (a certificate generated at start), configured
//! through the same TOML loader as `run`. Needs no files and no network; prints curl
//! lines that work.

pub mod cert;
pub mod replica;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::app::{App, StartError};
use crate::config;

/// Where the demo serves unless told otherwise.
pub const HTTP_ADDR: &str = "127.0.0.1:8080";
pub const HTTPS_ADDR: &str = "127.0.0.1:8443";
pub const ADMIN_ADDR: &str = "127.0.0.1:9901";

/// The demo's listeners.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts the replicas and serves the demo on `addrs` until interrupted.
pub fn run(addrs: Addrs) -> Result<(), StartError> {
    let Addrs { http, https, admin } = addrs;
    let certs = cert::generate().map_err(|e| StartError(vec![e]))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo-replicas")
        .enable_all()
        .build()
        .map_err(|e| StartError(vec![format!("demo: cannot start replica runtime: {e}")]))?;
    let replicas = runtime
        .block_on(async {
            let mut out = Vec::new();
            for (name, delay) in [
                ("replica-a", 50),
                ("replica-b", 50),
                ("replica-c-slow", 400),
            ] {
                out.push(
                    replica::Replica::builder(name)
                        .delay(Duration::from_millis(delay))
                        .spawn()
                        .await?,
                );
            }
            Ok::<_, std::io::Error>(out)
        })
        .map_err(|e| StartError(vec![format!("demo: cannot start replicas: {e}")]))?;

    let backends: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    let toml = demo_config(addrs, &certs, &backends.join(", "));
    let loaded = config::parse(&toml, Path::new("(demo)"))
        .map_err(|e| StartError(e.0.iter().map(|e| e.to_string()).collect()))?;
    let app = App::build(&loaded.config)?;

    let ca = certs.ca.display();
    let host = format!("localhost:{}", https.port());
    println!("modelgate demo: 3 model replicas behind the proxy");
    for r in &replicas {
        println!("  {} on {}", r.name(), r.addr());
    }
    println!(
        r#"
Try these (each answer names the replica that served it):
  curl -s http://{http}/v1/predict -d '{{"input":"hello"}}'
  curl -sN 'http://{http}/v1/stream?tokens=10'
  curl -s --http2-prior-knowledge http://{http}/v1/predict -d '{{"input":"over h2c"}}'
  curl -s --cacert {ca} https://{host}/v1/predict -d '{{"input":"over https"}}'
  curl -sN --http2 --cacert {ca} 'https://{host}/v1/stream?tokens=5'
  curl -s http://{http}/nothing-here          # 404 no_route
  curl -s http://{admin}/upstreams             # backends, in-flight counts
  curl -s http://{admin}/readyz
  curl -s http://{admin}/metrics               # Prometheus metrics

Status page: open http://{admin}/ in a browser. Access log: one JSON line per request on stderr.

(HTTPS uses a certificate for localhost signed by a CA made for this run: {ca})

The config in use:
{toml}
Ctrl-C stops the demo."#
    );
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
        println!("modelgate demo replica {name} on {}", replica.addr());
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        replica.shutdown();
        Ok(())
    })
}

fn demo_config(addrs: Addrs, certs: &cert::DemoCerts, backends: &str) -> String {
    let Addrs { http, https, admin } = addrs;
    let (cert, key) = (certs.cert.display(), certs.key.display());
    format!(
        r#"[listen]
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
retries = 1
first_byte_timeout = "30s"
"#
    )
}
