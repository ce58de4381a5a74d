//! The training data layer on small datasets built in a temp folder: sources and their errors,
//! template buckets and pixel sizes, skipped images, the caption rule, the resumable batch
//! order and the text-feature cache.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};

use infinity::models::data::{BatchOrder, Caption, CaptionRule, Dataset, FeatureCache, OrderState, Prefetch, fnv1a64};
use infinity::models::image::save_png;
use infinity::models::schedule::{PixelBudget, Template};
use infinity::runtime::Tensor;
use infinity::runtime::rng::Philox;
use serde_json::{Value, json};
use std::sync::Arc;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infinity-data-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `w`×`h` image with varied pixels (so its PNG data does not compress to a few bytes).
fn write_png(path: &Path, w: usize, h: usize) {
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7919 % 251) as u8).collect();
    save_png(path, w, h, &rgb, &[]).unwrap();
}

fn write_jsonl(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(&path, text).unwrap();
    path
}

fn line(image: &str, h_div_w: f64) -> Value {
    json!({ "image_path": image, "h_div_w": h_div_w, "long_caption": format!("a picture of {image}.") })
}

#[test]
fn jsonl_items_are_bucketed_by_nearest_template_and_loaded_at_the_budget_size() {
    let dir = temp_dir("buckets");
    write_png(&dir.join("sq.png"), 24, 24);
    write_png(&dir.join("wide.png"), 40, 20);
    let absolute = dir.join("sq.png").display().to_string();
    write_jsonl(&dir, "1.000_000003.jsonl", &[line("sq.png", 1.0), line("wide.png", 0.52), line(&absolute, 1.02)]);
    write_jsonl(&dir, "0.500_000001.jsonl", &[line("wide.png", 0.5)]);

    let ds = Dataset::from_jsonl_dir(&dir, PixelBudget::P006M).unwrap();
    // Files are read in name order: 0.500_… first.
    let buckets: Vec<(f64, Vec<usize>)> = ds.buckets().iter().map(|b| (b.template.ratio(), b.items.clone())).collect();
    assert_eq!(buckets, [(0.5, vec![0, 2]), (1.0, vec![1, 3])]);
    assert_eq!(ds.items()[3].image, dir.join("sq.png"));

    for (template, want_06m, want_025m) in [(1.0, (256, 256), (512, 512)), (0.5, (176, 352), (368, 736))] {
        let t = Template::exact(template).unwrap();
        assert_eq!(ds.pixel_size(t), want_06m);
        assert_eq!(t.schedule(PixelBudget::P025M).pixel_size(), want_025m);
    }
    let wide = ds.load_image(0).unwrap();
    assert_eq!(wide.shape(), [1, 3, 176, 352]);
    assert!(wide.to_f32_vec().unwrap().iter().all(|v| (-1.0..=1.0).contains(v)));

    let mut order = BatchOrder::new(&ds, 2, 0, OrderState::default()).unwrap();
    let samples = ds.load(&order.next().unwrap()).unwrap();
    let (h, w) = ds.pixel_size(samples.template);
    assert_eq!(samples.images.unwrap().shape(), [2, 3, h, w]);
    assert_eq!(samples.captions.len(), 2);
    assert!(ds.skipped().is_empty());
}

#[test]
fn broken_and_missing_images_are_skipped_and_counted() {
    let dir = temp_dir("broken");
    for name in ["good", "truncated", "text", "uncaptioned"] {
        if name != "uncaptioned" {
            fs::write(dir.join(format!("{name}.txt")), format!("a {name} image")).unwrap();
        }
        write_png(&dir.join(format!("{name}.png")), 32, 32);
    }
    // The header survives the cut, so this one only fails when it is decoded.
    let truncated = dir.join("truncated.png");
    let bytes = fs::read(&truncated).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fs::write(dir.join("text.png"), "not an image").unwrap();

    let ds = Dataset::from_image_folder(&dir, PixelBudget::P006M).unwrap();
    let listed: Vec<&Path> = ds.items().iter().map(|i| i.image.as_path()).collect();
    assert_eq!(listed, [dir.join("good.png"), truncated.clone()]);
    assert_eq!(ds.skip_report(), "2 of 4 images skipped");

    let mut order = BatchOrder::new(&ds, 2, 1, OrderState::default()).unwrap();
    let samples = ds.load(&order.next().unwrap()).unwrap();
    assert_eq!(samples.items, [0]);
    assert_eq!(samples.captions, ["a good image"]);
    assert_eq!(samples.images.unwrap().shape(), [1, 3, 256, 256]);
    // Met again in the next epoch: still counted once.
    ds.load(&order.next().unwrap()).unwrap();
    assert_eq!(ds.skip_report(), "3 of 4 images skipped");
    let skipped: Vec<PathBuf> = ds.skipped().into_iter().map(|s| s.image).collect();
    assert_eq!(skipped, [dir.join("text.png"), truncated, dir.join("uncaptioned.png")]);

    // A jsonl entry whose file does not exist.
    let jdir = temp_dir("missing");
    write_png(&jdir.join("here.png"), 16, 16);
    write_jsonl(&jdir, "1.000_000002.jsonl", &[line("here.png", 1.0), line("gone.png", 1.0)]);
    let ds = Dataset::from_jsonl_dir(&jdir, PixelBudget::P006M).unwrap();
    let samples = ds.load(&BatchOrder::new(&ds, 2, 0, OrderState::default()).unwrap().next().unwrap()).unwrap();
    assert_eq!(samples.items.len(), 1);
    assert_eq!(ds.skip_report(), "1 of 2 images skipped");
    assert_eq!(ds.skipped()[0].image, jdir.join("gone.png"));
}

