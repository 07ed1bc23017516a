//! `tvunet pretext`: a restoration task on unlabelled slices, for pre-training the network
//! before it sees a lesion mask (self-supervised; no label is used).
//!
//! Each slice gets a few rectangles painted over with grey noise; the target is the whole
//! slice as it was, its grey values stretched between their 1st and 99th percentile. To fill
//! a rectangle the network has to know what lies there from what surrounds it (lung, vessel,
//! heart, chest wall), which is the context a lesion model lacks when it marks soft tissue.
//! The output is a folder `tvunet train --data` reads: the painted slice in `images/`, the
//! target in `masks_soft/` (learned as it is, like a teacher's map) and, for the training
//! log's figures, the target cut at half in `masks_binary/`. A run on it is then the
//! `--init-from` of the lesion recipe.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tvunet_device::preprocess::{GraySlice, CONTRAST_TAIL};

/// How many rectangles to paint over and how large, as shares of the slice's sides.
#[derive(Debug, Clone)]
pub struct PretextOptions {
    /// Slices written, spread evenly over the sorted file list.
    pub count: usize,
    /// Fewest and most rectangles per slice.
    pub rectangles: (usize, usize),
    /// Smallest and largest rectangle side, as a share of the slice's width or height.
    pub side_share: (f64, f64),
    /// Seed of the rectangles and their noise.
    pub seed: u64,
}

impl Default for PretextOptions {
    fn default() -> Self {
        Self { count: 1600, rectangles: (3, 6), side_share: (0.08, 0.22), seed: 42 }
    }
}

/// A slice with rectangles painted over, and what to restore.
#[derive(Debug, Clone, PartialEq)]
pub struct PretextPair {
    /// The slice with rectangles of grey noise.
    pub painted: GraySlice,
    /// The original grey values stretched from the 1st..99th percentile to 0..255.
    pub target: Vec<u8>,
}

/// Grey levels at the [`CONTRAST_TAIL`] and `1 - CONTRAST_TAIL` quantiles of a slice.
fn tails(pixels: &[u8]) -> (u8, u8) {
    let mut counts = [0usize; 256];
    for &p in pixels {
        counts[usize::from(p)] += 1;
    }
    let level_at = |share: f64| {
        let want = (share * pixels.len() as f64).ceil().max(1.0) as usize;
        let mut seen = 0;
        for (level, &c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return level as u8;
            }
        }
        255
    };
    (level_at(CONTRAST_TAIL), level_at(1.0 - CONTRAST_TAIL))
}

/// Paints `opts.rectangles` rectangles of uniform grey noise (between the slice's 1st and 99th
/// percentile) over `slice` and pairs it with the stretched original.
pub fn pretext_pair(slice: &GraySlice, opts: &PretextOptions, rng: &mut StdRng) -> PretextPair {
    let (low, high) = tails(&slice.pixels);
    let span = f32::from(high.saturating_sub(low)).max(1.0);
    let target = slice
        .pixels
        .iter()
        .map(|&p| ((f32::from(p) - f32::from(low)) / span * 255.0).clamp(0.0, 255.0).round() as u8)
        .collect();
    let mut painted = slice.clone();
    let (w, h) = (slice.width as usize, slice.height as usize);
    let n = rng.random_range(opts.rectangles.0..=opts.rectangles.1);
    for _ in 0..n {
        let rw = ((rng.random_range(opts.side_share.0..=opts.side_share.1) * w as f64) as usize)
            .clamp(1, w);
        let rh = ((rng.random_range(opts.side_share.0..=opts.side_share.1) * h as f64) as usize)
            .clamp(1, h);
        let (x0, y0) = (rng.random_range(0..=w - rw), rng.random_range(0..=h - rh));
        for y in y0..y0 + rh {
            for x in x0..x0 + rw {
                painted.pixels[y * w + x] = rng.random_range(low..=high.max(low));
            }
        }
    }
    PretextPair { painted, target }
}

