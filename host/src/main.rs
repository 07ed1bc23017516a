//! `tvunet`: train the TV-UNet on labelled CT slices, export it for the device, evaluate it and
//! talk to a device.
//!
//! Exit codes: 0 success, 1 any error (the message names the file or value at fault).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use tvunet::data::{self, LabelledSlice, Target};
use tvunet::{client, demo, eval, export, model, quantize, train};
use tvunet_device::preprocess::{FlipAverage, GraySlice, Normalisation};
use tvunet_device::PixelSpacing;

#[derive(Parser)]
#[command(name = "tvunet", version, about = "TV-UNet lesion segmentation toolchain for chest CT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a TV-UNet on a labelled folder (images/, masks_*/) or a MedSeg NIfTI pair.
    Train(Box<TrainArgs>),
    /// Export a trained run to ONNX, checked against tract on real slices.
    Export(ExportArgs),
    /// Change the defaults a model file carries (threshold, flip average), network untouched.
    SetDefaults(SetDefaultsArgs),
    /// Put several exported networks in one model file that serves the mean of their maps,
    /// each network fed the slice or a mirror image of it.
    Ensemble(EnsembleArgs),
    /// Quantize an exported fp32 model to int8 for tract, calibrated on unlabelled slices.
    Quantize(QuantizeArgs),
    /// Pseudo-label unlabelled slices with a teacher model, keeping the confident ones, for
    /// `train --extra-data`.
    PseudoLabel(PseudoArgs),
    /// Write a restoration task on unlabelled slices (rectangles painted over, the original as
    /// target) for self-supervised pre-training: `train --data` on it, then `--init-from`.
    Pretext(PretextArgs),
    /// Evaluate a model file (fp32 or int8) on a labelled folder with the device's inference code.
    Eval(EvalArgs),
    /// Send slices to a device over TCP or a serial port; write masks, overlays and reports.
    Send(SendArgs),
    /// Start a device on loopback TCP and a pseudo-terminal, stream the bundled real slices
    /// over both, and score each mask against the radiologist's.
    Demo(DemoArgs),
}

#[derive(Args)]
struct SendArgs {
    /// Device address, host:port.
    #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
    tcp: Option<String>,
    /// Serial port of the device.
    #[arg(long)]
    serial: Option<String>,
    /// Serial speed, bits/s.
    #[arg(long, default_value_t = 921_600)]
    baud: u32,
    /// Slice files (PNG or JPEG, 8-bit grey).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Folder for NAME.mask.png, NAME.overlay.png and NAME.json.
    #[arg(long)]
    out: PathBuf,
    /// Threshold on the lesion probability (default: the model's).
    #[arg(long)]
    threshold: Option<f32>,
    /// Pixel spacing as ROW_MM,COL_MM, for areas in mm².
    #[arg(long, value_parser = PixelSpacing::parse)]
    spacing_mm: Option<PixelSpacing>,
}

#[derive(Args)]
struct DemoArgs {
    /// Model the device serves.
    #[arg(long, default_value = "models/tvunet-medseg-anchored.onnx")]
    model: PathBuf,
    /// Labelled slices to stream.
    #[arg(long, default_value = "tests/fixtures/medseg")]
    slices: PathBuf,
    /// Folder for overlays, masks and reports.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
}

/// Resolves a repository-relative default so the binary also works from another directory.
fn repo_path(p: &Path) -> PathBuf {
    if p.is_relative() && !p.exists() {
        let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p);
        if from_manifest.exists() {
            return from_manifest;
        }
    }
    p.to_path_buf()
}

