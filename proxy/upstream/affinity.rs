//! Cache affinity (`balance = "cache_affinity"`): send a request to the replica that
//! most likely still holds its prompt's prefix in its KV cache, unless that replica
//! is overloaded next to the least-loaded one; otherwise least outstanding.
//!
//! The approach is the one the model routers converged on: SGLang's cache-aware router
//! (sgl-router `cache_aware`: a radix tree of request text per worker, a match
//! threshold, and a balance guard with absolute and relative thresholds), vLLM
//! production-stack's prefix-aware router (a hash trie over text chunks) and llm-d's
//! prefix-cache scorer (chained block hashes with an LRU index). modelgate keeps the
//! llm-d shape, because it is bounded and cheap:
//!
//! - The affinity text (the OpenAI body's messages or prompt, or a header's value) is cut
//!   into [`BLOCK_BYTES`]-byte blocks; block `i`'s key is the hash of block `i` chained
//!   with block `i - 1`'s key, so one key stands for the whole prefix up to its end.
//!   A trailing partial block counts as a block. Only the first [`MAX_BLOCKS`] count.
//! - [`PrefixIndex`] maps a block key to the (up to [`OWNERS`]) replicas it was last sent
//!   to, most recent first, in an LRU map of at most `capacity` blocks per upstream
//!   (`affinity_blocks`, default
//!   [`crate::config::DEFAULT_AFFINITY_BLOCKS`]); the least recently used block is forgotten first.
//! - A request's match is the longest run of its leading blocks that one replica holds;
//!   it counts when it covers at least `affinity_threshold` of the request's blocks.
//! - The balance guard ([`pick`]) asks whether the request would queue on the matched
//!   replica. When its capacity is known (`max_inflight`, or the learned limit with
//!   `max_inflight = "auto"`, or a fresh load report showing a queue), the replica
//!   keeps the request while it has a free slot and is passed over when the request
//!   would wait there while another eligible replica would start it at once: a prefix
//!   hit saves prefill, a queue costs whole requests, and a replica with a handful of
//!   slots queues long before any count-based threshold notices (a replica queueing
//!   with nothing running shows no capacity: only an idle peer then counts as free).
//!   Only when capacity is unknown does the fallback ([`AffinityGuard`], SGLang's
//!   `cache_aware` guard) decide: pass over when its load exceeds the least-loaded
//!   available replica's by more than `abs` requests *and* is more than `rel` times
//!   it. Load is the least-outstanding view: requests in flight, or the replica's own
//!   fresh report of queued plus running requests, whichever is larger. A passed-over replica's request goes where least
//!   outstanding sends it among the others.
//!
//! A replica is named in the index by its affinity id, which changes when it goes down
//! or is ejected (its cache is presumed lost) and which a removed replica takes with it,
//! so their old entries match nothing and age out of the LRU.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::backend::Backend;
use super::balancer::Cap;
use crate::config::{AffinityGuard, AffinityKey};

/// Text bytes per block (about 16 tokens of English, llm-d's default block).
pub(crate) const BLOCK_BYTES: usize = 64;
/// Blocks of a request that count (the first 64 KiB of its text).
pub(crate) const MAX_BLOCKS: usize = 1024;
/// Replicas remembered per block.
pub(crate) const OWNERS: usize = 4;

/// The replicas a block was last sent to, most recent first (0: empty place).
type Owners = [u32; OWNERS];

/// A fresh affinity id for a replica (never 0, which means "none").
pub(crate) fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    loop {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if id != 0 {
            return id;
        }
    }
}

/// The chained block keys of one request's affinity text, built as the text is fed.
#[derive(Debug, Clone)]
pub(crate) struct PrefixKey {
    blocks: Vec<u64>,
    partial: [u8; BLOCK_BYTES],
    fill: usize,
}

impl Default for PrefixKey {
    fn default() -> Self {
        PrefixKey::with_capacity(0)
    }
}

