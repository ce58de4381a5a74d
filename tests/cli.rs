//! `infinity-run` end to end: `inspect` lists both formats of one checkpoint alike;
//! `reconstruct` writes what the library computes; `generate` is deterministic per seed and
//! records its parameters; and every refusal is one line with exit code 2, nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixture;

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

/// `reconstruct` of `input` with `vae` at 0.06M into `out`, then `extra` arguments.
fn reconstruct_at_006m(vae: &Path, input: &Path, out: &Path, extra: &[&std::ffi::OsStr]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--vae".as_ref(),
        vae.as_os_str(),
        "--image".as_ref(),
        input.as_os_str(),
        "--pn".as_ref(),
        "0.06M".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra);
    reconstruct(&args)
}

/// A PNG of the devA golden image (256×256 RGB), written with the library's own writer.
fn golden_png(dir: &Path) -> PathBuf {
    let golden = infinity::runtime::io::Weights::open(fixture("devA/vae_golden.safetensors")).unwrap();
    let rgb = golden.get("image_u8_rgb").unwrap().to_vec::<u8>().unwrap();
    let path = dir.join("input.png");
    infinity::models::image::save_png(&path, 256, 256, &rgb, &[]).unwrap();
    path
}

/// On the CPU and on the shim (`--device shim`: encoder, quantizer and decoder all there).
#[test]
fn reconstruct_writes_what_the_library_computes() {
    use infinity::cuda::Executor;
    use infinity::models::bitvae::BitVae;
    use infinity::models::image::{load_rgb, to_rgb8, to_tensor};
    use infinity::runtime::Device;

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-reconstruct");
    std::fs::create_dir_all(&dir).unwrap();
    let input = golden_png(&dir);
    let vae = fixture("devA/vae.pth");
    for (name, device) in [("cpu", Device::Cpu), ("shim", Executor::shim().device())] {
        let out_png = dir.join(format!("out-{name}.png"));
        let out = reconstruct_at_006m(&vae, &input, &out_png, &["--device".as_ref(), name.as_ref()]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = stdout(&out);
        assert!(
            text.contains("scale  6:  16x16     8192 bits")
                && text.contains("16672 bits in all")
                && text.contains("PSNR"),
            "{text}"
        );
        assert!(text.contains(&format!("running on {device}")), "{text}");

        // The written pixels are the library's reconstruction of the same image on that device.
        let model = BitVae::open_on(&vae, &device).unwrap();
        let grids = infinity::models::schedule::Template::exact(1.0)
            .unwrap()
            .schedule(infinity::models::schedule::PixelBudget::P006M)
            .grids;
        let (_, decoded) = model.reconstruct(&to_tensor(&load_rgb(&input).unwrap()).unwrap(), &grids).unwrap();
        assert_eq!(load_rgb(&out_png).unwrap().into_raw(), to_rgb8(&decoded).unwrap()[0], "{name}");
    }
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
        let out = reconstruct(&[
            "--vae".as_ref(),
            vae.as_os_str(),
            "--image".as_ref(),
            image.as_os_str(),
            "-o".as_ref(),
            out_path.as_os_str(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8(out.stderr.clone()).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&*named.to_string_lossy()), "{err}");
        assert!(!out_path.exists());
    }
}

/// A model folder over the devA fixtures (tiny random weights) with the VAE of `vae_set`.
fn dev_model_dir(dir: &Path, vae_set: &str) -> PathBuf {
    let model = dir.join(format!("model-{vae_set}"));
    std::fs::create_dir_all(&model).unwrap();
    let f = |rel: &str| fixture(rel).display().to_string();
    let config = serde_json::json!({
        "transformer": f("devA/transformer.safetensors"),
        "vae": f(&format!("{vae_set}/vae.safetensors")),
        "t5": f("devA/t5_encoder.safetensors"),
        "t5_config": f("devA/t5_config.json"),
        "tokenizer": f("tokenizer/tokenizer.json"),
        "pn": "0.06M",
    });
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    model
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infinity-run")).args(args).output().unwrap()
}

/// tEXt chunks of a PNG.
fn png_text(path: &Path) -> Vec<(String, String)> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    reader.info().uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect()
}

