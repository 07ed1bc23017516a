//! `tvunet pseudo-label`: confidence-filtered pseudo-labels on unlabelled slices, written as a
//! labelled folder that `tvunet train --extra-data` reads (self-training).
//!
//! The teacher is an exported model run through the device's inference code. A slice is kept
//! when little of what the teacher marks is uncertain: the share of pixels whose probability
//! lies within [`UNCERTAIN_BAND`] of the threshold, among all pixels at or above
//! `threshold - UNCERTAIN_BAND`, is at most `max_uncertain`.
//!
//! With `soft`, the teacher's probability map is written too (`masks_soft/`), and training learns
//! it as it is (distillation) rather than the cut mask. With `flips`, the teacher's map is its
//! four-way flip average (the slice's input plane, its two mirror images and both together;
//! `FlipAverage::FourWay`) whatever its file asks; without, the teacher infers as its file asks.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tvunet_device::preprocess::{FlipAverage, GraySlice};
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
    /// Also write the teacher's probability map (`masks_soft/<name>.png`, 0..255).
    pub soft: bool,
    /// Average the teacher over the four flips of each slice.
    pub flips: bool,
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
    prob: Vec<f32>,
    lesion_px: usize,
    uncertain_share: f64,
}

/// Labels slices from `images` with `teacher` and writes the kept ones to `out` as
/// `images/<name>.<ext>` (the original bytes), `masks_binary/<name>.png` (0 or 255) and
/// `pseudo.csv` (every examined slice with its figures); with `soft`, also
/// `masks_soft/<name>.png`, the teacher's probability times 255.
pub fn pseudo_label(
    teacher: &Segmenter,
    images: &Path,
    out: &Path,
    opts: &PseudoOptions,
) -> Result<PseudoSummary> {
    check_options(opts)?;
    for part in ["images", "masks_binary", "masks_soft"] {
        let dir = out.join(part);
        if dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
            bail!(
                "{} already holds a labelled set ({part}/ is not empty); write to a new folder, \
                 or remove the old one, so that no slice or map of an earlier run is mixed in",
                out.display()
            );
        }
    }
    let files =
        crate::data::unlabelled_slices(images, opts.name_contains.as_deref(), opts.candidates)
            .with_context(|| format!("reading {}", images.display()))?;
    let threshold = teacher.meta().threshold;
    let (lo, hi) = (threshold - UNCERTAIN_BAND, threshold + UNCERTAIN_BAND);
    std::fs::create_dir_all(out.join("images"))?;
    std::fs::create_dir_all(out.join("masks_binary"))?;
    if opts.soft {
        std::fs::create_dir_all(out.join("masks_soft"))?;
    }
    let mut csv = std::fs::File::create(out.join("pseudo.csv"))?;
    writeln!(csv, "file,lesion_px,uncertain_share,kept")?;
    let (mut scored, mut refused) = (Vec::new(), 0usize);
    for path in files {
        let Some(slice) = crate::data::read_unlabelled(&path)? else {
            refused += 1;
            continue;
        };
        // Without `flips`, the teacher infers as its file asks (its own flip average).
        let prob = if opts.flips {
            teacher.probability_with(&slice, FlipAverage::FourWay)?
        } else {
            teacher.probability(&slice)?
        };
        let marked = prob.iter().filter(|&&p| p >= lo).count();
        let uncertain = prob.iter().filter(|&&p| p >= lo && p < hi).count();
        let mask: Vec<u8> = prob.iter().map(|&p| if p >= threshold { 255 } else { 0 }).collect();
        let lesion_px = mask.iter().filter(|&&v| v != 0).count();
        let uncertain_share = uncertain as f64 / marked.max(1) as f64;
        let prob = if opts.soft { prob } else { Vec::new() };
        scored.push(Scored { path, slice, mask, prob, lesion_px, uncertain_share });
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
        if opts.soft {
            let levels = s.prob.iter().map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8);
            image::GrayImage::from_raw(s.slice.width, s.slice.height, levels.collect())
                .context("probability map size")?
                .save(out.join("masks_soft").join(format!("{stem}.png")))
                .with_context(|| format!("writing the probability map of {name}"))?;
        }
        kept += 1;
        kept_empty += usize::from(empty);
    }
    if kept == 0 {
        let least = scored.first().map_or(f64::NAN, |s| s.uncertain_share);
        bail!(
            "kept none of {} examined slices: the least uncertain had an uncertain share of \
             {least:.2}, above --max-uncertain {}; {} lists every slice",
            scored.len(),
            opts.max_uncertain,
            out.join("pseudo.csv").display()
        );
    }
    Ok(PseudoSummary { examined: scored.len(), refused, kept, kept_empty })
}

/// Refuses options that cannot select anything sensible, naming the value.
fn check_options(opts: &PseudoOptions) -> Result<()> {
    if opts.candidates == 0 || opts.keep == 0 {
        bail!("--candidates {} and --keep {} must both be at least 1", opts.candidates, opts.keep);
    }
    for (name, value) in
        [("--max-uncertain", opts.max_uncertain), ("--max-empty-share", opts.max_empty_share)]
    {
        if !(0.0..=1.0).contains(&value) {
            bail!("{name} {value} is a share and must lie in 0..1");
        }
    }
    Ok(())
}
