#![no_main]
//! libFuzzer over [`infinity_fuzz::configs`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::configs(data));