#[derive(Args)]
struct QuantizeArgs {
    /// fp32 ONNX model written by `tvunet export`.
    #[arg(long)]
    model: PathBuf,
    /// Folder of unlabelled slices (.jpg or .png, 8-bit grey) for the activation ranges.
    #[arg(long)]
    calib: PathBuf,
    /// Calibration slices, spread evenly over the folder's sorted file list.
    #[arg(long, default_value_t = 200)]
    calib_count: usize,
    /// How ranges are taken from the calibration slices. `max` is the default by measurement:
    /// pooled Dice change -0.0020 against -0.0047 for `percentile` on the 50 labelled slices
    /// (plain base 16). `mse` is slower to calibrate and helps the separable network (-0.0048
    /// against -0.0052 for `max`); on base 8 the two are equal.
    #[arg(long, value_enum, default_value_t = quantize::CalibrationMethod::Max)]
    method: quantize::CalibrationMethod,
    /// Output int8 ONNX file.
    #[arg(long)]
    out: PathBuf,
    /// Labelled folder on which to compare the int8 model with the fp32 one.
    #[arg(long)]
    check: Option<PathBuf>,
}

#[derive(Args)]
struct PseudoArgs {
    /// Teacher model (ONNX, run with the device's inference code).
    #[arg(long)]
    model: PathBuf,
    /// Folder of unlabelled slices (.jpg or .png).
    #[arg(long)]
    images: PathBuf,
    /// Output folder (images/, masks_binary/, pseudo.csv; masks_soft/ with --soft).
    #[arg(long)]
    out: PathBuf,
    /// Slices examined, spread evenly over the folder.
    #[arg(long, default_value_t = 400)]
    candidates: usize,
    /// Slices kept at most, the most confident first.
    #[arg(long, default_value_t = 200)]
    keep: usize,
    /// Only files whose name contains this text (for example one site).
    #[arg(long)]
    name_contains: Option<String>,
    /// Largest uncertain share of the marked region (0..1) for a slice to be kept.
    #[arg(long, default_value_t = 0.35)]
    max_uncertain: f64,
    /// Largest share of kept slices on which the teacher marks nothing.
    #[arg(long, default_value_t = 0.2)]
    max_empty_share: f64,
    /// Also write the teacher's probability map (masks_soft/), which `train --extra-data` then
    /// learns as it is (distillation) instead of the cut mask.
    #[arg(long)]
    soft: bool,
    /// Average the teacher over the four flips of each slice.
    #[arg(long)]
    flips: bool,
}

