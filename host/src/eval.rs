//! `tvunet eval`: a model file judged through the device's own inference code on a labelled
//! folder: pooled and per-slice figures, threshold sweep, precision-recall curve, average
//! precision and bootstrap confidence intervals.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tvunet_device::preprocess::FlipAverage;
use tvunet_device::Segmenter;

use crate::data::LabelledSlice;
use crate::metrics::Counts;
use crate::plot;

/// Thresholds of the sweep table (the paper's Table V uses 0.1 to 0.8).
pub const SWEEP: [f32; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Figures at one threshold.
#[derive(Debug, Clone, Serialize)]
pub struct AtThreshold {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
    pub specificity: f64,
    /// Dice over all pixels of all slices.
    pub dice_pooled: f64,
    /// Mean of the per-slice Dice.
    pub dice_mean_per_slice: f64,
    /// IoU of the lesion class, pooled.
    pub iou: f64,
    /// Mean over slices of (lesion IoU + background IoU) / 2; empty vs empty counts 1.
    pub miou: f64,
}

/// A 95 % bootstrap interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The whole evaluation, written as `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub model_sha256: String,
    /// The engine that ran it (`tract`, `tract-f16`, `ort`).
    pub engine: String,
    pub data: String,
    pub slices: usize,
    /// The model's default threshold.
    pub threshold: f32,
    /// Mirror images averaged into each probability map (`none`: the network's own map).
    pub flip_average: String,
    /// Figures at the default threshold.
    pub at_default: AtThreshold,
    /// 95 % bootstrap intervals over slices (1000 resamples) at the default threshold.
    pub dice_pooled_ci95: Interval,
    pub dice_mean_per_slice_ci95: Interval,
    /// Area under the pooled precision-recall curve (step rule over 101 thresholds).
    pub average_precision: f64,
    pub sweep: Vec<AtThreshold>,
    /// Per-slice Dice at the default threshold, by slice id.
    pub per_slice: Vec<(String, f64)>,
}

fn at(threshold: f32, per_slice: &[Counts]) -> AtThreshold {
    let pooled = per_slice.iter().fold(Counts::default(), |a, c| a.merge(*c));
    let n = per_slice.len().max(1) as f64;
    AtThreshold {
        threshold,
        precision: pooled.precision(),
        recall: pooled.recall(),
        specificity: pooled.specificity(),
        dice_pooled: pooled.dice(),
        dice_mean_per_slice: per_slice.iter().map(Counts::dice).sum::<f64>() / n,
        iou: pooled.iou(),
        miou: per_slice.iter().map(Counts::miou).sum::<f64>() / n,
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn bootstrap(per_slice: &[Counts], stat: impl Fn(&[Counts]) -> f64) -> Interval {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2020);
    let mut values: Vec<f64> = (0..1000)
        .map(|_| {
            let sample: Vec<Counts> = (0..per_slice.len())
                .map(|_| per_slice[rng.random_range(0..per_slice.len())])
                .collect();
            stat(&sample)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    Interval { low: percentile(&values, 0.025), high: percentile(&values, 0.975) }
}

/// Runs `model` with `engine` (and `flip_average` in place of the model's own, if given) over
/// `slices` and writes `report.json`, `sweep.csv` and `pr.png` into `out`.
pub fn evaluate(
    model: &Path,
    engine: tvunet_device::Engine,
    flip_average: Option<FlipAverage>,
    slices: &[LabelledSlice],
    data: &Path,
    out: &Path,
) -> Result<Report> {
    anyhow::ensure!(!slices.is_empty(), "no slices to evaluate in {}", data.display());
    let mut segmenter = Segmenter::load_with(model, engine)?;
    if let Some(f) = flip_average {
        segmenter.set_flip_average(f);
    }
    let probs: Vec<Vec<f32>> = slices
        .iter()
        .map(|s| segmenter.probability(&s.image))
        .collect::<Result<_, _>>()
        .context("running the model")?;
    let counts_at = |t: f32| -> Vec<Counts> {
        probs.iter().zip(slices).map(|(p, s)| Counts::from_probability(p, &s.mask, t)).collect()
    };
    let threshold = segmenter.meta().threshold;
    let default_counts = counts_at(threshold);
    let sweep: Vec<AtThreshold> = SWEEP.iter().map(|&t| at(t, &counts_at(t))).collect();

    // Precision-recall curve from pooled counts at 101 thresholds.
    let mut curve: Vec<(f64, f64)> = (0..=100)
        .map(|k| {
            let c = counts_at(k as f32 / 100.0).iter().fold(Counts::default(), |a, c| a.merge(*c));
            (c.recall(), c.precision())
        })
        .collect();
    curve.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut average_precision = 0.0;
    let mut previous_recall = 0.0;
    for &(r, _) in &curve {
        // Step rule: each recall gain is weighted by the best precision reachable at or above it.
        let p = curve.iter().filter(|c| c.0 >= r).map(|c| c.1).fold(0.0, f64::max);
        average_precision += (r - previous_recall) * p;
        previous_recall = r;
    }

    let report = Report {
        model: model.display().to_string(),
        model_sha256: segmenter.sha256().to_string(),
        engine: segmenter.engine().to_string(),
        data: data.display().to_string(),
        slices: slices.len(),
        threshold,
        flip_average: segmenter.meta().flip_average.name().to_string(),
        at_default: at(threshold, &default_counts),
        dice_pooled_ci95: bootstrap(&default_counts, |s| {
            s.iter().fold(Counts::default(), |a, c| a.merge(*c)).dice()
        }),
        dice_mean_per_slice_ci95: bootstrap(&default_counts, |s| {
            s.iter().map(Counts::dice).sum::<f64>() / s.len() as f64
        }),
        average_precision,
        sweep,
        per_slice: slices
            .iter()
            .zip(&default_counts)
            .map(|(s, c)| (s.id.clone(), c.dice()))
            .collect(),
    };

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    let mut csv = std::fs::File::create(out.join("sweep.csv"))?;
    writeln!(
        csv,
        "threshold,recall,precision,specificity,dice_pooled,dice_mean_per_slice,iou,miou"
    )?;
    for r in &report.sweep {
        writeln!(
            csv,
            "{:.1},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}",
            r.threshold,
            r.recall,
            r.precision,
            r.specificity,
            r.dice_pooled,
            r.dice_mean_per_slice,
            r.iou,
            r.miou
        )?;
    }
    plot::line_chart(
        &out.join("pr.png"),
        &format!("precision-recall, AP {:.3}", report.average_precision),
        "recall",
        "precision",
        &[("pooled", curve)],
    )?;
    Ok(report)
}