#[test]
fn generate_is_deterministic_per_seed_and_records_its_parameters() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-generate");
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixture("devA"); // the README's model folder
    let generate = |out: &Path, seed: &str| {
        let o = run(&[
            "-p".as_ref(),
            "a red cat".as_ref(),
            "--model-dir".as_ref(),
            model.as_os_str(),
            "--seed".as_ref(),
            seed.as_ref(),
            "--batch".as_ref(),
            "2".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o)
    };
    let log = generate(&dir.join("a.png"), "7");
    assert!(log.contains("256x256") && log.contains("peak memory"), "{log}");
    generate(&dir.join("b.png"), "7");
    generate(&dir.join("c.png"), "8");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    assert_eq!(read("a_0000.png"), read("b_0000.png"), "same seed, same image");
    assert_ne!(read("a_0000.png"), read("a_0001.png"), "batch entries differ");
    assert_ne!(read("a_0000.png"), read("c_0000.png"), "another seed, another image");
    let text = png_text(&dir.join("a_0001.png"));
    assert!(text.contains(&("prompt".into(), "a red cat".into())), "{text:?}");
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(params.contains("seed=7") && params.contains("batch_index=1") && params.contains("pn=0.06M"), "{params}");
}

/// `infinity-run` generating "a red cat" with devA's model folder, seed 1, on `device`, into `out`.
fn generate_on(device: &str, out: &Path) -> Output {
    let model = fixture("devA");
    run(&[
        "-p".as_ref(),
        "a red cat".as_ref(),
        "--model-dir".as_ref(),
        model.as_os_str(),
        "--seed".as_ref(),
        "1".as_ref(),
        "--device".as_ref(),
        device.as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ])
}

/// `--device cuda` runs the transformer on the GPU when there is one; without, it is refused in
/// one line naming the argument and why, before any output.
#[test]
fn device_cuda_runs_on_a_gpu_or_is_refused_by_name() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-generate-cuda");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("cuda.png");
    let _ = std::fs::remove_file(&out);
    let o = generate_on("cuda", &out);
    match infinity::cuda::probe() {
        infinity::cuda::Availability::Available { .. } => {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(stdout(&o).contains("running on cuda:0"), "{}", stdout(&o));
            assert!(out.exists());
        }
        why => {
            infinity::cuda::testing::skip("infinity-run --device cuda on a GPU", &why);
            assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
            let err = String::from_utf8(o.stderr).unwrap();
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains("--device cuda:0") && err.contains(&why.to_string()), "{err}");
            assert!(!out.exists());
        }
    }
}

/// `--device shim` runs the GPU path (T5, transformer and decoder as the GPU runs them, bf16
/// GEMM operands) on the CPU shim: it writes the image with its parameters, and the same seed
/// draws the same image again. (Its numbers against the CPU's are tests/cuda_pipeline.rs's,
/// stage by stage: freely sampled bits of a random model part ways wherever a margin is within
/// bf16 rounding.) An unknown device is refused by name.
#[test]
fn device_shim_runs_the_gpu_path_on_the_cpu() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-generate-shim");
    std::fs::create_dir_all(&dir).unwrap();
    let generate = |device: &str, name: &str| {
        let out = dir.join(name);
        let _ = std::fs::remove_file(&out);
        (generate_on(device, &out), out)
    };
    let (first, first_png) = generate("shim", "first.png");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout(&first).contains("running on CPU shim"), "{}", stdout(&first));
    let image = infinity::models::image::load_rgb(&first_png).unwrap();
    assert_eq!(image.dimensions(), (256, 256));
    assert!(png_text(&first_png).contains(&("prompt".into(), "a red cat".into())));
    let (second, second_png) = generate("shim", "second.png");
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(std::fs::read(&first_png).unwrap(), std::fs::read(&second_png).unwrap(), "same seed, same image");

    let (o, out) = generate("gpu", "gpu.png");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: ") && err.lines().next().is_some_and(|l| l.contains("'gpu'")), "{err}");
    assert!(!out.exists());
}

