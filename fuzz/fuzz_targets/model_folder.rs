#![no_main]
//! libFuzzer over [`infinity_fuzz::model_folder`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::model_folder(data));
