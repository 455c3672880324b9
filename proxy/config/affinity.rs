//! Reading the cache-affinity keys of an upstream: `affinity_key`, `affinity_threshold`,
//! `affinity_guard` and `affinity_blocks` (used with `balance = "cache_affinity"`).

use super::reader::{Ctx, Field, TableReader};
use super::types::{AffinityGuard, AffinityKey, Balance, CacheAffinity};

/// `affinity_threshold` unless set: SGLang's cache-aware router default.
pub const DEFAULT_AFFINITY_THRESHOLD: f64 = 0.3;
/// `affinity_blocks` unless set: 1,048,576 blocks of 64 bytes (64 MiB of prompt text).
pub const DEFAULT_AFFINITY_BLOCKS: usize = 1 << 20;

const KEYS: [&str; 4] = [
    "affinity_key",
    "affinity_threshold",
    "affinity_guard",
    "affinity_blocks",
];

/// The affinity keys of one upstream: `Some(None)` without `cache_affinity` (the keys
/// are then warned about as ignored), `None` when a key is invalid.
pub(crate) fn read(
    cx: &mut Ctx<'_>,
    t: &mut TableReader<'_, '_>,
    balance: Option<Balance>,
) -> Option<Option<CacheAffinity>> {
    let fields: Vec<_> = KEYS.iter().map(|k| t.take(k)).collect();
    if balance != Some(Balance::CacheAffinity) {
        if let Some(b) = balance {
            for f in fields.iter().flatten() {
                cx.warn(
                    &f.span(),
                    &f.path,
                    format!(
                        "ignored with balance = \"{}\"; it is only used with balance = \"cache_affinity\"",
                        b.name()
                    ),
                );
            }
        }
        return Some(None);
    }
    let [key_f, threshold_f, guard_f, blocks_f] = <[_; 4]>::try_from(fields).ok()?;
    let key = key_f
        .as_ref()
        .map_or(Some(AffinityKey::Prompt), |f| key(cx, f));
    let threshold = threshold_f
        .as_ref()
        .map_or(Some(DEFAULT_AFFINITY_THRESHOLD), |f| threshold(cx, f));
    let guard = guard_f
        .as_ref()
        .map_or(Some(AffinityGuard::default()), |f| guard(cx, f));
    let blocks = blocks_f
        .as_ref()
        .map_or(Some(DEFAULT_AFFINITY_BLOCKS), |f| {
            cx.uint(
                f,
                1,
                1 << 28,
                "prefix blocks of 64 bytes remembered per upstream, 75.7 bytes of heap each \
                 (measured; see README): the default 1048576 takes about 72 MiB",
            )
        });
    Some(Some(CacheAffinity {
        key: key?,
        threshold: threshold?,
        guard: guard?,
        blocks: blocks?,
    }))
}

/// `"prompt"` or `"header:NAME"`.
fn key(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<AffinityKey> {
    cx.word_or_header(
        f,
        ("prompt", AffinityKey::Prompt),
        AffinityKey::Header,
        r#"e.g. "header:x-session-id"; "prompt" reads the OpenAI body's messages"#,
    )
}

/// A share from 0 (exclusive) to 1.
fn threshold(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<f64> {
    const HINT: &str = "the share of a prompt a remembered prefix must cover, e.g. 0.3";
    let v = cx.positive_number(f, HINT)?;
    if v > 1.0 {
        cx.expected(f, "a number greater than 0 and at most 1", HINT);
        return None;
    }
    Some(v)
}

/// `{ abs = 4, rel = 1.5 }`.
fn guard(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<AffinityGuard> {
    let mut t = cx.table(f, "{ abs = 4, rel = 1.5 }")?;
    let d = AffinityGuard::default();
    let abs = t.take("abs").map_or(Some(d.abs), |f| {
        cx.uint(
            &f,
            0,
            i128::from(u32::MAX),
            "requests more than the least-loaded replica before a cached one is passed over",
        )
    });
    let rel = t.take("rel").map_or(Some(d.rel), |f| {
        let v = cx.positive_number(
            &f,
            "e.g. 1.5: a cached replica may carry 1.5x the least load",
        )?;
        if v < 1.0 {
            cx.expected(&f, "a number of at least 1", "e.g. 1.5");
            return None;
        }
        Some(v)
    });
    t.finish(cx);
    Some(AffinityGuard {
        abs: abs?,
        rel: rel?,
    })
}
