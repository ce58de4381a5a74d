//! The training data layer (spec §7.1): items from the official jsonl folders or from a folder
//! of captioned images, bucketed by aspect-ratio template; samples decoded and fitted to their
//! template's pixel size at a pixel budget; captions chosen by the official dynamic-length
//! rule; a resumable batch order of one template per batch; and a disk cache of text features.
//!
//! Bad metadata (a malformed jsonl file) is an error naming the file and line, since training
//! on a half-read dataset would be silent data loss. A broken image is only logged and skipped:
//! one bad file among millions must not stop a run.

mod cache;
mod caption;
mod order;
mod prefetch;
mod source;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use infinity_ops::index::concat;
use infinity_runtime::rng::Philox;
use infinity_runtime::{Error, Result, Tensor};

pub use self::cache::{FeatureCache, fnv1a64};
pub use self::caption::{Caption, CaptionRule, DEFAULT_SHORT_CAP_PROB};
pub use self::order::{Batch, BatchOrder, OrderState, Slot};
pub use self::prefetch::{Loaded, Prefetch};
pub use self::source::{JsonlLine, read_jsonl_lines};
use crate::image::{cover, crop, fit_to, load_rgb, to_tensor};
use crate::schedule::{PixelBudget, Template};

/// How a class-folder data set makes its square samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SquareCrop {
    /// Scale to cover the square, keep the centre.
    Centre,
    /// Scale the shorter side to round(`scale` × the side), then crop a square at a random
    /// position (uniform over every position, drawn from the slot's stream): the official
    /// training augmentations — VAR's 1.125, Open-MAGVIT2's 1.
    Random { scale: f64 },
}

/// One image and its caption.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub image: PathBuf,
    pub template: Template,
    pub caption: Caption,
    /// Its class index in a class-folder data set.
    pub class: Option<usize>,
}

/// The items of one template (indices into `Dataset::items`, in item order).
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    pub template: Template,
    pub items: Vec<usize>,
}

/// An image left out of training, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub image: PathBuf,
    pub reason: String,
}

impl Skipped {
    fn new(image: PathBuf, reason: String) -> Self {
        Skipped { image, reason }
    }
}

/// The loaded samples of one batch; items whose image failed to load are left out, so there
/// may be fewer than the batch's slots (or none).
pub struct Samples {
    pub template: Template,
    /// (B, 3, H, W) in [-1, 1]; `None` when every image of the batch was skipped.
    pub images: Option<Tensor>,
    pub captions: Vec<String>,
    /// Item index of each sample.
    pub items: Vec<usize>,
}

/// Items bucketed by template, loaded at one pixel budget.
pub struct Dataset {
    /// The folder it was read from (for messages).
    dir: PathBuf,
    items: Vec<Item>,
    buckets: Vec<Bucket>,
    budget: PixelBudget,
    caption_rule: CaptionRule,
    /// The class names of a class-folder data set (index = class), else empty.
    classes: Vec<String>,
    /// A class-folder data set's square side (in place of the budget's template sizes) and how
    /// its squares are cut.
    square: Option<(usize, SquareCrop)>,
    /// Images left out while listing (they are not among `items`).
    unlisted: usize,
    /// Skipped images by path: each is logged once, however many epochs meet it.
    skipped: Mutex<BTreeMap<PathBuf, String>>,
}

