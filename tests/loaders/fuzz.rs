//! Random byte mutations of valid files: loading may fail, but never panics, and whatever
//! loads can be read in full.

use proptest::prelude::*;
use proptest::sample::Index;

use crate::support::{
    Pickler, TensorSpec, f32_bytes, open_bytes, pth, scratch_dir, touch_all, transformer_pickle,
    transformer_pth_with_pickle,
};

/// A few (position, new byte) overwrites and an optional cut.
fn mutations() -> impl Strategy<Value = (Vec<(Index, u8)>, Option<Index>)> {
    (prop::collection::vec((any::<Index>(), any::<u8>()), 1..6), prop::option::weighted(0.2, any::<Index>()))
}

fn mutate(bytes: &[u8], (overwrites, cut): &(Vec<(Index, u8)>, Option<Index>)) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (at, byte) in overwrites {
        let i = at.index(out.len());
        out[i] = *byte;
    }
    if let Some(at) = cut {
        out.truncate(at.index(out.len()));
    }
    out
}

/// Header-heavy: three small tensors, so most mutations land in the JSON or the length field.
fn small_safetensors() -> Vec<u8> {
    let header = concat!(
        r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"#,
        r#""b":{"dtype":"I64","shape":[1],"data_offsets":[16,24]},"#,
        r#""c":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}"#
    );
    crate::support::safetensors_file(header, &[7u8; 32])
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_safetensors_never_panic(m in mutations()) {
        let dir = scratch_dir("fuzz_safetensors");
        if let Ok(weights) = open_bytes(&dir, "m.safetensors", &mutate(&small_safetensors(), &m)) {
            touch_all(&weights);
        }
    }

    #[test]
    fn mutated_golden_pickles_never_panic(m in mutations()) {
        let dir = scratch_dir("fuzz_golden_pickle");
        let bytes = transformer_pth_with_pickle(&mutate(&transformer_pickle(), &m));
        if let Ok(weights) = open_bytes(&dir, "m.pth", &bytes) {
            touch_all(&weights);
        }
    }

    #[test]
    fn mutated_small_pickles_never_panic(m in mutations()) {
        // Small enough that mutations often hit sizes, strides and offsets.
        let dir = scratch_dir("fuzz_small_pickle");
        let pickle = Pickler::proto2()
            .state_dict(&[
                TensorSpec::f32("w", "0", &[2, 3], &[3, 1]),
                TensorSpec { numel: 6, offset: 2, ..TensorSpec::f32("v", "0", &[2, 2], &[1, 2]) },
            ])
            .stop();
        let bytes = pth(&mutate(&pickle, &m), &[("0", f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))]);
        if let Ok(weights) = open_bytes(&dir, "m.pth", &bytes) {
            touch_all(&weights);
        }
    }
}
