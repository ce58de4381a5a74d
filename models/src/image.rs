//! Image files in and out: PNG/JPEG decoding, the official preprocessing to a template's pixel
//! size (scale to cover with Lanczos, centre crop, map to [-1, 1]), 8-bit conversion by
//! truncation as the official generator does, PNG writing with text metadata (atomic), PSNR.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageReader, RgbImage};
use infinity_runtime::io::write_atomically;
use infinity_runtime::{Error, Result, Tensor};

/// The longest side an input image may declare: far beyond any pixel budget's (a 1024² budget
/// at the widest template is 2048 wide) and any camera's, and it keeps a small hostile file
/// from making the decoder allocate for a huge declared canvas (the image crate's own limit is
/// on the allocation, 512 MiB).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// The most pixels an input image may have, 64 Mi (a 48-megapixel photo passes): decoding
/// costs ~10 ns a pixel, so a few hundred bytes declaring a larger canvas could otherwise keep
/// the decoder busy for seconds (the pipeline never uses more than a 1024² crop of it).
pub const MAX_IMAGE_PIXELS: u64 = 64 << 20;

/// Decodes a PNG or JPEG file into 8-bit RGB; sides over [`MAX_IMAGE_SIDE`] and sizes over
/// [`MAX_IMAGE_PIXELS`] are refused, from the header, before decoding.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let undecodable = |e: image::ImageError| Error::format(path, format!("cannot decode the image: {e}"));
    let (w, h) = open_limited(path)?.into_dimensions().map_err(undecodable)?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_IMAGE_PIXELS {
        let msg = format!(
            "{w}×{h} is {:.0} megapixels, over the limit of {} (the largest pixel budget uses 1)",
            pixels as f64 / 1e6,
            MAX_IMAGE_PIXELS / 1_000_000
        );
        return Err(Error::format(path, msg));
    }
    Ok(open_limited(path)?.decode().map_err(undecodable)?.to_rgb8())
}

/// A reader of `path` in the format its bytes show, its sides limited to [`MAX_IMAGE_SIDE`].
fn open_limited(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let mut reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    reader.with_guessed_format().map_err(|e| Error::io(path, e))
}

/// Resizes so the image covers `(height, width)` keeping its aspect ratio (the covering side
/// is truncated to an integer, as the official loader does) and crops the centre.
pub fn fit_to(img: &RgbImage, (height, width): (usize, usize)) -> Result<RgbImage> {
    let resized = cover(img, (height, width))?;
    let (rw, rh) = (resized.width() as usize, resized.height() as usize);
    crop(&resized, ((rh - height) / 2, (rw - width) / 2), (height, width))
}

/// The image resized (Lanczos) to cover `(height, width)` at its aspect ratio: one side equal,
/// the other at least as long (truncated to an integer, as torchvision's `Resize`).
pub fn cover(img: &RgbImage, (height, width): (usize, usize)) -> Result<RgbImage> {
    let (w_img, h_img) = (img.width() as usize, img.height() as usize);
    if w_img == 0 || h_img == 0 || height == 0 || width == 0 {
        return Err(Error::invalid("image.cover", &[h_img, w_img], "empty image or target size"));
    }
    // `max` keeps float truncation (e.g. 255.99 → 255) from leaving the crop one pixel short.
    let (rw, rh) = if w_img * height <= h_img * width {
        (width, ((width as f64 * h_img as f64 / w_img as f64) as usize).max(height))
    } else {
        (((w_img as f64 / h_img as f64 * height as f64) as usize).max(width), height)
    };
    Ok(if (rw, rh) == (w_img, h_img) {
        img.clone()
    } else {
        imageops::resize(img, rw as u32, rh as u32, FilterType::Lanczos3)
    })
}

/// The `(height, width)` window of `img` at `(top, left)`.
pub fn crop(img: &RgbImage, (top, left): (usize, usize), (height, width): (usize, usize)) -> Result<RgbImage> {
    if top + height > img.height() as usize || left + width > img.width() as usize {
        return Err(Error::invalid("image.crop", &[top, left, height, width], "the window leaves the image"));
    }
    Ok(imageops::crop_imm(img, left as u32, top as u32, width as u32, height as u32).to_image())
}

/// RGB pixels → (1, 3, H, W) in [-1, 1]: t = u8/255, x = 2t − 1.
pub fn to_tensor(img: &RgbImage) -> Result<Tensor> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = f32::from(px[c]) / 255.0 * 2.0 - 1.0;
        }
    }
    Tensor::from_vec(data, &[1, 3, h, w])
}

