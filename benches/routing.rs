//! Route resolution cost as the table grows: 10, 1,000 and 10,000 routes.
//! A lookup must not grow with the number of routes.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use modelgate::bench::RouteTable;
use modelgate::config::HostMatch;

fn table(n: usize) -> RouteTable<usize> {
    let mut t = RouteTable::default();
    for i in 0..n {
        // A mix: a third host-less, a third on exact hosts, a third on wildcards.
        let path = format!("/v1/model-{i}");
        let host = match i % 3 {
            0 => None,
            1 => Some(HostMatch::Exact(format!("api{}.example.com", i % 50))),
            _ => Some(HostMatch::Wildcard(format!(
                ".tenant{}.example.com",
                i % 50
            ))),
        };
        t.insert(host.as_ref(), &path, i);
    }
    t.insert(None, "/", usize::MAX);
    t
}

fn resolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_resolve");
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        let last = n - 1 - (n - 1) % 3; // a host-less route near the end of the table
        let path = format!("/v1/model-{last}/generate");
        group.bench_with_input(BenchmarkId::new("hostless_hit", n), &n, |b, _| {
            b.iter(|| black_box(t.resolve(black_box("unknown.org"), black_box(&path))))
        });
        let exact_path = format!("/v1/model-{}/x", if n > 1 { 1 } else { 0 });
        group.bench_with_input(BenchmarkId::new("exact_host_hit", n), &n, |b, _| {
            b.iter(|| black_box(t.resolve(black_box("api1.example.com"), black_box(&exact_path))))
        });
        group.bench_with_input(BenchmarkId::new("wildcard_hit", n), &n, |b, _| {
            b.iter(|| {
                black_box(t.resolve(
                    black_box("eu.tenant2.example.com"),
                    black_box("/v1/model-2/x"),
                ))
            })
        });
        group.bench_with_input(BenchmarkId::new("fallback_root", n), &n, |b, _| {
            b.iter(|| {
                black_box(t.resolve(
                    black_box("api1.example.com"),
                    black_box("/health/deep/path"),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);
