//! Composition root: builds the pingora server from a validated config (proxy
//! listeners, admin listener, shutdown handling) and runs it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{Admin, AdminService};
use crate::config::{AccessLog as AccessLogTarget, Config, ConnLimits};
use crate::edge::conn::{ConnectionLimits, Gate};
use crate::edge::metrics::EdgeCollector;
use crate::edge::EdgeService;
use crate::gateway::{Gateway, HttpsRedirect};
use crate::health::HealthService;
use crate::metrics::access::AccessLog;
use crate::metrics::Metrics;
use crate::reload::{ConfigWatch, Reloader, Trigger};
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
    drain: Drain,
    tls_stats: Option<Arc<TlsStats>>,
    reloader: Option<Arc<Reloader>>,
    metrics: Arc<Metrics>,
    snapshot: SharedSnapshot,
}

/// How to start.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Graceful upgrade: take the listening sockets over from the running modelgate
    /// (which is then sent SIGQUIT) instead of binding them.
    pub upgrade: bool,
    /// The socket the two processes hand the listeners over on; by default one per
    /// config file, in the temp directory.
    pub upgrade_sock: Option<std::path::PathBuf>,
}

impl App {
    /// Validates everything that can fail before serving (pools, routes, certificates,
    /// listener addresses) and builds the services. Binds nothing that stays bound.
    pub fn build(config: &Config) -> Result<App, StartError> {
        App::build_with(config, &StartOptions::default())
    }

