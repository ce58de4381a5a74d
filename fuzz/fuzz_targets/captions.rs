#![no_main]
//! libFuzzer over [`infinity_fuzz::captions`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::captions(data));
