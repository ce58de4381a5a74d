//! The emoji data set of the default model: Twemoji graphics named and tagged by emojibase.
//!
//! Both come from the npm registry at pinned versions. Each emoji of emojibase's English data
//! (components such as skin-tone swatches and the bare regional indicators left out) is matched
//! to its Twemoji SVG, rendered onto white and given several captions built from its name,
//! keywords and group.

use std::path::{Path, PathBuf};

use infinity::runtime::io::write_atomically;
use resvg::{tiny_skia, usvg};
use serde_json::Value;

/// An npm package at a pinned version.
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
}

impl Package {
    pub fn spec(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// A folder name for the unpacked package (scoped names carry a '/').
    pub fn folder(&self) -> String {
        self.spec().trim_start_matches('@').replace('/', "-")
    }
}

/// Twemoji 15 SVGs (graphics CC-BY 4.0).
pub const TWEMOJI: Package = Package { name: "@twemoji/svg", version: "15.0.0" };
/// emojibase's names, keywords and groups (MIT).
pub const EMOJIBASE: Package = Package { name: "emojibase-data", version: "17.0.0" };

/// Written beside the data, and quoted in the README.
pub const ATTRIBUTION: &str = "\
# Emoji data set

Images: Twemoji 15 (npm `@twemoji/svg@15.0.0`), Copyright Twitter, Inc. and other contributors,
graphics licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/), rendered with
resvg onto a white background.

Captions: built from the names, keywords and groups of emojibase (npm `emojibase-data@17.0.0`),
Copyright Miles Johnson, MIT licence.
";

/// emojibase's group number of the skin-tone and hair swatches: not pictures of anything.
const COMPONENT_GROUP: u64 = 2;

/// One emoji's text.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Upper-case code points joined by '-', as emojibase writes them (e.g. `1F469-200D-1F9B1`).
    pub hexcode: String,
    pub label: String,
    pub tags: Vec<String>,
    /// The group's English name, e.g. "animals & nature".
    pub group: String,
}

impl Entry {
    /// Several phrasings, so the model learns the name rather than one sentence.
    pub fn captions(&self) -> Vec<String> {
        let label_words: Vec<&str> = self.label.split(|c: char| !c.is_alphanumeric()).collect();
        let extra: Vec<&str> = self
            .tags
            .iter()
            .map(String::as_str)
            .filter(|t| t.chars().any(char::is_alphanumeric) && !label_words.contains(t))
            .take(3)
            .collect();
        let mut captions =
            vec![self.label.clone(), format!("{} emoji", self.label), format!("{} icon: {}", self.group, self.label)];
        if !extra.is_empty() {
            captions.push(format!("{}, {}", self.label, extra.join(", ")));
        }
        captions
    }
}

/// The pictorial emojis of emojibase's `data.json`, with group names from `messages.json`;
/// errors name the file.
pub fn read_emojibase(data_file: &Path, messages: &Path) -> Result<Vec<Entry>, String> {
    let read = |path: &Path| -> Result<Value, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))
    };
    let groups: Vec<(u64, String)> = read(messages)?
        .get("groups")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: no 'groups' list", messages.display()))?
        .iter()
        .filter_map(|g| Some((g.get("order")?.as_u64()?, g.get("message")?.as_str()?.to_string())))
        .collect();
    let data = read(data_file)?;
    let list = data.as_array().ok_or_else(|| format!("{}: not a list of emojis", data_file.display()))?;
    let mut entries = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let Some(group) = e.get("group").and_then(Value::as_u64) else { continue };
        if group == COMPONENT_GROUP {
            continue;
        }
        let field = |key: &str| {
            e.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{}: emoji {i} has no '{key}'", data_file.display()))
        };
        let tags = e.get("tags").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let group_name = groups
            .iter()
            .find(|(order, _)| *order == group)
            .map(|(_, name)| name.clone())
            .ok_or_else(|| format!("{}: group {group} is not named", messages.display()))?;
        entries.push(Entry {
            hexcode: field("hexcode")?.to_string(),
            label: field("label")?.to_string(),
            tags: tags.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            group: group_name,
        });
    }
    Ok(entries)
}

