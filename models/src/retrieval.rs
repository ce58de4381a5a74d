//! Scoring a text-to-image model by retrieval. A prompt names one concept of a gallery of
//! reference images (an emoji, in every style it is drawn in); the generated picture and the
//! gallery are shrunk to 32×32, and the concept's rank is its place among all concepts ordered
//! by the pixel mean squared error of each concept's nearest image. Rank 1: the picture looks
//! more like what it was asked for than like anything else the gallery holds.
//!
//! The gallery is a data folder as `infinity-prep emoji` writes it (data prepared before the
//! scoring existed lacks `name`: prepare it again): `train/` and `eval/` jsonl folders whose
//! lines carry `image_path`, the concept's `hexcode` and its `name`; a concept is held out when
//! its lines are in `eval/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use infinity_runtime::rng::philox_u32;
use infinity_runtime::{Error, Result};

use crate::data::{fnv1a64, read_jsonl_lines};
use crate::image::load_rgb;

/// Side of the thumbnails pictures are compared at: coarse enough that a picture's layout and
/// colours decide, not the texture a small model cannot draw.
pub const THUMBNAIL_SIDE: usize = 32;

/// One concept: its key (an emoji's code points), the name prompts use, and its images.
pub struct Concept {
    pub key: String,
    pub name: String,
    pub held_out: bool,
    /// One thumbnail per image (per style).
    thumbnails: Vec<Vec<f32>>,
}

/// The reference images, grouped by concept in key order.
pub struct Gallery {
    concepts: Vec<Concept>,
}

/// An RGB picture (`width`×`height`, row-major, 8 bits) shrunk to `THUMBNAIL_SIDE`² by
/// averaging each cell's pixels, as values in [0, 1] (channel-last). Each source pixel falls in
/// exactly one cell, so any size maps, and a 256² picture averages 8×8 blocks.
pub fn thumbnail(rgb: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
    if width < THUMBNAIL_SIDE || height < THUMBNAIL_SIDE || rgb.len() != width * height * 3 {
        return Err(Error::invalid(
            "retrieval.thumbnail",
            &[height, width, rgb.len()],
            format!("an RGB picture of at least {THUMBNAIL_SIDE}² pixels"),
        ));
    }
    let side = THUMBNAIL_SIDE;
    let mut sums = vec![0f64; side * side * 3];
    let mut counts = vec![0u32; side * side];
    for y in 0..height {
        let cy = y * side / height;
        for x in 0..width {
            let cell = cy * side + x * side / width;
            counts[cell] += 1;
            for c in 0..3 {
                sums[cell * 3 + c] += f64::from(rgb[(y * width + x) * 3 + c]);
            }
        }
    }
    Ok(sums.iter().enumerate().map(|(i, s)| (s / f64::from(counts[i / 3]) / 255.0) as f32).collect())
}

fn mean_squared_error(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() / a.len() as f32
}

impl Gallery {
    /// Reads `dir/train` and `dir/eval` (every `.jsonl` file of each) and loads each distinct
    /// image once. Errors name the file and line, or the image.
    pub fn open(dir: &Path) -> Result<Gallery> {
        let mut concepts: BTreeMap<String, Concept> = BTreeMap::new();
        let mut images: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (split, held_out) in [("train", false), ("eval", true)] {
            for line in read_jsonl_lines(&dir.join(split))? {
                let (key, name) = (line.string("hexcode")?, line.string("name")?);
                let concept = concepts.entry(key.clone()).or_insert_with(|| Concept {
                    key: key.clone(),
                    name: name.clone(),
                    held_out,
                    thumbnails: Vec::new(),
                });
                if concept.held_out != held_out {
                    return Err(line.error(format!("'{name}' ({key}) is in both train/ and eval/")));
                }
                if concept.name != name {
                    return Err(line.error(format!("{key} is named '{name}' here and '{}' before", concept.name)));
                }
                images.insert(line.path("image_path")?, key);
            }
        }
        for (path, key) in images {
            let rgb = load_rgb(&path)?;
            let (w, h) = rgb.dimensions();
            let thumb =
                thumbnail(rgb.as_raw(), w as usize, h as usize).map_err(|e| Error::format(&path, e.to_string()))?;
            if let Some(concept) = concepts.get_mut(&key) {
                concept.thumbnails.push(thumb);
            }
        }
        if concepts.is_empty() {
            return Err(Error::format(dir, "no concepts in train/ or eval/"));
        }
        Ok(Gallery { concepts: concepts.into_values().collect() })
    }

    pub fn concepts(&self) -> &[Concept] {
        &self.concepts
    }

