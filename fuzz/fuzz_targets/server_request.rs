#![no_main]
//! libFuzzer over [`infinity_fuzz::server_request`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::server_request(data));
