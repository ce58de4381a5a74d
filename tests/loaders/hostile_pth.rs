//! Hostile or broken `.pth` files: each one is an `Err` (naming the offending global or key
//! where there is one), never a panic, never code execution, never an out-of-bounds read.

use infinity::runtime::Error;

use crate::support::{
    Pickler, TensorSpec, f32_bytes, fixture, open_bytes, pth, scratch_dir, state_dict_pickle, stored_zip,
    transformer_pickle, transformer_pth_with_pickle,
};

fn expect_err(result: infinity::runtime::Result<infinity::runtime::io::Weights>, what: &str) -> Error {
    match result {
        Ok(w) => panic!("{what}: loaded {} tensors instead of failing", w.len()),
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{what}: multi-line message {e}");
            e
        }
    }
}

#[test]
fn truncated_archives_are_errors() {
    let dir = scratch_dir("truncated_zip");
    let golden = std::fs::read(fixture("devB/transformer.pth")).unwrap();
    let n = golden.len();
    for cut in [0, 1, 3, 4, 30, 100, 5000, n / 3, n / 2, n - 100, n - 22, n - 1] {
        expect_err(open_bytes(&dir, "cut.pth", &golden[..cut]), &format!("cut at {cut}"));
    }
}

#[test]
fn truncated_pickles_are_errors() {
    let dir = scratch_dir("truncated_pickle");
    let pickle = transformer_pickle();
    let n = pickle.len();
    for cut in [0, 1, 2, 3, 10, 57, 100, 1000, n / 2, n - 2, n - 1] {
        let err = expect_err(open_bytes(&dir, "cut.pth", &transformer_pth_with_pickle(&pickle[..cut])), "truncated");
        assert!(err.to_string().contains("data.pkl"), "{err}");
    }
}

#[test]
fn code_execution_globals_are_refused_by_name() {
    let dir = scratch_dir("globals");
    let call = |module: &str, name: &str| {
        let mut p = Pickler::proto2();
        p.global(module, name).op(b'(').str("echo pwned").op(b't').op(b'R');
        p.stop()
    };
    let globals = [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("__builtin__", "eval"),
        ("subprocess", "check_output"),
        ("pickle", "loads"),
        ("copyreg", "_reconstructor"),
        ("functools", "partial"),
        ("runpy", "_run_code"),
        ("types", "CodeType"),
        ("shutil", "rmtree"),
        ("webbrowser", "open"),
        ("torch", "load"),
        ("torch.serialization", "load"),
        ("numpy.core.multiarray", "_reconstruct"),
        // Allowed names under another module are other objects.
        ("collectionsX", "OrderedDict"),
        ("torch._utils", "_rebuild_parameter"),
    ];
    for (module, name) in globals {
        let err = expect_err(open_bytes(&dir, "evil.pth", &pth(&call(module, name), &[])), name);
        assert!(err.to_string().contains(&format!("{module}.{name}")), "{err}");
    }

    // The same through STACK_GLOBAL (protocol 4).
    let mut p = Pickler::proto2();
    p.str("subprocess").str("Popen").op(0x93);
    let err = expect_err(open_bytes(&dir, "evil.pth", &pth(&p.stop(), &[])), "STACK_GLOBAL");
    assert!(err.to_string().contains("subprocess.Popen"), "{err}");

    // A training checkpoint's `args` after valid tensors: refused, not skipped.
    let mut p = Pickler::proto2();
    p.op(b'}').op(b'(').str("w").tensor(&TensorSpec::f32("", "0", &[1], &[1]));
    p.str("args").global("argparse", "Namespace").op(b')').op(b'R').op(b'u');
    let err = expect_err(open_bytes(&dir, "ckpt.pth", &pth(&p.stop(), &[("0", f32_bytes(&[1.0]))])), "Namespace");
    assert!(err.to_string().contains("argparse.Namespace"), "{err}");
}

