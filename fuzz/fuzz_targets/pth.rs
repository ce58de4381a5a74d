#![no_main]
//! libFuzzer over [`infinity_fuzz::pth`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::pth(data));