/// Images (B, 3, H, W) in [-1, 1] → one interleaved RGB buffer per image, trunc((v + 1)/2 · 255).
pub fn to_rgb8(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    if images.rank() != 4 || images.dim(1)? != 3 {
        return Err(Error::invalid("image.to_rgb8", images.shape(), "expected images (B, 3, H, W)"));
    }
    let hwc = images.permute(&[0, 2, 3, 1])?.to_vec::<f32>()?;
    let per = hwc.len() / images.dim(0)?.max(1);
    Ok(hwc
        .chunks(per.max(1))
        .map(|img| img.iter().map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0) as u8).collect())
        .collect())
}

/// Writes an 8-bit RGB PNG with `text` as tEXt chunks (iTXt beyond Latin-1), atomically: a failed write leaves no
/// file behind.
pub fn save_png(path: &Path, width: usize, height: usize, rgb: &[u8], text: &[(&str, String)]) -> Result<()> {
    let buf = encode_png(width, height, rgb, text).map_err(|e| Error::format(path, e))?;
    write_atomically(path, |w| w.write_all(&buf))
}

/// An 8-bit RGB PNG with `text` as tEXt chunks (iTXt beyond Latin-1), in memory; the error says why it could not be
/// encoded (a pixel buffer of the wrong size, a key PNG does not allow).
pub fn encode_png(
    width: usize,
    height: usize,
    rgb: &[u8],
    text: &[(&str, String)],
) -> std::result::Result<Vec<u8>, String> {
    if rgb.len() != width * height * 3 {
        return Err(format!("{} bytes of pixels for a {width}×{height} RGB image", rgb.len()));
    }
    let encode_err = |e: png::EncodingError| format!("PNG encoding failed: {e}");
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            // tEXt holds Latin-1 only; anything else (emoji, CJK, curly quotes) goes in an
            // iTXt chunk, which is UTF-8.
            if value.chars().all(|c| u32::from(c) < 256) {
                enc.add_text_chunk((*key).to_string(), value.clone()).map_err(encode_err)?;
            } else {
                enc.add_itxt_chunk((*key).to_string(), value.clone()).map_err(encode_err)?;
            }
        }
        let mut writer = enc.write_header().map_err(encode_err)?;
        writer.write_image_data(rgb).map_err(encode_err)?;
    }
    Ok(buf)
}

/// Peak signal-to-noise ratio of two 8-bit buffers in dB (infinite when identical).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse =
        a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>() / a.len().max(1) as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Images laid out as one picture.
pub struct Grid {
    pub width: usize,
    pub height: usize,
    /// Interleaved RGB, row-major.
    pub rgb: Vec<u8>,
}

/// Images (B, 3, H, W) in [-1, 1] as torchvision's `make_grid(nrow=8, padding=0)` lays them
/// out — up to 8 side by side per row, empty cells white — converted as [`to_rgb8`] does.
pub fn image_grid(images: &Tensor) -> Result<Grid> {
    let per = to_rgb8(images)?;
    let (b, h, w) = (per.len(), images.dim(2)?, images.dim(3)?);
    let cols = b.min(8);
    let rows = b.div_ceil(8);
    let (width, height) = (cols * w, rows * h);
    let mut rgb = vec![255u8; width * height * 3];
    for (i, img) in per.iter().enumerate() {
        let (r, c) = (i / 8, i % 8);
        for y in 0..h {
            let dst = ((r * h + y) * width + c * w) * 3;
            rgb[dst..dst + w * 3].copy_from_slice(&img[y * w * 3..(y + 1) * w * 3]);
        }
    }
    Ok(Grid { width, height, rgb })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_then_centre_crop() {
        // A 4×2 (w×h) image into 2×2: scaled to 4×2 (already covering), crop columns 1..3.
        let img = RgbImage::from_fn(4, 2, |x, _| image::Rgb([x as u8 * 50, 0, 255]));
        let t = to_tensor(&fit_to(&img, (2, 2)).unwrap()).unwrap();
        let r = t.narrow(1, 0, 1).unwrap().to_vec::<f32>().unwrap();
        let expect = |v: u8| f32::from(v) / 255.0 * 2.0 - 1.0;
        assert_eq!(r, [expect(50), expect(100), expect(50), expect(100)]);
    }

    #[test]
    fn eight_bit_conversion_truncates() {
        // Channels R = [-1, 1], G = [0, 0.999], B = [-0.999, 2]; pixels interleave them.
        let t = Tensor::from_vec(vec![-1.0f32, 1.0, 0.0, 0.999, -0.999, 2.0], &[1, 3, 1, 2]).unwrap();
        assert_eq!(to_rgb8(&t).unwrap()[0], [0, 127, 0, 255, 254, 255]);
        assert!(psnr(&[1, 2], &[1, 2]).is_infinite());
    }
}
