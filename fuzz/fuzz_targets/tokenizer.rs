#![no_main]
//! libFuzzer over [`infinity_fuzz::tokenizer`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::tokenizer(data));
