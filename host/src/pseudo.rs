//! `tvunet pseudo-label`: confidence-filtered pseudo-labels on unlabelled slices, written as a
//! labelled folder that `tvunet train --extra-data` reads (self-training).
//!
//! The teacher is an exported model run through the device's inference code. A slice is kept
//! when little of what the teacher marks is uncertain: the share of pixels whose probability
//! lies within [`UNCERTAIN_BAND`] of the threshold, among all pixels at or above
//! `threshold - UNCERTAIN_BAND`, is at most `max_uncertain`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tvunet_device::preprocess::GraySlice;
use tvunet_device::Segmenter;

/// Half-width of the probability band around the threshold counted as uncertain.
pub const UNCERTAIN_BAND: f32 = 0.25;

/// Which slices to label and keep.
#[derive(Debug, Clone)]
pub struct PseudoOptions {
    /// Slices examined, spread evenly over the sorted (and filtered) file list.
    pub candidates: usize,
    /// Slices kept at most, the most confident first.
    pub keep: usize,
    /// Only files whose name contains this text.
    pub name_contains: Option<String>,
    /// Largest uncertain share of the marked region for a slice to be kept.
    pub max_uncertain: f64,
    /// Largest share of kept slices on which the teacher marks nothing.
    pub max_empty_share: f64,
}

/// What a pseudo-labelling pass looked at and kept.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PseudoSummary {
    pub examined: usize,
    pub refused: usize,
    pub kept: usize,
    pub kept_empty: usize,
}

struct Scored {
    path: PathBuf,
    slice: GraySlice,
    mask: Vec<u8>,
    lesion_px: usize,
    uncertain_share: f64,
}

/// Labels slices from `images` with `teacher` and writes the kept ones to `out` as
/// `images/<name>.<ext>` (the original bytes), `masks_binary/<name>.png` (0 or 255) and
/// `pseudo.csv` (every examined slice with its figures).
pub fn pseudo_label(
    teacher: &Segmenter,
    images: &Path,
    out: &Path,
    opts: &PseudoOptions,
) -> Result<PseudoSummary> {
    let files =
        crate::data::unlabelled_slices(images, opts.name_contains.as_deref(), opts.candidates)
            .with_context(|| format!("reading {}", images.display()))?;
    let threshold = teacher.meta().threshold;
    let (lo, hi) = (threshold - UNCERTAIN_BAND, threshold + UNCERTAIN_BAND);
    std::fs::create_dir_all(out.join("images"))?;
    std::fs::create_dir_all(out.join("masks_binary"))?;
    let mut csv = std::fs::File::create(out.join("pseudo.csv"))?;
    writeln!(csv, "file,lesion_px,uncertain_share,kept")?;
    let (mut scored, mut refused) = (Vec::new(), 0usize);
    for path in files {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let slice = match GraySlice::decode(&bytes).and_then(|s| s.check_contrast().map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{} skipped: {e}", path.display());
                refused += 1;
                continue;
            }
        };
        let prob = teacher.probability(&slice)?;
        let marked = prob.iter().filter(|&&p| p >= lo).count();
        let uncertain = prob.iter().filter(|&&p| p >= lo && p < hi).count();
        let mask: Vec<u8> = prob.iter().map(|&p| if p >= threshold { 255 } else { 0 }).collect();
        let lesion_px = mask.iter().filter(|&&v| v != 0).count();
        let uncertain_share = uncertain as f64 / marked.max(1) as f64;
        scored.push(Scored { path, slice, mask, lesion_px, uncertain_share });
    }
    scored.sort_by(|a, b| a.uncertain_share.total_cmp(&b.uncertain_share));
    let max_empty = (opts.max_empty_share * opts.keep as f64).floor() as usize;
    let (mut kept, mut kept_empty) = (0usize, 0usize);
    for s in &scored {
        let empty = s.lesion_px == 0;
        let keep = kept < opts.keep
            && s.uncertain_share <= opts.max_uncertain
            && (!empty || kept_empty < max_empty);
        let name = s.path.file_name().and_then(|n| n.to_str()).unwrap_or("slice");
        writeln!(csv, "{name},{},{:.4},{}", s.lesion_px, s.uncertain_share, u8::from(keep))?;
        if !keep {
            continue;
        }
        let stem = s.path.file_stem().and_then(|n| n.to_str()).unwrap_or("slice");
        std::fs::copy(&s.path, out.join("images").join(name))
            .with_context(|| format!("copying {}", s.path.display()))?;
        image::GrayImage::from_raw(s.slice.width, s.slice.height, s.mask.clone())
            .context("mask size")?
            .save(out.join("masks_binary").join(format!("{stem}.png")))
            .with_context(|| format!("writing the mask of {name}"))?;
        kept += 1;
        kept_empty += usize::from(empty);
    }
    Ok(PseudoSummary { examined: scored.len(), refused, kept, kept_empty })
}