    /// Up to `count` concepts of one split (all of them for `None`), chosen by a hash of their
    /// keys: the same concepts for every model and every gallery that holds them. (Philox
    /// counter 1: counter 0 of the same hash decides `infinity-prep`'s held-out split, and the
    /// concepts nearest its cut would move with `--holdout`.)
    pub fn sample(&self, held_out: bool, count: Option<usize>) -> Vec<usize> {
        let mut picked: Vec<usize> =
            (0..self.concepts.len()).filter(|&i| self.concepts[i].held_out == held_out).collect();
        picked.sort_by_key(|&i| (philox_u32(fnv1a64(self.concepts[i].key.as_bytes()), 1), i));
        picked.truncate(count.unwrap_or(picked.len()));
        picked
    }

    /// The rank (1 = nearest) of concept `concept` for a picture's thumbnail: one plus the
    /// number of concepts whose nearest image is strictly nearer than its own nearest.
    pub fn rank(&self, thumbnail: &[f32], concept: usize) -> usize {
        let distance =
            |c: &Concept| c.thumbnails.iter().map(|t| mean_squared_error(thumbnail, t)).fold(f32::INFINITY, f32::min);
        let own = distance(&self.concepts[concept]);
        1 + self.concepts.iter().filter(|c| distance(c) < own).count()
    }
}

/// Where the ranks of a set of prompts fall.
#[derive(Clone, Debug, PartialEq)]
pub struct RankSummary {
    pub count: usize,
    /// Fractions of ranks ≤ 1, 5 and 20.
    pub top1: f64,
    pub top5: f64,
    pub top20: f64,
    /// The middle rank (the mean of the two middle ones for an even count).
    pub median: f64,
}

impl RankSummary {
    pub fn of(ranks: &[usize]) -> Option<RankSummary> {
        if ranks.is_empty() {
            return None;
        }
        let mut sorted = ranks.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let within = |k: usize| sorted.iter().filter(|&&r| r <= k).count() as f64 / n as f64;
        let median = (sorted[(n - 1) / 2] + sorted[n / 2]) as f64 / 2.0;
        Some(RankSummary { count: n, top1: within(1), top5: within(5), top20: within(20), median })
    }
}