    /// [`App::build`] with start options (graceful upgrade).
    pub fn build_with(config: &Config, opts: &StartOptions) -> Result<App, StartError> {
        let snapshot = Snapshot::build(config);
        let certs = tls::load(config);
        let (snapshot, certs) = match (snapshot, certs) {
            (Ok(s), Ok((c, warnings))) => {
                for w in &warnings {
                    log::warn!("{w}");
                }
                (s, c)
            }
            (s, c) => {
                let mut errors = s.err().unwrap_or_default();
                errors.extend(c.err().unwrap_or_default());
                return Err(StartError(errors));
            }
        };
        if !opts.upgrade {
            check_bindable(config)?;
        }
        let metrics = Metrics::new(prometheus::Registry::new())
            .map_err(|e| StartError(vec![format!("metrics: {e}")]))?;
        metrics.set_generation(snapshot.generation);
        let access_log = match &config.log.access {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stderr => Some(AccessLog::start(None, Arc::clone(&metrics))),
            AccessLogTarget::File(path) => Some(AccessLog::start(Some(path), Arc::clone(&metrics))),
        }
        .transpose()
        .map_err(|e| {
            StartError(vec![format!(
                "{}: log.access: cannot open the access log: {e}",
                config.source.display()
            )])
        })?;
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
            upgrade_sock: opts
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| default_upgrade_sock(&config.source))
                .display()
                .to_string(),
            ..ServerConf::default()
        };
        let opt = pingora::server::configuration::Opt {
            upgrade: opts.upgrade,
            ..Default::default()
        };
        let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
        server.bootstrap();
        let conf = Arc::clone(&server.configuration);

        let drain = Drain {
            draining: Arc::new(AtomicBool::new(false)),
            terminating: Arc::new(AtomicBool::new(false)),
            active: Arc::new(AtomicUsize::new(0)),
            grace: config.listen.shutdown_grace,
        };
        let conns = ConnectionLimits::new(&config.listen.limits);
        EdgeCollector::new(Arc::clone(&shared), Arc::clone(&conns))
            .and_then(|c| metrics.registry().register(Box::new(c)))
            .map_err(|e| StartError(vec![format!("metrics: {e}")]))?;
        let mut proxy_addrs = Vec::new();
        if let Some(addr) = config.listen.http {
            let mut gateway = Gateway::new(
                Arc::clone(&shared),
                "http",
                Arc::clone(&drain.active),
                Arc::clone(&metrics),
                access_log.clone(),
            )
            .closing_when(Arc::clone(&drain.draining))
            .with_limits(config.listen.limits);
            if let (true, Some(https)) = (config.listen.redirect_http_to_https, config.listen.https)
            {
                gateway = gateway.redirecting(HttpsRedirect { port: https.port() });
            }
            let mut proxy =
                pingora::proxy::http_proxy_service_with_name(&conf, gateway, "proxy http");
            if let Some(app) = proxy.app_logic_mut() {
                app.server_options = Some(server_options(&config.listen.limits, true));
            }
            proxy.set_connection_gate(Arc::new(Gate(Arc::clone(&conns))));
            proxy.add_tcp(&addr.to_string());
            proxy_addrs.push(addr);
            server.add_service(proxy);
        }

        let mut tls_stats = None;
        let mut cert_watcher = None;
        if let (Some(addr), Some(certs)) = (config.listen.https, certs) {
            let settings = tls::policy::listener_settings(certs.resolver.clone()).map_err(|e| {
                StartError(vec![format!(
                    "{}: listen.https: {e}",
                    config.source.display()
                )])
            })?;
            let mut proxy = pingora::proxy::http_proxy_service_with_name(
                &conf,
                Gateway::new(
                    Arc::clone(&shared),
                    "https",
                    Arc::clone(&drain.active),
                    Arc::clone(&metrics),
                    access_log.clone(),
                )
                .closing_when(Arc::clone(&drain.draining))
                .with_limits(config.listen.limits),
                "proxy https",
            );
            if let Some(app) = proxy.app_logic_mut() {
                app.server_options = Some(server_options(&config.listen.limits, false));
            }
            proxy.set_connection_gate(Arc::new(Gate(Arc::clone(&conns))));
            let handshakes = tls::handshake::HandshakeCounter::register(metrics.registry())
                .map_err(|e| StartError(vec![format!("metrics: {e}")]))?;
            proxy.set_handshake_failures(handshakes);
            proxy.add_tls_with_settings(&addr.to_string(), None, settings);
            proxy_addrs.push(addr);
            server.add_service(proxy);
            let watcher = background_service("tls certificate watcher", certs.watcher);
            cert_watcher = Some(watcher.task());
            server.add_service(watcher);
            tls_stats = Some(certs.stats);
        }

        let mut edge = background_service("edge", EdgeService::new(Arc::clone(&shared)));
        edge.threads = Some(1);
        server.add_service(edge);

        let mut health =
            background_service("health checks", HealthService::new(Arc::clone(&shared)));
        health.threads = Some(1);
        server.add_service(health);

        let mut load = background_service(
            "load reports",
            crate::load::LoadService::new(Arc::clone(&shared), Arc::clone(&metrics)),
        );
        load.threads = Some(1);
        server.add_service(load);

        let mut discovery = background_service(
            "dns discovery",
            crate::discovery::DiscoveryService::new(Arc::clone(&shared), Arc::clone(&metrics)),
        );
        discovery.threads = Some(1);
        server.add_service(discovery);

        // Only a config read from a file can be reloaded (not the demo's).
        let reloader = config.source.is_file().then(|| {
            Arc::new(Reloader::new(
                config,
                Arc::clone(&shared),
                cert_watcher,
                Arc::clone(&metrics),
            ))
        });
        if let Some(reloader) = &reloader {
            let mut watch =
                background_service("config watch", ConfigWatch::new(Arc::clone(reloader)));
            watch.threads = Some(1);
            server.add_service(watch);
        }

        if let Some(addr) = config.listen.admin {
            let token = match &config.listen.admin_token_file {
                Some(path) => Some(read_token(path).map_err(|e| {
                    StartError(vec![format!(
                        "{}: listen.admin_token_file: {e}",
                        config.source.display()
                    )])
                })?),
                None => None,
            };
            let admin = Admin::new(
                Arc::clone(&shared),
                proxy_addrs,
                Arc::clone(&drain.draining),
                Arc::clone(&metrics),
            )
            .with_reload(reloader.clone(), config.source.clone())
            .with_token(token);
            let mut svc = background_service("admin", AdminService::new(admin, addr));
            svc.threads = Some(1);
            server.add_service(svc);
        }
        Ok(App {
            server,
            drain,
            tls_stats,
            reloader,
            metrics,
            snapshot: shared,
        })
    }

    /// Every metric of this server (the reloader records reloads here).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The live config generation (routes and pools), as the proxy sees it.
    pub fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// Certificate rotation counters, when HTTPS is served.
    pub fn tls_stats(&self) -> Option<&Arc<TlsStats>> {
        self.tls_stats.as_ref()
    }

    /// Serves until SIGINT (immediate exit) or SIGTERM (stop accepting, let in-flight
    /// requests finish for up to `shutdown_grace`, exit as soon as the last is done).
    pub fn run(self) {
        let watch = SignalWatch {
            drain: self.drain,
            reloader: self.reloader,
        };
        self.server.run(RunArgs {
            shutdown_signal: Box::new(watch),
        });
    }
}

