//! Route matching with path normalisation: the properties of `modelgate::fuzz::routing` on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate::fuzz::routing(data));