/// The loader thread hands out the batches the order gives, in order, each with the order's
/// state after it (what a checkpoint saves), skipping a batch whose images all fail to load;
/// a dataset none of whose images load is an error naming its folder, not a hang.
#[test]
fn prefetched_batches_follow_the_order() {
    let dir = temp_dir("prefetch");
    for i in 0..5 {
        fs::write(dir.join(format!("img{i}.txt")), format!("image {i}")).unwrap();
        write_png(&dir.join(format!("img{i}.png")), 16, 16);
    }
    fs::write(dir.join("img3.png"), "not an image").unwrap();
    let ds = Arc::new(Dataset::from_image_folder(&dir, PixelBudget::P006M).unwrap());
    let mut order = BatchOrder::new(&ds, 1, 4, OrderState::default()).unwrap();
    let mut batches = Prefetch::start(Arc::clone(&ds), BatchOrder::new(&ds, 1, 4, OrderState::default()).unwrap(), 2);
    for _ in 0..8 {
        let got = batches.next_batch().unwrap();
        let want = loop {
            let samples = ds.load(&order.next().unwrap()).unwrap();
            if samples.images.is_some() {
                break samples;
            }
        };
        assert_eq!(got.samples.items, want.items);
        assert_eq!(got.samples.captions, want.captions);
        assert!(got.images.same_values(want.images.as_ref().unwrap()));
        assert_eq!(got.order, order.state());
    }
    drop(batches);

    let broken = temp_dir("prefetch-broken");
    fs::write(broken.join("a.txt"), "a").unwrap();
    // Listed (its header is whole), but it fails to decode.
    write_png(&broken.join("a.png"), 16, 16);
    let bytes = fs::read(broken.join("a.png")).unwrap();
    fs::write(broken.join("a.png"), &bytes[..bytes.len() / 2]).unwrap();
    let ds = Arc::new(Dataset::from_image_folder(&broken, PixelBudget::P006M).unwrap());
    let order = BatchOrder::new(&ds, 1, 0, OrderState::default()).unwrap();
    let err = Prefetch::start(ds, order, 2).next_batch().err().unwrap().to_string();
    assert_eq!(err, format!("{}: no image of the dataset could be loaded", broken.display()));
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&broken).unwrap();
}

#[test]
fn bad_jsonl_files_are_errors_naming_file_and_line() {
    let error = |name: &str, lines: &[Value], raw: Option<&str>| {
        let dir = temp_dir(&format!("bad-{}", name.replace('.', "-")));
        let path = write_jsonl(&dir, name, lines);
        if let Some(raw) = raw {
            fs::write(&path, raw).unwrap();
        }
        let msg = Dataset::from_jsonl_dir(&dir, PixelBudget::P006M).err().expect("an error").to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        msg
    };
    let ok = line("a.png", 1.0);
    assert!(
        error("1.000_000003.jsonl", &[ok.clone(), ok.clone()], None).contains("promises 3 lines but the file has 2")
    );
    let raw = format!("{ok}\n{{not json\n");
    assert!(error("1.000_000002.jsonl", &[], Some(&raw)).contains("line 2: invalid JSON"));
    assert!(error("1.100_000001.jsonl", std::slice::from_ref(&ok), None).contains("'1.100' is not a template key"));
    assert!(error("square.jsonl", std::slice::from_ref(&ok), None).contains("is not <h_div_w>_<count>"));
    let no_caption = json!({ "image_path": "a.png", "h_div_w": 1.0 });
    assert!(error("1.000_000002.jsonl", &[ok, no_caption], None).contains("line 2: 'long_caption' is missing"));
}

