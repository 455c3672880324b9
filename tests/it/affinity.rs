//! Cache affinity (`balance = "cache_affinity"`) in front of mock OpenAI replicas with a
//! prefix cache: shared prefixes stick to one replica, the balance guard diverts from an
//! overloaded one, with known slots it queues nothing and keeps its hits, a replica
//! reporting a queue is passed over, a replica taken out (by its health or by a reload)
//! loses its prefixes, header sessions stick, and the keys are checked with
//! line-precise errors.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::{json, Value};

use crate::support::model::LLAMACPP_METRICS;
use crate::support::*;

async fn replicas(delay: Duration) -> Vec<ReplicaHandle> {
    let mut out = Vec::new();
    for name in ["a", "b", "c"] {
        out.push(
            Replica::builder(name)
                .models(["m"])
                .delay(delay)
                .token_interval(Duration::from_millis(1))
                .spawn()
                .await
                .unwrap(),
        );
    }
    out
}

/// One OpenAI route to upstream `pool` of `r`, with `extra` lines in the upstream.
fn config(r: &[ReplicaHandle], extra: &str) -> String {
    let refs: Vec<&ReplicaHandle> = r.iter().collect();
    format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[[route]]
name = "chat"
path = "/v1"
api = "openai"
upstream = "pool"

[upstream.pool]
backends = [{}]
balance = "cache_affinity"
{extra}
"#,
        backend_list(&refs)
    )
}

/// A chat body: a long system prompt, then the user turns.
fn chat(system: &str, turns: &[&str]) -> Value {
    let mut messages = vec![json!({"role": "system", "content": system})];
    messages.extend(turns.iter().map(|t| json!({"role": "user", "content": t})));
    json!({"model": "m", "messages": messages, "max_tokens": 2})
}

/// Which replica answered (the mock names itself in the completion id), and the
/// prompt tokens it found in its prefix cache.
async fn send(client: &reqwest::Client, proxy: &TestProxy, body: &Value) -> (String, u64) {
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap_or_default();
    let replica = id.split('-').nth(1).unwrap_or_default().to_string();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    (replica, cached)
}

/// Sends `n` chats with system prompt `sys` (turns `q0`, `q1`, ...) one at a time, each
/// once the ones before it are in flight (as `inflight` counts them), so each pick
/// sees them; returns the tasks awaiting their statuses.
async fn send_in_turn(
    proxy: &TestProxy,
    sys: &str,
    n: u64,
    inflight: impl Fn() -> u64,
) -> Vec<tokio::task::JoinHandle<reqwest::StatusCode>> {
    let client = h1();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, url, body) = (
            client.clone(),
            proxy.url("/v1/chat/completions"),
            chat(sys, &[&format!("q{i}")]),
        );
        tasks.push(tokio::spawn(async move {
            client.post(url).json(&body).send().await.unwrap().status()
        }));
        eventually("the request reaches its replica", PATIENCE, || async {
            inflight() == i + 1
        })
        .await;
    }
    tasks
}