#[derive(Args)]
struct PretextArgs {
    /// Folder of unlabelled slices (.jpg or .png).
    #[arg(long)]
    images: PathBuf,
    /// Output folder (images/, masks_soft/, masks_binary/).
    #[arg(long)]
    out: PathBuf,
    /// Slices written, spread evenly over the folder.
    #[arg(long, default_value_t = 1600)]
    count: usize,
    /// Seed of the rectangles and their noise.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
struct EvalArgs {
    /// ONNX model file.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Folder for report.json, sweep.csv and pr.png.
    #[arg(long)]
    out: PathBuf,
    /// Evaluate only the validation ids of this run's split.json (slices the run never trained on).
    #[arg(long)]
    split: Option<PathBuf>,
    /// Inference engine (`tract-f16`: half precision, for ARM cores with fp16 arithmetic; `ort`
    /// needs the cargo feature and ORT_DYLIB_PATH).
    #[arg(long, value_enum, default_value_t = tvunet_device::Engine::Tract)]
    engine: tvunet_device::Engine,
    /// Mirror images to average in place of the model's own setting: none, left-right,
    /// top-bottom or four-way.
    #[arg(long, value_parser = flip_average)]
    flip_average: Option<FlipAverage>,
    /// Re-window every slice before inference (a robustness check): grey values go through
    /// this gamma, then --grey-scale and --grey-offset (see `data::GreyChange`).
    #[arg(long, default_value_t = 1.0)]
    grey_gamma: f32,
    /// Factor on the grey values after the gamma (below 1: a wider, greyer window).
    #[arg(long, default_value_t = 1.0)]
    grey_scale: f32,
    /// Grey levels added last (0..255 scale); results are clamped to 0..255.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    grey_offset: f32,
}

#[derive(Args)]
struct DataArgs {
    /// Labelled folder: images/<id>.jpg|png with masks_multiclass/ or masks_binary/, or a folder
    /// holding MedSeg's tr_im.nii.gz and tr_mask.nii.gz.
    #[arg(long)]
    data: PathBuf,
    /// What the mask marks.
    #[arg(long, value_enum, default_value_t = Target::Infection)]
    target: Target,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Run folder for checkpoints, logs and the split.
    #[arg(long)]
    out: PathBuf,
    /// Largest number of epochs.
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Slices per step. Above 4: burn-flex computes weight gradients of a batch of 4 or
    /// fewer with a direct convolution that is 1.5x slower per slice than its gemm path.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Weight of the total-variation term. Default 0: in the ablation on fold 0
    /// (models/tvunet-medseg.md) lambda 0.5 gave no gain over 0 at equal recall.
    #[arg(long, default_value_t = 0.0)]
    lambda_tv: f32,
    /// Weight of a soft-Dice term (per slice) added to the loss; 0 = BCE + TV alone.
    #[arg(long, default_value_t = 0.0)]
    dice_weight: f32,
    /// Learning-rate schedule: halve on a validation plateau (best epoch kept, early stop), or
    /// a cosine decay over --epochs that does not look at validation (last epoch kept).
    #[arg(long, value_enum, default_value_t = train::Schedule::Plateau)]
    schedule: train::Schedule,
    /// Train on every slice, the validation fold included: for the final model of a recipe
    /// whose length and threshold were fixed by cross-validation. The fold is still scored
    /// each epoch for the log, but chooses nothing: the last epoch is kept, no early stop,
    /// no plateau cut, and no threshold is chosen (give `export --threshold`).
    #[arg(long)]
    all_slices: bool,
    /// Seed for the split, and for initialisation, order and augmentation unless --init-seed
    /// is given.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Seed for initialisation, order and augmentation alone: another network on the same
    /// folds (an ensemble member).
    #[arg(long)]
    init_seed: Option<u64>,
    /// Largest relative change of scale in augmentation (0.12 = 88 % to 112 %).
    #[arg(long, default_value_t = data::Augment::default().max_scale)]
    aug_scale: f32,
    /// Largest change of the height-to-width ratio in augmentation (0.25 = one axis up to
    /// 1.25x the other); 0 keeps the slice's ratio.
    #[arg(long, default_value_t = 0.0)]
    aug_aspect: f32,
    /// Largest rotation in augmentation, degrees.
    #[arg(long, default_value_t = data::Augment::default().max_rotation_deg)]
    aug_rotation: f32,
    /// Largest shift of the elastic grid's control points, as a share of the slice's side
    /// (0.03 = 3 %); 0 = no elastic bending.
    #[arg(long, default_value_t = 0.0)]
    aug_elastic: f32,
    /// Largest standard deviation of Gaussian noise on the normalised training plane; 0 = none.
    #[arg(long, default_value_t = 0.0)]
    aug_noise: f32,
    /// Largest Gaussian blur of the training slice, standard deviation in pixels; 0 = none.
    #[arg(long, default_value_t = 0.0)]
    aug_blur: f32,
    /// Keep the spine where the stored slices have it: mirror left to right only, never front
    /// to back (the stored slices are transposed, so that is the columns).
    #[arg(long)]
    no_front_back_mirror: bool,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Validation fold, 0-based.
    #[arg(long, default_value_t = 0)]
    fold: usize,
    /// Down-sampling levels of the U-Net.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Channels of the first level.
    #[arg(long, default_value_t = 16)]
    base: usize,
    /// Side of the square model input, pixels.
    #[arg(long, default_value_t = 256)]
    input_size: u32,
    /// Depthwise-separable blocks (depthwise 3x3 then 1x1) instead of plain 3x3 convolutions.
    #[arg(long)]
    separable: bool,
    /// A second head learns the lung field (dark aerated lung, the labelled lesions and what they
    /// enclose) with its own BCE term; the network reports the lesion probability times the
    /// lung-field probability, so tissue outside the lungs is not marked.
    #[arg(long)]
    lung_field: bool,
    /// How slices become the input plane: `zscore-per-slice` (zero mean, unit deviation) or
    /// `tissue-anchored` (Otsu's classes: the aerated lung's median grey to -1, soft tissue's
    /// to +1). The exported model carries it; the device applies it.
    #[arg(long, default_value = "zscore-per-slice")]
    normalisation: String,
    /// Stop after the epoch that passes this many minutes (0 = no limit).
    #[arg(long, default_value_t = 0.0)]
    max_minutes: f64,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Start from the best checkpoint of another run with the same network (fine-tuning).
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// With --init-from, start the output head afresh and take only the rest of the network
    /// (for a run pre-trained on another task, such as `tvunet pretext`).
    #[arg(long, requires = "init_from")]
    fresh_head: bool,
    /// Epochs without validation-loss improvement before the learning rate is halved.
    #[arg(long, default_value_t = 5)]
    plateau_patience: usize,
    /// Epochs without validation-loss improvement before training stops.
    #[arg(long, default_value_t = 10)]
    early_stop_patience: usize,
    /// Extra training slices, such as a folder written by `tvunet pseudo-label`; used for
    /// training only, never for validation.
    #[arg(long)]
    extra_data: Option<PathBuf>,
    /// Extra slices drawn into each epoch (default: as many as the labelled training part).
    #[arg(long)]
    extra_per_epoch: Option<usize>,
    /// Train on random square windows of this side (pixels) cut from each augmented slice;
    /// 0 = whole slices. Validation and the exported model still take whole slices.
    #[arg(long, default_value_t = 0)]
    crop: u32,
    /// Windows per training slice per epoch (with --crop).
    #[arg(long, default_value_t = 1)]
    crops_per_slice: usize,
    /// burn backend to train on; all but flex need the cargo feature of the same name.
    #[arg(long, value_enum, default_value_t = train::TrainBackend::Flex)]
    backend: train::TrainBackend,
    /// Unlabelled slices (a folder of .jpg or .png) for a mean teacher: a moving average of the
    /// network whose maps on these slices the network is pulled towards; the average is the
    /// kept model.
    #[arg(long)]
    unlabelled: Option<PathBuf>,
    /// Unlabelled slices read, spread evenly over the folder's sorted names (default: all).
    /// Keep this folder apart from the labelled slices: a validation slice among them takes
    /// part in training (without its mask), and the run warns about it.
    #[arg(long, requires = "unlabelled")]
    unlabelled_count: Option<usize>,
    /// Weight of the consistency term (mean squared difference of lesion probabilities).
    #[arg(long, default_value_t = 1.0, requires = "unlabelled", allow_negative_numbers = true)]
    consistency: f32,
    /// Epochs over which the consistency weight rises from 0 (along exp(-5 (1 - t)²); a run
    /// shorter than the ramp never reaches the full weight).
    #[arg(long, default_value_t = 30, requires = "unlabelled")]
    consistency_ramp: usize,
    /// Largest decay of the teacher's moving average per step, in [0, 1): 0.95 averages over
    /// about the last 20 steps. Choose it against the run's length in steps: an average much
    /// longer than a tenth of the run lags the trained network.
    #[arg(long, default_value_t = 0.95, requires = "unlabelled", allow_negative_numbers = true)]
    ema_decay: f64,
    /// Unlabelled slices per step.
    #[arg(long, default_value_t = 4, requires = "unlabelled")]
    unlabelled_per_step: usize,
    /// Standard deviation of the noise on the student's view, normalised grey units.
    #[arg(long, default_value_t = 0.1, requires = "unlabelled", allow_negative_numbers = true)]
    consistency_noise: f32,
}

#[derive(Args)]
struct ExportArgs {
    /// Run folder written by `tvunet train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// ONNX file to write.
    #[arg(long)]
    out: PathBuf,
    /// Labelled slices for the parity check (default: the bundled fixture slices).
    #[arg(long, default_value = "tests/fixtures/medseg")]
    data: PathBuf,
    /// Default threshold to write (default: the one the run chose on validation).
    #[arg(long)]
    threshold: Option<f32>,
    /// Mirror images the device averages (none, left-right, top-bottom or four-way).
    #[arg(long, default_value = "none", value_parser = flip_average)]
    flip_average: FlipAverage,
}

#[derive(Args)]
struct SetDefaultsArgs {
    /// ONNX model file (fp32 or int8).
    #[arg(long)]
    model: PathBuf,
    /// File to write; may be the model itself.
    #[arg(long)]
    out: PathBuf,
    /// New default threshold on the lesion probability, in (0, 1).
    #[arg(long)]
    threshold: Option<f32>,
    /// New flip average: none, left-right, top-bottom or four-way.
    #[arg(long, value_parser = flip_average)]
    flip_average: Option<FlipAverage>,
}

#[derive(Args)]
struct EnsembleArgs {
    /// Member model files (fp32 or int8), two or more: `--model A.onnx --model B.onnx`.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// The image each member sees, in the order of --model: none, left-right or top-bottom
    /// (its map is mirrored back). Omitted: every member sees the slice as it is.
    #[arg(long, value_enum)]
    mirror: Vec<export::ensemble::Mirror>,
    /// File to write.
    #[arg(long)]
    out: PathBuf,
    /// Default threshold of the ensemble, in (0, 1). The averaged map is a new map: choose it
    /// on validation slices (`bench/pair.py` prints the folds' choices).
    #[arg(long)]
    threshold: f32,
    /// Slices that check the file against its members run one by one: a labelled folder (its
    /// images/) or a folder of slice images.
    #[arg(long)]
    data: PathBuf,
}

/// Parses a flip average by the name models carry in their metadata.
fn flip_average(text: &str) -> Result<FlipAverage, String> {
    FlipAverage::from_name(text).ok_or_else(|| {
        format!("`{text}` is not a flip average: give none, left-right, top-bottom or four-way")
    })
}

/// Reads a labelled folder or a NIfTI pair.
fn read_labelled(dir: &Path, target: Target) -> Result<Vec<LabelledSlice>> {
    let (im, mask) = (dir.join("tr_im.nii.gz"), dir.join("tr_mask.nii.gz"));
    let slices = if im.is_file() {
        data::read_nifti_pair(&im, &mask, target)?
    } else {
        data::read_folder(dir, target)?
    };
    tracing::info!(slices = slices.len(), "read labelled slices from {}", dir.display());
    Ok(slices)
}

fn run_train(a: TrainArgs) -> Result<()> {
    anyhow::ensure!(
        a.folds >= 2 && a.fold < a.folds,
        "--fold {} --folds {}: need at least 2 folds and 0 <= fold < folds",
        a.fold,
        a.folds
    );
    for (flag, v) in [
        ("--aug-scale", a.aug_scale),
        ("--aug-aspect", a.aug_aspect),
        ("--aug-elastic", a.aug_elastic),
        ("--aug-noise", a.aug_noise),
    ] {
        anyhow::ensure!((0.0..1.0).contains(&v), "{flag} {v}: must lie in 0..1");
    }
    anyhow::ensure!(
        (0.0..=180.0).contains(&a.aug_rotation),
        "--aug-rotation {}: must lie in 0..=180 degrees",
        a.aug_rotation
    );
    anyhow::ensure!(
        (0.0..=8.0).contains(&a.aug_blur),
        "--aug-blur {}: must lie in 0..=8 pixels",
        a.aug_blur
    );
    let slices = read_labelled(&a.data.data, a.data.target)?;
    let extra = match &a.extra_data {
        Some(dir) => read_labelled(dir, a.data.target)
            .with_context(|| format!("reading --extra-data {}", dir.display()))?,
        None => Vec::new(),
    };
    let mean_teacher = match &a.unlabelled {
        None => None,
        Some(dir) => {
            anyhow::ensure!(
                a.consistency.is_finite() && a.consistency >= 0.0,
                "--consistency {}: must be a number >= 0",
                a.consistency
            );
            anyhow::ensure!(
                (0.0..1.0).contains(&a.ema_decay),
                "--ema-decay {}: must lie in [0, 1)",
                a.ema_decay
            );
            anyhow::ensure!(
                a.unlabelled_per_step > 0,
                "--unlabelled-per-step 0: need at least one slice per step"
            );
            anyhow::ensure!(
                a.consistency_noise.is_finite() && a.consistency_noise >= 0.0,
                "--consistency-noise {}: must be a number >= 0",
                a.consistency_noise
            );
            anyhow::ensure!(
                a.unlabelled_count != Some(0),
                "--unlabelled-count 0: need at least one slice"
            );
            let images = data::read_unlabelled_folder(dir, a.unlabelled_count)
                .context("reading --unlabelled")?;
            tracing::info!(slices = images.len(), "read unlabelled slices from {}", dir.display());
            let labelled: std::collections::HashSet<String> = slices
                .iter()
                .map(|s| data::grey_fingerprint(std::slice::from_ref(&s.image)))
                .collect();
            let shared = images
                .iter()
                .filter(|i| labelled.contains(&data::grey_fingerprint(std::slice::from_ref(i))))
                .count();
            if shared > 0 {
                tracing::warn!(
                    "{shared} of the {} unlabelled slices in {} are also labelled slices of \
                     --data; any in the validation fold take part in training",
                    images.len(),
                    dir.display()
                );
            }
            Some((
                train::mean_teacher::MeanTeacherConfig {
                    weight: a.consistency,
                    ema_decay: a.ema_decay,
                    ramp_epochs: a.consistency_ramp,
                    per_step: a.unlabelled_per_step,
                    noise_sd: a.consistency_noise,
                    unlabelled: images.len(),
                    unlabelled_fingerprint: data::grey_fingerprint(&images),
                },
                images,
            ))
        }
    };
    let labelled_train =
        if a.all_slices { slices.len() } else { slices.len() - slices.len() / a.folds };
    let normalisation = Normalisation::from_name(&a.normalisation).with_context(|| {
        format!("--normalisation {}: not `zscore-per-slice` or `tissue-anchored`", a.normalisation)
    })?;
    let cfg = train::TrainConfig {
        normalisation,
        unet: model::UNetConfig {
            depth: a.depth,
            base: a.base,
            input_size: a.input_size,
            separable: a.separable,
            lung_field: a.lung_field,
        },
        target: a.data.target,
        epochs: a.epochs,
        batch_size: a.batch_size,
        learning_rate: a.lr,
        lambda_tv: a.lambda_tv,
        dice_weight: a.dice_weight,
        schedule: a.schedule,
        all_slices: a.all_slices,
        seed: a.seed,
        init_seed: a.init_seed,
        folds: a.folds,
        fold: a.fold,
        plateau_patience: a.plateau_patience,
        early_stop_patience: a.early_stop_patience,
        augment: data::Augment {
            max_rotation_deg: a.aug_rotation,
            max_scale: a.aug_scale,
            max_aspect: a.aug_aspect,
            max_elastic: a.aug_elastic,
            max_noise: a.aug_noise,
            max_blur: a.aug_blur,
            mirror_front_back: !a.no_front_back_mirror,
            ..data::Augment::default()
        },
        max_minutes: a.max_minutes,
        data_fingerprint: data::fingerprint(&slices),
        extra_per_epoch: if extra.is_empty() {
            0
        } else {
            a.extra_per_epoch.unwrap_or(labelled_train)
        },
        extra_fingerprint: if extra.is_empty() { String::new() } else { data::fingerprint(&extra) },
        crop: a.crop,
        crops_per_slice: a.crops_per_slice,
        backend: a.backend,
        fresh_head: a.fresh_head,
        mean_teacher: mean_teacher.as_ref().map(|(c, _)| c.clone()),
    };
    let unlabelled = mean_teacher.map(|(_, images)| images).unwrap_or_default();
    train::train(&slices, &extra, &unlabelled, &cfg, &a.out, a.resume, a.init_from.as_deref())?;
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    let cfg = train::RunDir(a.checkpoint.clone()).read_config()?;
    let slices = read_labelled(&a.data, cfg.target)
        .with_context(|| format!("reading parity slices from {}", a.data.display()))?;
    let s = export::export(&a.checkpoint, &a.out, a.threshold, a.flip_average, &slices)?;
    println!(
        "wrote {} ({} bytes, sha256 {}), threshold {}; parity with tract on {} slices: \
         max |diff| {:.2e}",
        a.out.display(),
        s.file_bytes,
        &s.sha256[..16],
        s.threshold,
        s.parity_slices,
        s.max_abs_diff
    );
    Ok(())
}

fn run_set_defaults(a: SetDefaultsArgs) -> Result<()> {
    anyhow::ensure!(
        a.threshold.is_some() || a.flip_average.is_some(),
        "nothing to change: give --threshold and/or --flip-average"
    );
    if let Some(t) = a.threshold {
        anyhow::ensure!(t > 0.0 && t < 1.0, "--threshold {t}: must lie strictly between 0 and 1");
    }
    let sha = export::set_defaults(&a.model, &a.out, a.threshold, a.flip_average)?;
    println!("wrote {} (sha256 {})", a.out.display(), &sha[..16]);
    Ok(())
}

fn run_ensemble(a: EnsembleArgs) -> Result<()> {
    use export::ensemble::{Member, Mirror};
    let mirrors = if a.mirror.is_empty() { vec![Mirror::None; a.model.len()] } else { a.mirror };
    anyhow::ensure!(
        mirrors.len() == a.model.len(),
        "{} --mirror for {} --model: give one per model, in the same order",
        mirrors.len(),
        a.model.len()
    );
    let members: Vec<Member> = a
        .model
        .iter()
        .zip(mirrors)
        .map(|(model, mirror)| Member { model: model.clone(), mirror })
        .collect();
    let dir = if a.data.join("images").is_dir() { a.data.join("images") } else { a.data.clone() };
    let images: Vec<GraySlice> = quantize::calibration_slices(&dir, usize::MAX)
        .with_context(|| format!("reading check slices from --data {}", a.data.display()))?
        .into_iter()
        .map(|(_, slice)| slice)
        .collect();
    anyhow::ensure!(!images.is_empty(), "--data {}: no slices to check with", a.data.display());
    let s = export::ensemble::ensemble(&members, &a.out, a.threshold, &images)?;
    println!(
        "wrote {} ({} bytes, sha256 {}), {} members, threshold {}; against the members one by \
         one on {} slices: max |diff| {:.2e}",
        a.out.display(),
        s.file_bytes,
        &s.sha256[..16],
        members.len(),
        s.threshold,
        s.parity_slices,
        s.max_abs_diff
    );
    Ok(())
}

fn run_quantize(a: QuantizeArgs) -> Result<()> {
    let calib = quantize::calibration_slices(&a.calib, a.calib_count)?;
    let s = quantize::quantize(&a.model, &calib, a.method, &a.out)?;
    println!(
        "wrote {} ({} bytes, {:.2}x smaller than the fp32 file), calibrated with {} on {} slices",
        a.out.display(),
        s.file_bytes,
        s.fp32_bytes as f64 / s.file_bytes as f64,
        s.method,
        s.calibration_slices
    );
    if let Some(dir) = &a.check {
        let fp32 = tvunet_device::Segmenter::load(&a.model)?;
        let int8 = tvunet_device::Segmenter::load(&a.out)?;
        let target = if fp32.meta().target == "ggo" { Target::Ggo } else { Target::Infection };
        let slices = read_labelled(dir, target)?;
        let c = quantize::compare(&fp32, &int8, &slices)?;
        println!(
            "on {} labelled slices: pooled Dice fp32 {:.4}, int8 {:.4} (change {:+.4}); \
             masks agree on {:.3} % of pixels; max |p_fp32 - p_int8| {:.3}; \
             int8 lesion fraction {:.4}",
            c.slices,
            c.dice_fp32,
            c.dice_int8,
            c.dice_int8 - c.dice_fp32,
            100.0 * c.mask_agreement,
            c.max_abs_diff,
            c.int8_lesion_fraction
        );
    }
    Ok(())
}

fn run_pseudo(a: PseudoArgs) -> Result<()> {
    let teacher = tvunet_device::Segmenter::load(&a.model)?;
    let opts = tvunet::pseudo::PseudoOptions {
        soft: a.soft,
        flips: a.flips,
        candidates: a.candidates,
        keep: a.keep,
        name_contains: a.name_contains,
        max_uncertain: a.max_uncertain,
        max_empty_share: a.max_empty_share,
    };
    let s = tvunet::pseudo::pseudo_label(&teacher, &a.images, &a.out, &opts)?;
    println!(
        "examined {} slices ({} refused), kept {} ({} with no lesion) in {}",
        s.examined,
        s.refused,
        s.kept,
        s.kept_empty,
        a.out.display()
    );
    Ok(())
}

fn run_pretext(a: PretextArgs) -> Result<()> {
    let opts =
        tvunet::pretext::PretextOptions { count: a.count, seed: a.seed, ..Default::default() };
    let (written, refused) = tvunet::pretext::write_pretext(&a.images, &a.out, &opts)?;
    println!("wrote {written} slices ({refused} refused) to {}", a.out.display());
    Ok(())
}

fn run_eval(a: EvalArgs) -> Result<()> {
    let mut slices = read_labelled(&a.data.data, a.data.target)?;
    if let Some(split) = &a.split {
        let split: data::Split = train::read_json(split)?;
        slices.retain(|s| split.validation.contains(&s.id));
    }
    let seen = tvunet_device::Segmenter::load(&a.model)?
        .meta()
        .props
        .get(tvunet_device::inference::keys::DATA_FINGERPRINT)
        .is_some_and(|f| *f == data::fingerprint(&slices));
    if seen {
        eprintln!(
            "warning: these are exactly the slices the model was trained and validated on; \
             the figures are not a test on unseen data (use --split RUN/split.json, or the \
             model card's split, for the held-out part)"
        );
    }
    let change =
        data::GreyChange { gamma: a.grey_gamma, scale: a.grey_scale, offset: a.grey_offset };
    if !change.is_identity() {
        change.check().map_err(anyhow::Error::msg)?;
        for s in &mut slices {
            change.apply(&mut s.image);
        }
        eprintln!("every slice re-windowed: {change:?}");
    }
    let r = eval::evaluate(&a.model, a.engine, a.flip_average, &slices, &a.data.data, &a.out)?;
    let d = &r.at_default;
    println!(
        "{} slices, threshold {:.2}, flip average {}: dice pooled {:.3} [{:.3}, {:.3}], \
         mean per slice {:.3} [{:.3}, {:.3}], precision {:.3}, recall {:.3}, IoU {:.3}, \
         mIoU {:.3}, AP {:.3}",
        r.slices,
        r.threshold,
        r.flip_average,
        d.dice_pooled,
        r.dice_pooled_ci95.low,
        r.dice_pooled_ci95.high,
        d.dice_mean_per_slice,
        r.dice_mean_per_slice_ci95.low,
        r.dice_mean_per_slice_ci95.high,
        d.precision,
        d.recall,
        d.iou,
        d.miou,
        r.average_precision
    );
    println!("wrote {}/report.json, sweep.csv, pr.png", a.out.display());
    Ok(())
}

fn run_send(a: SendArgs) -> Result<()> {
    let target = match (a.tcp, a.serial) {
        (Some(addr), _) => client::Target::Tcp(addr),
        (None, Some(path)) => client::Target::Serial { path, baud: a.baud },
        (None, None) => anyhow::bail!("give --tcp HOST:PORT or --serial PATH"),
    };
    client::send(target, &a.files, &a.out, a.threshold, a.spacing_mm)?;
    Ok(())
}

fn run_demo(a: DemoArgs) -> Result<()> {
    demo::run(&repo_path(&a.model), &repo_path(&a.slices), &a.out)?;
    Ok(())
}

fn main() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => run_train(*a),
        Command::Export(a) => run_export(a),
        Command::Quantize(a) => run_quantize(a),
        Command::PseudoLabel(a) => run_pseudo(a),
        Command::Pretext(a) => run_pretext(a),
        Command::Eval(a) => run_eval(a),
        Command::SetDefaults(a) => run_set_defaults(a),
        Command::Ensemble(a) => run_ensemble(a),
        Command::Send(a) => run_send(a),
        Command::Demo(a) => run_demo(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
