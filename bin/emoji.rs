//! The emoji data set of the default model: several renderings of the same emojis (Twemoji,
//! Noto, Fluent flat, modern and 3D), named and tagged by emojibase.
//!
//! All come from the npm registry at pinned versions. Each emoji of emojibase's English data
//! (components such as skin-tone swatches and the bare regional indicators left out) is matched
//! to each style's image, rendered or scaled onto white and given several captions built from
//! its name, keywords, group and the style.

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

/// emojibase's names, keywords and groups (MIT).
pub const EMOJIBASE: Package = Package { name: "emojibase-data", version: "17.0.0" };

/// One rendering of the emojis: where its images are and whose they are.
pub struct Style {
    /// How captions name it (`red apple, noto style`).
    pub name: &'static str,
    /// Its folder under `images/`.
    pub folder: &'static str,
    pub package: Package,
    /// The images' folder inside the package, and their extension.
    pub images: &'static str,
    pub extension: &'static str,
    /// Its line in ATTRIBUTION.md.
    pub credit: &'static str,
}

/// Every style, Twemoji first (the set the default model was first trained on). OpenMoji is
/// left out: its CC BY-SA licence would bind the trained weights to share-alike terms.
pub const STYLES: [Style; 5] = [
    Style {
        name: "twemoji",
        folder: "twemoji",
        package: Package { name: "@twemoji/svg", version: "15.0.0" },
        images: "",
        extension: "svg",
        credit: "Twemoji 15 (npm `@twemoji/svg@15.0.0`, SVG), Copyright Twitter, Inc. and other contributors, \
                 graphics licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/).",
    },
    Style {
        name: "noto",
        folder: "noto",
        package: Package { name: "emoji-datasource-google", version: "16.0.0" },
        images: "img/google/64",
        extension: "png",
        credit: "Noto Emoji (npm `emoji-datasource-google@16.0.0`, 64×64 PNG, upscaled), Copyright Google Inc., \
                 Apache License 2.0 (https://www.apache.org/licenses/LICENSE-2.0).",
    },
    Style {
        name: "fluent flat",
        folder: "fluent-flat",
        package: Package { name: "@lobehub/fluent-emoji-flat", version: "1.1.0" },
        images: "assets",
        extension: "svg",
        credit: "Fluent Emoji, flat style (npm `@lobehub/fluent-emoji-flat@1.1.0`, SVG), Copyright Microsoft \
                 Corporation, MIT licence.",
    },
    Style {
        name: "fluent modern",
        folder: "fluent-modern",
        package: Package { name: "@lobehub/fluent-emoji-modern", version: "1.0.0" },
        images: "assets",
        extension: "svg",
        credit: "Fluent Emoji, colour style with gradients (npm `@lobehub/fluent-emoji-modern@1.0.0`, SVG), \
                 Copyright Microsoft Corporation, MIT licence.",
    },
    Style {
        name: "fluent 3d",
        folder: "fluent-3d",
        package: Package { name: "@lobehub/fluent-emoji-3d", version: "1.1.0" },
        images: "assets",
        extension: "webp",
        credit: "Fluent Emoji, 3D style (npm `@lobehub/fluent-emoji-3d@1.1.0`, 256×256 WebP), Copyright Microsoft \
                 Corporation, MIT licence.",
    },
];