impl PrefixKey {
    /// An empty key sized for about `bytes` of text (one allocation).
    pub(crate) fn with_capacity(bytes: usize) -> PrefixKey {
        PrefixKey {
            blocks: Vec::with_capacity((bytes / BLOCK_BYTES + 1).min(MAX_BLOCKS)),
            partial: [0; BLOCK_BYTES],
            fill: 0,
        }
    }

    /// Appends `text` to the affinity text.
    pub(crate) fn feed(&mut self, mut text: &[u8]) {
        while !text.is_empty() && self.blocks.len() < MAX_BLOCKS {
            let n = (BLOCK_BYTES - self.fill).min(text.len());
            self.partial[self.fill..self.fill + n].copy_from_slice(&text[..n]);
            self.fill += n;
            text = &text[n..];
            if self.fill == BLOCK_BYTES {
                self.push_block();
            }
        }
    }

    fn push_block(&mut self) {
        let seed = self.blocks.last().copied().unwrap_or(0);
        self.blocks
            .push(xxh3_64_with_seed(&self.partial[..self.fill], seed));
        self.fill = 0;
    }

    /// Closes the text (its partial last block counts) and returns the block keys.
    pub(crate) fn finish(mut self) -> Vec<u64> {
        if self.fill > 0 && self.blocks.len() < MAX_BLOCKS {
            self.push_block();
        }
        self.blocks
    }
}

/// The key of a request keyed by one opaque value (`affinity_key = "header:NAME"`).
pub(crate) fn affinity_key(value: &[u8]) -> Vec<u64> {
    vec![xxh3_64_with_seed(value, 0)]
}

/// Which replicas a request prefers: the affinity ids of up to two replicas holding its
/// longest matched prefix, packed in the `u64` the balancer passes along (low half the
/// most recent; 0 halves are empty). 0 means no preference.
pub(crate) fn pack(owners: &[u32]) -> u64 {
    let a = u64::from(owners.first().copied().unwrap_or(0));
    let b = u64::from(owners.get(1).copied().unwrap_or(0));
    a | (b << 32)
}

fn prefers(hint: u64, id: u32) -> bool {
    id != 0 && (hint as u32 == id || (hint >> 32) as u32 == id)
}

/// The bounded, approximate prefix index of one upstream (shared by its generations).
#[derive(Debug)]
pub struct PrefixIndex {
    map: Mutex<lru::LruCache<u64, Owners, foldhash::fast::FixedState>>,
    capacity: usize,
}

