//! Replicas' Prometheus pages: any text as a `/metrics` page, read with the
//! engine's own names and with named gauges; nothing panics, and a report carries
//! only finite, non-negative values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::config::{GaugeSelector, MetricsPage};
use modelgate::load::parse_page;

fuzz_target!(|data: &[u8]| {
    let Ok(page) = std::str::from_utf8(data) else {
        return;
    };
    let auto = MetricsPage {
        path: "/metrics".into(),
        queue: None,
        running: None,
        cache: None,
    };
    let named = MetricsPage {
        queue: Some(GaugeSelector {
            name: "q".into(),
            labels: vec![("kind".into(), "waiting".into())],
        }),
        ..auto.clone()
    };
    for names in [&auto, &named] {
        if let Ok(r) = parse_page(page, names) {
            for v in [r.report.queue, r.report.running, r.report.cache_usage]
                .into_iter()
                .flatten()
            {
                assert!(v.is_finite() && v >= 0.0, "{v} from {page:?}");
            }
        }
    }
});
