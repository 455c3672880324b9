//! API-key and JWT credential parsing: the properties of `modelgate::fuzz::credentials` on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate::fuzz::credentials(data));