fn system_prompt(n: usize) -> String {
    (0..300)
        .map(|i| format!("rule{n}x{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn shared_prefixes_stick_to_one_replica_and_hit_its_cache() {
    let r = replicas(Duration::ZERO).await;
    let proxy = TestProxy::start(&config(&r, "")).await;
    let client = h1();
    let mut owner: HashMap<usize, String> = HashMap::new();
    let mut cached_after_first = 0;
    for round in 0..4 {
        for p in 0..3 {
            let sys = system_prompt(p);
            let question = format!("question {round} about topic {p}");
            let (got, cached) = send(&client, &proxy, &chat(&sys, &[&question])).await;
            let first = owner.entry(p).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "prompt {p} moved in round {round}");
            if round > 0 {
                cached_after_first += cached;
            }
        }
    }
    // Every later request found its 300-word system prompt cached on its replica.
    assert!(cached_after_first >= 9 * 288, "cached {cached_after_first}");
    // A new conversation with its own prompt is not pulled to any one replica.
    let distinct: HashSet<&String> = owner.values().collect();
    assert!(!distinct.is_empty());
}

#[tokio::test]
async fn a_later_turn_of_a_conversation_follows_its_earlier_turns() {
    let r = replicas(Duration::ZERO).await;
    let proxy = TestProxy::start(&config(&r, "")).await;
    let client = h1();
    for s in 0..6 {
        let sys = system_prompt(100 + s);
        let (first, _) = send(&client, &proxy, &chat(&sys, &["hello"])).await;
        let (second, cached) = send(&client, &proxy, &chat(&sys, &["hello", "and more"])).await;
        assert_eq!(first, second, "session {s}");
        assert!(cached > 0);
    }
}

/// Token-id prompts on `/v1/completions` (as vLLM and OpenAI take them) are keyed as
/// text is: a prompt of 600 ids and its continuations stay on one replica.
#[tokio::test]
async fn token_id_prompts_stick_to_one_replica() {
    let r = replicas(Duration::ZERO).await;
    let proxy = TestProxy::start(&config(&r, "")).await;
    let client = h1();
    let mut owner: HashMap<u64, String> = HashMap::new();
    for round in 0..4u64 {
        for p in 0..3u64 {
            let mut ids: Vec<u64> = (0..600).map(|i| p * 100_000 + i * 13).collect();
            ids.extend([round, round + 1]);
            let resp = client
                .post(proxy.url("/v1/completions"))
                .json(&json!({"model": "m", "prompt": ids, "max_tokens": 2}))
                .send()
                .await
                .unwrap();
            let (status, v) = status_and_body(resp).await;
            assert_eq!(status, 200, "{v}");
            let got = v["id"].as_str().unwrap_or_default().split('-').nth(1);
            let got = got.unwrap_or_default().to_string();
            let first = owner.entry(p).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "token prompt {p} moved in round {round}");
        }
    }
}

#[tokio::test]
async fn the_guard_diverts_from_an_overloaded_replica() {
    let r = replicas(Duration::from_secs(3)).await;
    let proxy = TestProxy::start(&config(&r, "affinity_guard = { abs = 2, rel = 1.5 }")).await;
    let client = h1();
    let sys = system_prompt(7);
    let (home, _) = send(&client, &proxy, &chat(&sys, &["warm up"])).await;
    let home = r.iter().find(|x| x.name() == home).unwrap();
    let before: Vec<u64> = r.iter().map(|x| x.hits()).collect();
    let tasks = send_in_turn(&proxy, &sys, 9, || {
        r.iter().map(ReplicaHandle::inflight).sum::<u64>()
    })
    .await;
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let got: Vec<u64> = r.iter().zip(&before).map(|(x, b)| x.hits() - b).collect();
    let home_got = home.hits() - before[r.iter().position(|x| x.name() == home.name()).unwrap()];
    // With abs 2 the home replica takes requests until it runs 3 more than the least
    // loaded; then they go elsewhere (and the prefix is remembered there too).
    assert!(home_got < 9, "all went home: {got:?}");
    assert!(home_got >= 3, "affinity kept up to the guard: {got:?}");
    assert!(
        home.max_inflight() <= 6,
        "home ran {} at once",
        home.max_inflight()
    );
}