/// The other ways a pickle calls or builds objects: a call of what a call returned (nested
/// REDUCE), BUILD on something other than a dict (a tensor: `__setstate__` would run), and the
/// opcodes that instantiate classes or fetch globals by registry code (INST, OBJ, NEWOBJ,
/// NEWOBJ_EX, EXT1/2/4): each refused with a message naming what was tried.
#[test]
fn other_object_building_opcodes_are_refused() {
    let dir = scratch_dir("building");
    let refused = |pickle: &[u8], what: &str, says: &str| {
        let err = expect_err(open_bytes(&dir, "evil.pth", &pth(pickle, &[("0", f32_bytes(&[1.0]))])), what);
        assert!(err.to_string().contains(says), "{what}: {err}");
    };
    // OrderedDict() called, then its result called with ("echo",).
    let mut p = Pickler::proto2();
    p.global("collections", "OrderedDict").op(b')').op(b'R').op(b'(').str("echo").op(b't').op(b'R');
    refused(&p.stop(), "nested REDUCE", "byte");
    // BUILD on a tensor.
    let mut p = Pickler::proto2();
    p.tensor(&TensorSpec::f32("", "0", &[1], &[1])).op(b'}').op(b'b');
    refused(&p.stop(), "BUILD on a tensor", "BUILD");
    for (op, name) in [
        (b'i', "INST"),
        (b'o', "OBJ"),
        (0x81, "NEWOBJ"),
        (0x92, "NEWOBJ_EX"),
        (0x82, "EXT1"),
        (0x83, "EXT2"),
        (0x84, "EXT4"),
    ] {
        let mut p = Pickler::proto2();
        p.op(b'(').op(op).op(0).op(0).op(0).op(0);
        refused(&p.stop(), name, &format!("unsupported opcode 0x{op:02x}"));
    }
}

#[test]
fn unknown_storage_types_are_named() {
    let dir = scratch_dir("storage_type");
    let spec = TensorSpec { storage_type: "ComplexDoubleStorage", ..TensorSpec::f32("w", "0", &[1], &[1]) };
    let bytes = pth(&state_dict_pickle(&[spec]), &[("0", vec![0; 16])]);
    let err = expect_err(open_bytes(&dir, "c.pth", &bytes), "complex storage");
    assert!(err.to_string().contains("torch.ComplexDoubleStorage"), "{err}");

    // A persistent id whose type is a known global, but not a storage.
    let mut p = Pickler::proto2();
    p.op(b'}').str("w").global("torch._utils", "_rebuild_tensor_v2").op(b'(');
    p.op(b'(').str("storage").global("collections", "OrderedDict").str("0").str("cpu").int(1).op(b't').op(b'Q');
    let err = expect_err(open_bytes(&dir, "c.pth", &pth(&p.stop(), &[("0", vec![0; 4])])), "pid type");
    assert!(err.to_string().contains("collections.OrderedDict"), "{err}");
}

#[test]
fn views_outside_their_storage_are_errors_naming_the_key() {
    let dir = scratch_dir("small_storage");
    let storage = [("0", f32_bytes(&[1.0, 2.0, 3.0, 4.0]))];
    let cases = [
        // Declared storage of 4 elements, shape needs 9.
        TensorSpec { numel: 4, ..TensorSpec::f32("blocks.w", "0", &[3, 3], &[3, 1]) },
        // Fits in element count but the offset pushes the view past the end.
        TensorSpec { numel: 4, offset: 3, ..TensorSpec::f32("blocks.w", "0", &[2], &[1]) },
        // Strides reach past the end.
        TensorSpec { numel: 4, ..TensorSpec::f32("blocks.w", "0", &[2, 2], &[4, 1]) },
        // Repeats elements (stride 0) to claim more than the storage holds.
        TensorSpec { numel: 4, ..TensorSpec::f32("blocks.w", "0", &[1 << 40], &[0]) },
        // Sizes whose product overflows.
        TensorSpec { numel: 4, ..TensorSpec::f32("blocks.w", "0", &[1 << 62, 1 << 62], &[1, 1]) },
        TensorSpec { numel: 4, ..TensorSpec::f32("blocks.w", "0", &[2, 2], &[1 << 62, 1 << 62]) },
        TensorSpec { numel: 4, offset: i64::MAX, ..TensorSpec::f32("blocks.w", "0", &[2], &[1]) },
    ];
    for spec in cases {
        let what = format!("size {:?} stride {:?} offset {}", spec.size, spec.stride, spec.offset);
        let err = expect_err(open_bytes(&dir, "s.pth", &pth(&state_dict_pickle(&[spec]), &storage)), &what);
        assert!(matches!(&err, Error::Tensor { key, .. } if key == "blocks.w"), "{what}: {err}");
    }

    // The archive entry is shorter than the storage the pickle declares.
    let spec = TensorSpec::f32("blocks.w", "0", &[3, 3], &[3, 1]);
    let err = expect_err(open_bytes(&dir, "s.pth", &pth(&state_dict_pickle(&[spec]), &storage)), "short entry");
    assert!(matches!(&err, Error::Tensor { key, .. } if key == "blocks.w"), "{err}");

    // Negative sizes and offsets.
    let spec = TensorSpec { numel: 4, ..TensorSpec::f32("w", "0", &[-1], &[1]) };
    expect_err(open_bytes(&dir, "s.pth", &pth(&state_dict_pickle(&[spec]), &storage)), "negative size");
    let spec = TensorSpec { numel: 4, offset: -2, ..TensorSpec::f32("w", "0", &[1], &[1]) };
    expect_err(open_bytes(&dir, "s.pth", &pth(&state_dict_pickle(&[spec]), &storage)), "negative offset");

    // One storage declared with two different sizes.
    let a = TensorSpec { numel: 4, ..TensorSpec::f32("a", "0", &[4], &[1]) };
    let b = TensorSpec { numel: 2, ..TensorSpec::f32("b", "0", &[2], &[1]) };
    let err = expect_err(open_bytes(&dir, "s.pth", &pth(&state_dict_pickle(&[a, b]), &storage)), "two sizes");
    assert!(matches!(&err, Error::Tensor { key, .. } if key == "b"), "{err}");

    // The storage entry is missing.
    let spec = TensorSpec::f32("w", "7", &[1], &[1]);
    let err = expect_err(open_bytes(&dir, "s.pth", &pth(&state_dict_pickle(&[spec]), &storage)), "missing entry");
    assert!(err.to_string().contains("archive/data/7"), "{err}");
}

