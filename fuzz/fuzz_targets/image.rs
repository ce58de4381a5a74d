#![no_main]
//! libFuzzer over [`infinity_fuzz::image`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::image(data));