#[tokio::test]
async fn header_sessions_stick_and_an_ejected_replica_loses_its_sessions() {
    let r = replicas(Duration::ZERO).await;
    let proxy = TestProxy::start(&config(
        &r,
        "affinity_key = \"header:x-session-id\"\n[upstream.pool.health]\npath = \"/health\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\nhealthy_after = 1\nunhealthy_after = 1\n",
    ))
    .await;
    let client = h1();
    let up = |state: &'static str, i: usize| {
        let proxy = &proxy;
        async move {
            proxy.admin_json("/upstreams").await["upstreams"]["pool"]["backends"][i]["state"]
                == state
        }
    };
    for i in 0..3 {
        eventually("replicas pass their first check", PATIENCE, || up("up", i)).await;
    }
    let session = |client: &reqwest::Client, k: usize| {
        let (client, url) = (client.clone(), proxy.url("/v1/chat/completions"));
        async move {
            let resp = client
                .post(url)
                .header("x-session-id", format!("s{k}"))
                .json(&chat("short", &["hi"]))
                .send()
                .await
                .unwrap();
            let (status, v) = status_and_body(resp).await;
            assert_eq!(status, 200, "{v}");
            v["id"]
                .as_str()
                .unwrap()
                .split('-')
                .nth(1)
                .unwrap()
                .to_string()
        }
    };
    let mut owner: HashMap<usize, String> = HashMap::new();
    for round in 0..3 {
        for k in 0..24 {
            let got = session(&client, k).await;
            let first = owner.entry(k).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "session {k} moved in round {round}");
        }
    }
    let distinct: HashSet<&String> = owner.values().collect();
    assert!(distinct.len() >= 2, "24 sessions spread: {owner:?}");

    // Take the replica with the most sessions out, serve its sessions elsewhere,
    // bring it back: they stay where they were served meanwhile.
    let (out_idx, out_name) = r
        .iter()
        .enumerate()
        .map(|(i, x)| (i, x.name().to_string()))
        .max_by_key(|(_, n)| owner.values().filter(|o| *o == n).count())
        .unwrap();
    r[out_idx].set_health_status(503);
    eventually("the replica is marked down", PATIENCE, || {
        up("down", out_idx)
    })
    .await;
    let mut moved = HashMap::new();
    for (&k, o) in &owner {
        let got = session(&client, k).await;
        assert_ne!(got, out_name);
        if *o != out_name {
            assert_eq!(*o, got, "session {k} of a healthy replica moved");
        }
        moved.insert(k, got);
    }
    r[out_idx].set_health_status(200);
    eventually("the replica is back", PATIENCE, || up("up", out_idx)).await;
    for (&k, o) in &moved {
        assert_eq!(
            *o,
            session(&client, k).await,
            "session {k} after the return"
        );
    }
}

#[tokio::test]
async fn a_replica_removed_by_reload_takes_its_prefixes_with_it() {
    let r = replicas(Duration::ZERO).await;
    let proxy = TestProxy::start(&config(&r, "")).await;
    let client = h1();
    let prompt = |p: usize| chat(&system_prompt(200 + p), &["hello"]);
    let mut owner: HashMap<usize, String> = HashMap::new();
    for p in 0..9 {
        owner.insert(p, send(&client, &proxy, &prompt(p)).await.0);
    }
    // The replica holding the most prefixes leaves the pool.
    let (out, out_name) = r
        .iter()
        .enumerate()
        .map(|(i, x)| (i, x.name().to_string()))
        .max_by_key(|(_, n)| owner.values().filter(|o| *o == n).count())
        .unwrap();
    let listed = format!("\"{}\"", r[out].addr());
    let text = std::fs::read_to_string(proxy.config_path()).unwrap();
    let without = if text.contains(&format!("{listed}, ")) {
        format!("{listed}, ")
    } else {
        format!(", {listed}")
    };
    reload_replacing(&proxy, &without, "").await;
    // Its prefixes find a new home and stay there; the others do not move.
    let mut moved = HashMap::new();
    for (&p, o) in &owner {
        let (got, _) = send(&client, &proxy, &prompt(p)).await;
        assert_ne!(got, out_name, "prompt {p} went to the removed replica");
        if *o != out_name {
            assert_eq!(*o, got, "prompt {p} of a kept replica moved");
        }
        let (again, cached) = send(&client, &proxy, &prompt(p)).await;
        assert_eq!(got, again, "prompt {p} did not stick to its new home");
        assert!(cached > 0, "prompt {p}: no cache hit on its new home");
        moved.insert(p, got);
    }
    // Listed again, the replica is a new one to the index: nothing it held before
    // pulls its old prompts back (their caches are where they were served since).
    reload_replacing(&proxy, "backends = [", &format!("backends = [{listed}, ")).await;
    for (&p, home) in &moved {
        assert_eq!(
            *home,
            send(&client, &proxy, &prompt(p)).await.0,
            "prompt {p}"
        );
    }
}