/// The Twemoji SVG of an emoji, if the set has one. Twemoji names files by lower-case code
/// points without leading zeros and drops the variation selector FE0F from sequences without
/// a zero-width joiner.
pub fn twemoji_file(dir: &Path, hexcode: &str) -> Option<PathBuf> {
    let points: Vec<String> = hexcode.split('-').map(|c| c.trim_start_matches('0').to_lowercase()).collect();
    let exact = points.join("-");
    let stripped = points.iter().filter(|c| *c != "fe0f").cloned().collect::<Vec<_>>().join("-");
    [exact, stripped].into_iter().map(|name| dir.join(format!("{name}.svg"))).find(|p| p.is_file())
}

/// Renders `svg` to a `size`² PNG over white (written atomically).
pub fn render_png(svg: &Path, size: u32, out: &Path) -> Result<(), String> {
    let bytes = std::fs::read(svg).map_err(|e| format!("{}: {e}", svg.display()))?;
    let tree = usvg::Tree::from_data(&bytes, &usvg::Options::default())
        .map_err(|e| format!("{}: not a renderable SVG: {e}", svg.display()))?;
    let mut pixmap = tiny_skia::Pixmap::new(size, size).ok_or_else(|| format!("cannot allocate a {size}² image"))?;
    let view = tree.size();
    let transform = tiny_skia::Transform::from_scale(size as f32 / view.width(), size as f32 / view.height());
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    let rgb = over_white(pixmap.data());
    write_atomically(out, |w| {
        let mut encoder = png::Encoder::new(w, size, size);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        Ok(writer.finish()?)
    })
    .map_err(|e| e.to_string())
}

/// Premultiplied RGBA → RGB composited over white: c + (1 − α)·255.
fn over_white(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|px| {
            let white = 255 - u16::from(px[3]);
            [0, 1, 2].map(|c| (u16::from(px[c]) + white).min(255) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(label: &str, tags: &[&str]) -> Entry {
        Entry {
            hexcode: "1F98A".into(),
            label: label.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            group: "animals & nature".into(),
        }
    }

    #[test]
    fn captions_name_the_emoji_and_add_new_keywords_only() {
        let c = entry("fox", &["face", "fox", "animal", "?", "wild", "cunning"]).captions();
        assert_eq!(c, ["fox", "fox emoji", "animals & nature icon: fox", "fox, face, animal, wild"]);
        let c = entry("grinning face", &["face", "grin"]).captions();
        assert_eq!(c[3], "grinning face, grin");
        assert_eq!(entry("robot", &["robot"]).captions().len(), 3, "no keyword beyond the name");
    }

    #[test]
    fn compositing_over_white_keeps_opaque_and_whitens_transparent_pixels() {
        // Opaque red, fully transparent, half-covered premultiplied blue.
        let rgba = [255, 0, 0, 255, 0, 0, 0, 0, 0, 0, 128, 128];
        assert_eq!(over_white(&rgba), [255, 0, 0, 255, 255, 255, 127, 127, 255]);
    }

    #[test]
    fn twemoji_names_drop_fe0f_only_outside_zwj_sequences() {
        let dir = std::env::temp_dir().join(format!("twemoji-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["2764.svg", "1f3f3-fe0f-200d-1f308.svg", "23-20e3.svg"] {
            std::fs::write(dir.join(name), "<svg/>").unwrap();
        }
        assert_eq!(twemoji_file(&dir, "2764-FE0F"), Some(dir.join("2764.svg")));
        assert_eq!(twemoji_file(&dir, "1F3F3-FE0F-200D-1F308"), Some(dir.join("1f3f3-fe0f-200d-1f308.svg")));
        assert_eq!(twemoji_file(&dir, "0023-FE0F-20E3"), Some(dir.join("23-20e3.svg")), "no leading zeros");
        assert_eq!(twemoji_file(&dir, "1F98A"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rendering_fills_the_square_over_white() {
        let dir = std::env::temp_dir().join(format!("twemoji-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svg = dir.join("half.svg");
        // A red left half on a 36-unit view box, as Twemoji draws.
        std::fs::write(&svg, r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36"><rect width="18" height="36" fill="#f00"/></svg>"##)
            .unwrap();
        let png = dir.join("half.png");
        render_png(&svg, 32, &png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        assert_eq!(img.get_pixel(4, 16).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(28, 16).0, [255, 255, 255]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
