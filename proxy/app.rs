//! Composition root: builds the pingora server from a validated config (proxy
//! listeners, admin listener, shutdown handling) and runs it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{Admin, AdminService};
use crate::config::{AccessLog as AccessLogTarget, Config, ConnLimits};
use crate::edge::conn::{ConnectionLimits, Gate};
use crate::edge::metrics::EdgeCollector;
use crate::edge::EdgeService;
use crate::gateway::{Gateway, HttpsRedirect};
use crate::health::HealthService;
use crate::listeners::{self, PreBound};
use crate::metrics::access::AccessLog;
use crate::metrics::pools::PoolCollector;
use crate::metrics::Metrics;
use crate::prepare::prepare;
use crate::reload::{ConfigWatch, Reloader, Trigger};
use crate::snapshot::SharedSnapshot;
use crate::tls;

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
    /// Flushed after the server stops, so the lines of requests cut at shutdown
    /// are written before the process exits.
    access_log: Option<AccessLog>,
    reloader: Option<Arc<Reloader>>,
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
    /// Validates everything that can fail before serving (pools, routes, certificates)
    /// and builds the services. Binds the listener addresses and keeps them until the
    /// services serve on them (or the `App` is dropped), so no other program can take
    /// one in between.
    pub fn build(config: &Config) -> Result<App, StartError> {
        App::build_with(config, &StartOptions::default())
    }

    /// [`App::build`] with start options (graceful upgrade). The steps: prepare the
    /// config ([`crate::prepare`], as `check` and reloads do), bind the listener
    /// addresses (except in an upgrade, which takes them over), set up metrics and the
    /// access log, then add the proxy listeners, the background services, the config
    /// reloader and the admin listener.
    pub fn build_with(config: &Config, opts: &StartOptions) -> Result<App, StartError> {
        let prepared = prepare(config, None).map_err(StartError)?;
        for w in &prepared.warnings {
            log::warn!("{w}");
        }
        let mut bound = if opts.upgrade {
            Bound::default()
        } else {
            bind_listeners(config)?
        };
        let metrics = Metrics::new(prometheus::Registry::new()).map_err(metrics_error)?;
        metrics.set_generation(prepared.snapshot.generation);
        let access_log = open_access_log(config, &metrics)?;
        let mut server = new_server(config, opts);
        let parts = Parts {
            conf: Arc::clone(&server.configuration),
            snapshot: Arc::new(ArcSwap::from_pointee(prepared.snapshot)),
            metrics,
            access_log,
            drain: Drain::new(config.listen.shutdown_grace),
            conns: ConnectionLimits::new(&config.listen.limits),
        };
        let registry = parts.metrics.registry();
        EdgeCollector::new(Arc::clone(&parts.snapshot), Arc::clone(&parts.conns))
            .and_then(|c| registry.register(Box::new(c)))
            .and_then(|()| PoolCollector::new(Arc::clone(&parts.snapshot)))
            .and_then(|c| registry.register(Box::new(c)))
            .map_err(metrics_error)?;

        let mut proxy_addrs = Vec::new();
        if let Some(addr) = config.listen.http {
            let service = parts.http_listener(config, addr);
            server.add_service(PreBound::new(service, addr, bound.take(addr)));
            proxy_addrs.push(addr);
        }
        let mut cert_watcher = None;
        if let (Some(addr), Some(certs)) = (config.listen.https, prepared.certs) {
            let service = parts.https_listener(config, addr, certs.resolver)?;
            server.add_service(PreBound::new(service, addr, bound.take(addr)));
            proxy_addrs.push(addr);
            certs
                .stats
                .collector()
                .and_then(|c| registry.register(Box::new(c)))
                .map_err(metrics_error)?;
            let watcher = background_service("tls certificate watcher", certs.watcher);
            cert_watcher = Some(watcher.task());
            server.add_service(watcher);
        }
        parts.add_background_services(&mut server);
        // Only a config read from a file can be reloaded (not the demo's).
        let reloader = config.source.is_file().then(|| {
            Arc::new(Reloader::new(
                config,
                Arc::clone(&parts.snapshot),
                cert_watcher,
                Arc::clone(&parts.metrics),
            ))
        });
        if let Some(reloader) = &reloader {
            server.add_service(one_thread(background_service(
                "config watch",
                ConfigWatch::new(Arc::clone(reloader)),
            )));
        }
        if let Some(addr) = config.listen.admin {
            let listener = bound.take(addr);
            server.add_service(parts.admin(
                config,
                addr,
                listener,
                proxy_addrs,
                reloader.clone(),
            )?);
        }
        Ok(App {
            server,
            drain: parts.drain,
            access_log: parts.access_log,
            reloader,
            snapshot: parts.snapshot,
        })
    }

    /// The live config generation (routes and pools), as the proxy sees it.
    pub(crate) fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// Serves until SIGINT (immediate exit) or SIGTERM (stop accepting, let in-flight
    /// requests finish for up to `shutdown_grace`, exit as soon as the last is done).
    /// Requests still running when it stops are cut: one WARN line counts them, and
    /// each gets its access-log line (`reject` `shutdown`), flushed before returning.
    pub fn run(self) {
        let active = Arc::clone(&self.drain.active);
        let watch = SignalWatch {
            drain: self.drain,
            reloader: self.reloader,
        };
        self.server.run(RunArgs {
            shutdown_signal: Box::new(watch),
        });
        let Some(log) = self.access_log else {
            return;
        };
        // On a fast stop pingora does not wait for its runtimes, whose threads may still
        // be dropping the cut requests (each queueing its line) as `run` returns.
        let deadline = std::time::Instant::now() + ACCESS_LOG_FLUSH;
        while active.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !log.flush(left) {
            log::warn!("the access log's last lines were not written within {ACCESS_LOG_FLUSH:?}");
        }
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

/// What the services of one server share.
struct Parts {
    conf: Arc<ServerConf>,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    drain: Drain,
    conns: Arc<ConnectionLimits>,
}

impl Parts {
    /// The request path of one proxy listener (`scheme`: `http` or `https`).
    fn gateway(&self, scheme: &'static str, limits: ConnLimits) -> Gateway {
        Gateway::new(
            Arc::clone(&self.snapshot),
            scheme,
            Arc::clone(&self.drain.active),
            Arc::clone(&self.metrics),
            self.access_log.clone(),
        )
        .closing_when(Arc::clone(&self.drain.draining))
        .with_limits(limits)
    }

    /// A proxy listener's pingora service, with our server options and the
    /// connection limits, not yet bound to an address.
    fn proxy_service(
        &self,
        gateway: Gateway,
        name: &str,
        limits: &ConnLimits,
        h2c: bool,
    ) -> Service<HttpProxy<Gateway>> {
        let mut proxy = pingora::proxy::http_proxy_service_with_name(&self.conf, gateway, name);
        if let Some(app) = proxy.app_logic_mut() {
            app.server_options = Some(server_options(limits, h2c));
        }
        proxy.set_connection_gate(Arc::new(Gate(Arc::clone(&self.conns))));
        proxy
    }

    /// `listen.http`: plain HTTP/1.1 and h2c, redirecting to HTTPS when asked.
    fn http_listener(&self, config: &Config, addr: SocketAddr) -> Service<HttpProxy<Gateway>> {
        let limits = config.listen.limits;
        let mut gateway = self.gateway("http", limits);
        if let (true, Some(https)) = (config.listen.redirect_http_to_https, config.listen.https) {
            gateway = gateway.redirecting(HttpsRedirect { port: https.port() });
        }
        let mut proxy = self.proxy_service(gateway, "proxy http", &limits, true);
        proxy.add_tcp(&addr.to_string());
        proxy
    }

    /// `listen.https`: TLS with the certificates of `[tls]`, failed handshakes counted.
    fn https_listener(
        &self,
        config: &Config,
        addr: SocketAddr,
        resolver: Arc<tls::SniResolver>,
    ) -> Result<Service<HttpProxy<Gateway>>, StartError> {
        let settings = tls::policy::listener_settings(resolver).map_err(|e| {
            StartError(vec![format!(
                "{}: listen.https: {e}",
                config.source.display()
            )])
        })?;
        let limits = config.listen.limits;
        let gateway = self.gateway("https", limits);
        let mut proxy = self.proxy_service(gateway, "proxy https", &limits, false);
        let handshakes = tls::handshake::HandshakeCounter::register(self.metrics.registry())
            .map_err(metrics_error)?;
        proxy.set_handshake_failures(handshakes);
        proxy.add_tls_with_settings(&addr.to_string(), None, settings);
        Ok(proxy)
    }

    /// The tasks that keep the live snapshot current: rate-limit upkeep, health
    /// checks, load reports and DNS discovery, one thread each.
    fn add_background_services(&self, server: &mut Server) {
        let (snapshot, metrics) = (&self.snapshot, &self.metrics);
        server.add_service(one_thread(background_service(
            "edge",
            EdgeService::new(Arc::clone(snapshot)),
        )));
        server.add_service(one_thread(background_service(
            "health checks",
            HealthService::new(Arc::clone(snapshot)),
        )));
        server.add_service(one_thread(background_service(
            "load reports",
            crate::load::LoadService::new(Arc::clone(snapshot), Arc::clone(metrics)),
        )));
        server.add_service(one_thread(background_service(
            "dns discovery",
            crate::discovery::DiscoveryService::new(Arc::clone(snapshot), Arc::clone(metrics)),
        )));
    }

    /// `listen.admin`: the admin API, guarded by `listen.admin_token_file` when set.
    fn admin(
        &self,
        config: &Config,
        addr: SocketAddr,
        listener: Option<tokio::net::TcpSocket>,
        proxy_addrs: Vec<SocketAddr>,
        reloader: Option<Arc<Reloader>>,
    ) -> Result<GenBackgroundService<AdminService>, StartError> {
        let token = match &config.listen.admin_token_file {
            Some(path) => Some(crate::admin::read_token(path).map_err(|e| {
                StartError(vec![format!(
                    "{}: listen.admin_token_file: {e}",
                    config.source.display()
                )])
            })?),
            None => None,
        };
        let admin = Admin::new(
            Arc::clone(&self.snapshot),
            proxy_addrs,
            Arc::clone(&self.drain.draining),
            Arc::clone(&self.metrics),
        )
        .with_reload(reloader, config.source.clone())
        .with_token(token);
        Ok(one_thread(background_service(
            "admin",
            AdminService::new(admin, addr, listener),
        )))
    }
}

/// A background service that needs no more than one thread.
fn one_thread<T>(mut service: GenBackgroundService<T>) -> GenBackgroundService<T> {
    service.threads = Some(1);
    service
}

fn metrics_error(e: prometheus::Error) -> StartError {
    StartError(vec![format!("metrics: {e}")])
}

/// `log.access`: the access log writer, when on.
fn open_access_log(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<AccessLog>, StartError> {
    let file = match &config.log.access {
        AccessLogTarget::Off => return Ok(None),
        AccessLogTarget::Stderr => None,
        AccessLogTarget::File(path) => Some(path.as_path()),
    };
    AccessLog::start(file, Arc::clone(metrics))
        .map(Some)
        .map_err(|e| {
            StartError(vec![format!(
                "{}: log.access: cannot open the access log: {e}",
                config.source.display()
            )])
        })
}

/// The pingora server: `listen.workers` threads (0: one per core), the shutdown
/// grace period, and the socket a graceful upgrade takes the listeners over on.
fn new_server(config: &Config, opts: &StartOptions) -> Server {
    let threads = match config.listen.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(config.listen.shutdown_grace.as_secs()),
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
    server
}

/// One upgrade socket per config file, so instances on one host do not collide.
fn default_upgrade_sock(config: &std::path::Path) -> std::path::PathBuf {
    let abs = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let hash = xxhash_rust::xxh3::xxh3_64(abs.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("modelgate-upgrade-{hash:016x}.sock"))
}

/// The listener addresses, bound by [`bind_listeners`] and taken by the services
/// that serve on them.
#[derive(Default)]
struct Bound(Vec<(SocketAddr, tokio::net::TcpSocket)>);

impl Bound {
    /// The socket bound for `addr` (none in a graceful upgrade).
    fn take(&mut self, addr: SocketAddr) -> Option<tokio::net::TcpSocket> {
        let i = self.0.iter().position(|(a, _)| *a == addr)?;
        Some(self.0.swap_remove(i).1)
    }
}

/// Binds every listener address, failing early with the config key when one cannot
/// be bound (in use, not local, no permission) instead of panicking inside pingora.
/// The sockets are held (see [`crate::listeners`]), so an address checked here cannot
/// be taken by another program before the proxy listens on it.
fn bind_listeners(config: &Config) -> Result<Bound, StartError> {
    let l = &config.listen;
    let wanted: [(&str, Option<SocketAddr>); 3] = [
        ("listen.http", l.http),
        ("listen.https", l.https),
        ("listen.admin", l.admin),
    ];
    let mut bound = Bound::default();
    let mut errors = Vec::new();
    for (key, addr) in wanted {
        let Some(addr) = addr else { continue };
        match listeners::bind(addr) {
            Ok(socket) => bound.0.push((addr, socket)),
            Err(e) => errors.push(format!(
                "{}: {key}: cannot listen on {addr}: {e}; pick a free address or stop what holds it",
                config.source.display()
            )),
        }
    }
    if errors.is_empty() {
        Ok(bound)
    } else {
        Err(StartError(errors))
    }
}

/// How long the process waits, once stopped, for the access log's last lines.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);

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
    fn new(grace: Duration) -> Drain {
        Drain {
            draining: Arc::new(AtomicBool::new(false)),
            terminating: Arc::new(AtomicBool::new(false)),
            active: Arc::new(AtomicUsize::new(0)),
            grace,
        }
    }

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
        // pingora drops this future when the grace period ends first; the guard
        // then says how many requests the stop cuts.
        let mut cut = CutWarning {
            active: &self.active,
            grace: self.grace,
            armed: true,
        };
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
                cut.armed = false;
                return;
            }
        }
    }
}

