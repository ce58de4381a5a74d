//! The golden checkpoints in both formats load to the same tensors, mapped in place, in file order.

use infinity::runtime::io::Weights;
use infinity::runtime::{DType, Error};

use crate::support::{assert_same_tensors, fixture};

/// Names, dtypes, shapes and element counts as the reference `safetensors` crate reads them.
fn reference_listing(file: &str) -> Vec<(String, String, Vec<usize>)> {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut listing: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, format!("{:?}", view.dtype()), view.shape().to_vec()))
        .collect();
    listing.sort();
    listing
}

fn listing(weights: &Weights) -> Vec<(String, String, Vec<usize>)> {
    let mut listing: Vec<_> =
        weights.iter().map(|(name, t)| (name.to_string(), t.dtype().name().to_string(), t.shape().to_vec())).collect();
    listing.sort();
    listing
}

#[test]
fn transformer_pth_and_safetensors_hold_identical_tensors() {
    let pth = Weights::open(fixture("devB/transformer.pth")).unwrap();
    let st = Weights::open(fixture("devB/transformer.safetensors")).unwrap();
    assert_eq!(pth.len(), 64);
    assert_same_tensors(&pth, &st);
    assert_eq!(listing(&st), reference_listing("devB/transformer.safetensors"));
    let reference_total: usize = reference_listing("devB/transformer.safetensors")
        .iter()
        .map(|(_, _, shape)| shape.iter().product::<usize>())
        .sum();
    assert_eq!(pth.total_params(), reference_total);
    assert_eq!(st.total_params(), reference_total);
}

#[test]
fn vae_pth_nested_under_vae_matches_safetensors() {
    let pth = Weights::open(fixture("devA/vae.pth")).unwrap();
    assert!(pth.iter().all(|(name, _)| name.starts_with("vae.")), "nested dict flattened with dotted names");
    let vae = pth.strip_prefix("vae.").unwrap();
    let st = Weights::open(fixture("devA/vae.safetensors")).unwrap();
    assert_eq!(vae.len(), 182);
    assert_same_tensors(&vae, &st);
    assert_eq!(listing(&st), reference_listing("devA/vae.safetensors"));
    // The int64 buffer survives both paths with its exact values.
    let mask = vae.get("quantizer.lfq.mask").unwrap();
    assert_eq!(mask.dtype(), DType::I64);
    assert_eq!(mask.to_vec::<i64>().unwrap()[0], 1 << 31);
}

#[test]
fn every_loaded_tensor_is_a_view_of_the_mapped_file() {
    for file in ["devB/transformer.pth", "devB/transformer.safetensors", "devA/vae.pth", "devA/vae.safetensors"] {
        let weights = Weights::open(fixture(file)).unwrap();
        for (name, t) in weights.iter() {
            assert!(t.storage().is_mapped(), "{file}: {name} was copied");
        }
    }
}

#[test]
fn iteration_follows_file_order() {
    // safetensors: data offsets increase along the iteration.
    let st = Weights::open(fixture("devB/transformer.safetensors")).unwrap();
    let starts: Vec<usize> = st.iter().map(|(_, t)| t.cpu_storage("test").unwrap().bytes().as_ptr() as usize).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]));
    // pth: the pickle's insertion order (the state dict's own order).
    let pth = Weights::open(fixture("devB/transformer.pth")).unwrap();
    let names: Vec<&str> = pth.iter().map(|(name, _)| name).take(2).collect();
    assert_eq!(names, ["cfg_uncond", "pos_start"]);
    let vae = Weights::open(fixture("devA/vae.pth")).unwrap();
    assert_eq!(vae.iter().next().unwrap().0, "vae.encoder.conv_in.conv.weight");
}

#[test]
fn missing_keys_and_prefixes_are_named_in_full() {
    let vae = Weights::open(fixture("devA/vae.pth")).unwrap().strip_prefix("vae.").unwrap();
    match vae.get("encoder.nonexistent.weight") {
        Err(Error::Tensor { path, key, .. }) => {
            assert_eq!(key, "vae.encoder.nonexistent.weight");
            assert!(path.ends_with("vae.pth"));
        }
        other => panic!("expected a Tensor error, got {other:?}"),
    }
    assert!(vae.contains("encoder.conv_in.conv.weight"));
    let err = vae.strip_prefix("ema.").unwrap_err().to_string();
    assert!(err.contains("vae.ema.*"), "{err}");
}
