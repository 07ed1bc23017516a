//! `tvunet export`: a trained run to an ONNX file the device runs, checked against burn.

pub mod ensemble;
pub mod folded;
pub mod onnx;

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use prost::Message;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};
use tvunet_device::inference::keys;
use tvunet_device::preprocess::FlipAverage;
use tvunet_device::Segmenter;

use crate::data::LabelledSlice;
use crate::train::{self, RunDir};
use folded::FoldedUNet;

/// Largest tolerated difference between burn's and tract's probabilities on the same input.
pub const PARITY_TOLERANCE: f32 = 1e-4;

/// What an export wrote and measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    /// Bytes of the ONNX file.
    pub file_bytes: u64,
    /// sha256 of the file.
    pub sha256: String,
    /// Slices compared between burn and tract.
    pub parity_slices: usize,
    /// Largest |p_burn - p_tract| over those slices.
    pub max_abs_diff: f32,
    /// Default threshold written into the metadata.
    pub threshold: f32,
}

/// Commit of the working tree, or `unknown` outside git.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Exports the best checkpoint of `run` to `out`, then loads the file with tract and compares
/// its probabilities with burn's on `parity_slices`; a difference above
/// [`PARITY_TOLERANCE`] fails the export and removes the file.
pub fn export(
    run: &Path,
    out: &Path,
    threshold: Option<f32>,
    flip_average: FlipAverage,
    parity_slices: &[LabelledSlice],
) -> Result<ExportSummary> {
    let run = RunDir(run.to_path_buf());
    let device = Device::flex();
    let (cfg, model) = run.load_model(true, &device)?;
    let threshold = match threshold {
        Some(t) => t,
        None => {
            let v: serde_json::Value = train::read_json(&run.threshold())
                .context("no --threshold given and the run chose none on validation")?;
            v["threshold"].as_f64().context("threshold.json has no threshold")? as f32
        }
    };
    let metadata: Vec<(String, String)> = [
        (keys::INPUT_SIZE, cfg.unet.input_size.to_string()),
        (keys::NORMALISATION, cfg.normalisation.name().to_string()),
        (keys::THRESHOLD, format!("{threshold}")),
        (keys::TARGET, cfg.target.to_string()),
        (keys::DATA_FINGERPRINT, cfg.data_fingerprint.clone()),
        (keys::VERSION, env!("CARGO_PKG_VERSION").to_string()),
        (keys::GIT_COMMIT, git_commit()),
        (keys::PRECISION, "fp32".to_string()),
        (keys::FLIP_AVERAGE, flip_average.name().to_string()),
        ("tvunet.architecture", cfg.unet.architecture()),
        ("tvunet.lambda_tv", format!("{}", cfg.lambda_tv)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let folded = FoldedUNet::from_model(&model, cfg.unet);
    let bytes = onnx::encode(&onnx::unet_to_onnx(&folded, &metadata));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;

    let check = || -> Result<f32> {
        let segmenter = Segmenter::from_bytes(&bytes, &out.display().to_string())?;
        let side = cfg.unet.input_size;
        let planes: Vec<Vec<f32>> =
            parity_slices.iter().map(|s| segmenter.input_plane(&s.image)).collect();
        let burn_probs = train::predict_planes(&model, &planes, side as usize, &device);
        let mut worst = 0f32;
        for (plane, expected) in planes.iter().zip(&burn_probs) {
            let got = segmenter.probability_plane(plane)?;
            worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        }
        Ok(worst)
    };
    let worst = match check() {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(out);
            return Err(e.context("the exported file failed to run in tract"));
        }
    };
    if parity_slices.is_empty() || worst > PARITY_TOLERANCE {
        let _ = std::fs::remove_file(out);
        bail!(
            "parity check failed: max |burn - tract| = {worst:e} over {} slices (tolerance {:e})",
            parity_slices.len(),
            PARITY_TOLERANCE
        );
    }
    let summary = ExportSummary {
        file_bytes: bytes.len() as u64,
        sha256: Segmenter::from_bytes(&bytes, "")?.sha256().to_string(),
        parity_slices: parity_slices.len(),
        max_abs_diff: worst,
        threshold,
    };
    Ok(summary)
}

/// Copies the model file `model` to `out` with new defaults in its metadata: the threshold
/// and/or the flip average. The network is untouched, and the device's loader checks the new
/// file before it is written. Returns the new file's sha256.
pub fn set_defaults(
    model: &Path,
    out: &Path,
    threshold: Option<f32>,
    flip_average: Option<FlipAverage>,
) -> Result<String> {
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let mut proto = ModelProto::decode(&bytes[..])
        .with_context(|| format!("{}: not an ONNX model", model.display()))?;
    let mut set = |key: &str, value: String| {
        proto.metadata_props.retain(|p| p.key != key);
        proto.metadata_props.push(StringStringEntryProto { key: key.to_string(), value });
    };
    if let Some(t) = threshold {
        set(keys::THRESHOLD, format!("{t}"));
    }
    if let Some(f) = flip_average {
        set(keys::FLIP_AVERAGE, f.name().to_string());
    }
    let bytes = proto.encode_to_vec();
    let checked = Segmenter::from_bytes(&bytes, &out.display().to_string())
        .with_context(|| format!("the new defaults for {}", model.display()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(checked.sha256().to_string())
}