/// Logs, when dropped armed (the grace period ended before the requests did), how
/// many requests are still in progress and about to be cut.
struct CutWarning<'a> {
    active: &'a AtomicUsize,
    grace: Duration,
    armed: bool,
}

impl Drop for CutWarning<'_> {
    fn drop(&mut self) {
        let n = self.active.load(Ordering::Acquire);
        if self.armed && n > 0 {
            log::warn!(
                "shutdown grace ({:?}) is over with {n} request(s) still in progress; cutting them",
                self.grace
            );
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
                _ = int.recv() => {
                    self.drain.draining.store(true, Ordering::SeqCst);
                    let n = self.drain.active.load(Ordering::Acquire);
                    if n > 0 {
                        log::warn!("SIGINT: stopping at once; cutting {n} request(s) in progress (SIGTERM drains them)");
                    } else {
                        log::info!("SIGINT: stopping at once");
                    }
                    return ShutdownSignal::FastShutdown;
                }
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

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use super::*;

    /// Binds `addr` as a program that does not share addresses (no `SO_REUSEADDR`).
    fn bind_exclusively(addr: SocketAddr) -> std::io::Result<()> {
        tokio::net::TcpSocket::new_v4()?.bind(addr)
    }

    /// The listener addresses checked when the server is built stay its own until it
    /// serves on them: pingora binds only when its services start, and a socket bound
    /// to the port in between (any program binding port 0 may be handed it) would get
    /// the proxy's traffic while the proxy retried and `/readyz` said ready. Until the
    /// services listen, connections are refused, as before.
    #[test]
    fn build_holds_the_listener_addresses_until_they_are_served() {
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
        };
        // The ports were free a moment ago; another test may take one first.
        let (app, addrs) = (0..5)
            .find_map(|_| {
                let (http, admin) = (free(), free());
                let toml = format!(
                    "[listen]\nhttp = \"{http}\"\nadmin = \"{admin}\"\n\n\
                     [[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n\n\
                     [upstream.u]\nbackends = [\"127.0.0.1:9\"]\n"
                );
                let loaded = crate::config::parse(&toml, std::path::Path::new("keep.toml"))
                    .unwrap_or_else(|e| panic!("{}", e.0[0]));
                App::build(&loaded.config)
                    .ok()
                    .map(|app| (app, [http, admin]))
            })
            .expect("two free ports in five tries");
        for addr in addrs {
            let taken = bind_exclusively(addr).map_err(|e| e.kind());
            assert_eq!(taken, Err(ErrorKind::AddrInUse), "{addr} was released");
            let refused = TcpStream::connect(addr).map(|_| ()).map_err(|e| e.kind());
            assert_eq!(refused, Err(ErrorKind::ConnectionRefused), "{addr} accepts");
        }
        drop(app);
        for addr in addrs {
            bind_exclusively(addr).unwrap_or_else(|e| panic!("{addr} still held: {e}"));
        }
    }
}
