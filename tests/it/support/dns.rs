//! A real DNS server on a loopback UDP port whose answers the test changes while
//! the proxy runs: A and AAAA records with TTL 0, a server failure, or an empty answer.
//! Messages are parsed and written with hickory-proto.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

/// What the server answers for one name.
#[derive(Debug, Clone)]
pub enum Answer {
    /// These addresses (A for IPv4, AAAA for IPv6).
    Addrs(Vec<IpAddr>),
    /// SERVFAIL.
    Fail,
}

/// The server; dropping it stops it.
pub struct DnsServer {
    addr: SocketAddr,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    queries: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Starts answering on `127.0.0.1:0`; unknown names get NXDOMAIN.
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answers: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let queries = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(serve(socket, Arc::clone(&answers), Arc::clone(&queries)));
        DnsServer {
            addr,
            answers,
            queries,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what `name` (no trailing dot) resolves to from the next query on.
    pub fn set(&self, name: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap()
            .insert(name.trim_end_matches('.').to_ascii_lowercase(), answer);
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    socket: UdpSocket,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    queries: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        queries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        debug_assert_eq!(response.metadata.message_type, MessageType::Response);
        for q in &request.queries {
            response.add_query(q.clone());
            let name = q.name().to_string();
            let key = name.trim_end_matches('.').to_ascii_lowercase();
            let answer = answers.lock().unwrap().get(&key).cloned();
            match answer {
                None => response.metadata.response_code = ResponseCode::NXDomain,
                Some(Answer::Fail) => response.metadata.response_code = ResponseCode::ServFail,
                Some(Answer::Addrs(ips)) => {
                    for ip in ips {
                        let rdata = match (ip, q.query_type()) {
                            (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                            _ => continue,
                        };
                        response.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
                    }
                }
            }
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}