/// Pickles that are malformed in the ways a damaged or crafted file would be.
#[test]
fn malformed_pickles_are_errors() {
    let dir = scratch_dir("malformed");
    let tensor = TensorSpec::f32("", "0", &[1], &[1]);
    let build = |f: &dyn Fn(&mut Pickler)| {
        let mut p = Pickler::proto2();
        f(&mut p);
        p.stop()
    };
    let mut deep = Pickler::proto2();
    deep.op(b'}');
    for _ in 0..100 {
        deep.str("d").op(b'}');
    }
    for _ in 0..100 {
        deep.op(b's');
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("only STOP", b".".to_vec()),
        ("unknown protocol", vec![0x80, 9, b'}', b'.']),
        (
            "unknown opcode",
            build(&|p| {
                p.op(b'}').op(0xff);
            }),
        ),
        (
            "TUPLE2 on an empty stack",
            build(&|p| {
                p.op(0x86);
            }),
        ),
        (
            "TUPLE3 reaching below a MARK",
            build(&|p| {
                p.op(b'N').op(b'N').op(b'(').op(b'N').op(0x87);
            }),
        ),
        (
            "BINGET of a never stored entry",
            build(&|p| {
                p.op(b'h').op(9);
            }),
        ),
        ("LONG_BINGET of a huge index", vec![0x80, 2, b'j', 0xff, 0xff, 0xff, 0xff, b'.']),
        (
            "BINPUT on an empty stack",
            build(&|p| {
                p.op(b'q').op(0);
            }),
        ),
        (
            "unterminated MARK",
            build(&|p| {
                p.op(b'}').op(b'(').str("k");
            }),
        ),
        (
            "values left over",
            build(&|p| {
                p.op(b'}').op(b'}');
            }),
        ),
        (
            "SETITEMS with a dangling key",
            build(&|p| {
                p.op(b'}').op(b'(').str("a").op(b'u');
            }),
        ),
        (
            "SETITEMS without MARK",
            build(&|p| {
                p.op(b'}').str("a").str("b").op(b'u');
            }),
        ),
        (
            "SETITEM on a list",
            build(&|p| {
                p.op(b']').str("a").str("b").op(b's');
            }),
        ),
        (
            "APPEND on a dict",
            build(&|p| {
                p.op(b'}').str("a").op(b'a');
            }),
        ),
        (
            "APPEND on a tuple",
            build(&|p| {
                p.op(b')').str("a").op(b'a');
            }),
        ),
        (
            "REDUCE on a string",
            build(&|p| {
                p.str("f").op(b')').op(b'R');
            }),
        ),
        (
            "OrderedDict with arguments",
            build(&|p| {
                p.global("collections", "OrderedDict").op(b'(').str("x").op(b't').op(b'R');
            }),
        ),
        (
            "REDUCE with non-tuple args",
            build(&|p| {
                p.global("collections", "OrderedDict").op(b'N').op(b'R');
            }),
        ),
        (
            "rebuild with 3 arguments",
            build(&|p| {
                p.op(b'}').str("w").global("torch._utils", "_rebuild_tensor_v2").op(b'(').int(0).int(0).int(0).op(b't');
                p.op(b'R').op(b's');
            }),
        ),
        (
            "storage called directly",
            build(&|p| {
                p.global("torch", "FloatStorage").op(b')').op(b'R');
            }),
        ),
        (
            "persistent id that is a string",
            build(&|p| {
                p.str("0").op(b'Q');
            }),
        ),
        (
            "persistent id of another kind",
            build(&|p| {
                p.op(b'(').str("module").global("torch", "FloatStorage").str("0").str("cpu").int(1).op(b't').op(b'Q');
            }),
        ),
        (
            "BUILD on a tensor",
            build(&|p| {
                p.op(b'}').str("w").tensor(&tensor).op(b'}').op(b'b').op(b's');
            }),
        ),
        ("LONG1 wider than 64 bits", vec![0x80, 2, 0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, b'.']),
        ("string longer than the data", vec![0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f, b'a', b'.']),
        ("string that is not UTF-8", vec![0x80, 2, 0x8c, 2, 0xc3, 0x28, b'.']),
        ("GLOBAL without newline", b"\x80\x02cos".to_vec()),
        (
            "a list at the root",
            build(&|p| {
                p.op(b']');
            }),
        ),
        (
            "a tensor at the root",
            build(&|p| {
                p.tensor(&tensor);
            }),
        ),
        (
            "a float dict key",
            build(&|p| {
                p.op(b'}').op(b'G');
                p.0.extend(1.5f64.to_be_bytes());
                p.tensor(&tensor).op(b's');
            }),
        ),
        (
            "a list containing itself",
            build(&|p| {
                p.op(b'}').str("l").op(b']').op(b'q').op(1).op(b'h').op(1).op(b'a').op(b's');
            }),
        ),
        (
            "one dict under two keys",
            build(&|p| {
                p.op(b'}').str("a").op(b'}').op(b'q').op(1).op(b's').str("b").op(b'h').op(1).op(b's');
            }),
        ),
        ("nesting 100 dicts deep", deep.stop()),
    ];
    for (what, pickle) in cases {
        let err = expect_err(open_bytes(&dir, "m.pth", &pth(&pickle, &[("0", f32_bytes(&[1.0]))])), what);
        assert!(err.to_string().contains("m.pth"), "{what}: {err}");
    }
}

