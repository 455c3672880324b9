//! Replicas' Prometheus pages: the properties of `modelgate::fuzz::metrics_page` on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate::fuzz::metrics_page(data));