fn caption(long: &str, short: Option<&str>) -> Caption {
    Caption { long: long.into(), short: short.map(String::from), kind: None }
}

/// Every caption the rule picks over 200 stream positions.
fn choices(rule: CaptionRule, c: &Caption) -> Vec<String> {
    let mut seen: Vec<String> = (0..200).map(|i| rule.choose(c, &mut Philox { seed: 3, offset: 2 * i })).collect();
    seen.sort();
    seen.dedup();
    seen
}

#[test]
fn caption_rule_matches_the_official_one() {
    let short = CaptionRule::Dynamic { short_cap_prob: 1.0 };
    let long = CaptionRule::Dynamic { short_cap_prob: 0.0 };
    // A short first sentence: N = 2.
    let four = caption("A cat. It is red. The sky is blue. Birds fly", None);
    assert_eq!(choices(short, &four), ["A cat. It is red"]);
    assert_eq!(choices(short, &caption(&four.long, Some("a red cat"))), ["a red cat"]);
    assert_eq!(
        choices(long, &four),
        ["A cat. It is red. The sky is blue", "A cat. It is red. The sky is blue. Birds fly"]
    );
    assert_eq!(choices(long, &caption("A cat. It is red.", None)), ["A cat. It is red."]);
    let user = Caption { kind: Some("user_prompt".into()), ..four.clone() };
    assert_eq!(choices(long, &user), [four.long.as_str()]);
    assert_eq!(choices(CaptionRule::Plain, &four), [four.long.as_str()]);
    // A first sentence of 15 words: N = 1, so m ranges over [2, 3].
    let first = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen";
    let three = caption(&format!("{first}. Second. Third"), None);
    assert_eq!(choices(short, &three), [first]);
    assert_eq!(choices(long, &three), [format!("{first}. Second"), three.long.clone()]);
    // Anything after "--" goes, unless nothing would remain.
    assert_eq!(choices(long, &caption("A dog -- photo by someone", None)), ["A dog "]);
    assert_eq!(choices(long, &caption("-- A dog", None)), ["-- A dog"]);
}

/// 12 square and 8 tall items (the images need not exist: the order never opens them).
fn order_dataset() -> Dataset {
    let dir = temp_dir("order");
    let lines: Vec<Value> = (0..20).map(|i| line(&format!("{i}.png"), if i % 5 < 3 { 1.0 } else { 2.0 })).collect();
    write_jsonl(&dir, "1.000_000020.jsonl", &lines);
    Dataset::from_jsonl_dir(&dir, PixelBudget::P006M).unwrap()
}

fn items(batches: &[infinity::models::data::Batch]) -> Vec<Vec<usize>> {
    batches.iter().map(|b| b.slots.iter().map(|s| s.item).collect()).collect()
}

#[test]
fn batch_order_is_a_seeded_shuffle_of_one_template_batches() {
    let ds = order_dataset();
    let take =
        |seed: u64, n: usize| BatchOrder::new(&ds, 3, seed, OrderState::default()).unwrap().take(n).collect::<Vec<_>>();
    let epoch = take(5, 6);
    // 12 / 3 square batches and ⌊8 / 3⌋ tall ones per epoch.
    let mut seen: Vec<usize> = items(&epoch).concat();
    assert_eq!(seen.len(), 18);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 18, "an item repeats within the epoch");
    for batch in &epoch {
        assert!(batch.slots.iter().all(|s| ds.items()[s.item].template == batch.template));
    }
    assert_eq!(items(&epoch), items(&take(5, 6)));
    assert_ne!(items(&epoch), items(&take(6, 6)));
    let next_epoch = BatchOrder::new(&ds, 3, 5, OrderState { epoch: 1, batch: 0 }).unwrap().take(6).collect::<Vec<_>>();
    assert_ne!(items(&epoch), items(&next_epoch));
    assert!(BatchOrder::new(&ds, 13, 5, OrderState::default()).is_err());
}