#[test]
fn stack_depth_is_bounded() {
    let dir = scratch_dir("stack_bound");
    let mut p = Pickler::proto2();
    p.0.extend(std::iter::repeat_n(b'N', (1 << 20) + 1));
    let err = expect_err(open_bytes(&dir, "deep.pth", &pth(&p.stop(), &[])), "2^20 + 1 values");
    assert!(err.to_string().contains("more than"), "{err}");
}

#[test]
fn malformed_archives_are_errors() {
    let dir = scratch_dir("archives");
    let pickle = state_dict_pickle(&[TensorSpec::f32("w", "0", &[1], &[1])]);
    let storage = f32_bytes(&[1.0]);
    let entry = |name: &str, data: &[u8]| (name.to_string(), data.to_vec());

    let no_pickle = stored_zip(&[entry("archive/data/0", &storage)]);
    let err = expect_err(open_bytes(&dir, "a.pth", &no_pickle), "no data.pkl");
    assert!(err.to_string().contains("data.pkl"), "{err}");

    let two_pickles = stored_zip(&[entry("a/data.pkl", &pickle), entry("b/data.pkl", &pickle)]);
    expect_err(open_bytes(&dir, "a.pth", &two_pickles), "two data.pkl");

    let big_endian = stored_zip(&[
        entry("archive/data.pkl", &pickle),
        entry("archive/byteorder", b"big"),
        entry("archive/data/0", &storage),
    ]);
    let err = expect_err(open_bytes(&dir, "a.pth", &big_endian), "big endian");
    assert!(err.to_string().contains("big-endian"), "{err}");

    // The same archive with data.pkl's compression method patched to Deflate (8) in both the
    // local and the central header.
    let mut compressed = pth(&pickle, &[("0", storage.clone())]);
    assert_eq!(&compressed[..4], b"PK\x03\x04");
    compressed[8] = 8;
    let central = compressed.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    compressed[central + 10] = 8;
    let err = expect_err(open_bytes(&dir, "a.pth", &compressed), "compressed");
    assert!(err.to_string().contains("uncompressed"), "{err}");

    // A zip of something else entirely.
    expect_err(open_bytes(&dir, "a.pth", &stored_zip(&[entry("readme.txt", b"hello")])), "foreign zip");
}
