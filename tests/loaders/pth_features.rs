//! Valid hand-made `torch.save` archives: strided views, shared storages, nested containers,
//! the state dict's `_metadata`, every supported storage type and the protocol 4 opcodes.

use infinity::runtime::DType;

use crate::support::{Pickler, TensorSpec, f32_bytes, open_bytes, pth, scratch_dir, state_dict_pickle};

#[test]
fn strided_views_share_one_mapped_storage() {
    let dir = scratch_dir("strided");
    let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let pickle = state_dict_pickle(&[
        TensorSpec::f32("w", "0", &[2, 3], &[3, 1]),
        // The transpose of `w`, as torch saves a non-contiguous tensor: same storage, new strides.
        TensorSpec::f32("w_t", "0", &[3, 2], &[1, 3]),
        // A slice starting at element 4.
        TensorSpec { numel: 6, offset: 4, ..TensorSpec::f32("tail", "0", &[2], &[1]) },
    ]);
    let weights = open_bytes(&dir, "strided.pth", &pth(&pickle, &[("0", f32_bytes(&values))])).unwrap();
    let w = weights.get("w").unwrap();
    let w_t = weights.get("w_t").unwrap();
    assert!(!w_t.is_contiguous());
    assert!(std::sync::Arc::ptr_eq(w.storage(), w_t.storage()), "one storage mapped once");
    assert!(w_t.storage().is_mapped());
    assert_eq!(w_t.to_vec::<f32>().unwrap(), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(weights.get("tail").unwrap().to_vec::<f32>().unwrap(), [4.0, 5.0]);
    assert_eq!(weights.total_params(), 14);
}

#[test]
fn every_storage_type_maps_to_its_dtype() {
    let dir = scratch_dir("storage_types");
    let cases = [
        ("FloatStorage", DType::F32),
        ("BFloat16Storage", DType::BF16),
        ("HalfStorage", DType::F16),
        ("LongStorage", DType::I64),
        ("IntStorage", DType::I32),
        ("ByteStorage", DType::U8),
    ];
    let specs: Vec<TensorSpec> = cases
        .iter()
        .map(|&(storage_type, _)| TensorSpec {
            storage_type,
            key: storage_type,
            ..TensorSpec::f32(storage_type, "", &[2], &[1])
        })
        .collect();
    let storages: Vec<(&str, Vec<u8>)> =
        cases.iter().map(|&(storage_type, dtype)| (storage_type, vec![1u8; 2 * dtype.size_in_bytes()])).collect();
    let weights = open_bytes(&dir, "types.pth", &pth(&state_dict_pickle(&specs), &storages)).unwrap();
    for (name, dtype) in cases {
        let t = weights.get(name).unwrap();
        assert_eq!(t.dtype(), dtype, "{name}");
        assert_eq!(t.cpu_storage("test").unwrap().bytes(), vec![1u8; 2 * dtype.size_in_bytes()]);
    }
}

/// `{"model": OrderedDict(a=..) with _metadata set by BUILD, "epoch": 3, "lr": 0.5,
///   "tags": ["x", None, True], "blocks": [t0, t1], 7: t2}` using protocol 4 opcodes.
#[test]
fn nested_containers_metadata_and_protocol_4_opcodes() {
    let dir = scratch_dir("nested");
    let mut p = Pickler(vec![0x80, 4, 0x95]);
    p.0.extend(0u64.to_le_bytes()); // FRAME
    p.op(b'}').op(0x94); // EMPTY_DICT, MEMOIZE
    p.op(b'(');
    // "model": OrderedDict built by REDUCE, filled by SETITEM, then BUILD with its state.
    p.0.extend([0x8c, 5]);
    p.0.extend(b"model"); // SHORT_BINUNICODE
    p.0.extend([0x8c, 11]);
    p.0.extend(b"collections");
    p.0.extend([0x8c, 11]);
    p.0.extend(b"OrderedDict");
    p.op(0x93).op(b')').op(b'R').op(0x94); // STACK_GLOBAL, (), REDUCE, MEMOIZE
    p.str("a").tensor(&TensorSpec::f32("", "0", &[2], &[1])).op(b's');
    p.op(b'}').str("_metadata").op(b'}').str("version").int(1).op(b's').op(b's').op(b'b');
    p.str("epoch").int(3);
    p.str("lr").op(b'G');
    p.0.extend(0.5f64.to_be_bytes()); // BINFLOAT
    p.str("big").op(0x8a).op(8);
    p.0.extend(i64::MIN.to_le_bytes()); // LONG1
    p.str("tags").op(b']').op(b'(').str("x").op(b'N').op(0x88).op(b'e');
    p.str("blocks").op(b']').tensor(&TensorSpec::f32("", "1", &[1], &[1])).op(b'a');
    p.tensor(&TensorSpec::f32("", "1", &[1], &[1])).op(b'a');
    p.int(7).tensor(&TensorSpec { numel: 2, ..TensorSpec::f32("", "0", &[1], &[1]) });
    p.op(b'u');
    let pickle = p.stop();
    let weights =
        open_bytes(&dir, "nested.pth", &pth(&pickle, &[("0", f32_bytes(&[1.0, 2.0])), ("1", f32_bytes(&[3.0]))]))
            .unwrap();
    let names: Vec<&str> = weights.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["model.a", "blocks.0", "blocks.1", "7"]);
    assert_eq!(weights.get("model.a").unwrap().to_vec::<f32>().unwrap(), [1.0, 2.0]);
    assert_eq!(weights.get("blocks.1").unwrap().to_vec::<f32>().unwrap(), [3.0]);
    let model = weights.strip_prefix("model.").unwrap();
    assert_eq!(model.len(), 1);
}

#[test]
fn any_archive_directory_name_is_accepted() {
    let dir = scratch_dir("prefix");
    let pickle = state_dict_pickle(&[TensorSpec::f32("x", "0", &[1], &[1])]);
    let entries = vec![
        ("my_model_v2/data.pkl".to_string(), pickle),
        ("my_model_v2/data/0".to_string(), f32_bytes(&[9.0])),
        ("my_model_v2/version".to_string(), b"3\n".to_vec()),
    ];
    let weights = open_bytes(&dir, "renamed.bin", &crate::support::stored_zip(&entries)).unwrap();
    assert_eq!(weights.get("x").unwrap().to_vec::<f32>().unwrap(), [9.0]);
}