/// `--grid` lays out exactly the images the same command writes one by one, prompt-major,
/// on white between them, and lists the prompts in its text.
#[test]
fn a_grid_holds_the_same_images_in_order() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-grid");
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixture("devA");
    let generate = |out: &Path, extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["--model-dir".as_ref(), model.as_os_str(), "-o".as_ref(), out.as_os_str()];
        for a in ["-p", "a red cat", "-p", "a dog", "--seed", "3", "--batch", "2"].iter().chain(extra) {
            args.push(a.as_ref());
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    generate(&dir.join("one.png"), &[]);
    generate(&dir.join("grid.png"), &["--grid", "3"]);
    let decode = |p: &Path| image::open(p).unwrap().to_rgb8();
    let grid = decode(&dir.join("grid.png"));
    assert_eq!(grid.dimensions(), (3 * 256 + 2 * 4, 2 * 256 + 4));
    for i in 0..4u32 {
        let tile = image::imageops::crop_imm(&grid, (i % 3) * 260, (i / 3) * 260, 256, 256).to_image();
        assert_eq!(tile, decode(&dir.join(format!("one_{i:04}.png"))), "image {i}");
    }
    assert_eq!(grid.get_pixel(257, 10).0, [255, 255, 255], "the gap is white");
    assert_eq!(grid.get_pixel(2 * 260 + 10, 260 + 10).0, [255, 255, 255], "the empty cell is white");
    let text = png_text(&dir.join("grid.png"));
    assert!(text.contains(&("prompts".into(), "0: a red cat\n1: a dog".into())), "{text:?}");
    assert!(!dir.join("grid_0000.png").exists());
}

#[test]
fn generate_refuses_impossible_requests_before_working() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-generate-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let good = fixture("devA");
    let mismatched = dev_model_dir(&dir, "devB"); // 16-bit VAE under a 32-bit transformer
    let out = dir.join("never.png");
    let nowhere = dir.join("nowhere");
    let cases: [(Vec<&std::ffi::OsStr>, &str); 5] = [
        (vec!["-p".as_ref(), "x".as_ref(), "--model-dir".as_ref(), mismatched.as_os_str()], "vae.safetensors"),
        (
            vec![
                "-p".as_ref(),
                "x".as_ref(),
                "--model-dir".as_ref(),
                good.as_os_str(),
                "--grid".as_ref(),
                "0".as_ref(),
            ],
            "--grid",
        ),
        (
            vec![
                "-p".as_ref(),
                "x".as_ref(),
                "--model-dir".as_ref(),
                good.as_os_str(),
                "--ratio".as_ref(),
                "wide".as_ref(),
            ],
            "--ratio",
        ),
        (vec!["-p".as_ref(), "x".as_ref(), "--model-dir".as_ref(), nowhere.as_os_str()], "nowhere"),
        (vec!["--model-dir".as_ref(), good.as_os_str()], "no prompt"),
    ];
    for (mut args, named) in cases {
        args.extend(["-o".as_ref(), out.as_os_str()]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8(o.stderr.clone()).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(named), "{named}: {err}");
        assert!(!out.exists());
    }
}

/// Several images (from `--image` and an `--image-list` of relative paths): each one's PSNR and
/// their mean, numbered outputs, or with `--grid` one sheet of (original, reconstruction) pairs.
#[test]
fn reconstruct_takes_several_images_and_reports_the_mean_psnr() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-reconstruct-many");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("list")).unwrap();
    let input = golden_png(&dir);
    std::fs::copy(&input, dir.join("list/second.png")).unwrap();
    std::fs::write(dir.join("list/images.txt"), "second.png\n\n../input.png\n").unwrap();
    let vae = fixture("devA/vae.pth");
    let run = |out: &Path, extra: &[&str]| {
        let list = dir.join("list/images.txt");
        let mut args: Vec<&std::ffi::OsStr> = vec!["--image-list".as_ref(), list.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let o = reconstruct_at_006m(&vae, &input, out, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o)
    };
    let text = run(&dir.join("r.png"), &[]);
    assert_eq!(text.matches(": PSNR ").count(), 3, "{text}");
    assert!(text.contains("mean PSNR") && text.contains("over 3 images"), "{text}");
    let pixels = |name: &str| image::open(dir.join(name)).unwrap().to_rgb8();
    assert!(pixels("r_0000.png") == pixels("r_0002.png"), "the same image twice");

    run(&dir.join("grid.png"), &["--grid", "2"]);
    let grid = image::open(dir.join("grid.png")).unwrap().to_rgb8();
    assert_eq!(grid.dimensions(), (4 * 256 + 3 * 4, 2 * 256 + 4));
    let tile = |i: u32| image::imageops::crop_imm(&grid, (i % 4) * 260, (i / 4) * 260, 256, 256).to_image();
    assert_eq!(tile(0), image::open(&input).unwrap().to_rgb8(), "the original first");
    assert_eq!(tile(1), image::open(dir.join("r_0000.png")).unwrap().to_rgb8(), "then its reconstruction");

    let none = reconstruct(&["--vae".as_ref(), vae.as_os_str(), "-o".as_ref(), dir.join("x.png").as_os_str()]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("--image"));
}

