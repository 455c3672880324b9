//! Reading a replica's Prometheus text page into a [`LoadReport`]: which engine
//! published it (by its metric names) and its queue, running and KV-cache gauges.
//!
//! The page is parsed with `prom_text_format_parser` (it accepts the colons that
//! vLLM, SGLang and llama.cpp put in their names). Queue and running requests are
//! summed over every series of the gauge, since one replica can serve several
//! models (a series each); KV-cache use is the largest series, a share of one
//! cache that summing would push past 1.

use prom_text_format_parser::{parse_scrape, Metric};

use crate::config::{GaugeSelector, MetricsPage};
use crate::upstream::LoadReport;

/// A gauge as an engine names it: the metric and at most one label that must match.
#[derive(Debug, Clone, Copy)]
struct Gauge {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
}

const fn gauge(name: &'static str) -> Gauge {
    Gauge { name, label: None }
}

const fn gauge_where(name: &'static str, key: &'static str, value: &'static str) -> Gauge {
    Gauge {
        name,
        label: Some((key, value)),
    }
}

/// A model server family and the names of its load gauges.
#[derive(Debug)]
pub(crate) struct Engine {
    /// For logs: `vLLM`, `SGLang`, `TGI`, `Triton TensorRT-LLM`, `llama.cpp`.
    pub name: &'static str,
    queue: Gauge,
    running: Gauge,
    /// Tried in order; the first one the page has is read.
    cache: &'static [Gauge],
}

/// The engines recognised, each by the names of its gauges (from each engine's
/// metrics documentation).
pub(crate) static ENGINES: [Engine; 5] = [
    Engine {
        name: "vLLM",
        queue: gauge("vllm:num_requests_waiting"),
        running: gauge("vllm:num_requests_running"),
        // `gpu_cache_usage_perc` before vLLM v1 renamed it.
        cache: &[
            gauge("vllm:kv_cache_usage_perc"),
            gauge("vllm:gpu_cache_usage_perc"),
        ],
    },
    Engine {
        name: "SGLang",
        queue: gauge("sglang:num_queue_reqs"),
        running: gauge("sglang:num_running_reqs"),
        cache: &[gauge("sglang:token_usage")],
    },
    Engine {
        name: "TGI",
        queue: gauge("tgi_queue_size"),
        running: gauge("tgi_batch_current_size"),
        cache: &[],
    },
    Engine {
        name: "Triton TensorRT-LLM",
        queue: gauge_where("nv_trt_llm_request_metrics", "request_type", "waiting"),
        running: gauge_where("nv_trt_llm_request_metrics", "request_type", "scheduled"),
        cache: &[gauge_where(
            "nv_trt_llm_kv_cache_block_metrics",
            "kv_cache_block_type",
            "fraction",
        )],
    },
    Engine {
        name: "llama.cpp",
        queue: gauge("llamacpp:requests_deferred"),
        running: gauge("llamacpp:requests_processing"),
        cache: &[gauge("llamacpp:kv_cache_usage_ratio")],
    },
];

/// Why a page gave no report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PageError {
    /// Not Prometheus text (the parser's message).
    Unreadable(String),
    /// Readable, but none of the gauges looked for is on it.
    NoKnownGauges,
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageError::Unreadable(why) => write!(f, "not Prometheus text: {why}"),
            PageError::NoKnownGauges => f.write_str(
                "none of the known queue, running or KV-cache gauges is on the page; \
                 name them with queue_metric, running_metric, cache_metric",
            ),
        }
    }
}

/// What one page said: the report and the engine recognised (if any).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PageReport {
    pub report: LoadReport,
    pub engine: Option<&'static str>,
}

/// Reads `page` (Prometheus text exposition format). Gauges named in `names`
/// (`queue_metric`, ...) are read by those names; the others by the names of the
/// first engine in [`ENGINES`] whose queue or running gauge is on the page.
/// Negative and non-finite values count as absent. Errors when the page does not
/// parse or carries none of the gauges looked for.
pub(crate) fn parse_page(page: &str, names: &MetricsPage) -> Result<PageReport, PageError> {
    let (metrics, err) = parse_scrape(page);
    if metrics.is_empty() {
        return Err(match err {
            _ if page.trim().is_empty() => PageError::Unreadable("the page is empty".into()),
            // The parser's own message repeats the page; its start says more.
            Some(_) => PageError::Unreadable(format!(
                "it starts {:?}",
                page.trim_start().chars().take(40).collect::<String>()
            )),
            None => PageError::NoKnownGauges,
        });
    }
    let engine = ENGINES.iter().find(|e| {
        metrics
            .iter()
            .any(|m| m.name == e.queue.name || m.name == e.running.name)
    });
    let read = |own: &Option<GaugeSelector>, engine_gauges: &[Gauge], sum: bool| match own {
        Some(g) => {
            let labels: Vec<(&str, &str)> = g
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            value(&metrics, &g.name, &labels, sum)
        }
        None => engine_gauges.iter().find_map(|g| {
            let labels: &[(&str, &str)] = match &g.label {
                Some(l) => std::slice::from_ref(l),
                None => &[],
            };
            value(&metrics, g.name, labels, sum)
        }),
    };
    let (queue, running, cache): (&[Gauge], &[Gauge], &[Gauge]) = match engine {
        Some(e) => (
            std::slice::from_ref(&e.queue),
            std::slice::from_ref(&e.running),
            e.cache,
        ),
        None => (&[], &[], &[]),
    };
    let report = LoadReport {
        queue: read(&names.queue, queue, true),
        running: read(&names.running, running, true),
        cache_usage: read(&names.cache, cache, false),
    };
    if report.is_empty() {
        return Err(PageError::NoKnownGauges);
    }
    Ok(PageReport {
        report,
        engine: engine.map(|e| e.name),
    })
}