impl Dataset {
    /// A jsonl folder ([`Dataset::from_jsonl_dir`]) when `dir` holds any `.jsonl` file, else a
    /// folder of captioned images ([`Dataset::from_image_folder`]).
    pub fn open(dir: impl AsRef<Path>, budget: PixelBudget) -> Result<Self> {
        let dir = dir.as_ref();
        let has_jsonl = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(std::result::Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "jsonl"));
        if has_jsonl { Self::from_jsonl_dir(dir, budget) } else { Self::from_image_folder(dir, budget) }
    }

    /// The official layout: a folder of `[h_div_w]_[count].jsonl` files; captions follow the
    /// dynamic-length rule with the default `short_cap_prob` (see `with_caption_rule`).
    pub fn from_jsonl_dir(dir: impl AsRef<Path>, budget: PixelBudget) -> Result<Self> {
        let items = source::read_jsonl_dir(dir.as_ref())?;
        Self::new(
            dir.as_ref(),
            items,
            Vec::new(),
            budget,
            CaptionRule::Dynamic { short_cap_prob: DEFAULT_SHORT_CAP_PROB },
        )
    }

    /// A folder of png/jpg/jpeg images with same-named `.txt` captions, used whole.
    pub fn from_image_folder(dir: impl AsRef<Path>, budget: PixelBudget) -> Result<Self> {
        let (items, skipped) = source::read_image_folder(dir.as_ref())?;
        Self::new(dir.as_ref(), items, skipped, budget, CaptionRule::Plain)
    }

    /// An ImageNet-style folder of class sub-folders (sorted names = class indices), every
    /// image loaded as a `side` × `side` square cut by `crop`.
    pub fn from_class_folders(dir: impl AsRef<Path>, side: usize, crop: SquareCrop) -> Result<Self> {
        let (items, classes) = source::read_class_folders(dir.as_ref())?;
        if classes.is_empty() {
            return Err(Error::format(dir.as_ref(), "no class sub-folders (expected <data>/<class>/<image>)"));
        }
        if side == 0 {
            return Err(Error::setting("a class-folder data set needs a positive image side"));
        }
        // The budget is not used: every item is square and loaded at `side`.
        let mut dataset = Self::new(dir.as_ref(), items, Vec::new(), PixelBudget::P006M, CaptionRule::Plain)?;
        dataset.classes = classes;
        dataset.square = Some((side, crop));
        Ok(dataset)
    }

    /// The class names of a class-folder data set, in class-index order (empty otherwise).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    fn new(
        dir: &Path,
        items: Vec<Item>,
        skipped: Vec<Skipped>,
        budget: PixelBudget,
        caption_rule: CaptionRule,
    ) -> Result<Self> {
        if items.is_empty() {
            return Err(Error::format(dir, format!("no usable items ({} images skipped)", skipped.len())));
        }
        let mut buckets: Vec<Bucket> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match buckets.iter_mut().find(|b| b.template == item.template) {
                Some(bucket) => bucket.items.push(i),
                None => buckets.push(Bucket { template: item.template, items: vec![i] }),
            }
        }
        let unlisted = skipped.len();
        let dataset = Dataset {
            dir: dir.to_path_buf(),
            items,
            buckets,
            budget,
            caption_rule,
            classes: Vec::new(),
            square: None,
            unlisted,
            skipped: Mutex::new(BTreeMap::new()),
        };
        for s in skipped {
            dataset.skip(s.image, s.reason);
        }
        Ok(dataset)
    }

    pub fn with_caption_rule(mut self, rule: CaptionRule) -> Self {
        self.caption_rule = rule;
        self
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// One bucket per template present, in order of first appearance.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    pub fn budget(&self) -> PixelBudget {
        self.budget
    }

    /// The (H, W) every sample of `template` is loaded at.
    pub fn pixel_size(&self, template: Template) -> (usize, usize) {
        match self.square {
            Some((side, _)) => (side, side),
            None => template.schedule(self.budget).pixel_size(),
        }
    }

    /// Item `index`'s image as (1, 3, H, W) in [-1, 1], or `None` (logged and counted) when
    /// it cannot be read.
    pub fn load_image(&self, index: usize) -> Option<Tensor> {
        self.load_sample(index, None)
    }

    /// [`Dataset::load_image`], a random square crop drawing its position from `rng`.
    fn load_sample(&self, index: usize, rng: Option<&mut Philox>) -> Option<Tensor> {
        let item = self.items.get(index)?;
        let size = self.pixel_size(item.template);
        let loaded = load_rgb(&item.image)
            .and_then(|img| match (self.square, rng) {
                (Some((side, SquareCrop::Random { scale })), Some(rng)) => {
                    let mid = (scale * side as f64).round() as usize;
                    let resized = cover(&img, (mid, mid))?;
                    let (h, w) = (resized.height() as usize, resized.width() as usize);
                    let u = rng.uniform(2);
                    let at = |u: f32, room: usize| ((u as f64 * (room + 1) as f64) as usize).min(room);
                    crop(&resized, (at(u[0], h - side), at(u[1], w - side)), (side, side))
                }
                _ => fit_to(&img, size),
            })
            .and_then(|img| to_tensor(&img));
        match loaded {
            Ok(t) => Some(t),
            Err(e) => {
                self.skip(item.image.clone(), e.to_string());
                None
            }
        }
    }

    /// Decodes a batch's images and chooses their captions.
    pub fn load(&self, batch: &Batch) -> Result<Samples> {
        let mut images = Vec::with_capacity(batch.slots.len());
        let mut samples = Samples { template: batch.template, images: None, captions: Vec::new(), items: Vec::new() };
        for slot in &batch.slots {
            // The slot's own stream: its crop first, then its caption.
            let mut rng = slot.caption_rng;
            let Some(image) = self.load_sample(slot.item, Some(&mut rng)) else { continue };
            images.push(image);
            samples.captions.push(self.caption_rule.choose(&self.items[slot.item].caption, &mut rng));
            samples.items.push(slot.item);
        }
        if !images.is_empty() {
            samples.images = Some(concat(&images.iter().collect::<Vec<_>>(), 0)?);
        }
        Ok(samples)
    }

    /// The images skipped so far (while listing, or failed loads), sorted by path.
    pub fn skipped(&self) -> Vec<Skipped> {
        let skipped = self.skipped.lock().unwrap_or_else(PoisonError::into_inner);
        skipped.iter().map(|(image, reason)| Skipped::new(image.clone(), reason.clone())).collect()
    }

    /// The folder the dataset was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether every item's image has failed to load.
    pub fn all_images_skipped(&self) -> bool {
        let skipped = self.skipped.lock().unwrap_or_else(PoisonError::into_inner);
        self.items.iter().all(|item| skipped.contains_key(&item.image))
    }

    /// "N of M images skipped", M counting the listed items and those skipped while listing.
    pub fn skip_report(&self) -> String {
        let skipped = self.skipped.lock().unwrap_or_else(PoisonError::into_inner).len();
        format!("{skipped} of {} images skipped", self.items.len() + self.unlisted)
    }

    fn skip(&self, image: PathBuf, reason: String) {
        let mut skipped = self.skipped.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Vacant(entry) = skipped.entry(image) {
            eprintln!("data: skipping {}: {reason}", entry.key().display());
            entry.insert(reason);
        }
    }
}
