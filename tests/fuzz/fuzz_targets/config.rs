//! Config parsing and validation: the properties of `modelgate::fuzz::config` on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate::fuzz::config(data));
