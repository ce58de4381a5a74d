#![no_main]
//! libFuzzer over [`infinity_fuzz::shard_index`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| infinity_fuzz::shard_index(data));