/// Written beside the data and the model, and quoted in the README.
pub fn attribution(styles: &[&Style]) -> String {
    let images: String = styles.iter().map(|s| format!("- {}\n", s.credit)).collect();
    format!(
        "# Emoji data set\n\nImages, each rendered or scaled to a square over a white background:\n\n{images}\n\
         Captions: built from the names, keywords and groups of emojibase (npm `{}`),\n\
         Copyright Miles Johnson, MIT licence.\n",
        EMOJIBASE.spec()
    )
}

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
    /// Several phrasings, so the model learns the name rather than one sentence, and one that
    /// names the style; the plain ones are shared by every style's image.
    pub fn captions(&self, style: &str) -> Vec<String> {
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
        captions.push(format!("{}, {style} style", self.label));
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

/// An emoji's image in a package folder, if it has one. Packages name files by lower-case code
/// points joined by '-', but disagree with emojibase and each other on the details: leading
/// zeros (`0023-…` or `23-…`, some packages both), and the variation selector FE0F — some drop
/// it (Twemoji, outside zero-width joiner sequences), some write the fully qualified form where
/// emojibase omits it (Noto and Fluent: `263a-fe0f` for emojibase's `263A`). So each spelling is
/// tried: exact, with every FE0F removed, and with FE0F after the first code point, each
/// without and with the zeros.
pub fn image_file(dir: &Path, hexcode: &str, extension: &str) -> Option<PathBuf> {
    let points: Vec<String> = hexcode.split('-').map(|c| c.trim_start_matches('0').to_lowercase()).collect();
    let stripped: Vec<String> = points.iter().filter(|c| *c != "fe0f").cloned().collect();
    let mut qualified = stripped.clone();
    qualified.insert(1.min(qualified.len()), "fe0f".to_string());
    [points, stripped, qualified]
        .into_iter()
        .flat_map(|name| [name.join("-"), name.iter().map(|c| format!("{c:0>4}")).collect::<Vec<_>>().join("-")])
        .map(|name| dir.join(format!("{name}.{extension}")))
        .find(|p| p.is_file())
}

/// Renders an SVG, or scales a raster image (PNG, WebP; Catmull-Rom), to a `size`² RGB PNG
/// over white, written atomically; errors name the file.
pub fn render_png(source: &Path, size: u32, out: &Path) -> Result<(), String> {
    let rgb = if source.extension().is_some_and(|e| e == "svg") {
        rasterize_svg(source, size)?
    } else {
        let image = image::open(source).map_err(|e| format!("{}: not a readable image: {e}", source.display()))?;
        let mut rgba = image.to_rgba8();
        // Composited at the source's size, then scaled: scaling straight alpha would darken edges.
        premultiply(&mut rgba);
        let flat = image::RgbImage::from_raw(rgba.width(), rgba.height(), over_white(&rgba))
            .ok_or_else(|| format!("{}: inconsistent image size", source.display()))?;
        image::imageops::resize(&flat, size, size, image::imageops::FilterType::CatmullRom).into_raw()
    };
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

fn rasterize_svg(svg: &Path, size: u32) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(svg).map_err(|e| format!("{}: {e}", svg.display()))?;
    let tree = usvg::Tree::from_data(&bytes, &usvg::Options::default())
        .map_err(|e| format!("{}: not a renderable SVG: {e}", svg.display()))?;
    let mut pixmap = tiny_skia::Pixmap::new(size, size).ok_or_else(|| format!("cannot allocate a {size}² image"))?;
    let view = tree.size();
    let transform = tiny_skia::Transform::from_scale(size as f32 / view.width(), size as f32 / view.height());
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    Ok(over_white(pixmap.data()))
}

/// Straight RGBA (as decoders give it) → premultiplied, in place.
fn premultiply(rgba: &mut [u8]) {
    for px in rgba.chunks_exact_mut(4) {
        let alpha = u16::from(px[3]);
        for c in &mut px[..3] {
            *c = ((u16::from(*c) * alpha + 127) / 255) as u8;
        }
    }
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
        let c = entry("fox", &["face", "fox", "animal", "?", "wild", "cunning"]).captions("noto");
        assert_eq!(c, ["fox", "fox emoji", "animals & nature icon: fox", "fox, face, animal, wild", "fox, noto style"]);
        let c = entry("grinning face", &["face", "grin"]).captions("fluent 3d");
        assert_eq!(c[3], "grinning face, grin");
        assert_eq!(c[4], "grinning face, fluent 3d style");
        assert_eq!(entry("robot", &["robot"]).captions("twemoji").len(), 4, "no keyword beyond the name");
    }

    #[test]
    fn compositing_over_white_keeps_opaque_and_whitens_transparent_pixels() {
        // Opaque red, fully transparent, half-covered premultiplied blue.
        let rgba = [255, 0, 0, 255, 0, 0, 0, 0, 0, 0, 128, 128];
        assert_eq!(over_white(&rgba), [255, 0, 0, 255, 255, 255, 127, 127, 255]);
    }

    #[test]
    fn file_names_follow_each_packages_fe0f_and_padding() {
        let dir = std::env::temp_dir().join(format!("emoji-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["2764.svg", "1f3f3-fe0f-200d-1f308.svg", "23-20e3.svg", "0023-fe0f-20e3.png", "00ae-fe0f.png"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        assert_eq!(image_file(&dir, "2764-FE0F", "svg"), Some(dir.join("2764.svg")));
        assert_eq!(image_file(&dir, "1F3F3-FE0F-200D-1F308", "svg"), Some(dir.join("1f3f3-fe0f-200d-1f308.svg")));
        assert_eq!(image_file(&dir, "0023-FE0F-20E3", "svg"), Some(dir.join("23-20e3.svg")), "no leading zeros");
        assert_eq!(image_file(&dir, "1F98A", "svg"), None);
        assert_eq!(image_file(&dir, "0023-FE0F-20E3", "png"), Some(dir.join("0023-fe0f-20e3.png")), "zeros");
        assert_eq!(image_file(&dir, "00AE-FE0F", "png"), Some(dir.join("00ae-fe0f.png")));
        assert_eq!(image_file(&dir, "2764-FE0F", "png"), None, "another extension");
        std::fs::write(dir.join("263a-fe0f.png"), "").unwrap();
        assert_eq!(image_file(&dir, "263A", "png"), Some(dir.join("263a-fe0f.png")), "qualified by the package");
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

    #[test]
    fn raster_images_are_composited_then_scaled() {
        let dir = std::env::temp_dir().join(format!("emoji-raster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 8×8: an opaque green left half, a transparent (black, α = 0) right half.
        let small = image::RgbaImage::from_fn(8, 8, |x, _| image::Rgba(if x < 4 { [0, 200, 0, 255] } else { [0; 4] }));
        let source = dir.join("small.png");
        small.save(&source).unwrap();
        let out = dir.join("big.png");
        render_png(&source, 32, &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        assert_eq!(img.get_pixel(2, 16).0, [0, 200, 0]);
        assert_eq!(img.get_pixel(30, 16).0, [255, 255, 255], "transparent black is white, not grey");
        assert!(render_png(&dir.join("missing.webp"), 32, &out).unwrap_err().contains("missing.webp"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