/// The 8B's kind (devC: a spatially patchified transformer over a patch-8 VAE, detected from
/// the pair): its model folder generates, and `reconstruct` quantizes on the VAE's own grids,
/// twice the token grids.
#[test]
fn a_patchified_model_generates_and_its_vae_reconstructs() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-patchify");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("cat.png");
    let model = fixture("devC");
    let o = run(&[
        "-p".as_ref(),
        "a red cat".as_ref(),
        "--model-dir".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("256x256 (H x W; template h/w 1, 0.06M, 7 scales, 521 tokens)"), "{}", stdout(&o));
    assert_eq!(infinity::models::image::load_rgb(&out).unwrap().dimensions(), (256, 256));

    let input = golden_png(&dir);
    let o = reconstruct_at_006m(&fixture("devC/vae.safetensors"), &input, &dir.join("rec.png"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    assert!(
        text.contains("scale  0:   2x2        56 bits") && text.contains("scale  6:  32x32    14336 bits"),
        "{text}"
    );
}

/// The 8B is released as a sharded checkpoint (a folder with `model.safetensors.index.json`):
/// `--transformer` and `inspect` take the folder, and the image is the single file's, bit for bit.
#[test]
fn a_sharded_transformer_generates_the_single_file_image() {
    use infinity::runtime::io::{Weights, save_safetensors};

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-sharded");
    let _ = std::fs::remove_dir_all(&dir);
    let shards = dir.join("infinity_8b_weights");
    std::fs::create_dir_all(&shards).unwrap();
    let whole = Weights::open(fixture("devC/transformer.safetensors")).unwrap();
    let tensors: Vec<(&str, &infinity::runtime::Tensor)> = whole.iter().collect();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        save_safetensors(shards.join(&file), part.iter().copied(), &Default::default()).unwrap();
        weight_map.extend(part.iter().map(|(k, _)| (k.to_string(), serde_json::Value::from(file.clone()))));
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(shards.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let generate = |transformer: &Path, out: &Path| {
        let f = |rel: &str| fixture(rel).into_os_string();
        let o = run(&[
            "-p".as_ref(),
            "a red cat".as_ref(),
            "--seed".as_ref(),
            "5".as_ref(),
            "--pn".as_ref(),
            "0.06M".as_ref(),
            "--transformer".as_ref(),
            transformer.as_os_str(),
            "--vae".as_ref(),
            &f("devC/vae.safetensors"),
            "--t5".as_ref(),
            &f("devC/t5_encoder.safetensors"),
            "--t5-config".as_ref(),
            &f("devC/t5_config.json"),
            "--tokenizer".as_ref(),
            &f("tokenizer/tokenizer.json"),
            "-o".as_ref(),
            out.as_os_str(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        infinity::models::image::load_rgb(out).unwrap().into_raw()
    };
    // `inspect` reads the folder too: the same tensors and total.
    let last_line = |out: Output| stdout(&out).lines().last().unwrap().to_string();
    assert_eq!(last_line(inspect(&shards)), last_line(inspect(&fixture("devC/transformer.safetensors"))));
    let sharded = generate(&shards, &dir.join("sharded.png"));
    let single = generate(&fixture("devC/transformer.safetensors"), &dir.join("single.png"));
    assert!(sharded == single, "the sharded checkpoint draws another image");
}
