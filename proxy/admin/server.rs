//! The admin HTTP server: a small hyper server run as a pingora background service.
//! It ignores pingora's shutdown signal on purpose: during a drain it must keep
//! telling orchestrators "not ready" until the process exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Admin;

/// Serves [`Admin`] on one address.
pub(crate) struct AdminService {
    admin: Arc<Admin>,
    addr: SocketAddr,
    /// Bound to `addr` when the server was built (taken once); none in a graceful
    /// upgrade.
    bound: std::sync::Mutex<Option<tokio::net::TcpSocket>>,
}

impl AdminService {
    /// Listens on `bound` (a socket bound to `addr`) or, without one, binds `addr`
    /// when started.
    pub(crate) fn new(
        admin: Admin,
        addr: SocketAddr,
        bound: Option<tokio::net::TcpSocket>,
    ) -> Self {
        AdminService {
            admin: Arc::new(admin),
            addr,
            bound: std::sync::Mutex::new(bound),
        }
    }
}

/// Binds `addr`, retrying every 100 ms: during a graceful upgrade the old process
/// holds the address until it exits.
async fn bind_retrying(addr: SocketAddr) -> tokio::net::TcpListener {
    let mut attempts = 0u32;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                if attempts % 50 == 0 {
                    log::warn!("admin: cannot listen on {addr} yet: {e}; retrying");
                }
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        tokio::spawn(self.admin.history_sampler());
        let bound = self.bound.lock().ok().and_then(|mut b| b.take());
        let listener = match bound.map(|s| s.listen(1024)) {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                log::warn!(
                    "admin: cannot serve on the socket bound for {}: {e}",
                    self.addr
                );
                bind_retrying(self.addr).await
            }
            None => bind_retrying(self.addr).await,
        };
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("admin: accept failed: {e}");
                    continue;
                }
            };
            let admin = Arc::clone(&self.admin);
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let admin = Arc::clone(&admin);
                    async move {
                        // Liveness and readiness stay open: orchestrator probes carry no
                        // token, and they reveal nothing.
                        let open = matches!(req.uri().path(), "/healthz" | "/readyz");
                        let auth = req.headers().get(http::header::AUTHORIZATION);
                        let a = if open || admin.authorized(auth) {
                            admin.answer(req.method(), req.uri().path()).await
                        } else {
                            super::unauthorized()
                        };
                        let mut resp = http::Response::builder();
                        if a.status == http::StatusCode::UNAUTHORIZED {
                            // Lets a browser ask for the token (as the password).
                            resp = resp.header(
                                http::header::WWW_AUTHENTICATE,
                                "Basic realm=\"modelgate admin\", charset=\"UTF-8\"",
                            );
                        }
                        let resp = resp
                            .status(a.status)
                            .header(http::header::CONTENT_TYPE, a.content_type)
                            .header(http::header::CACHE_CONTROL, "no-store")
                            .body(Full::new(Bytes::from(a.body)))
                            .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    log::debug!("admin connection: {e}");
                }
            });
        }
    }
}