/// Writes the pretext set of the slices in `images` to `out` (see the module docs); returns
/// how many slices were written and how many were refused (unreadable or without contrast).
///
/// # Errors
/// When `out` already holds slices, an option is out of range, or a file cannot be written.
pub fn write_pretext(images: &Path, out: &Path, opts: &PretextOptions) -> Result<(usize, usize)> {
    let (lo, hi) = opts.rectangles;
    if lo > hi || hi == 0 {
        bail!("rectangles {lo}..={hi}: need at least one, the fewest no more than the most");
    }
    let (s0, s1) = opts.side_share;
    if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
        bail!("rectangle side share {s0}..={s1} must lie in (0, 1], smallest first");
    }
    if out.join("images").read_dir().is_ok_and(|mut e| e.next().is_some()) {
        bail!("{} already holds slices; write to a new folder", out.display());
    }
    let files = crate::data::unlabelled_slices(images, None, opts.count)
        .with_context(|| format!("reading {}", images.display()))?;
    for part in ["images", "masks_soft", "masks_binary"] {
        std::fs::create_dir_all(out.join(part))?;
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let (mut written, mut refused) = (0usize, 0usize);
    for path in files {
        let Some(slice) = crate::data::read_unlabelled(&path)? else {
            refused += 1;
            continue;
        };
        let pair = pretext_pair(&slice, opts, &mut rng);
        let stem = path.file_stem().and_then(|n| n.to_str()).unwrap_or("slice");
        let (w, h) = (slice.width, slice.height);
        let cut: Vec<u8> = pair.target.iter().map(|&v| if v >= 128 { 255 } else { 0 }).collect();
        for (part, pixels) in
            [("images", pair.painted.pixels), ("masks_soft", pair.target), ("masks_binary", cut)]
        {
            let file = out.join(part).join(format!("{stem}.png"));
            image::GrayImage::from_raw(w, h, pixels)
                .context("slice size")?
                .save(&file)
                .with_context(|| format!("writing {}", file.display()))?;
        }
        written += 1;
    }
    if written == 0 {
        bail!("{}: none of the slices could be read ({refused} refused)", images.display());
    }
    Ok((written, refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside the painted rectangles the slice is untouched; the target stretches the grey
    /// values so that the 1st and 99th percentiles land on 0 and 255.
    #[test]
    fn rectangles_are_painted_and_the_target_is_the_stretched_original() {
        let (w, h) = (64u32, 48u32);
        let pixels: Vec<u8> = (0..w * h).map(|i| 40 + (i % w) as u8 * 2).collect();
        let slice = GraySlice::new(w, h, pixels.clone()).unwrap();
        let opts = PretextOptions { rectangles: (2, 2), ..Default::default() };
        let pair = pretext_pair(&slice, &opts, &mut StdRng::seed_from_u64(7));
        let changed = pair.painted.pixels.iter().zip(&pixels).filter(|(a, b)| a != b).count();
        let largest = (0.22 * 64.0) as usize * (0.22 * 48.0) as usize * 2;
        assert!(changed > 0 && changed <= largest, "{changed} pixels changed");
        let (low, high) = tails(&pixels);
        assert_eq!((low, high), (40, 166));
        for (&p, &t) in pixels.iter().zip(&pair.target) {
            let want = ((f32::from(p) - 40.0) / 126.0 * 255.0).clamp(0.0, 255.0).round() as u8;
            assert_eq!(t, want);
        }
    }

    /// The same seed paints the same rectangles.
    #[test]
    fn a_seed_gives_the_same_pair() {
        let slice = GraySlice::new(32, 32, (0..1024).map(|i| (i % 200) as u8).collect()).unwrap();
        let opts = PretextOptions::default();
        let a = pretext_pair(&slice, &opts, &mut StdRng::seed_from_u64(1));
        let b = pretext_pair(&slice, &opts, &mut StdRng::seed_from_u64(1));
        assert_eq!(a, b);
    }
}
