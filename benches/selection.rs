//! Backend selection cost per policy for pools of 3, 100 and 1,000 backends,
//! including taking and releasing the in-flight slot.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use modelgate::bench::{Pick, Pool, Tried};
use modelgate::config::{BackendAddr, BackendSource, Balance, Upstream};

fn upstream(n: usize, balance: Balance) -> Upstream {
    let backends = (0..n)
        .map(|i| BackendAddr {
            addr: format!("10.0.{}.{}:8000", i / 250, i % 250 + 1)
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            weight: 1 + (i % 3) as u32,
        })
        .collect();
    Upstream {
        balance,
        ..Upstream::with_defaults("bench", BackendSource::Static(backends))
    }
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for (name, balance) in [
        ("least_outstanding", Balance::LeastOutstanding),
        ("round_robin", Balance::RoundRobin),
        ("consistent_hash", Balance::ConsistentHash),
    ] {
        for n in [3usize, 100, 1_000] {
            let pool = Pool::build(&upstream(n, balance)).unwrap_or_else(|e| panic!("{e}"));
            // Some load so least-outstanding has something to compare.
            let held: Vec<_> = (0..n / 2)
                .filter_map(|i| match pool.pick(&Tried::default(), i as u64 * 7919) {
                    Pick::Leased(lease) => Some(lease),
                    _ => None,
                })
                .collect();
            let tried = Tried::default();
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(pool.pick(black_box(&tried), key))
                })
            });
            drop(held);
        }
    }
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
