//! Metric families read from live state at scrape time, for custom
//! `prometheus::core::Collector`s: each scrape builds the families from what is there
//! now, so a series whose subject is gone (a removed backend) simply is not written,
//! and nothing is reset and re-set between scrapes.

use prometheus::core::Desc;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// One family being filled: a name, its help, its type and label names.
pub(crate) struct Family {
    family: MetricFamily,
    labels: &'static [&'static str],
}

impl Family {
    /// A gauge family with `labels` (the label names, in the order values are given).
    pub(crate) fn gauge(name: &str, help: &str, labels: &'static [&'static str]) -> Family {
        Family::new(name, help, MetricType::GAUGE, labels)
    }

    /// A counter family with `labels`; its values are totals since the process started.
    pub(crate) fn counter(name: &str, help: &str, labels: &'static [&'static str]) -> Family {
        Family::new(name, help, MetricType::COUNTER, labels)
    }

    fn new(name: &str, help: &str, kind: MetricType, labels: &'static [&'static str]) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        Family { family, labels }
    }

    /// The family's description, for `Collector::desc`.
    pub(crate) fn desc(&self) -> prometheus::Result<Desc> {
        Desc::new(
            self.family.name().to_string(),
            self.family.help().to_string(),
            self.labels.iter().map(|l| l.to_string()).collect(),
            Default::default(),
        )
    }

    /// Adds the series with label values `values` (as many as the label names).
    pub(crate) fn push(&mut self, values: &[&str], value: f64) {
        let mut pairs: Vec<LabelPair> = self
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect();
        // By name, as the library's own vectors write them.
        pairs.sort_by(|a, b| a.name().cmp(b.name()));
        let mut metric = Metric::default();
        metric.set_label(pairs);
        if self.family.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
        self.family.mut_metric().push(metric);
    }

    /// The finished family; `None` when it has no series (the encoder refuses empty ones).
    pub(crate) fn done(self) -> Option<MetricFamily> {
        (!self.family.get_metric().is_empty()).then_some(self.family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_as_prometheus_text() {
        use prometheus::Encoder;
        let mut up = Family::gauge("x_up", "Up or not", &["upstream", "backend"]);
        up.push(&["llm", "10.0.0.1:80"], 1.0);
        up.push(&["llm", "10.0.0.2:80"], 0.0);
        let mut total = Family::counter("x_total", "Events", &["result"]);
        total.push(&["ok"], 3.0);
        let empty = Family::gauge("x_none", "Nothing", &["upstream"]);
        assert!(empty.desc().is_ok());
        let families: Vec<_> = [up.done(), total.done(), empty.done()]
            .into_iter()
            .flatten()
            .collect();
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(text.contains("# TYPE x_up gauge\n"), "{text}");
        assert!(
            text.contains("x_up{backend=\"10.0.0.2:80\",upstream=\"llm\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE x_total counter\nx_total{result=\"ok\"} 3\n"),
            "{text}"
        );
        assert!(!text.contains("x_none"), "{text}");
    }
}