#[test]
fn restoring_the_order_state_continues_identically() {
    let ds = order_dataset();
    let mut order = BatchOrder::new(&ds, 3, 9, OrderState::default()).unwrap();
    let straight: Vec<_> = order.by_ref().take(15).collect();
    assert_eq!(order.state(), OrderState { epoch: 2, batch: 3 });

    let mut first = BatchOrder::new(&ds, 3, 9, OrderState::default()).unwrap();
    let mut resumed: Vec<_> = first.by_ref().take(7).collect();
    let saved = first.state().to_json();
    assert_eq!(saved, r#"{"batch":1,"epoch":1}"#);
    let restored = BatchOrder::new(&ds, 3, 9, OrderState::from_json(&saved).unwrap()).unwrap();
    resumed.extend(restored.take(8));
    // Same items and the same caption stream positions.
    assert_eq!(resumed, straight);
    assert!(OrderState::from_json(r#"{"epoch":1}"#).unwrap_err().to_string().contains("batch"));
}

#[test]
fn feature_cache_encodes_each_caption_once_per_encoder() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    let dir = temp_dir("cache");
    let calls = Cell::new(0);
    // A stand-in encoder: one row per character, the character codes as features.
    let encode = |captions: &[&str]| {
        calls.set(calls.get() + captions.len());
        Ok(captions
            .iter()
            .map(|c| Tensor::from_vec(c.bytes().map(f32::from).collect::<Vec<_>>(), &[c.len(), 1]).unwrap())
            .collect())
    };
    let cache = FeatureCache::new(&dir, "t5-test").unwrap();
    let first = cache.features(&["a cat", "a dog"], encode).unwrap();
    assert_eq!(calls.get(), 2);
    let again = cache.features(&["a dog", "a cat", "a bird"], encode).unwrap();
    assert_eq!(calls.get(), 3);
    assert!(again[0].same_values(&first[1]) && again[1].same_values(&first[0]));
    assert_eq!(again[2].shape(), [6, 1]);

    fs::write(cache.path("a cat"), b"garbage").unwrap();
    let repaired = cache.features(&["a cat"], encode).unwrap();
    assert_eq!(calls.get(), 4);
    assert!(repaired[0].same_values(&first[0]));
    cache.features(&["a cat"], encode).unwrap();
    assert_eq!(calls.get(), 4);

    let other = FeatureCache::new(&dir, "t5-other").unwrap();
    assert_ne!(other.path("a cat"), cache.path("a cat"));
    assert_ne!(cache.path("a cat"), cache.path("a cat."));
    other.features(&["a cat"], encode).unwrap();
    assert_eq!(calls.get(), 5);
}

/// Class folders: sorted sub-folder names are the classes; squares are cut as asked — the
/// centre of the covering resize, or (the official training augmentation) a window of a resize
/// to `scale` × the side at a position drawn from the slot's stream, every position possible.
#[test]
fn class_folders_cut_squares_as_asked() {
    use infinity::models::data::{Batch, Slot, SquareCrop};
    use infinity::models::image::{cover, crop, fit_to, load_rgb, to_tensor};
    let dir = std::env::temp_dir().join(format!("infinity-class-folders-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for class in ["b_frog", "a_apple"] {
        fs::create_dir_all(dir.join(class)).unwrap();
    }
    let (w, h) = (45usize, 30usize);
    let rgb: Vec<u8> = (0..w * h).flat_map(|i| [(i % w * 5) as u8, (i / w * 8) as u8, (i % 7 * 30) as u8]).collect();
    let image = dir.join("b_frog/x.png");
    save_png(&image, w, h, &rgb, &[]).unwrap();
    save_png(&dir.join("a_apple/y.png"), w, h, &rgb, &[]).unwrap();
    let centre = Dataset::from_class_folders(&dir, 16, SquareCrop::Centre).unwrap();
    assert_eq!(centre.classes(), ["a_apple", "b_frog"]);
    let frog = centre.items().iter().position(|i| i.image == image).unwrap();
    assert_eq!(centre.items()[frog].class, Some(1));
    let img = load_rgb(&image).unwrap();
    assert!(centre.load_image(frog).unwrap().same_values(&to_tensor(&fit_to(&img, (16, 16)).unwrap()).unwrap()));

    let random = Dataset::from_class_folders(&dir, 16, SquareCrop::Random { scale: 1.125 }).unwrap();
    let resized = cover(&img, (18, 18)).unwrap();
    let (rh, rw) = (resized.height() as usize, resized.width() as usize);
    assert_eq!((rh, rw), (18, 27));
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let batch = Batch {
            template: centre.items()[frog].template,
            slots: vec![Slot { item: frog, caption_rng: Philox::new(seed) }],
        };
        let got = random.load(&batch).unwrap().images.unwrap();
        let again = random.load(&batch).unwrap().images.unwrap();
        assert!(got.same_values(&again), "the slot's stream decides the crop");
        let at = (0..=rh - 16)
            .flat_map(|t| (0..=rw - 16).map(move |l| (t, l)))
            .find(|&pos| to_tensor(&crop(&resized, pos, (16, 16)).unwrap()).unwrap().same_values(&got))
            .expect("a window of the 1.125× resize");
        seen.insert(at);
    }
    assert!(seen.len() > 10, "positions drawn: {seen:?}");
    let _ = fs::remove_dir_all(&dir);
}
