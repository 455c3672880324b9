//! Composition root: builds the pingora server from a validated config (proxy
//! listeners, admin listener, shutdown handling) and runs it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::Admin;
use crate::config::Config;
use crate::gateway::{Gateway, HttpsRedirect};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::tls::{self, TlsStats};

/// Why the server could not start. Each message is ready to print to an operator.
#[derive(Debug)]
pub struct StartError(pub Vec<String>);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.0 {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StartError {}

/// A configured, not yet running server.
pub struct App {
    server: Server,
    draining: Arc<AtomicBool>,
    tls_stats: Option<Arc<TlsStats>>,
}

impl App {
    /// Validates everything that can fail before serving (pools, routes, certificates,
    /// listener addresses) and builds the services. Binds nothing that stays bound.
    pub fn build(config: &Config) -> Result<App, StartError> {
        let snapshot = Snapshot::build(config);
        let certs = tls::load(config);
        let (snapshot, certs) = match (snapshot, certs) {
            (Ok(s), Ok((c, _warnings))) => (s, c),
            (s, c) => {
                let mut errors = s.err().unwrap_or_default();
                errors.extend(c.err().unwrap_or_default());
                return Err(StartError(errors));
            }
        };
        check_bindable(config)?;
        let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snapshot));

        let threads = match config.listen.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let grace = config.listen.shutdown_grace.as_secs();
        let conf = ServerConf {
            threads,
            work_stealing: true,
            grace_period_seconds: Some(grace),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let conf = Arc::clone(&server.configuration);

        let mut proxy_addrs = Vec::new();
        if let Some(addr) = config.listen.http {
            let mut gateway = Gateway::new(Arc::clone(&shared), "http");
            if let (true, Some(https)) = (config.listen.redirect_http_to_https, config.listen.https)
            {
                gateway = gateway.redirecting(HttpsRedirect { port: https.port() });
            }
            let mut proxy =
                pingora::proxy::http_proxy_service_with_name(&conf, gateway, "proxy http");
            let mut opts = HttpServerOptions::default();
            opts.h2c = true;
            if let Some(app) = proxy.app_logic_mut() {
                app.server_options = Some(opts);
            }
            proxy.add_tcp(&addr.to_string());
            proxy_addrs.push(addr);
            server.add_service(proxy);
        }

        let mut tls_stats = None;
        if let (Some(addr), Some(certs)) = (config.listen.https, certs) {
            let settings = tls::policy::listener_settings(certs.resolver.clone()).map_err(|e| {
                StartError(vec![format!(
                    "{}: listen.https: {e}",
                    config.source.display()
                )])
            })?;
            let mut proxy = pingora::proxy::http_proxy_service_with_name(
                &conf,
                Gateway::new(Arc::clone(&shared), "https"),
                "proxy https",
            );
            proxy.add_tls_with_settings(&addr.to_string(), None, settings);
            proxy_addrs.push(addr);
            server.add_service(proxy);
            server.add_service(background_service("tls certificate watcher", certs.watcher));
            tls_stats = Some(certs.stats);
        }

        let draining = Arc::new(AtomicBool::new(false));
        if let Some(addr) = config.listen.admin {
            let admin = Admin::new(Arc::clone(&shared), proxy_addrs, Arc::clone(&draining));
            let mut svc = Service::new(
                "admin".to_string(),
                pingora::apps::http_app::HttpServer::new_app(admin),
            );
            svc.add_tcp(&addr.to_string());
            svc.threads = Some(1);
            server.add_service(svc);
        }
        Ok(App {
            server,
            draining,
            tls_stats,
        })
    }

    /// Certificate rotation counters, when HTTPS is served.
    pub fn tls_stats(&self) -> Option<&Arc<TlsStats>> {
        self.tls_stats.as_ref()
    }

    /// Serves until SIGINT (immediate exit) or SIGTERM (stop accepting, let in-flight
    /// requests finish for up to `shutdown_grace`, then exit).
    pub fn run(self) {
        let watch = SignalWatch {
            draining: self.draining,
        };
        self.server.run(RunArgs {
            shutdown_signal: Box::new(watch),
        });
    }
}

/// Fails early, with the config key, when a listener address cannot be bound
/// (in use, not local, no permission) instead of panicking inside pingora.
fn check_bindable(config: &Config) -> Result<(), StartError> {
    let l = &config.listen;
    let wanted: [(&str, Option<SocketAddr>); 3] = [
        ("listen.http", l.http),
        ("listen.https", l.https),
        ("listen.admin", l.admin),
    ];
    let errors: Vec<String> = wanted
        .iter()
        .filter_map(|(key, addr)| {
            let addr = (*addr)?;
            std::net::TcpListener::bind(addr).err().map(|e| {
                format!(
                    "{}: {key}: cannot listen on {addr}: {e}; pick a free address or stop what holds it",
                    config.source.display()
                )
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StartError(errors))
    }
}

/// pingora's signal handling, plus flipping `/readyz` to 503 the moment SIGTERM arrives.
struct SignalWatch {
    draining: Arc<AtomicBool>,
}

#[async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                self.draining.store(true, Ordering::Relaxed);
                log::info!("SIGTERM: draining");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => {
                self.draining.store(true, Ordering::Relaxed);
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}