#[test]
fn affinity_keys_are_checked_with_line_precise_errors() {
    let head = "[listen]\nhttp = \"127.0.0.1:1\"\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n[upstream.u]\nbackends = [\"127.0.0.1:2\"]\n";
    let good = format!(
        "{head}balance = \"cache_affinity\"\naffinity_key = \"header:x-session-id\"\naffinity_threshold = 0.5\naffinity_guard = {{ abs = 8, rel = 2 }}\naffinity_blocks = 100000\n"
    );
    let (ok, out, _) = check(&good);
    assert!(ok, "{out}");
    let broken = format!(
        "{head}balance = \"cache_affinity\"\naffinity_key = \"session\"\naffinity_threshold = 1.5\naffinity_guard = {{ abs = -1, rel = 0.5, max = 3 }}\naffinity_blocks = 0\n"
    );
    let (ok, out, path) = check(&broken);
    assert!(!ok, "{out}");
    for want in [
        ":10:16: upstream.u.affinity_key: expected \"prompt\" or \"header:NAME\"",
        ":11:22: upstream.u.affinity_threshold: expected a number greater than 0 and at most 1",
        ":12:26: upstream.u.affinity_guard.abs: expected a whole number >= 0",
        ":12:36: upstream.u.affinity_guard.rel: expected a number of at least 1",
        ":12:41: upstream.u.affinity_guard.max: unknown key `max`",
        ":13:19: upstream.u.affinity_blocks: expected a whole number from 1 to",
        // The same measured figure as the README's (checked below).
        "75.7 bytes of heap each (measured; see README): the default 1048576 takes about 72 MiB",
    ] {
        let line = if want.starts_with(':') {
            format!("{}{want}", path.display())
        } else {
            want.to_string()
        };
        assert!(out.contains(&line), "missing\n  {line}\nin\n{out}");
    }
    assert!(
        include_str!("../../README.md").contains("Memory: 75.7 bytes of heap per remembered block"),
        "the README and the affinity_blocks error give different figures"
    );
    // Without cache_affinity the keys are ignored with a warning, and the policy
    // is still refused when misspelt.
    let (ok, out, _) = check(&format!("{head}affinity_threshold = 0.5\n"));
    assert!(
        ok && out.contains("only used with balance = \"cache_affinity\""),
        "{out}"
    );
    let (ok, out, _) = check(&format!("{head}balance = \"cache_afinity\"\n"));
    assert!(!ok && out.contains("cache_affinity"), "{out}");
}

/// Three replicas that run 2 requests at once (more wait inside, as llama.cpp's slots
/// do) and hold a bounded prefix cache: about 0.25 s per request with a cold 300-word
/// prompt, 0.1 s with a cached one.
async fn slotted_replicas() -> Vec<ReplicaHandle> {
    let mut out = Vec::new();
    for name in ["a", "b", "c"] {
        out.push(
            Replica::builder(name)
                .models(["m"])
                .concurrency(2)
                .prefill_per_token(Duration::from_micros(500))
                .token_interval(Duration::from_millis(20))
                .prefix_cache_blocks(120)
                .spawn()
                .await
                .unwrap(),
        );
    }
    out
}

