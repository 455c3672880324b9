//! TLS termination with real handshakes against a CA made in each test: SNI picks the
//! certificate, the policy refuses old protocols and non-AEAD suites, ALPN gives h2,
//! certificates rotate without restart, bad certificates are refused (at start) or
//! kept out (on rotation), plain HTTP redirects, and `https` upstreams verify the
//! backend and present a client certificate.

mod bad_certs;
mod dev_certs;
mod protocols;
mod rotation;
mod sni;
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use modelgate::demo::replica::Replica;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::tls::*;
use crate::support::*;

pub(super) fn config(certs: &Path, upstreams: &str, listen_extra: &str) -> String {
    format!(
        r#"
[listen]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
{listen_extra}

[tls]
certs = "{certs}"

{upstreams}
"#,
        certs = certs.display()
    )
}

pub(super) fn one_pool(backend: SocketAddr) -> String {
    format!(
        r#"
[[route]]
name = "all"
path = "/"
upstream = "pool"

[upstream.pool]
backends = ["{backend}"]
"#
    )
}

pub(super) fn url(proxy: &TestProxy, host: &str, path: &str) -> String {
    format!("https://{host}:{}{path}", proxy.https_addr().port())
}
