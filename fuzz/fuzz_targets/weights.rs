#![no_main]
//! libFuzzer over [`infinity_fuzz::weights`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::weights(data));