/// Runs every client's requests in order, all clients at once (a closed loop); returns
/// the prompt tokens sent and those the replicas found cached.
async fn closed_loop(proxy: &TestProxy, clients: Vec<Vec<Value>>) -> (u64, u64) {
    let client = h1();
    let url = proxy.url("/v1/chat/completions");
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|bodies| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let (mut prompt, mut cached) = (0, 0);
                for body in bodies {
                    let resp = client.post(&url).json(&body).send().await.unwrap();
                    let (status, v) = status_and_body(resp).await;
                    assert_eq!(status, 200, "{v}");
                    prompt += v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
                    cached += v["usage"]["prompt_tokens_details"]["cached_tokens"]
                        .as_u64()
                        .unwrap_or(0);
                }
                (prompt, cached)
            })
        })
        .collect();
    let mut total = (0, 0);
    for t in tasks {
        let (p, c) = t.await.unwrap();
        total = (total.0 + p, total.1 + c);
    }
    total
}

/// Fewer clients (4) than slots (3 replicas × 2), with room for a slot whose answer
/// has reached its client but not yet been counted as freed: a policy that never lets
/// a request wait while a slot is free anywhere queues nothing, in the proxy or in a
/// replica.
const CLIENTS: usize = 4;

/// Asserts that no request waited for a slot, in the proxy's queue or inside a replica,
/// and that every replica took a share.
async fn assert_nobody_waited(proxy: &TestProxy, r: &[ReplicaHandle], policy: &str) {
    let waited = metric_value(proxy, "modelgate_queue_wait_seconds_sum{upstream=\"pool\"}").await;
    assert_eq!(
        waited, 0.0,
        "{policy}: requests waited in the proxy's queue"
    );
    for x in r {
        assert!(
            x.max_inflight() <= 2,
            "{policy}: replica {} ran {} at once: requests queued inside it",
            x.name(),
            x.max_inflight()
        );
        assert!(x.hits() > 0, "{policy}: replica {} got nothing", x.name());
    }
}

#[tokio::test]
async fn with_known_slots_affinity_queues_no_request_and_keeps_its_cache_hits() {
    let mut rng = fastrand::Rng::with_seed(14);
    // B: every prompt its own (nothing to hit), the same for both policies.
    let unique: Vec<Vec<Value>> = (0..CLIENTS)
        .map(|c| {
            (0..8)
                .map(|k| {
                    let sys: Vec<String> = (0..300).map(|i| format!("u{c}x{k}x{i}")).collect();
                    chat(&sys.join(" "), &["go"])
                })
                .collect()
        })
        .collect();
    for policy in ["cache_affinity", "least_outstanding"] {
        let r = slotted_replicas().await;
        let cfg = config(&r, "max_inflight = 2\n").replace(
            "balance = \"cache_affinity\"",
            &format!("balance = \"{policy}\""),
        );
        let proxy = TestProxy::start(&cfg).await;
        let (_, cached) = closed_loop(&proxy, unique.clone()).await;
        assert_eq!(cached, 0, "{policy}: unique prompts hit a cache");
        assert_nobody_waited(&proxy, &r, policy).await;
    }

    // A: six shared system prompts, three-turn sessions that resend the conversation.
    let prompts: Vec<String> = (0..6).map(|n| system_prompt(300 + n)).collect();
    let shared: Vec<Vec<Value>> = (0..CLIENTS)
        .map(|c| {
            let mut bodies = Vec::new();
            for s in 0..3 {
                let sys = &prompts[rng.usize(..prompts.len())];
                let mut turns: Vec<String> = Vec::new();
                for t in 0..3 {
                    turns.push(format!("client {c} session {s} turn {t} asks"));
                    let refs: Vec<&str> = turns.iter().map(String::as_str).collect();
                    bodies.push(chat(sys, &refs));
                }
            }
            bodies
        })
        .collect();
    let r = slotted_replicas().await;
    let proxy = TestProxy::start(&config(&r, "max_inflight = 2\n")).await;
    let (prompt, cached) = closed_loop(&proxy, shared).await;
    assert_nobody_waited(&proxy, &r, "cache_affinity").await;
    let ratio = cached as f64 / prompt.max(1) as f64;
    assert!(ratio >= 0.5, "hit ratio {ratio:.2} ({cached} of {prompt})");
}

