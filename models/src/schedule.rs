//! Scale schedules: the aspect-ratio templates, the 13 latent grids of each, the pixel-budget
//! presets that take a prefix of them, and nearest-template selection — exactly the official
//! `dynamic_resolution` table. Grids are (h, w) in latent tokens (VAE stride 16).

use std::fmt;
use std::str::FromStr;

/// Latent grids of the templates with h/w ≥ 1, keyed by the template ratio. Templates below 1
/// are the transposes of these.
const TALL_GRIDS: [(f64, [(usize, usize); 13]); 8] = [
    (
        1.0,
        [
            (1, 1),
            (2, 2),
            (4, 4),
            (6, 6),
            (8, 8),
            (12, 12),
            (16, 16),
            (20, 20),
            (24, 24),
            (32, 32),
            (40, 40),
            (48, 48),
            (64, 64),
        ],
    ),
    (
        1.25,
        [
            (1, 1),
            (2, 2),
            (3, 3),
            (5, 4),
            (10, 8),
            (15, 12),
            (20, 16),
            (25, 20),
            (30, 24),
            (35, 28),
            (45, 36),
            (55, 44),
            (70, 56),
        ],
    ),
    (
        1.333,
        [
            (1, 1),
            (2, 2),
            (4, 3),
            (8, 6),
            (12, 9),
            (16, 12),
            (20, 15),
            (24, 18),
            (28, 21),
            (36, 27),
            (48, 36),
            (60, 45),
            (72, 54),
        ],
    ),
    (
        1.5,
        [
            (1, 1),
            (2, 2),
            (3, 2),
            (6, 4),
            (9, 6),
            (15, 10),
            (21, 14),
            (27, 18),
            (33, 22),
            (39, 26),
            (48, 32),
            (63, 42),
            (78, 52),
        ],
    ),
    (
        1.75,
        [
            (1, 1),
            (2, 2),
            (3, 3),
            (7, 4),
            (11, 6),
            (14, 8),
            (21, 12),
            (28, 16),
            (35, 20),
            (42, 24),
            (56, 32),
            (70, 40),
            (84, 48),
        ],
    ),
    (
        2.0,
        [
            (1, 1),
            (2, 2),
            (4, 2),
            (6, 3),
            (10, 5),
            (16, 8),
            (22, 11),
            (30, 15),
            (38, 19),
            (46, 23),
            (60, 30),
            (74, 37),
            (90, 45),
        ],
    ),
    (
        2.5,
        [
            (1, 1),
            (2, 2),
            (5, 2),
            (10, 4),
            (15, 6),
            (20, 8),
            (25, 10),
            (30, 12),
            (40, 16),
            (50, 20),
            (65, 26),
            (80, 32),
            (100, 40),
        ],
    ),
    (
        3.0,
        [
            (1, 1),
            (2, 2),
            (6, 2),
            (9, 3),
            (15, 5),
            (21, 7),
            (27, 9),
            (36, 12),
            (45, 15),
            (54, 18),
            (72, 24),
            (90, 30),
            (111, 37),
        ],
    ),
];

/// The official template order; the first of equally near templates wins.
pub const TEMPLATES: [f64; 15] = [1.0, 1.25, 0.8, 1.333, 0.75, 1.5, 0.666, 1.75, 0.571, 2.0, 0.5, 2.5, 0.4, 3.0, 0.333];

/// Latent stride of the image VAEs: pixel size = last grid × 16.
pub const PATCH: usize = 16;

/// Pixel budget presets; each uses a prefix of a template's 13 grids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelBudget {
    P006M,
    P025M,
    P060M,
    P1M,
}

impl PixelBudget {
    pub const ALL: [PixelBudget; 4] = [PixelBudget::P006M, PixelBudget::P025M, PixelBudget::P060M, PixelBudget::P1M];

    pub fn num_scales(self) -> usize {
        match self {
            PixelBudget::P006M => 7,
            PixelBudget::P025M => 10,
            PixelBudget::P060M => 12,
            PixelBudget::P1M => 13,
        }
    }

    /// The budget whose square image's area is nearest to `pixels` (on a log scale: 700² is
    /// nearer 0.60M than 0.25M).
    pub fn nearest(pixels: f64) -> PixelBudget {
        let area = |pn: PixelBudget| {
            let (h, w) = Template::nearest(1.0).map_or((1, 1), |t| t.schedule(pn).pixel_size());
            (h * w) as f64
        };
        let distance = |pn: PixelBudget| (pixels.max(1.0).ln() - area(pn).ln()).abs();
        PixelBudget::ALL.into_iter().min_by(|&a, &b| distance(a).total_cmp(&distance(b))).unwrap_or(PixelBudget::P1M)
    }

