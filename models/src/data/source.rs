//! Reading a dataset's item list: the official folder of `[h_div_w]_[count].jsonl` files, or a
//! folder of images with same-named `.txt` captions. Only metadata is read here (for images,
//! their header); pixels are decoded when a sample is loaded.

use std::fs;
use std::path::{Path, PathBuf};

use infinity_runtime::{Error, Result};
use serde_json::Value;

use super::caption::Caption;
use super::{Item, Skipped};
use crate::schedule::{TEMPLATES, Template};

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The files of `dir` with one of `extensions` (case-insensitive), sorted by name so that the
/// item order, and so every shuffle, does not depend on the file system.
fn files_with_extension(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if path.is_file() && ext.is_some_and(|e| extensions.contains(&e.as_str())) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// One line of a jsonl folder, parsed.
pub struct JsonlLine {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub value: Value,
}

impl JsonlLine {
    /// An error about this line, naming its file and number.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(&self.file, format!("line {}: {msg}", self.line))
    }

    /// A string field, or an error naming it.
    pub fn string(&self, key: &str) -> Result<String> {
        self.value
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.error(format!("'{key}' is missing or not a string")))
    }

    /// A path field, relative to the line's file.
    pub fn path(&self, key: &str) -> Result<PathBuf> {
        Ok(self.file.parent().unwrap_or(Path::new(".")).join(self.string(key)?))
    }
}

/// Every line of every `[h_div_w]_[count].jsonl` file in `dir`, files in name order. The
/// template key must be known and the count exact (the official loader shards by it).
pub fn read_jsonl_lines(dir: &Path) -> Result<Vec<JsonlLine>> {
    let files = files_with_extension(dir, &["jsonl"])?;
    if files.is_empty() {
        return Err(Error::format(dir, "no .jsonl files in the folder"));
    }
    let mut lines = Vec::new();
    for path in files {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let bad_name =
            |msg: String| Error::format(&path, format!("file name '{stem}' is not <h_div_w>_<count>: {msg}"));
        let (key, count) = stem.rsplit_once('_').ok_or_else(|| bad_name("no '_'".into()))?;
        let ratio: f64 = key.parse().map_err(|_| bad_name(format!("'{key}' is not a number")))?;
        if Template::exact(ratio).is_none() {
            return Err(bad_name(format!("'{key}' is not a template key (one of {TEMPLATES:?})")));
        }
        let count: usize = count.parse().map_err(|_| bad_name(format!("'{count}' is not a count")))?;
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let before = lines.len();
        for (i, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
            let value = serde_json::from_str(line)
                .map_err(|e| Error::format(&path, format!("line {}: invalid JSON: {e}", i + 1)))?;
            lines.push(JsonlLine { file: path.clone(), line: i + 1, value });
        }
        let found = lines.len() - before;
        if found != count {
            return Err(Error::format(&path, format!("the name promises {count} lines but the file has {found}")));
        }
    }
    Ok(lines)
}

/// Every item of every `.jsonl` file in `dir`.
pub(super) fn read_jsonl_dir(dir: &Path) -> Result<Vec<Item>> {
    read_jsonl_lines(dir)?.iter().map(parse_line).collect()
}

fn parse_line(line: &JsonlLine) -> Result<Item> {
    let v = &line.value;
    let string = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let image = line.path("image_path")?;
    let h_div_w =
        v.get("h_div_w").and_then(Value::as_f64).ok_or_else(|| line.error("'h_div_w' is missing or not a number"))?;
    let template =
        Template::nearest(h_div_w).ok_or_else(|| line.error(format!("'h_div_w' {h_div_w} is not a positive ratio")))?;
    let caption =
        Caption { long: line.string("long_caption")?, short: string("text"), kind: string("long_caption_type") };
    Ok(Item { image, template, caption, class: None })
}

/// Images with a same-named `.txt` caption; the others are returned as skipped, as are images
/// whose header cannot be read (their aspect ratio, and so their template, is unknown).
pub(super) fn read_image_folder(dir: &Path) -> Result<(Vec<Item>, Vec<Skipped>)> {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for image in files_with_extension(dir, &IMAGE_EXTENSIONS)? {
        let caption_path = image.with_extension("txt");
        let caption = match fs::read_to_string(&caption_path) {
            Ok(text) => text.trim().to_string(),
            Err(e) => {
                skipped.push(Skipped::new(image, format!("no caption {}: {e}", caption_path.display())));
                continue;
            }
        };
        let template = match image::image_dimensions(&image) {
            Ok((w, h)) => Template::nearest(f64::from(h) / f64::from(w)),
            Err(e) => {
                skipped.push(Skipped::new(image, format!("unreadable image: {e}")));
                continue;
            }
        };
        match template {
            Some(template) => items.push(Item {
                image,
                template,
                caption: Caption { long: caption, short: None, kind: None },
                class: None,
            }),
            None => skipped.push(Skipped::new(image, "the image has no pixels".to_string())),
        }
    }
    Ok((items, skipped))
}

/// An ImageNet-style folder: one sub-folder per class, holding its images. Classes are the
/// sub-folders' names in sorted order (torchvision's `ImageFolder`), each item captioned with
/// its class name and square (the class-conditional models train on square crops). Image
/// sizes are not read here: a million files would take minutes; a broken one is skipped when
/// it is loaded.
pub(super) fn read_class_folders(dir: &Path) -> Result<(Vec<Item>, Vec<String>)> {
    let mut classes = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            classes.push(path);
        }
    }
    classes.sort();
    let square = Template::exact(1.0).ok_or_else(|| Error::format(dir, "no square template"))?;
    let mut items = Vec::new();
    let mut names = Vec::with_capacity(classes.len());
    for (class, folder) in classes.iter().enumerate() {
        let name = folder.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
        for image in files_with_extension(folder, &IMAGE_EXTENSIONS)? {
            let caption = Caption { long: name.clone(), short: None, kind: None };
            items.push(Item { image, template: square, caption, class: Some(class) });
        }
        names.push(name);
    }
    Ok((items, names))
}
