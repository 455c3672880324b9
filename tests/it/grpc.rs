//! gRPC end to end: a tonic client over TLS (h2 by ALPN) through modelgate to a tonic
//! server speaking h2c. Messages are hand-written prost structs and the service is a
//! hand-written `tower::Service`, so no protoc is needed.
#![allow(clippy::result_large_err)] // tonic::Status is large; that is its API

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tonic::codec::ProstCodec;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::support::tls::*;
use crate::support::*;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub blob: Vec<u8>,
    /// For server streaming: how many answers; for errors: fail after this many.
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub blob: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

const MAX_MESSAGE: usize = 16 * 1024 * 1024;
const UNARY: &str = "/test.Echo/Unary";
const SERVER_STREAM: &str = "/test.Echo/ServerStream";
const BIDI: &str = "/test.Echo/Bidi";
const FAIL: &str = "/test.Echo/Fail";

type BoxFut<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'static>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

/// The error every failing call ends with: code, message, binary details and a
/// custom trailing metadata entry.
fn failure() -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("x-model-error", "replica-overheated".parse().unwrap());
    md.insert_bin(
        "x-debug-bin",
        tonic::metadata::MetadataValue::from_bytes(&[0, 1, 2, 255]),
    );
    Status::with_details_and_metadata(
        Code::ResourceExhausted,
        "model is busy",
        bytes::Bytes::from_static(b"\x08\x2a details \xff"),
        md,
    )
}

fn assert_is_failure(s: &Status) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(s.message(), "model is busy");
    assert_eq!(s.details(), b"\x08\x2a details \xff");
    assert_eq!(
        s.metadata().get("x-model-error").unwrap(),
        "replica-overheated"
    );
    assert_eq!(
        s.metadata()
            .get_bin("x-debug-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0, 1, 2, 255]
    );
}

#[derive(Clone)]
struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "test.Echo";
}

struct Unary;
impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFut<Response<EchoReply>, Status>;
    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let r = req.into_inner();
            Ok(Response::new(EchoReply {
                text: r.text.chars().rev().collect(),
                blob: r.blob,
                index: 0,
            }))
        })
    }
}

struct ServerStream;
impl tonic::server::ServerStreamingService<EchoRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFut<Response<ReplyStream>, Status>;
    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let r = req.into_inner();
            let s = futures_util::stream::iter(0..r.count).then(move |i| {
                let text = r.text.clone();
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    Ok(EchoReply {
                        text,
                        blob: Vec::new(),
                        index: i,
                    })
                }
            });
            Ok(Response::new(Box::pin(s) as ReplyStream))
        })
    }
}

/// Streams `count` replies, then ends with [`failure`] in the trailers.
struct Fail;
impl tonic::server::ServerStreamingService<EchoRequest> for Fail {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFut<Response<ReplyStream>, Status>;
    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let r = req.into_inner();
            if r.count == 0 {
                return Err(failure()); // trailers-only response
            }
            let items = (0..r.count)
                .map(|i| {
                    Ok(EchoReply {
                        text: "partial".into(),
                        blob: Vec::new(),
                        index: i,
                    })
                })
                .chain(std::iter::once(Err(failure())));
            Ok(Response::new(
                Box::pin(futures_util::stream::iter(items)) as ReplyStream
            ))
        })
    }
}

struct Bidi;
impl tonic::server::StreamingService<EchoRequest> for Bidi {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFut<Response<ReplyStream>, Status>;
    fn call(&mut self, req: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(async move {
            let mut incoming = req.into_inner();
            let s = async_stream(move |tx| async move {
                let mut i = 0;
                while let Some(msg) = incoming.next().await {
                    let reply = msg.map(|m| EchoReply {
                        text: m.text.to_uppercase(),
                        blob: m.blob,
                        index: i,
                    });
                    i += 1;
                    if tx.send(reply).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Response::new(s))
        })
    }
}

/// A stream fed by a task (what `async-stream` would give, without the macro).
fn async_stream<F, Fut>(f: F) -> ReplyStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<EchoReply, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

impl<B> tower::Service<http::Request<B>> for EchoService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let grpc = || {
            tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        };
        match req.uri().path() {
            UNARY => Box::pin(async move { Ok(grpc().unary(Unary, req).await) }),
            SERVER_STREAM => {
                Box::pin(async move { Ok(grpc().server_streaming(ServerStream, req).await) })
            }
            FAIL => Box::pin(async move { Ok(grpc().server_streaming(Fail, req).await) }),
            BIDI => Box::pin(async move { Ok(grpc().streaming(Bidi, req).await) }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Starts the h2c gRPC server on 127.0.0.1:0.
async fn grpc_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoService)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn path(p: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(p)
}

#[tokio::test]
async fn grpc_over_tls_to_an_h2c_backend() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["api.test"]).write(dir.path(), "api");
    let backend = grpc_server().await;
    let toml = format!(
        r#"
[listen]
https = "{{https}}"
admin = "{{admin}}"

[tls]
certs = "{}"

[[route]]
name = "grpc"
path = "/test.Echo"
upstream = "grpc"

[upstream.grpc]
backends = ["{backend}"]
protocol = "h2c"
"#,
        dir.path().display()
    );
    let proxy = TestProxy::start(&toml).await;

    // The client speaks h2 over TLS, chosen by ALPN, to the proxy.
    let addr = proxy.https_addr();
    let tls_config = ca.client(&[b"h2"]);
    let connector = tower::service_fn(move |_: http::Uri| {
        let cfg = tls_config.clone();
        async move {
            let tls = connect(addr, Some("api.test"), cfg).await?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://api.test")
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let codec = ProstCodec::<EchoRequest, EchoReply>::default;

    // Unary.
    client.ready().await.unwrap();
    let reply = client
        .unary(
            Request::new(EchoRequest {
                text: "hello".into(),
                ..Default::default()
            }),
            path(UNARY),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.text, "olleh");

    // An 8 MiB message each way.
    let blob: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    client.ready().await.unwrap();
    let reply = client
        .unary(
            Request::new(EchoRequest {
                text: "big".into(),
                blob: blob.clone(),
                count: 0,
            }),
            path(UNARY),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.blob.len(), blob.len());
    assert!(reply.blob == blob);

    // Server streaming: every message, in order.
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            Request::new(EchoRequest {
                text: "tok".into(),
                count: 5,
                ..Default::default()
            }),
            path(SERVER_STREAM),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        seen.push(m.index);
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);

    // Bidirectional: each reply arrives before the next request is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    client.ready().await.unwrap();
    let mut replies = client
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path(BIDI),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    for (i, word) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        tx.send(EchoRequest {
            text: word.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let r = replies.message().await.unwrap().unwrap();
        assert_eq!(
            (r.text.as_str(), r.index),
            (word.to_uppercase().as_str(), i as u32)
        );
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    // Errors: trailers-only, and after two messages; status, details and trailing
    // metadata arrive intact.
    client.ready().await.unwrap();
    let err = client
        .server_streaming(Request::new(EchoRequest::default()), path(FAIL), codec())
        .await
        .unwrap_err();
    assert_is_failure(&err);
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            Request::new(EchoRequest {
                count: 2,
                ..Default::default()
            }),
            path(FAIL),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
    assert_eq!(stream.message().await.unwrap().unwrap().index, 1);
    let err = stream.message().await.unwrap_err();
    assert_is_failure(&err);
}
