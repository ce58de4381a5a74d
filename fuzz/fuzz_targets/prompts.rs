#![no_main]
//! libFuzzer over [`infinity_fuzz::prompts`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::prompts(data));
