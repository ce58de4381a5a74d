//! `infinity-run inspect`: the same listing for both formats of one checkpoint, the right
//! totals, and one-line errors with exit code 2 for files that cannot be loaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn inspect(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infinity-run")).arg("inspect").arg(file).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Names, dtypes and shapes according to the reference `safetensors` crate.
fn reference(file: &str) -> Vec<(String, String, Vec<usize>)> {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(name, v)| (name, format!("{:?}", v.dtype()), v.shape().to_vec())).collect()
}

/// Where the dtype and the shape column of a listing row start.
fn columns(line: &str) -> [usize; 2] {
    let name_end = line.find(' ').unwrap();
    [name_end + line[name_end..].find(|c| c != ' ').unwrap(), line.find('[').unwrap()]
}

/// One listing row `name  dtype  [d0, d1]` as (name, dtype, shape).
fn parse_row(line: &str) -> (String, String, Vec<usize>) {
    let (name, rest) = line.split_once(' ').unwrap();
    let (dtype, shape) = rest.trim_start().split_once(' ').unwrap();
    let dims = shape.trim_start().trim_start_matches('[').trim_end_matches(']');
    (name.into(), dtype.into(), dims.split(", ").filter(|d| !d.is_empty()).map(|d| d.parse().unwrap()).collect())
}

#[test]
fn both_formats_list_the_same_tensors_and_totals() {
    let pth = inspect(&fixture("devB/transformer.pth"));
    let st = inspect(&fixture("devB/transformer.safetensors"));
    for out in [&pth, &st] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty());
    }
    // The same rows (each file lists in its own order) and the same summary line.
    let (pth_text, st_text) = (stdout(&pth), stdout(&st));
    let mut pth_lines: Vec<&str> = pth_text.lines().collect();
    let mut st_lines: Vec<&str> = st_text.lines().collect();
    assert_eq!(pth_lines.last(), st_lines.last());
    pth_lines.sort_unstable();
    st_lines.sort_unstable();
    assert_eq!(pth_lines, st_lines);

    let lines: Vec<&str> = st_text.lines().collect();
    let (rows, summary) = lines.split_at(lines.len() - 1);
    let mut expected = reference("devB/transformer.safetensors");
    let total: usize = expected.iter().map(|(_, _, shape)| shape.iter().product::<usize>()).sum();
    assert!(total > 1000, "the total needs a separator to test it");
    assert_eq!(summary, [format!("64 tensors, {} parameters", with_commas(total))]);

    let aligned = columns(rows[0]);
    assert!(rows.iter().all(|row| columns(row) == aligned), "columns are aligned");
    let mut parsed: Vec<_> = rows.iter().map(|row| parse_row(row)).collect();
    parsed.sort();
    expected.sort();
    assert_eq!(parsed, expected);
}

fn with_commas(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn assert_one_line_error(out: &Output, file: &Path) {
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(&*file.to_string_lossy()), "{err}");
}

#[test]
fn missing_file_is_a_one_line_error() {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no_such_checkpoint.pth");
    assert_one_line_error(&inspect(&file), &file);
}

#[test]
fn hostile_files_are_one_line_errors() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let golden = std::fs::read(fixture("devB/transformer.pth")).unwrap();
    let mut lying_header = std::fs::read(fixture("devB/transformer.safetensors")).unwrap();
    lying_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let cases: [(&str, &[u8]); 3] =
        [("truncated.pth", &golden[..golden.len() / 2]), ("lying.safetensors", &lying_header), ("empty.bin", &[])];
    for (name, bytes) in cases {
        let file = dir.join(name);
        std::fs::write(&file, bytes).unwrap();
        assert_one_line_error(&inspect(&file), &file);
    }
}

fn reconstruct(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infinity-run")).arg("reconstruct").args(args).output().unwrap()
}

/// A PNG of the devA golden image (256×256 RGB), written with the library's own writer.
fn golden_png(dir: &Path) -> PathBuf {
    let golden = infinity::runtime::io::Weights::open(fixture("devA/vae_golden.safetensors")).unwrap();
    let rgb = golden.get("image_u8_rgb").unwrap().to_vec::<u8>().unwrap();
    let path = dir.join("input.png");
    infinity::models::image::save_png(&path, 256, 256, &rgb, &[]).unwrap();
    path
}

#[test]
fn reconstruct_writes_what_the_library_computes() {
    use infinity::models::bitvae::BitVae;
    use infinity::models::image::{load_rgb, to_rgb8, to_tensor};

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-reconstruct");
    std::fs::create_dir_all(&dir).unwrap();
    let input = golden_png(&dir);
    let out_png = dir.join("out.png");
    let vae = fixture("devA/vae.pth");
    let out = reconstruct(&[
        "--vae".as_ref(), vae.as_os_str(), "--image".as_ref(), input.as_os_str(), "--pn".as_ref(), "0.06M".as_ref(), "-o".as_ref(), out_png.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.contains("scale  6:  16x16     8192 bits") && text.contains("16672 bits in all") && text.contains("PSNR"), "{text}");

    // The written pixels are the library's reconstruction of the same image.
    let model = BitVae::open(&vae).unwrap();
    let grids = infinity::models::schedule::Template::exact(1.0).unwrap().schedule(infinity::models::schedule::PixelBudget::P006M).grids;
    let (_, decoded) = model.reconstruct(&to_tensor(&load_rgb(&input).unwrap()).unwrap(), &grids).unwrap();
    assert_eq!(load_rgb(&out_png).unwrap().into_raw(), to_rgb8(&decoded).unwrap()[0]);
}

#[test]
fn reconstruct_refuses_bad_input_without_writing() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-reconstruct-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let input = golden_png(&dir);
    let not_an_image = dir.join("not_an_image.png");
    std::fs::write(&not_an_image, b"hello").unwrap();
    let out_png = dir.join("never.png");
    let vae = fixture("devA/vae.pth");
    let not_a_vae = fixture("devB/transformer.safetensors");
    let missing_dir = dir.join("no/such/dir/out.png");
    let cases: [(&Path, &Path, &Path, &Path); 3] = [
        (&vae, &not_an_image, &out_png, &not_an_image),
        (&not_a_vae, &input, &out_png, &not_a_vae),
        (&vae, &input, &missing_dir, &missing_dir),
    ];
    for (vae, image, out_path, named) in cases {
        let out = reconstruct(&["--vae".as_ref(), vae.as_os_str(), "--image".as_ref(), image.as_os_str(), "-o".as_ref(), out_path.as_os_str()]);
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8(out.stderr.clone()).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&*named.to_string_lossy()), "{err}");
        assert!(!out_path.exists());
    }
}
