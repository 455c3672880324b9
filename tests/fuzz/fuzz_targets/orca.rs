//! ORCA `endpoint-load-metrics` parsing: the properties of `modelgate::fuzz::orca` on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate::fuzz::orca(data));
