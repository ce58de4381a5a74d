//! safetensors files whose header lies (about its length, the offsets, the dtype or the shape)
//! are errors naming the file (and the tensor where there is one), never panics.

use infinity::runtime::Error;

use crate::support::{fixture, open_bytes, safetensors_file, scratch_dir};

fn expect_err(dir: &std::path::Path, what: &str, bytes: &[u8]) -> Error {
    match open_bytes(dir, "bad.safetensors", bytes) {
        Ok(w) => panic!("{what}: loaded {} tensors instead of failing", w.len()),
        Err(e) => {
            assert!(e.to_string().contains("bad.safetensors"), "{what}: {e}");
            e
        }
    }
}

fn key_of(err: &Error) -> Option<&str> {
    match err {
        Error::Tensor { key, .. } => Some(key),
        _ => None,
    }
}

#[test]
fn header_length_beyond_the_file() {
    let dir = scratch_dir("st_length");
    let golden = std::fs::read(fixture("devB/transformer.safetensors")).unwrap();
    let mut bytes = golden.clone();
    bytes[..8].copy_from_slice(&(golden.len() as u64 - 7).to_le_bytes());
    let err = expect_err(&dir, "one byte too long", &bytes);
    assert!(err.to_string().contains("exceeds the file size"), "{err}");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(&dir, "u64::MAX", &bytes);
    expect_err(&dir, "shorter than the length field", &golden[..5]);
    expect_err(&dir, "empty", &[]);
    // A shorter header length cuts the JSON.
    bytes[..8].copy_from_slice(&100u64.to_le_bytes());
    expect_err(&dir, "cut JSON", &bytes);
}

#[test]
fn truncated_files_are_errors() {
    let dir = scratch_dir("st_truncated");
    let golden = std::fs::read(fixture("devB/transformer.safetensors")).unwrap();
    for cut in [8, 9, 100, 6168, golden.len() / 2, golden.len() - 1] {
        expect_err(&dir, &format!("cut at {cut}"), &golden[..cut]);
    }
}

#[test]
fn headers_lying_about_offsets_dtype_or_shape() {
    let dir = scratch_dir("st_lies");
    let data = [0u8; 32];
    let entry = |dtype: &str, shape: &str, offsets: &str| {
        let v = r#""v":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}"#;
        format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}},{v}}}"#)
    };
    let cases = [
        (
            "data past the end",
            entry("F32", "[4]", "[0,16]").replace(r#"[4],"data_offsets":[16,32]"#, r#"[8],"data_offsets":[16,48]"#),
            "v",
        ),
        ("overlapping tensors", entry("F32", "[5]", "[0,20]"), "v"),
        ("a gap between tensors", entry("F32", "[2]", "[0,8]"), "v"),
        ("shape needs more bytes", entry("F32", "[8]", "[0,16]"), "w"),
        ("dtype needs more bytes", entry("I64", "[4]", "[0,16]"), "w"),
        ("end before begin", entry("F32", "[0]", "[16,0]"), "w"),
        ("shape overflows", entry("F32", "[4294967296,4294967296]", "[0,16]"), "w"),
        ("a consistent but huge tensor", entry("F32", "[1152921504606846976]", "[0,4611686018427387904]"), "w"),
        // Sorts last; the tensors before it must already disagree without any overflow.
        ("offsets near usize::MAX", entry("F32", "[4]", "[18446744073709551600,18446744073709551615]"), "v"),
        ("unsupported dtype", entry("F64", "[2]", "[0,16]"), "w"),
        ("unknown dtype", entry("Q7", "[4]", "[0,16]"), "w"),
        ("negative offset", entry("F32", "[4]", "[-16,0]"), "w"),
        ("shape of strings", entry("F32", r#"["4"]"#, "[0,16]"), "w"),
    ];
    for (what, header, key) in cases {
        let err = expect_err(&dir, what, &safetensors_file(&header, &data));
        assert_eq!(key_of(&err), Some(key), "{what}: {err}");
    }
    let err = expect_err(&dir, "unsupported dtype", &safetensors_file(&entry("F64", "[2]", "[0,16]"), &data));
    assert!(err.to_string().contains("F64"), "{err}");

    // Whole-file problems.
    let w = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    expect_err(&dir, "bytes after the last tensor", &safetensors_file(w, &data));
    expect_err(&dir, "not JSON", &safetensors_file("{\"w\": ", &data));
    expect_err(&dir, "a JSON array", &safetensors_file("[1,2]", &data));
    let mut not_utf8 = safetensors_file(r#"{"ab":1}"#, &[]);
    not_utf8[10] = 0xff;
    expect_err(&dir, "not UTF-8", &not_utf8);
    expect_err(&dir, "metadata not strings", &safetensors_file(r#"{"__metadata__":{"a":1}}"#, &[]));
    expect_err(&dir, "entry not an object", &safetensors_file(r#"{"w":3}"#, &[]));
}

#[test]
fn a_valid_hand_made_file_loads() {
    // Guards the cases above: the same construction with a truthful header is accepted.
    let dir = scratch_dir("st_valid");
    let header = concat!(
        r#"{"__metadata__":{"a":"b"},"#,
        r#""w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"#,
        r#""v":{"dtype":"U8","shape":[16],"data_offsets":[16,32]},"#,
        r#""e":{"dtype":"BF16","shape":[0],"data_offsets":[32,32]}}"#
    );
    let w = open_bytes(&dir, "ok.safetensors", &safetensors_file(header, &[0u8; 32])).unwrap();
    assert_eq!(w.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["w", "v", "e"]);
    assert_eq!(w.metadata()["a"], "b");
    assert_eq!(w.total_params(), 20);
}

/// A header naming one tensor twice: readers that keep the first or the last entry would see
/// different tensors in one file, so it is refused, naming the tensor.
#[test]
fn a_tensor_named_twice_is_refused() {
    let dir = scratch_dir("st_twice");
    // Each entry alone describes the data exactly (the kind of file that used to load).
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
    let err = expect_err(&dir, "w twice", &safetensors_file(header, &[0u8; 8]));
    assert_eq!(key_of(&err), Some("w"), "{err}");
    assert!(err.to_string().contains("named twice"), "{err}");
}