impl std::fmt::Display for RankSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "top-1 {:.1} %, top-5 {:.1} %, top-20 {:.1} %, median rank {}",
            100.0 * self.top1,
            100.0 * self.top5,
            100.0 * self.top20,
            self.median
        )
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn thumbnails_average_each_cell() {
        // 64×32: each cell is 2×1 pixels; the left pixel of each pair black, the right white.
        let (w, h) = (64, 32);
        let rgb: Vec<u8> = (0..w * h).flat_map(|i| [if i % 2 == 0 { 0 } else { 255 }; 3]).collect();
        let t = thumbnail(&rgb, w, h).unwrap();
        assert_eq!(t.len(), THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3);
        assert!(t.iter().all(|&v| (v - 0.5).abs() < 1e-6), "{:?}", &t[..6]);
        // 40×40 (cells of 1 or 2 pixels, rows 0–1 in the first): two red top rows stay red in
        // the top cells only.
        let mut rgb = vec![255u8; 40 * 40 * 3];
        for i in 0..80 {
            rgb[i * 3 + 1] = 0;
            rgb[i * 3 + 2] = 0;
        }
        let t = thumbnail(&rgb, 40, 40).unwrap();
        assert_eq!(&t[..3], &[1.0, 0.0, 0.0], "the first cell holds rows 0 and 1");
        assert_eq!(&t[THUMBNAIL_SIDE * 3..THUMBNAIL_SIDE * 3 + 3], &[1.0, 1.0, 1.0]);
        assert!(thumbnail(&rgb, 16, 100).is_err(), "smaller than a thumbnail");
        assert!(thumbnail(&rgb[1..], 40, 40).is_err(), "length does not match");
    }

    fn flat(value: f32) -> Vec<f32> {
        vec![value; THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3]
    }

    fn concept(key: &str, held_out: bool, greys: &[f32]) -> Concept {
        Concept { key: key.into(), name: key.into(), held_out, thumbnails: greys.iter().map(|&g| flat(g)).collect() }
    }

    #[test]
    fn a_concept_ranks_by_its_nearest_image() {
        let gallery = Gallery {
            concepts: vec![
                concept("a", false, &[0.0]),
                concept("b", false, &[0.3, 0.9]),
                concept("c", true, &[0.5]),
                concept("d", true, &[0.55]),
            ],
        };
        // A picture at grey 0.85: b (its 0.9 image) is nearest, then d, c, a.
        let picture = flat(0.85);
        assert_eq!([0, 1, 2, 3].map(|c| gallery.rank(&picture, c)), [4, 1, 3, 2]);
        // Ties rank together: nothing is strictly nearer than either.
        let tied = Gallery { concepts: vec![concept("a", false, &[0.4]), concept("b", false, &[0.6])] };
        assert_eq!([0, 1].map(|c| tied.rank(&flat(0.5), c)), [1, 1]);
        assert_eq!(gallery.sample(true, None).len(), 2);
        assert_eq!(gallery.sample(false, Some(1)).len(), 1);
        let all: Vec<usize> = gallery.sample(false, None);
        assert_eq!(gallery.sample(false, Some(1))[0], all[0], "a prefix of the same order");
    }

    #[test]
    fn summaries_count_ranks_within_each_cut_and_the_median() {
        let s = RankSummary::of(&[1, 3, 7, 25, 1, 100]).unwrap();
        assert_eq!(s.count, 6);
        assert_eq!((s.top1, s.top5, s.top20), (2.0 / 6.0, 3.0 / 6.0, 4.0 / 6.0));
        assert_eq!(s.median, 5.0, "between 3 and 7");
        assert_eq!(RankSummary::of(&[9, 2, 4]).unwrap().median, 4.0);
        assert_eq!(RankSummary::of(&[]), None);
        assert_eq!(s.to_string(), "top-1 33.3 %, top-5 50.0 %, top-20 66.7 %, median rank 5");
    }

    #[test]
    fn galleries_read_concepts_from_both_splits_and_name_bad_lines() {
        let dir = std::env::temp_dir().join(format!("retrieval-gallery-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for split in ["train", "eval", "images"] {
            fs::create_dir_all(dir.join(split)).unwrap();
        }
        for (name, grey) in [("a", 0u8), ("b1", 100), ("b2", 110), ("c", 250)] {
            image::RgbImage::from_pixel(64, 64, image::Rgb([grey; 3]))
                .save(dir.join(format!("images/{name}.png")))
                .unwrap();
        }
        let line = |image: &str, key: &str, caption: &str| {
            format!(
                r#"{{"image_path":"../images/{image}.png","h_div_w":1.0,"long_caption":"{caption}","hexcode":"{key}","name":"{key} name"}}"#
            )
        };
        let train =
            [line("a", "A", "a"), line("a", "A", "a emoji"), line("b1", "B", "b"), line("b2", "B", "b, x style")];
        fs::write(dir.join("train/1.000_4.jsonl"), train.join("\n")).unwrap();
        fs::write(dir.join("eval/1.000_1.jsonl"), line("c", "C", "c")).unwrap();
        let gallery = Gallery::open(&dir).unwrap();
        let keys: Vec<(&str, &str, bool, usize)> = gallery
            .concepts()
            .iter()
            .map(|c| (c.key.as_str(), c.name.as_str(), c.held_out, c.thumbnails.len()))
            .collect();
        assert_eq!(keys, [("A", "A name", false, 1), ("B", "B name", false, 2), ("C", "C name", true, 1)]);
        assert_eq!(gallery.rank(&flat(108.0 / 255.0), 1), 1);

        fs::write(dir.join("eval/1.000_1.jsonl"), line("c", "B", "b")).unwrap();
        let e = Gallery::open(&dir).err().unwrap().to_string();
        assert!(e.contains("1.000_1.jsonl") && e.contains("in both train/ and eval/"), "{e}");
        let renamed = line("b2", "B", "b").replace("B name", "another name");
        fs::write(dir.join("eval/1.000_1.jsonl"), line("c", "C", "c")).unwrap();
        fs::write(dir.join("train/1.000_4.jsonl"), [&train[..3], &[renamed]].concat().join("\n")).unwrap();
        let e = Gallery::open(&dir).err().unwrap().to_string();
        assert!(e.contains("1.000_4.jsonl") && e.contains("line 4") && e.contains("'another name'"), "{e}");
        fs::write(dir.join("train/1.000_4.jsonl"), train.join("\n")).unwrap();
        fs::write(dir.join("eval/1.000_1.jsonl"), r#"{"image_path":"../images/c.png","hexcode":"C"}"#).unwrap();
        let e = Gallery::open(&dir).err().unwrap().to_string();
        assert!(e.contains("1.000_1.jsonl") && e.contains("line 1") && e.contains("'name'"), "{e}");
        fs::write(dir.join("eval/1.000_1.jsonl"), line("missing", "C", "c")).unwrap();
        let e = Gallery::open(&dir).err().unwrap().to_string();
        assert!(e.contains("missing.png"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
