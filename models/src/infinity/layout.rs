//! How transformer tokens map onto the VAE latent. Plainly, one token is one latent position
//! and its bits are the VAE's. With spatial patchify (the 8B, `apply_spatial_patchify`), one
//! token is a 2×2 block of positions of a patch-8 VAE: the schedules are the token grids, the
//! VAE's grids are twice as fine, and a token carries 4× the VAE's bits, token channel
//! k = 4c + 2·di + dj holding VAE channel c at position (2i + di, 2j + dj) — torch's
//! `pixel_unshuffle(·, 2)` of a channel-first latent (inverse `pixel_shuffle`). Everything in
//! the VAE's layout (residuals, code sums, their resizes) stays there; only what the
//! transformer reads or predicts is regrouped.

use infinity_runtime::{Error, Result, Tensor};

use super::InfinityConfig;
use crate::schedule::PATCH;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenLayout {
    /// One latent position per token.
    Plain,
    /// A 2×2 block of latent positions per token.
    Patchify,
}

impl TokenLayout {
    pub fn of(config: &InfinityConfig) -> TokenLayout {
        if config.spatial_patchify { TokenLayout::Patchify } else { TokenLayout::Plain }
    }

    /// The layout a VAE of `patch` serves: the schedules' tokens are [`PATCH`] pixels wide, so
    /// a patch-16 VAE's positions are tokens and a patch-8 VAE's are patchified; none else fits.
    pub fn of_vae_patch(patch: usize) -> Option<TokenLayout> {
        match patch {
            PATCH => Some(TokenLayout::Plain),
            p if 2 * p == PATCH => Some(TokenLayout::Patchify),
            _ => None,
        }
    }

    /// Latent positions per token side.
    fn side(self) -> usize {
        match self {
            TokenLayout::Plain => 1,
            TokenLayout::Patchify => 2,
        }
    }

    /// The VAE grid of a token grid.
    pub fn vae_grid(self, (h, w): (usize, usize)) -> (usize, usize) {
        (h * self.side(), w * self.side())
    }

    /// The VAE grids of a schedule's token grids.
    pub fn vae_grids(self, grids: &[(usize, usize)]) -> Vec<(usize, usize)> {
        grids.iter().map(|&g| self.vae_grid(g)).collect()
    }

    /// Bits of one token from the VAE's bits per position.
    pub fn token_bits(self, vae_bits: usize) -> usize {
        vae_bits * self.side() * self.side()
    }

    /// A channel-first latent (B, d, H, W) as the transformer's token rows (B, h·w, bits).
    pub fn tokens(self, latent: &Tensor) -> Result<Tensor> {
        let (b, d, hh, ww) = dims4("TokenLayout::tokens", latent)?;
        let (s, (h, w)) = (self.side(), self.token_grid("TokenLayout::tokens", latent, (hh, ww))?);
        if self == TokenLayout::Plain {
            return latent.permute(&[0, 2, 3, 1])?.reshape(&[b, h * w, d]);
        }
        // x[b, c, s·i + di, s·j + dj] → [b, c, i, j, di, dj] → [b, (i, j), c, (di, dj)]; two
        // rank-4 regroupings, the rank the device copies take.
        let x = regroup(latent, &[b * d * h, s, w, s], &[0, 2, 1, 3])?;
        regroup(&x, &[b, d, h * w, s * s], &[0, 2, 1, 3])?.reshape(&[b, h * w, d * s * s])
    }

    /// VAE-layout bits (B, H, W, d) as token bits (B, h, w, bits).
    pub fn bits_to_tokens(self, bits: &Tensor) -> Result<Tensor> {
        let (b, hh, ww, d) = dims4("TokenLayout::bits_to_tokens", bits)?;
        let (s, (h, w)) = (self.side(), self.token_grid("TokenLayout::bits_to_tokens", bits, (hh, ww))?);
        if self == TokenLayout::Plain {
            return Ok(bits.clone());
        }
        // [b, s·i + di, s·j + dj, c] → [b, i, j, di, dj, c] → [b, i, j, c, di, dj].
        let x = regroup(bits, &[b * h, s, w, s * d], &[0, 2, 1, 3])?;
        regroup(&x, &[b * h * w, s, s, d], &[0, 3, 1, 2])?.reshape(&[b, h, w, d * s * s])
    }

    /// Token bits (B, h, w, bits) as VAE-layout bits (B, H, W, d): the inverse of
    /// [`TokenLayout::bits_to_tokens`].
    pub fn bits_to_vae(self, bits: &Tensor) -> Result<Tensor> {
        let (b, h, w, k) = dims4("TokenLayout::bits_to_vae", bits)?;
        let s = self.side();
        let d = k / (s * s);
        if d * s * s != k {
            return Err(Error::invalid(
                "TokenLayout::bits_to_vae",
                bits.shape(),
                "the bits do not split into 2×2 blocks",
            ));
        }
        if self == TokenLayout::Plain {
            return Ok(bits.clone());
        }
        // [b, i, j, c, di, dj] → [b, i, j, di, dj, c] → [b, i, di, j, dj, c].
        let x = regroup(bits, &[b * h * w, d, s, s], &[0, 2, 3, 1])?;
        regroup(&x, &[b * h, w, s, s * d], &[0, 2, 1, 3])?.reshape(&[b, h * s, w * s, d])
    }

    /// The token grid over a VAE grid, refused unless whole tokens cover it.
    fn token_grid(self, op: &'static str, t: &Tensor, (hh, ww): (usize, usize)) -> Result<(usize, usize)> {
        let s = self.side();
        if !hh.is_multiple_of(s) || !ww.is_multiple_of(s) {
            return Err(Error::invalid(
                op,
                t.shape(),
                format!("a {hh}×{ww} grid is not a whole number of {s}×{s} tokens"),
            ));
        }
        Ok((hh / s, ww / s))
    }
}

/// `x` viewed as `view`, its axes permuted by `perm`, copied contiguous.
fn regroup(x: &Tensor, view: &[usize], perm: &[usize]) -> Result<Tensor> {
    x.reshape(view)?.permute(perm)?.contiguous()
}

fn dims4(op: &'static str, t: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match *t.shape() {
        [a, b, c, d] => Ok((a, b, c, d)),
        _ => Err(Error::invalid(op, t.shape(), "expected a rank-4 tensor")),
    }
}
