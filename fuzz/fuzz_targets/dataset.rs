#![no_main]
//! libFuzzer over [`infinity_fuzz::dataset`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::dataset(data));