/// pingora's options for a proxy listener: h2c on plain HTTP, the request-head
/// deadline, and HTTP/2 connections closed after `keepalive_timeout` idle
/// (pingora's default is never).
fn server_options(limits: &ConnLimits, h2c: bool) -> HttpServerOptions {
    let mut opts = HttpServerOptions::default();
    opts.h2c = h2c;
    opts.h2_idle_timeout = Some(limits.keepalive_timeout);
    opts.header_read_timeout = Some(limits.header_read_timeout);
    opts
}

/// The admin bearer token: the file's content without surrounding whitespace.
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "{} is empty; put the bearer token in it",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// One upgrade socket per config file, so instances on one host do not collide.
fn default_upgrade_sock(config: &std::path::Path) -> std::path::PathBuf {
    let abs = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let hash = xxhash_rust::xxh3::xxh3_64(abs.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("modelgate-upgrade-{hash:016x}.sock"))
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

/// What a graceful stop needs: the readiness flag, the count of requests in
/// progress, and how long they may take.
#[derive(Clone)]
struct Drain {
    draining: Arc<AtomicBool>,
    /// Set on SIGTERM only: a graceful upgrade (SIGQUIT) keeps the old process for the
    /// whole grace period, as pingora's upgrade expects.
    terminating: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    grace: Duration,
}

impl Drain {
    /// How often [`Drain::idle`] looks at the count of requests in progress.
    const POLL: Duration = Duration::from_millis(50);

    /// Flips `/readyz` to 503 and marks the stop as a terminate, so [`Drain::idle`]
    /// ends pingora's grace period as soon as no request is in progress.
    fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.terminating.store(true, Ordering::SeqCst);
    }

    /// Resolves when a terminate is under way and no request is in progress; never
    /// during an upgrade or before SIGTERM. pingora awaits it beside the grace period
    /// (the `drained` hook of our pingora patch), then stops its runtimes and `run`
    /// returns to `main`.
    async fn idle(&self) {
        if !self.terminating.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        // Idle twice in a row, one poll apart: a connection accepted just before the
        // listeners closed has had time to start its request.
        let mut idle_polls = 0;
        loop {
            tokio::time::sleep(Self::POLL).await;
            idle_polls = if self.active.load(Ordering::Acquire) == 0 {
                idle_polls + 1
            } else {
                0
            };
            if idle_polls >= 2 {
                log::info!("drained: no request in progress; exiting");
                return;
            }
        }
    }
}

/// pingora's signal handling, plus draining: `/readyz` turns 503 the moment SIGTERM
/// arrives and the process exits when the last request is done. `SIGHUP` reloads
/// the config file (its handler is installed as the server starts, so an early
/// SIGHUP never kills the process).
struct SignalWatch {
    drain: Drain,
    reloader: Option<Arc<Reloader>>,
}

#[async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::hangup()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    log::info!("SIGTERM: draining for up to {:?}", self.drain.grace);
                    self.drain.start();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = quit.recv() => {
                    log::info!("SIGQUIT: handing the listeners to the new process, then draining");
                    self.drain.draining.store(true, Ordering::SeqCst);
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = hup.recv() => match &self.reloader {
                    Some(reloader) => {
                        let reloader = Arc::clone(reloader);
                        let _ = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Signal)).await;
                    }
                    None => log::warn!("SIGHUP: this config was not read from a file; nothing to reload"),
                },
            }
        }
    }

    async fn drained(&self) {
        self.drain.idle().await
    }
}
