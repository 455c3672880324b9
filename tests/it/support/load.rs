//! Load generators: clients sending requests back to back until stopped,
//! counting what came back 200 and keeping the first few failures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many failures are kept for the assertion message.
const KEPT: usize = 10;

/// Clients in a loop until [`Load::finish`]; a request fails unless it is
/// answered 200 with a whole body.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients; client `i` sends `request(i)` again and again.
    pub fn start<F>(clients: usize, request: F) -> Load
    where
        F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
    {
        let request = Arc::new(request);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|i| {
                let (request, stop, ok, failed, failures) = (
                    Arc::clone(&request),
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&failed),
                    Arc::clone(&failures),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let why = match request(i).send().await {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(_) => {
                                    ok.fetch_add(1, Ordering::SeqCst);
                                    continue;
                                }
                                Err(e) => format!("body: {e}"),
                            },
                            Ok(r) => {
                                let s = r.status();
                                format!("{s}: {}", r.text().await.unwrap_or_default())
                            }
                            Err(e) => format!("{e:?}"),
                        };
                        failed.fetch_add(1, Ordering::SeqCst);
                        let mut kept = failures.lock().unwrap();
                        if kept.len() < KEPT {
                            kept.push(why);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            failures,
            tasks,
        }
    }

    /// `per_protocol` HTTP/1.1 and as many HTTP/2 clients, each sending GET
    /// `/load/<its number>` to `proxy`.
    pub fn gets(proxy: &super::TestProxy, per_protocol: usize) -> Load {
        let urls: Vec<String> = (0..per_protocol * 2)
            .map(|i| proxy.url(&format!("/load/{i}")))
            .collect();
        let (h1, h2) = (super::h1(), super::h2());
        Load::start(per_protocol * 2, move |i| {
            let client = if i % 2 == 0 { &h1 } else { &h2 };
            client.get(&urls[i])
        })
    }

    /// `clients` HTTP/1.1 clients, each POSTing `{}` to `url`.
    pub fn posts(url: String, clients: usize) -> Load {
        let client = super::h1();
        Load::start(clients, move |_| client.post(&url).body("{}"))
    }

    /// Answers so far that were 200.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops the clients; returns (ok, failed, the first few failures).
    pub async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            failures,
        )
    }
}
