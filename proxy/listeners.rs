//! The listener addresses, bound once at start and held until their services listen
//! on them, so no other program can take one between the start-up check and serving.
//!
//! pingora binds a listening service's address only when the service starts, after
//! the server is built, its threads are up and its services are ordered: on a loaded
//! host a window of a tenth of a second or more. A socket bound to the port in that
//! window (any program binding port 0 may be handed it) leaves pingora retrying for
//! 30 s while the port answers for someone else, and a readiness probe that connects
//! to the port cannot tell. Binding first and handing the socket over, as a graceful
//! upgrade hands over the old process's sockets, closes the window. The socket is
//! bound but not listening until then: connections are refused, as before, until the
//! process serves (and handles signals).

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ListenFds, RuntimeOpts, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::net::TcpSocket;

/// Binds a non-blocking socket to `addr` without listening yet. It allows address
/// reuse, as pingora's own bind does (a restart must not wait out the old process's
/// connections in TIME_WAIT); Linux never hands such a port to a bind to port 0.
/// Errors are the OS's: address in use, not local, no permission.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// A pingora service that serves on a socket bound before it started: the socket goes
/// into pingora's table of listening sockets (keyed by the address string given to
/// `add_tcp`/`add_tls*`; the table a graceful upgrade fills and hands over), which
/// pingora then listens on instead of binding.
pub(crate) struct PreBound<S> {
    inner: S,
    socket: Option<(String, TcpSocket)>,
}

impl<S> PreBound<S> {
    /// `inner`, listening on `addr`, to be served on `socket` (bound to `addr`); with
    /// no socket (a graceful upgrade) pingora takes the old process's or binds.
    pub(crate) fn new(inner: S, addr: SocketAddr, socket: Option<TcpSocket>) -> Self {
        PreBound {
            inner,
            socket: socket.map(|s| (addr.to_string(), s)),
        }
    }
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for PreBound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        if let (Some(table), Some((addr, socket))) = (&fds, self.socket.take()) {
            let mut table = table.lock();
            // A socket already there came from the old process of a graceful upgrade;
            // ours is closed.
            if table.get(&addr).is_none() {
                table.add(addr, socket.into_raw_fd());
            }
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd, ready_notifier)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited);
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