/// The sum (or the largest) of the finite, non-negative samples of metric `name`
/// whose labels include every pair of `labels`; `None` when there is none.
fn value(metrics: &[Metric], name: &str, labels: &[(&str, &str)], sum: bool) -> Option<f64> {
    let mut out: Option<f64> = None;
    for m in metrics.iter().filter(|m| m.name == name) {
        for s in &m.samples {
            let matches = labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v));
            let Ok(x) = s.value.value.parse::<f64>() else {
                continue;
            };
            if !matches || !x.is_finite() || x < 0.0 {
                continue;
            }
            out = Some(match out {
                None => x,
                Some(acc) if sum => acc + x,
                Some(acc) => acc.max(x),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> MetricsPage {
        MetricsPage {
            path: "/metrics".into(),
            queue: None,
            running: None,
            cache: None,
        }
    }

    fn read(page: &str) -> (Option<f64>, Option<f64>, Option<f64>, Option<&'static str>) {
        let r = parse_page(page, &auto()).unwrap_or_else(|e| panic!("{e}\n{page}"));
        (
            r.report.queue,
            r.report.running,
            r.report.cache_usage,
            r.engine,
        )
    }

    /// vLLM v1 (prometheus_client output): two models on one server, histograms
    /// and counters around the gauges, a labelled gauge with no series yet.
    #[test]
    fn vllm_page() {
        let page = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 11093.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.17
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:iteration_tokens_total_bucket{engine="0",le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:iteration_tokens_total_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:iteration_tokens_total_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.2e+06
"#;
        assert_eq!(read(page), (Some(7.0), Some(4.0), Some(0.42), Some("vLLM")));
    }

    /// vLLM before v1 named the cache gauge `gpu_cache_usage_perc`.
    #[test]
    fn older_vllm_page() {
        let page = r#"# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="/models/llama-2-7b"} 0.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="/models/llama-2-7b"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="/models/llama-2-7b"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="/models/llama-2-7b"} 0.031
"#;
        assert_eq!(
            read(page),
            (Some(0.0), Some(0.0), Some(0.031), Some("vLLM"))
        );
    }

    #[test]
    fn sglang_page() {
        let page = r#"# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.128902e+06
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.007507552643049313
# HELP sglang:num_running_reqs The number of running requests
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 28.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
"#;
        assert_eq!(
            read(page),
            (Some(12.0), Some(28.0), Some(0.28), Some("SGLang"))
        );
    }

    /// TGI (metrics-exporter-prometheus output: no HELP lines, unlabelled gauges).
    #[test]
    fn tgi_page() {
        let page = r#"# TYPE tgi_request_count counter
tgi_request_count 1093
# TYPE tgi_queue_size gauge
tgi_queue_size 6
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 4
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 2048
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.005"} 0
tgi_request_duration_bucket{le="+Inf"} 1093
tgi_request_duration_sum 4021.5
tgi_request_duration_count 1093
"#;
        assert_eq!(read(page), (Some(6.0), Some(4.0), None, Some("TGI")));
    }

    /// Triton with the TensorRT-LLM backend: one metric, the kind in a label.
    #[test]
    fn triton_trt_llm_page() {
        let page = r#"# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 3
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 8
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 512
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 8
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.625
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 2048
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 1280
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 420
"#;
        assert_eq!(
            read(page),
            (
                Some(3.0),
                Some(8.0),
                Some(0.625),
                Some("Triton TensorRT-LLM")
            )
        );
    }

    #[test]
    fn llama_cpp_page() {
        let page = r#"# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 2.37151
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.125
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
"#;
        assert_eq!(
            read(page),
            (Some(2.0), Some(1.0), Some(0.125), Some("llama.cpp"))
        );
    }

    #[test]
    fn named_gauges_override_the_engine_and_match_labels() {
        let page = r#"# TYPE my_queue gauge
my_queue{pool="a"} 2
my_queue{pool="b"} 5
my_queue{pool="a",shard="2"} 1
vllm:num_requests_waiting 40
vllm:num_requests_running 3
"#;
        let sel = |name: &str, labels: &[(&str, &str)]| GaugeSelector {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let names = MetricsPage {
            queue: Some(sel("my_queue", &[("pool", "a")])),
            ..auto()
        };
        let r = parse_page(page, &names).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.report.queue, Some(3.0), "pool a summed, pool b left out");
        assert_eq!(r.report.running, Some(3.0), "the rest from the engine");
        let only = MetricsPage {
            running: Some(sel("my_queue", &[])),
            ..auto()
        };
        let r = parse_page("my_queue 4\n", &only).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.report.running, r.engine), (Some(4.0), None));
    }

    #[test]
    fn pages_without_known_gauges_or_not_prometheus_are_errors() {
        for page in [
            "# HELP process_cpu_seconds_total CPU.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.5\n",
            "vllm:num_requests_waiting NaN\n",
            "vllm:num_requests_waiting -3\n",
        ] {
            assert_eq!(
                parse_page(page, &auto()),
                Err(PageError::NoKnownGauges),
                "{page:?}"
            );
        }
        for page in [
            "",
            "<html><body>Not Found</body></html>",
            "{\"waiting\": 3}",
            "vllm:num_requests_waiting{model_name=\"a} 3\n",
            "vllm:num_requests_waiting lots\n",
        ] {
            assert!(
                matches!(parse_page(page, &auto()), Err(PageError::Unreadable(_))),
                "{page:?}"
            );
        }
    }
}
