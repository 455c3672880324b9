//! `modelgate demo`: three in-process model replicas (one slower) on loopback with the
//! proxy in front, configured through the same TOML loader as `run`. Needs no files
//! and no network; prints curl lines that work.

pub mod replica;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::app::{App, StartError};
use crate::config;

/// Where the demo serves unless told otherwise.
pub const HTTP_ADDR: &str = "127.0.0.1:8080";
pub const ADMIN_ADDR: &str = "127.0.0.1:9901";

/// Starts the replicas and serves the demo on `http` and `admin` until interrupted.
pub fn run(http: SocketAddr, admin: SocketAddr) -> Result<(), StartError> {
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
    let toml = demo_config(http, admin, &backends.join(", "));
    let loaded = config::parse(&toml, Path::new("(demo)"))
        .map_err(|e| StartError(e.0.iter().map(|e| e.to_string()).collect()))?;
    let app = App::build(&loaded.config)?;

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
  curl -s http://{http}/nothing-here          # 404 no_route
  curl -s http://{admin}/upstreams             # backends, in-flight counts
  curl -s http://{admin}/readyz

The config in use:
{toml}
Ctrl-C stops the demo."#
    );
    app.run();
    drop(runtime);
    Ok(())
}

fn demo_config(http: SocketAddr, admin: SocketAddr, backends: &str) -> String {
    format!(
        r#"[listen]
http = "{http}"
admin = "{admin}"
shutdown_grace = "1s"

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
