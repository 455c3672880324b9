//! The cache-affinity prefix index: heap per million remembered prefix blocks (counted
//! by an instrumented allocator, so it is exact and not disturbed by load), and the
//! cost of keying, matching and recording one 2.6k-token chat prompt.
//!
//! Run with `cargo bench --bench affinity`.

#![allow(clippy::print_stdout)] // the numbers are the output

use std::alloc::System;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::Instant;

use modelgate::bench::prompt::prompt_blocks;
use modelgate::bench::PrefixIndex;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const MILLION: usize = 1_000_000;

fn heap_per_million_blocks() {
    let region = Region::new(GLOBAL);
    let index = PrefixIndex::new(NonZeroUsize::new(MILLION).unwrap_or(NonZeroUsize::MIN));
    // 10,000 prompts of 100 blocks each, every block its own prefix; 4 replicas.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut chain = vec![0u64; 100];
    for p in 0..MILLION / 100 {
        for b in chain.iter_mut() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = seed;
        }
        index.record(&chain, (p % 4 + 1) as u32);
    }
    let s = region.change();
    let net = s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated;
    println!(
        "prefix index: {} blocks remembered, {:.1} MiB heap, {:.1} bytes per block ({} allocations)",
        index.len(),
        net as f64 / (1 << 20) as f64,
        net as f64 / index.len() as f64,
        s.allocations - s.deallocations,
    );
    // Past the bound, the least recently used blocks go and the heap stays put.
    let before = net;
    for _ in 0..1000 {
        for b in chain.iter_mut() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = seed;
        }
        index.record(&chain, 1);
    }
    let s = region.change();
    let after = s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated;
    println!(
        "after 100,000 more blocks: {} blocks, heap change {:+.1} KiB",
        index.len(),
        (after - before) as f64 / 1024.0
    );
}

fn per_request_cost() {
    let system: Vec<String> = (0..2000).map(|i| format!("word{i}")).collect();
    let body = serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": system.join(" ")},
            {"role": "user", "content": "What does the policy say about refunds?"},
        ],
    })
    .to_string();
    let index = PrefixIndex::new(NonZeroUsize::new(MILLION).unwrap_or(NonZeroUsize::MIN));
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        let _ = black_box(prompt_blocks(black_box(body.as_bytes())));
    }
    let key_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let blocks = prompt_blocks(body.as_bytes()).unwrap_or_default();
    let t = Instant::now();
    for i in 0..n {
        index.record(&blocks, (i % 3 + 1) as u32);
    }
    let record_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        black_box(index.longest_match(black_box(&blocks)));
    }
    let match_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "one {} KiB chat body ({} blocks): key {key_us:.1} µs, match {match_us:.1} µs, record {record_us:.1} µs",
        body.len() / 1024,
        blocks.len()
    );
}

fn main() {
    heap_per_million_blocks();
    per_request_cost();
}