    pub fn name(self) -> &'static str {
        match self {
            PixelBudget::P006M => "0.06M",
            PixelBudget::P025M => "0.25M",
            PixelBudget::P060M => "0.60M",
            PixelBudget::P1M => "1M",
        }
    }
}

impl fmt::Display for PixelBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PixelBudget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        PixelBudget::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown pixel budget '{s}' (expected 0.06M, 0.25M, 0.60M or 1M)"))
    }
}

/// One aspect-ratio template (height / width), as listed in `TEMPLATES`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Template(f64);

impl Template {
    /// The template whose ratio is nearest to `h_div_w` (ties: earliest in `TEMPLATES`).
    /// Returns `None` for a ratio that is not finite and positive.
    pub fn nearest(h_div_w: f64) -> Option<Template> {
        if !(h_div_w.is_finite() && h_div_w > 0.0) {
            return None;
        }
        let mut best = TEMPLATES[0];
        for &t in &TEMPLATES[1..] {
            if (h_div_w - t).abs() < (h_div_w - best).abs() {
                best = t;
            }
        }
        Some(Template(best))
    }

    /// The template with exactly this key (e.g. 0.666), if it is one.
    pub fn exact(ratio: f64) -> Option<Template> {
        TEMPLATES.iter().find(|&&t| t == ratio).map(|&t| Template(t))
    }

    pub fn ratio(self) -> f64 {
        self.0
    }

    /// All 13 latent grids (the 1M schedule).
    pub fn grids(self) -> [(usize, usize); 13] {
        let tall = |r: f64| TALL_GRIDS.iter().find(|(t, _)| *t == r).map(|(_, g)| *g);
        match tall(self.0) {
            Some(g) => g,
            None => {
                // Below 1 the key is int(1000 / ratio_above) / 1000 of the transposed template.
                let above = TALL_GRIDS
                    .iter()
                    .find(|(t, _)| ((1000.0 / t).floor() / 1000.0) == self.0)
                    .map(|(_, g)| *g)
                    .expect("every template below 1 transposes one above 1");
                above.map(|(h, w)| (w, h))
            }
        }
    }

    pub fn schedule(self, pn: PixelBudget) -> Schedule {
        Schedule { grids: self.grids()[..pn.num_scales()].to_vec(), full_grid: self.grids()[12] }
    }
}

/// The grids of one generation, coarse to fine, and the final grid of the template's 1M
/// schedule (RoPE positions are normalised to it at every pixel budget).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub grids: Vec<(usize, usize)>,
    pub full_grid: (usize, usize),
}

impl Schedule {
    pub fn num_scales(&self) -> usize {
        self.grids.len()
    }

    /// Final latent grid (h, w).
    pub fn last(&self) -> (usize, usize) {
        *self.grids.last().expect("a schedule has at least one scale")
    }

    /// Output image size (H, W) in pixels.
    pub fn pixel_size(&self) -> (usize, usize) {
        let (h, w) = self.last();
        (h * PATCH, w * PATCH)
    }

    /// Tokens per scale.
    pub fn tokens(&self) -> impl Iterator<Item = usize> + '_ {
        self.grids.iter().map(|&(h, w)| h * w)
    }

    /// Total sequence length over all scales.
    pub fn seq_len(&self) -> usize {
        self.tokens().sum()
    }

    /// Index of the first token of each scale, plus the total at the end.
    pub fn offsets(&self) -> Vec<usize> {
        let mut out = vec![0];
        for n in self.tokens() {
            out.push(out.last().copied().unwrap_or(0) + n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_template_ties_go_to_list_order() {
        // 1.125 is equally far from 1.0 and 1.25: 1.0 comes first.
        assert_eq!(Template::nearest(1.125).unwrap().ratio(), 1.0);
        assert_eq!(Template::nearest(0.52).unwrap().ratio(), 0.5);
        assert!(Template::nearest(0.0).is_none() && Template::nearest(f64::NAN).is_none());
    }

    #[test]
    fn release_schedule() {
        let s = Template::exact(1.0).unwrap().schedule(PixelBudget::P1M);
        assert_eq!(s.seq_len(), 10521);
        assert_eq!(s.offsets()[12], 6425);
        assert_eq!(s.pixel_size(), (1024, 1024));
    }
}