#[tokio::test]
async fn without_max_inflight_a_replica_reporting_a_queue_is_passed_over() {
    let r = slotted_replicas().await;
    let load = "\n[upstream.pool.load]\nmetrics = \"/metrics\"\nevery = \"50ms\"\n";
    let proxy = TestProxy::start(&config(&r, load)).await;
    let client = h1();
    let sys = system_prompt(500);
    let (home, _) = send(&client, &proxy, &chat(&sys, &["warm up"])).await;
    let home = r.iter().find(|x| x.name() == home).unwrap();
    // Its requests now hold their slots for a while: two run, the third waits inside.
    home.set_delay(Duration::from_secs(3));
    let tasks = send_in_turn(&proxy, &sys, 3, || home.inflight()).await;
    assert_eq!(home.slot_counts(), (1, 2), "waiting, running");
    eventually(
        "the proxy has the replica's report of its queue",
        PATIENCE,
        || async { reported_queue(&proxy, home.addr()).await == Some(1.0) },
    )
    .await;
    // Load 3 against 0 is within the fallback guard (abs 4): only the reported queue,
    // with the replica's 2 running showing its slots, sends the request elsewhere.
    let (got, _) = send(&client, &proxy, &chat(&sys, &["q3"])).await;
    assert_ne!(got, home.name(), "the request joined the replica's queue");
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}

/// The queue `/upstreams` shows the backend at `addr` last reported.
async fn reported_queue(proxy: &TestProxy, addr: std::net::SocketAddr) -> Option<f64> {
    let v = proxy.admin_json("/upstreams").await;
    let addr = addr.to_string();
    v["upstreams"]["pool"]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["addr"] == addr.as_str())?["reported"]["queue"]
        .as_f64()
}

/// A replica whose llama.cpp page shows requests deferred with none processing (its
/// KV cache full, its requests preempted) shows no slot count: with no `max_inflight`
/// the request goes to an idle replica, not to the count fallback that would keep it
/// there (a queue of 3 is within abs 4).
#[tokio::test]
async fn a_holder_queueing_with_nothing_running_is_passed_over_for_an_idle_replica() {
    let reports = Reports {
        metrics: Some(LLAMACPP_METRICS.to_string()),
        orca: false,
    };
    let mut r = Vec::new();
    for name in ["a", "b", "c"] {
        let m = Model::builder(name).slots(2).reports(reports.clone());
        r.push(m.spawn().await);
    }
    let refs: Vec<&Model> = r.iter().collect();
    let extra = "balance = \"cache_affinity\"\naffinity_key = \"header:x-session-id\"\n\
        [upstream.pool.load]\nmetrics = \"/metrics\"\nevery = \"50ms\"\n";
    let proxy = TestProxy::start(&pool_config(&model_list(&refs), extra)).await;
    let client = h1();
    let session = |s: &'static str| {
        let (client, url) = (client.clone(), proxy.url("/x?ms=2"));
        async move {
            let resp = client
                .get(url)
                .header("x-session-id", s)
                .send()
                .await
                .unwrap();
            let (status, v) = status_and_body(resp).await;
            assert_eq!(status, 200, "{v}");
            v["replica"].as_str().unwrap_or_default().to_string()
        }
    };
    let home = session("s1").await;
    assert_eq!(session("s1").await, home, "the session did not stick");
    let home = r.iter().find(|m| m.name() == home).unwrap();
    home.set_external_waiting(3);
    eventually(
        "the proxy has the replica's report of its queue",
        PATIENCE,
        || async { reported_queue(&proxy, home.addr()).await == Some(3.0) },
    )
    .await;
    let moved = session("s1").await;
    assert_ne!(
        moved,
        home.name(),
        "the request joined a queue with idle replicas by"
    );
    // Its new home keeps it (the holder still queues).
    assert_eq!(session("s1").await, moved);
}