impl PrefixIndex {
    /// An empty index remembering at most `capacity` blocks.
    pub fn new(capacity: NonZeroUsize) -> PrefixIndex {
        PrefixIndex {
            map: Mutex::new(lru::LruCache::unbounded_with_hasher(
                foldhash::fast::FixedState::default(),
            )),
            capacity: capacity.get(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, lru::LruCache<u64, Owners, foldhash::fast::FixedState>> {
        // Every mutation leaves the map whole; a poisoned lock is usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Most blocks remembered.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The longest prefix of `blocks` that one replica holds: how many leading blocks,
    /// and the replicas holding all of them (most recent first, 0 = empty place).
    pub fn longest_match(&self, blocks: &[u64]) -> (usize, Owners) {
        let mut map = self.lock();
        let mut held: Owners = [0; OWNERS];
        let mut matched = 0;
        for (i, key) in blocks.iter().enumerate() {
            let Some(owners) = map.peek(key) else {
                break;
            };
            let next = if i == 0 {
                *owners
            } else {
                let mut next: Owners = [0; OWNERS];
                let still = owners.iter().filter(|&&o| o != 0 && held.contains(&o));
                for (slot, &o) in next.iter_mut().zip(still) {
                    *slot = o;
                }
                next
            };
            if next[0] == 0 {
                break;
            }
            held = next;
            matched = i + 1;
        }
        // Matched blocks are in use: keep them from being the first forgotten.
        for key in &blocks[..matched] {
            map.promote(key);
        }
        (matched, held)
    }

    /// Remembers that `blocks` were sent to the replica with affinity id `owner`.
    pub fn record(&self, blocks: &[u64], owner: u32) {
        let mut map = self.lock();
        for &key in blocks {
            match map.get_mut(&key) {
                Some(owners) => {
                    let at = owners
                        .iter()
                        .position(|&o| o == owner)
                        .unwrap_or(OWNERS - 1);
                    owners.copy_within(0..at, 1);
                    owners[0] = owner;
                }
                None => {
                    let mut owners: Owners = [0; OWNERS];
                    owners[0] = owner;
                    map.put(key, owners);
                }
            }
        }
        while map.len() > self.capacity {
            map.pop_lru();
        }
    }
}

/// An upstream's cache-affinity key, threshold and prefix index (the guard is the
/// selector's).
#[derive(Debug, Clone)]
pub(crate) struct Affinity {
    pub(crate) key: AffinityKey,
    /// Share of a request's blocks a match must cover (`affinity_threshold`).
    pub(crate) threshold: f64,
    pub(crate) index: Arc<PrefixIndex>,
}

impl Affinity {
    /// The balancer hint for a request whose affinity text has `blocks`: the replicas
    /// holding its longest prefix when that covers at least the threshold, else 0.
    pub(crate) fn hint(&self, blocks: &[u64]) -> u64 {
        if blocks.is_empty() {
            return 0;
        }
        let (matched, owners) = self.index.longest_match(blocks);
        if matched as f64 >= self.threshold * blocks.len() as f64 && matched > 0 {
            pack(&owners)
        } else {
            0
        }
    }

    /// Remembers that the request with `blocks` went to `backend`.
    pub(crate) fn record(&self, blocks: &[u64], backend: &Backend) {
        if !blocks.is_empty() {
            self.index.record(blocks, backend.replica().affinity_id());
        }
    }
}

/// The load the abs/rel guard compares: requests in flight, or the replica's own fresh
/// report of queued plus running requests, whichever is larger.
#[inline]
fn load(b: &Backend, now_us: u64, report_ttl_ms: u64) -> u32 {
    b.inflight()
        .max(b.reported_load(now_us / 1000, report_ttl_ms))
}

/// Would a replica start one more request at once, or queue it?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// A slot is free: fewer requests in flight than its capacity, no queue reported.
    Free,
    /// It would queue the request: its fresh report shows a queue, or its requests
    /// in flight fill its capacity.
    Full,
    /// Its capacity is not known (no `max_inflight`, no queue reported).
    Unknown,
}

/// The room on `b`, whose capacity is `slots` requests (0: not known). Its load counts
/// as in the guard (its own report may show requests of other clients).
#[inline]
fn room(b: &Backend, slots: u32, now_us: u64, report_ttl_ms: u64) -> Room {
    if b.reported_counts(now_us / 1000, report_ttl_ms)
        .is_some_and(|(queue, _)| queue > 0)
    {
        return Room::Full;
    }
    match slots {
        0 => Room::Unknown,
        s if load(b, now_us, report_ttl_ms) < s => Room::Free,
        _ => Room::Full,
    }
}

/// Would `b`, a peer of a preferred replica that would queue the request, start it at
/// once? With its capacity known (`own`: `max_inflight` or the learned limit; else
/// `shown`, the slots the preferred replica showed, 0: not known) when it has a free
/// slot. With neither, when it is idle: nothing in flight and a fresh report, if any,
/// of nothing queued or running. The preferred replica is full here either by its
/// own cap (then every peer's capacity is known too) or by a reported queue, so an
/// idle peer is passed to only when the preferred replica says the request would wait.
#[inline]
fn starts_at_once(b: &Backend, own: u32, shown: u32, now_us: u64, report_ttl_ms: u64) -> bool {
    let slots = if own == 0 { shown } else { own };
    match room(b, slots, now_us, report_ttl_ms) {
        Room::Free => true,
        Room::Full => false,
        Room::Unknown => load(b, now_us, report_ttl_ms) == 0,
    }
}

/// Cache affinity's verdict on a request's preferred replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No preference (no hint, or no holder of the prefix is eligible): least outstanding.
    None,
    /// Send it to the preferred replica (by index).
    Stay(usize),
    /// Pass the preferred replica (by index) over: least outstanding among the others.
    PassOver(usize),
}

/// The balance guard: the verdict on the preferred backend named by `hint` (the less
/// loaded of two holders, then the more recent) if it is eligible (`ok`).
///
/// With its capacity known (`cap`: `max_inflight`, or the learned limit with
/// `max_inflight = "auto"`), the replica is kept while it has a free slot, and
/// passed over when the request would queue there (its requests in flight fill its
/// capacity, or its fresh load report shows a queue) while another eligible replica
/// would start it at once (a free slot, no queue reported). A replica without
/// `max_inflight` that reports a queue shows its capacity: the requests it runs; its
/// peers, which usually run the same engine with the same settings, are judged by
/// that count. One that queues with nothing running shows no capacity; its peers
/// are then judged free only when idle (nothing in flight, no queue or running
/// requests reported). When neither can tell, the fallback is the absolute/relative guard
/// of SGLang's cache-aware router (sgl-router `cache_aware`): passed over when its
/// load exceeds the least-loaded available replica's by more than `guard.abs` and is
/// more than `guard.rel` times it. A request that would queue everywhere gets the
/// fallback too: the prefix hit then weighs against the queues' lengths.
pub(crate) fn pick(
    backends: &[Arc<Backend>],
    hint: u64,
    guard: AffinityGuard,
    cap: Cap,
    report_ttl_ms: u64,
    now_us: u64,
    ok: impl Fn(usize) -> bool,
) -> Verdict {
    if hint == 0 {
        return Verdict::None;
    }
    let mut chosen: Option<(usize, u32)> = None;
    let mut least = u32::MAX;
    for (i, b) in backends.iter().enumerate() {
        if !b.is_available() {
            continue;
        }
        let l = load(b, now_us, report_ttl_ms);
        least = least.min(l);
        let id = b.replica().affinity_id();
        // Between two eligible holders the less loaded wins, then the more recent one.
        let better = chosen.is_none_or(|(_, cl)| l < cl || (l == cl && hint as u32 == id));
        if prefers(hint, id) && better && ok(i) {
            chosen = Some((i, l));
        }
    }
    let Some((p, l)) = chosen else {
        return Verdict::None;
    };
    let preferred = &backends[p];
    match room(preferred, cap.of(preferred), now_us, report_ttl_ms) {
        Room::Free => return Verdict::Stay(p),
        Room::Full => {
            // The capacity of a replica without `max_inflight`: that of the preferred
            // one when it shows it by queueing while it runs requests. One that queues
            // with none running (preempted, or its KV cache full) shows nothing: 0,
            // not known.
            let shown = preferred
                .reported_counts(now_us / 1000, report_ttl_ms)
                .map_or(0, |(_, running)| running);
            let free_elsewhere = backends.iter().enumerate().any(|(i, b)| {
                i != p && ok(i) && starts_at_once(b, cap.of(b), shown, now_us, report_ttl_ms)
            });
            if free_elsewhere {
                return Verdict::PassOver(p);
            }
        }
        Room::Unknown => {}
    }
    let overloaded = f64::from(l) > f64::from(least) + guard.abs as f64
        && f64::from(l) > guard.rel * f64::from(least);
    if overloaded {
        Verdict::PassOver(p)
    } else {
        Verdict::Stay(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Vec<u64> {
        let mut k = PrefixKey::with_capacity(text.len());
        k.feed(text.as_bytes());
        k.finish()
    }

    fn index() -> PrefixIndex {
        PrefixIndex::new(NonZeroUsize::new(1000).unwrap())
    }

    #[test]
    fn blocks_chain_so_equal_blocks_after_different_prefixes_differ() {
        let a = key(&format!("{}{}", "a".repeat(64), "c".repeat(64)));
        let b = key(&format!("{}{}", "b".repeat(64), "c".repeat(64)));
        assert_eq!(a.len(), 2);
        assert_ne!(a[1], b[1]);
        // Feeding in pieces gives the same keys as feeding at once.
        let mut k = PrefixKey::default();
        k.feed(&[b'a'; 10]);
        k.feed(&[b'a'; 54]);
        k.feed(&[b'c'; 64]);
        assert_eq!(k.finish(), a);
    }

    #[test]
    fn the_longest_prefix_held_by_one_replica_wins() {
        let idx = index();
        let sys = "s".repeat(640);
        let long = key(&format!("{sys}{}", "x".repeat(640)));
        let short = key(&sys);
        idx.record(&short, 7);
        idx.record(&long, 9);
        // A request sharing the long prefix matches replica 9 all the way.
        let (n, owners) = idx.longest_match(&key(&format!("{sys}{}y", "x".repeat(640))));
        assert_eq!((n, owners[0]), (20, 9));
        // One sharing only the system prompt is held by both, the most recent first.
        let (n, owners) = idx.longest_match(&key(&format!("{sys}z")));
        assert_eq!(n, 10);
        assert_eq!(&owners[..2], &[9, 7]);
        assert_eq!(idx.longest_match(&key("other")).0, 0);
    }

    #[test]
    fn the_threshold_decides_whether_a_match_counts() {
        let aff = Affinity {
            key: AffinityKey::Prompt,
            threshold: 0.5,
            index: Arc::new(index()),
        };
        let head = "h".repeat(64 * 4);
        aff.index.record(&key(&head), 3);
        // 4 of 6 blocks match: counts; 4 of 10: does not.
        assert_eq!(aff.hint(&key(&format!("{head}{}", "t".repeat(128)))), 3);
        assert_eq!(aff.hint(&key(&format!("{head}{}", "t".repeat(384)))), 0);
    }

    #[test]
    fn least_recently_used_blocks_are_forgotten_first() {
        let idx = PrefixIndex::new(NonZeroUsize::new(4).unwrap());
        let a = key(&"a".repeat(128));
        let b = key(&"b".repeat(128));
        idx.record(&a, 1);
        idx.record(&b, 2);
        assert_eq!(idx.longest_match(&a).0, 2); // touches a
        idx.record(&key(&"c".repeat(128)), 3);
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.longest_match(&a).0, 2);
        assert_eq!(idx.longest_match(&b).0, 0);
    }

    #[test]
    fn owners_are_kept_most_recent_first_and_bounded() {
        let idx = index();
        let k = key("x");
        for o in 1..=6 {
            idx.record(&k, o);
        }
        idx.record(&k, 4);
        assert_eq!(idx.longest_match(&k).1, [4, 6, 5, 3]);
    }

    #[test]
    fn a_replica_that_goes_down_or_is_ejected_gets_a_new_name() {
        use crate::upstream::replica::{BackendState, Replica};
        let r = Replica::new("127.0.0.1:1".parse().unwrap(), BackendState::Up);
        let first = r.affinity_id();
        r.set_state(BackendState::Up, std::time::Duration::ZERO);
        assert_eq!(r.affinity_id(), first);
        r.eject(std::time::Duration::from_secs(1));
        let second = r.affinity_id();
        assert_ne!(second, first);
        r.set_state(BackendState::Up, std::time::Duration::ZERO);
        r.set_state(BackendState::Down, std::time::Duration::ZERO);
        assert_ne!(r.affinity_id(), second);
    }

    #[test]
    fn pack_keeps_two_preferences() {
        let h = pack(&[5, 8, 9, 0]);
        assert!(prefers(h, 5) && prefers(h, 8) && !prefers(h, 9) && !prefers(h, 0));
        assert_eq!(pack(&[0, 0]), 0);
    }
}
