//! Load reports from the replicas themselves: the ORCA `endpoint-load-metrics`
//! response header, in its TEXT and JSON forms, read into a [`LoadReport`].
//!
//! ORCA (Open Request Cost Aggregation) is the load report format of xDS/Envoy;
//! vLLM and Triton answer a request carrying `endpoint-load-metrics-format: TEXT`
//! (or `JSON`) with a header such as
//! `TEXT named_metrics.num_requests_waiting=3, named_metrics.kv_cache_usage_perc=0.4`.
//! vLLM names its gauges without the `vllm:` prefix under `named_metrics`.

/// The request header asking a replica for a load report.
pub(crate) const ORCA_FORMAT_HEADER: &str = "endpoint-load-metrics-format";
/// The response header carrying it (removed before the answer reaches the client).
pub(crate) const ORCA_HEADER: &str = "endpoint-load-metrics";

/// What a replica said about its own load. Missing gauges are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadReport {
    /// Requests waiting inside the replica (its own queue).
    pub queue: Option<f64>,
    /// Requests it is working on.
    pub running: Option<f64>,
    /// KV cache in use, 0..1.
    pub cache_usage: Option<f64>,
}

impl LoadReport {
    fn set(&mut self, name: &str, value: f64) {
        if !value.is_finite() || value < 0.0 {
            return;
        }
        match name {
            "num_requests_waiting" => self.queue = Some(value),
            "num_requests_running" => self.running = Some(value),
            "kv_cache_usage_perc" => self.cache_usage = Some(value),
            _ => {}
        }
    }

    /// Did the report carry anything the balancer uses?
    pub fn is_empty(&self) -> bool {
        self.queue.is_none() && self.running.is_none() && self.cache_usage.is_none()
    }
}

/// Parses an `endpoint-load-metrics` value: `TEXT k=v, named_metrics.k=v, ...` or
/// `JSON {"named_metrics": {...}}` (the format word may be missing). `None` when
/// it is neither, or names no gauge the balancer knows.
pub(crate) fn parse_orca(value: &[u8]) -> Option<LoadReport> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (format, body) = match text.split_once(' ') {
        Some((f, rest)) if f.eq_ignore_ascii_case("TEXT") || f.eq_ignore_ascii_case("JSON") => {
            (f.to_ascii_uppercase(), rest.trim())
        }
        _ if text.starts_with('{') => ("JSON".to_string(), text),
        _ => ("TEXT".to_string(), text),
    };
    let mut report = LoadReport::default();
    if format == "JSON" {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let named = v.get("named_metrics")?.as_object()?;
        for (k, v) in named {
            if let Some(x) = v.as_f64() {
                report.set(k, x);
            }
        }
    } else {
        for pair in body.split(',') {
            let (k, v) = pair.trim().split_once('=')?;
            let x: f64 = v.trim().parse().ok()?;
            if let Some(name) = k.trim().strip_prefix("named_metrics.") {
                report.set(name, x);
            }
        }
    }
    (!report.is_empty()).then_some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_forms_are_read() {
        let want = LoadReport {
            queue: Some(3.0),
            running: Some(2.0),
            cache_usage: Some(0.4),
        };
        for v in [
            "TEXT named_metrics.num_requests_waiting=3, named_metrics.num_requests_running=2, named_metrics.kv_cache_usage_perc=0.4",
            "named_metrics.kv_cache_usage_perc=0.4,named_metrics.num_requests_waiting=3,named_metrics.num_requests_running=2",
            "TEXT cpu_utilization=0.3, named_metrics.num_requests_waiting=3.0, named_metrics.num_requests_running=2, named_metrics.kv_cache_usage_perc=0.4",
            r#"JSON {"cpu_utilization":0.3,"named_metrics":{"num_requests_waiting":3,"num_requests_running":2,"kv_cache_usage_perc":0.4}}"#,
            r#"{"named_metrics":{"num_requests_waiting":3,"num_requests_running":2,"kv_cache_usage_perc":0.4}}"#,
        ] {
            assert_eq!(parse_orca(v.as_bytes()), Some(want), "{v}");
        }
    }

    #[test]
    fn garbage_is_no_report() {
        for v in [
            "",
            "TEXT",
            "TEXT named_metrics.num_requests_waiting=lots",
            "JSON {not json",
            "TEXT cpu_utilization=0.3",
            "\u{1f600}",
            "TEXT named_metrics.num_requests_waiting=-1",
        ] {
            assert_eq!(parse_orca(v.as_bytes()), None, "{v}");
        }
        assert_eq!(parse_orca(&[0xff, 0xfe]), None);
    }
}
