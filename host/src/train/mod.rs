//! Training: the TV-UNet recipe (Adam, reduce-on-plateau, early stopping) with checkpoints, a
//! per-epoch CSV and a validation-chosen threshold.

mod backend;
pub mod loss;
pub mod mean_teacher;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

pub use backend::{MissingBackend, TrainBackend};

use crate::data::{self, Augment, Example, LabelledSlice, Split, Target};
use crate::metrics::Counts;
use crate::model::{gated_probability, UNet, UNetConfig};
use mean_teacher::MeanTeacherConfig;
use tvunet_device::preprocess::{GraySlice, Normalisation};

/// Everything that defines a training run; written to `config.json` in the run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Network shape.
    pub unet: UNetConfig,
    /// How slices become the input plane; written into the exported model's metadata.
    #[serde(default)]
    pub normalisation: Normalisation,
    /// What the mask marks.
    pub target: Target,
    /// Largest number of epochs.
    pub epochs: usize,
    /// Slices per step.
    pub batch_size: usize,
    /// Adam's initial learning rate.
    pub learning_rate: f64,
    /// Weight of the TV term.
    pub lambda_tv: f32,
    /// Weight of the soft-Dice term (0 = BCE + TV alone, the paper's loss).
    #[serde(default)]
    pub dice_weight: f32,
    /// How the learning rate moves over the run.
    #[serde(default)]
    pub schedule: Schedule,
    /// Whether the validation fold is trained on too (final model of a fixed recipe); the fold
    /// then only appears in the log, and the last epoch is the kept checkpoint.
    #[serde(default)]
    pub all_slices: bool,
    /// Seed for the split, and for initialisation, shuffling and augmentation unless
    /// `init_seed` is set.
    pub seed: u64,
    /// Seed for initialisation, shuffling and augmentation when it differs from the split's
    /// (another network on the same folds, for an ensemble).
    #[serde(default)]
    pub init_seed: Option<u64>,
    /// Cross-validation folds.
    pub folds: usize,
    /// Validation fold.
    pub fold: usize,
    /// Epochs without validation-loss improvement before the learning rate is halved.
    pub plateau_patience: usize,
    /// Epochs without validation-loss improvement before training stops.
    pub early_stop_patience: usize,
    /// Augmentation ranges.
    pub augment: Augment,
    /// Largest training time, minutes; 0 = none. Training stops after the epoch that passes it.
    pub max_minutes: f64,
    /// sha256 of the training slices and masks (see [`data::fingerprint`]).
    pub data_fingerprint: String,
    /// Extra training slices (for example pseudo-labelled ones) drawn into each epoch beside
    /// the labelled training part; never used for validation. 0 when there are none.
    #[serde(default)]
    pub extra_per_epoch: usize,
    /// sha256 of the extra slices, empty when there are none.
    #[serde(default)]
    pub extra_fingerprint: String,
    /// Side of the random square window cut from each augmented slice for training, pixels;
    /// 0 trains on whole slices. Validation and inference always see whole slices: the network
    /// is fully convolutional, and a smaller window buys more optimiser steps per minute.
    #[serde(default)]
    pub crop: u32,
    /// Windows cut from each training slice per epoch (each with its own augmentation).
    #[serde(default = "one")]
    pub crops_per_slice: usize,
    /// burn backend the run computes on; validation runs on the same backend.
    #[serde(default)]
    pub backend: TrainBackend,
    /// With an `init_from` run, start the output head afresh (the lesion prior, as a run from
    /// scratch) and take only the rest of the network: for a run pre-trained on another task,
    /// such as the restoration task of `tvunet pretext`.
    #[serde(default)]
    pub fresh_head: bool,
    /// Mean teacher on unlabelled slices; `None` trains on the labelled slices alone. With it,
    /// the teacher is validated and kept (`best.bpk`, `last.bpk`) and the student is saved
    /// as `student.bpk`.
    #[serde(default)]
    pub mean_teacher: Option<MeanTeacherConfig>,
}

fn one() -> usize {
    1
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Halve after `plateau_patience` epochs without a lower validation loss.
    #[default]
    Plateau,
    /// `lr x (1 + cos(pi x (epoch - 1) / epochs)) / 2` over a fixed length: blind to
    /// validation, no early stop, and the last epoch is the kept checkpoint.
    Cosine,
}

/// Learning rate of 1-based `epoch` of `epochs` under the cosine schedule.
pub fn cosine_rate(initial: f64, epoch: usize, epochs: usize) -> f64 {
    let t = (epoch.saturating_sub(1)) as f64 / epochs.max(1) as f64;
    initial * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Progress of a run, written after every epoch so that `--resume` can continue it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs finished.
    pub epochs_done: usize,
    /// Current learning rate.
    pub learning_rate: f64,
    /// Best validation loss so far.
    pub best_val_loss: f64,
    /// Epoch (1-based) of the best validation loss.
    pub best_epoch: usize,
    /// Epochs since the last improvement.
    pub epochs_without_gain: usize,
    /// Epochs since the last improvement or learning-rate cut.
    pub epochs_since_cut: usize,
    /// Training wall time so far, s.
    pub wall_s: f64,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
}

/// Validation figures of one epoch at threshold 0.5.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_bce: f64,
    pub train_tv: f64,
    pub train_dice: f64,
    pub val_loss: f64,
    pub val_precision: f64,
    pub val_recall: f64,
    pub val_dice: f64,
    pub seconds: f64,
}

/// Files of a run folder.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn split(&self) -> PathBuf {
        self.0.join("split.json")
    }
    pub fn best(&self) -> PathBuf {
        self.0.join("best.bpk")
    }
    pub fn last(&self) -> PathBuf {
        self.0.join("last.bpk")
    }
    pub fn epochs_csv(&self) -> PathBuf {
        self.0.join("epochs.csv")
    }
    pub fn threshold(&self) -> PathBuf {
        self.0.join("threshold.json")
    }
    /// The trained network of a mean-teacher run (the teacher is `last.bpk`).
    pub fn student(&self) -> PathBuf {
        self.0.join("student.bpk")
    }

    /// Reads the run's configuration.
    pub fn read_config(&self) -> Result<TrainConfig> {
        read_json(&self.config())
    }

    /// Loads the best (or last) checkpoint onto `device`.
    pub fn load_model(&self, which_best: bool, device: &Device) -> Result<(TrainConfig, UNet)> {
        let cfg = self.read_config()?;
        let path = if which_best { self.best() } else { self.last() };
        let model = cfg
            .unet
            .init(device)
            .try_load_file(&path)
            .map_err(|e| anyhow::anyhow!("checkpoint {}: {e:?}", path.display()))?;
        Ok((cfg, model))
    }
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// A batch of examples on the device.
struct Batch {
    /// n x 1 x side x side normalised planes.
    planes: Tensor<4>,
    /// n x 1 x side x side lesion targets.
    lesion: Tensor<4>,
    /// n x 1 x side x side lung-field targets.
    lung: Tensor<4>,
}

/// Stacks examples into a batch.
fn batch(examples: &[Example], side: usize, device: &Device) -> Batch {
    let n = examples.len();
    let stack = |part: fn(&Example) -> &Vec<f32>| -> Tensor<4> {
        let flat: Vec<f32> = examples.iter().flat_map(|e| part(e).iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [n, 1, side, side]), device)
    };
    Batch { planes: stack(|e| &e.plane), lesion: stack(|e| &e.target), lung: stack(|e| &e.lung) }
}

/// Probability maps of a trained model (evaluation mode), at model size, for prepared planes.
pub fn predict_planes(
    model: &UNet,
    planes: &[Vec<f32>],
    side: usize,
    device: &Device,
) -> Vec<Vec<f32>> {
    let model = model.valid().to_device(device);
    planes
        .chunks(4)
        .flat_map(|chunk| {
            let n = chunk.len();
            let flat: Vec<f32> = chunk.iter().flat_map(|p| p.iter().copied()).collect();
            let x = Tensor::from_data(TensorData::new(flat, [n, 1, side, side]), device);
            let p: Vec<f32> = model.probability(x).into_data().try_to_vec().expect("f32 output");
            p.chunks(side * side).map(<[f32]>::to_vec).collect::<Vec<_>>()
        })
        .collect()
}

/// The student's and the teacher's planes for one step's unlabelled slices, stacked.
fn unlabelled_batch(
    unlabelled: &[GraySlice],
    mt: &MeanTeacherConfig,
    cfg: &TrainConfig,
    rng: &mut rand::rngs::StdRng,
) -> (Vec<f32>, Vec<f32>) {
    use rand::Rng;
    let (mut student, mut teacher) = (Vec::new(), Vec::new());
    for _ in 0..mt.per_step {
        let image = &unlabelled[rng.random_range(0..unlabelled.len())];
        let [plain, noisy] = data::consistency_views(
            image,
            cfg.unet.input_size,
            &cfg.augment,
            cfg.normalisation,
            mt.noise_sd,
            rng,
        );
        teacher.extend(plain);
        student.extend(noisy);
    }
    (student, teacher)
}

struct Validation {
    loss: f64,
    counts: Counts,
}

fn validate(
    model: &UNet,
    val: &[Example],
    side: usize,
    cfg: &TrainConfig,
    device: &Device,
) -> Validation {
    let model = model.valid().to_device(device);
    let (mut loss, mut counts) = (0.0, Counts::default());
    for chunk in val.chunks(4) {
        let b = batch(chunk, side, device);
        let (logits, lung) = model.forward_with_lung(b.planes);
        let parts = loss::tv_unet_loss(logits.clone(), b.lesion, cfg.lambda_tv, cfg.dice_weight);
        loss += f64::from(parts.total.into_scalar::<f32>()) * chunk.len() as f64;
        let p: Vec<f32> = gated_probability(logits, lung).into_data().try_to_vec().expect("f32");
        for (probs, e) in p.chunks(side * side).zip(chunk) {
            let truth: Vec<u8> = e.target.iter().map(|&t| u8::from(t > 0.5)).collect();
            counts = counts.merge(Counts::from_probability(probs, &truth, 0.5));
        }
    }
    Validation { loss: loss / val.len().max(1) as f64, counts }
}

/// Draws `loss.png` (training and validation loss) and `validation.png` (precision, recall
/// and Dice at 0.5) from the run's `epochs.csv`.
pub fn plot_epochs(run: &RunDir) -> Result<()> {
    let text = std::fs::read_to_string(run.epochs_csv())?;
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap_or(f64::NAN)).collect())
        .collect();
    let col = |k: usize| -> Vec<(f64, f64)> { rows.iter().map(|r| (r[0], r[k])).collect() };
    crate::plot::line_chart(
        &run.0.join("loss.png"),
        "loss per epoch (BCE + lambda TV)",
        "epoch",
        "loss",
        &[("train", col(2)), ("validation", col(5)), ("train TV term", col(4))],
    )?;
    crate::plot::line_chart(
        &run.0.join("validation.png"),
        "validation at threshold 0.5",
        "epoch",
        "",
        &[("precision", col(6)), ("recall", col(7)), ("dice", col(8))],
    )
}

/// Chooses the threshold (0.1 to 0.9 in steps of 0.05) with the best pooled Dice on the
/// validation slices.
pub fn choose_threshold(probs: &[Vec<f32>], truths: &[Vec<u8>]) -> (f32, f64) {
    let mut best = (0.5, -1.0);
    for k in 2..=18 {
        let t = k as f32 * 0.05;
        let c = probs
            .iter()
            .zip(truths)
            .fold(Counts::default(), |acc, (p, y)| acc.merge(Counts::from_probability(p, y, t)));
        if c.dice() > best.1 + 1e-9 {
            best = (t, c.dice());
        }
    }
    best
}

/// A fresh network whose head starts at the lesion prior (fraction of lesion pixels).
///
/// With Adam's per-weight steps of about the learning rate, a head that starts at p = 0.5
/// spends hundreds of steps only learning that lesions are rare.
pub fn init_with_prior(cfg: &UNetConfig, prior: f64, device: &Device) -> UNet {
    let prior = prior.clamp(1e-3, 0.5);
    let logit = (prior / (1.0 - prior)).ln() as f32;
    let mut model = cfg.init(device);
    model.head.bias = Some(burn::module::Param::from_tensor(Tensor::full([1], logit, device)));
    tracing::debug!(prior, logit, "head bias set to the lesion prior");
    model
}

/// Trains on the training part of `split`, validating on the rest, writing checkpoints and logs
/// into `dir`. Each epoch also draws `cfg.extra_per_epoch` slices from `extra` into training.
/// With `cfg.mean_teacher`, each step also draws slices from `unlabelled` for the consistency
/// term. With `resume`, continues from `dir`'s last checkpoint and state.
pub fn train(
    slices: &[LabelledSlice],
    extra: &[LabelledSlice],
    unlabelled: &[GraySlice],
    cfg: &TrainConfig,
    dir: &Path,
    resume: bool,
    init_from: Option<&Path>,
) -> Result<RunState> {
    let run = RunDir(dir.to_path_buf());
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ids: Vec<String> = slices.iter().map(|s| s.id.clone()).collect();
    let split = Split::k_fold(&ids, cfg.seed, cfg.folds, cfg.fold);
    let pick = |names: &[String]| -> Vec<&LabelledSlice> {
        slices.iter().filter(|s| names.contains(&s.id)).collect()
    };
    let (mut train_set, val_set) = (pick(&split.train), pick(&split.validation));
    if cfg.all_slices {
        train_set = slices.iter().collect();
        tracing::info!("training on all slices; the validation fold is only logged");
    }
    if train_set.is_empty() || val_set.is_empty() {
        bail!("split of {} slices into {} folds leaves an empty part", slices.len(), cfg.folds);
    }
    let side = cfg.unet.input_size as usize;
    let val: Vec<Example> =
        val_set.iter().map(|s| data::example(s, cfg.unet.input_size, cfg.normalisation)).collect();

    let eval_device = cfg.backend.device()?;
    let device = eval_device.clone().autodiff();
    device.seed(cfg.init_seed.unwrap_or(cfg.seed));
    tracing::info!(backend = cfg.backend.name(), "training backend");
    let (mut model, mut state) = if resume {
        let state: RunState = read_json(&run.state())?;
        let saved: TrainConfig = run.read_config()?;
        if saved.unet != cfg.unet
            || saved.seed != cfg.seed
            || saved.init_seed != cfg.init_seed
            || saved.fold != cfg.fold
        {
            bail!("--resume: {} was trained with another network, seed or fold", dir.display());
        }
        if saved.mean_teacher != cfg.mean_teacher {
            bail!(
                "--resume: {} was trained with mean-teacher settings {:?}, not {:?}; resume it \
                 with the same --unlabelled folder and options",
                dir.display(),
                saved.mean_teacher,
                cfg.mean_teacher
            );
        }
        let (model, from) = if cfg.mean_teacher.is_some() {
            let model = cfg.unet.init(&device).try_load_file(run.student()).map_err(|e| {
                anyhow::anyhow!("student checkpoint {}: {e}", run.student().display())
            })?;
            (model, run.student())
        } else {
            (run.load_model(false, &device)?.1, run.last())
        };
        tracing::info!(epochs_done = state.epochs_done, "resuming from {}", from.display());
        (model, state)
    } else {
        // A student left by an earlier run in this folder would belong to another run.
        if run.student().exists() {
            std::fs::remove_file(run.student())
                .with_context(|| format!("removing {}", run.student().display()))?;
        }
        write_json(&run.config(), cfg)?;
        write_json(&run.split(), &split)?;
        std::fs::write(
            run.epochs_csv(),
            "epoch,learning_rate,train_loss,train_bce,train_tv,val_loss,val_precision,val_recall,val_dice,\
             seconds,train_soft_dice,train_lung_bce,\
             train_consistency,student_val_dice\n",
        )?;
        let state = RunState {
            epochs_done: 0,
            learning_rate: cfg.learning_rate,
            best_val_loss: f64::INFINITY,
            best_epoch: 0,
            epochs_without_gain: 0,
            epochs_since_cut: 0,
            wall_s: 0.0,
            stopped_early: false,
        };
        let lesion_px: usize =
            train_set.iter().map(|s| s.mask.iter().filter(|&&v| v != 0).count()).sum();
        let total_px: usize = train_set.iter().map(|s| s.mask.len()).sum();
        let prior = lesion_px as f64 / total_px.max(1) as f64;
        let model = match init_from {
            Some(other) => {
                let other = RunDir(other.to_path_buf());
                let (other_cfg, mut model) = other.load_model(true, &device)?;
                if other_cfg.unet != cfg.unet {
                    bail!(
                        "--init-from {}: its network {:?} differs from {:?}",
                        other.0.display(),
                        other_cfg.unet,
                        cfg.unet
                    );
                }
                tracing::info!("starting from {}", other.best().display());
                if cfg.fresh_head {
                    model.head = init_with_prior(&cfg.unet, prior, &device).head;
                    tracing::info!("output head started afresh");
                }
                model
            }
            None => init_with_prior(&cfg.unet, prior, &device),
        };
        (model, state)
    };
    // PyTorch's epsilon; burn's default of 1e-5 damps the early steps.
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    tracing::info!(
        train = train_set.len(),
        validation = val_set.len(),
        params = model.num_params(),
        "training"
    );

    let extra_per_epoch = cfg.extra_per_epoch.min(extra.len());
    if extra_per_epoch > 0 {
        tracing::info!(extra = extra.len(), per_epoch = extra_per_epoch, "extra training slices");
    }
    let crop = if cfg.crop == 0 { cfg.unet.input_size } else { cfg.crop };
    if crop > cfg.unet.input_size {
        bail!("crop {crop} px is larger than the model input {} px", cfg.unet.input_size);
    }
    let per_slice = cfg.crops_per_slice.max(1);
    let mut teacher = match &cfg.mean_teacher {
        None => None,
        Some(mt) => {
            if unlabelled.is_empty() || mt.per_step == 0 {
                bail!("mean teacher: no unlabelled slices to draw, or 0 per step");
            }
            tracing::info!(
                unlabelled = unlabelled.len(),
                per_step = mt.per_step,
                weight = mt.weight,
                "mean teacher"
            );
            Some(if resume { run.load_model(false, &eval_device)?.1 } else { model.valid() })
        }
    };
    let steps = ((train_set.len() + extra_per_epoch) * per_slice).div_ceil(cfg.batch_size);
    for epoch in state.epochs_done + 1..=cfg.epochs {
        let started = Instant::now();
        if cfg.schedule == Schedule::Cosine {
            state.learning_rate = cosine_rate(cfg.learning_rate, epoch, cfg.epochs);
        }
        let mut rng = data::epoch_rng(cfg.init_seed.unwrap_or(cfg.seed), epoch);
        let mut drawn: Vec<&LabelledSlice> = extra.iter().collect();
        drawn.shuffle(&mut rng);
        drawn.truncate(extra_per_epoch);
        let epoch_set: Vec<&LabelledSlice> = train_set.iter().copied().chain(drawn).collect();
        let mut order: Vec<usize> =
            (0..epoch_set.len() * per_slice).map(|i| i % epoch_set.len()).collect();
        order.shuffle(&mut rng);
        let bar = ProgressBar::new(steps as u64).with_style(
            ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} steps, eta {eta}")
                .expect("valid template"),
        );
        bar.set_message(format!("{epoch}/{}", cfg.epochs));
        let (mut sum_loss, mut sum_bce, mut sum_tv, mut sum_dice) = (0.0, 0.0, 0.0, 0.0);
        let mut sum_lung = 0.0;
        let mut sum_consistency = 0.0;
        let mut seen = 0usize;
        // The unlabelled draws have their own stream, so that the labelled slices see the same
        // augmentation as in a run without a teacher.
        let mut unlabelled_rng = data::epoch_rng(!cfg.init_seed.unwrap_or(cfg.seed), epoch);
        for chunk in order.chunks(cfg.batch_size) {
            let examples: Vec<Example> = chunk
                .iter()
                .map(|&i| {
                    let whole = data::augmented_example(
                        epoch_set[i],
                        cfg.unet.input_size,
                        &cfg.augment,
                        cfg.normalisation,
                        &mut rng,
                    );
                    data::random_window(&whole, cfg.unet.input_size, crop, &mut rng)
                })
                .collect();
            let b = batch(&examples, crop as usize, &device);
            let (logits, lung) = model.forward_with_lung(b.planes);
            let mut parts = loss::tv_unet_loss(logits, b.lesion, cfg.lambda_tv, cfg.dice_weight);
            let n = chunk.len() as f64;
            if let Some(lung) = lung {
                let lung_bce = loss::bce_with_logits(lung, b.lung);
                sum_lung += f64::from(lung_bce.clone().into_scalar::<f32>()) * n;
                parts.total = parts.total + lung_bce;
            }
            if let (Some(mt), Some(teacher)) = (&cfg.mean_teacher, &teacher) {
                let (student_plane, teacher_plane) =
                    unlabelled_batch(unlabelled, mt, cfg, &mut unlabelled_rng);
                let shape = [mt.per_step, 1, side, side];
                let target = teacher.probability(Tensor::from_data(
                    TensorData::new(teacher_plane, shape),
                    &eval_device,
                ));
                let student = model
                    .probability(Tensor::from_data(TensorData::new(student_plane, shape), &device));
                let c = mean_teacher::consistency_loss(student, target);
                sum_consistency += f64::from(c.clone().into_scalar::<f32>()) * n;
                parts.total = parts.total + c.mul_scalar(mean_teacher::ramped_weight(mt, epoch));
            }
            sum_dice += f64::from(parts.dice.into_scalar::<f32>()) * n;
            sum_bce += f64::from(parts.bce.into_scalar::<f32>()) * n;
            sum_tv += f64::from(parts.tv.into_scalar::<f32>()) * n;
            sum_loss += f64::from(parts.total.clone().into_scalar::<f32>()) * n;
            seen += chunk.len();
            let grads = GradientsParams::from_grads(parts.total.backward(), &model);
            model = optim.step(state.learning_rate, model, grads);
            if let (Some(mt), Some(t)) = (&cfg.mean_teacher, teacher.take()) {
                let step = (epoch - 1) * steps + seen.div_ceil(cfg.batch_size) - 1;
                teacher =
                    Some(mean_teacher::update_teacher(t, &model, mean_teacher::decay_at(mt, step)));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();

        // With a teacher, the teacher is what is validated and kept.
        let kept = teacher.as_ref().unwrap_or(&model);
        let v = validate(kept, &val, side, cfg, &eval_device);
        let student_dice = match teacher {
            Some(_) => validate(&model, &val, side, cfg, &eval_device).counts.dice(),
            None => v.counts.dice(),
        };
        let seconds = started.elapsed().as_secs_f64();
        state.wall_s += seconds;
        state.epochs_done = epoch;
        let row = EpochRow {
            epoch,
            learning_rate: state.learning_rate,
            train_loss: sum_loss / seen as f64,
            train_bce: sum_bce / seen as f64,
            train_tv: sum_tv / seen as f64,
            train_dice: sum_dice / seen as f64,
            val_loss: v.loss,
            val_precision: v.counts.precision(),
            val_recall: v.counts.recall(),
            val_dice: v.counts.dice(),
            seconds,
        };
        let mut csv = std::fs::OpenOptions::new().append(true).open(run.epochs_csv())?;
        writeln!(
            csv,
            "{},{:e},{:.5},{:.5},{:.5},{:.5},{:.4},{:.4},{:.4},{:.1},{:.5},{:.5},{:.6},{:.4}",
            row.epoch,
            row.learning_rate,
            row.train_loss,
            row.train_bce,
            row.train_tv,
            row.val_loss,
            row.val_precision,
            row.val_recall,
            row.val_dice,
            row.seconds,
            row.train_dice,
            sum_lung / seen as f64,
            sum_consistency / seen as f64,
            student_dice
        )?;
        println!(
            "epoch {:>3}  loss {:.4} (bce {:.4}, tv {:.4})  val loss {:.4}  dice {:.3}  \
             precision {:.3}  recall {:.3}  {:.0}s",
            epoch,
            row.train_loss,
            row.train_bce,
            row.train_tv,
            row.val_loss,
            row.val_dice,
            row.val_precision,
            row.val_recall,
            seconds
        );

        // Curves are a convenience: a failure to draw them must not end a training run.
        if let Err(e) = plot_epochs(&run) {
            tracing::warn!("could not draw the epoch curves: {e:#}");
        }
        if teacher.is_some() {
            model
                .clone()
                .save_file(run.student())
                .map_err(|e| anyhow::anyhow!("saving checkpoint: {e:?}"))?;
        }
        kept.clone()
            .save_file(run.last())
            .map_err(|e| anyhow::anyhow!("saving checkpoint: {e:?}"))?;
        // A fixed-length run (cosine schedule, or all slices) keeps its last epoch: validation
        // then chooses nothing but the threshold.
        let fixed_length = cfg.all_slices || cfg.schedule == Schedule::Cosine;
        if fixed_length || v.loss < state.best_val_loss {
            state.best_val_loss = v.loss;
            state.best_epoch = epoch;
            state.epochs_without_gain = 0;
            state.epochs_since_cut = 0;
            kept.clone()
                .save_file(run.best())
                .map_err(|e| anyhow::anyhow!("saving checkpoint: {e:?}"))?;
            tracing::info!(
                epoch,
                val_loss = v.loss,
                "new best checkpoint {}",
                run.best().display()
            );
        } else {
            state.epochs_without_gain += 1;
            state.epochs_since_cut += 1;
            if cfg.schedule == Schedule::Plateau && state.epochs_since_cut >= cfg.plateau_patience {
                state.learning_rate *= 0.5;
                state.epochs_since_cut = 0;
                tracing::info!(
                    epoch,
                    lr = state.learning_rate,
                    "validation loss on a plateau: halving lr"
                );
            }
        }
        let out_of_time = cfg.max_minutes > 0.0 && state.wall_s > cfg.max_minutes * 60.0;
        if state.epochs_without_gain >= cfg.early_stop_patience {
            state.stopped_early = true;
            tracing::info!(epoch, best_epoch = state.best_epoch, "early stop");
        }
        write_json(&run.state(), &state)?;
        if state.stopped_early || out_of_time {
            break;
        }
    }

    if cfg.all_slices {
        println!(
            "trained on all slices for {} epochs, {:.1} min; no threshold chosen (the fold was \
             trained on): pass the cross-validated one to `export --threshold`",
            state.epochs_done,
            state.wall_s / 60.0
        );
        return Ok(state);
    }
    // The default threshold is chosen on validation slices only.
    let (_, best) = run.load_model(true, &eval_device)?;
    let planes: Vec<Vec<f32>> = val.iter().map(|e| e.plane.clone()).collect();
    let truths: Vec<Vec<u8>> =
        val.iter().map(|e| e.target.iter().map(|&t| u8::from(t > 0.5)).collect()).collect();
    let probs = predict_planes(&best, &planes, side, &eval_device);
    let (threshold, dice) = choose_threshold(&probs, &truths);
    write_json(
        &run.threshold(),
        &serde_json::json!({ "threshold": threshold, "validation_dice": dice }),
    )?;
    println!(
        "best epoch {} (val loss {:.4}); threshold {threshold:.2} gives validation dice {dice:.3}; \
         {:.1} min",
        state.best_epoch,
        state.best_val_loss,
        state.wall_s / 60.0
    );
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cosine schedule starts at the initial rate, halves at mid-run and nears 0 at the end.
    #[test]
    fn cosine_schedule_shape() {
        assert!((cosine_rate(1e-3, 1, 100) - 1e-3).abs() < 1e-12);
        assert!((cosine_rate(1e-3, 51, 100) - 5e-4).abs() < 1e-9);
        let last = cosine_rate(1e-3, 100, 100);
        assert!(last > 0.0 && last < 1e-5, "last epoch rate {last}");
    }

    /// A small U-Net fits one real slice well below the loss of predicting the lesion prior:
    /// gradients reach every layer and the optimiser moves them.
    #[test]
    fn small_unet_fits_one_real_slice() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/medseg");
        let slices = data::read_folder(&dir, Target::Infection).unwrap();
        let largest =
            slices.iter().max_by_key(|s| s.mask.iter().filter(|&&v| v != 0).count()).unwrap();
        let ex = data::example(largest, 64, Normalisation::ZscorePerSlice);
        let device = Device::flex().autodiff();
        device.seed(1);
        let cfg = UNetConfig { depth: 2, base: 8, input_size: 64, ..UNetConfig::default() };
        let prior = ex.target.iter().sum::<f32>() as f64 / ex.target.len() as f64;
        let mut model = init_with_prior(&cfg, prior, &device);
        let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
        let prior_bce = -(prior * prior.ln() + (1.0 - prior) * (1.0 - prior).ln());
        let mut last = f64::MAX;
        for _ in 0..80 {
            let b = batch(std::slice::from_ref(&ex), 64, &device);
            let l = loss::bce_with_logits(model.forward(b.planes), b.lesion);
            last = f64::from(l.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        assert!(last < 0.5 * prior_bce, "bce {last} after 80 steps; prior alone gives {prior_bce}");
    }

    /// The lung head of a small network learns a real slice's lung field, and the probability
    /// the network reports is the lesion sigmoid times the lung-field sigmoid.
    #[test]
    fn lung_head_learns_the_field_and_gates_the_lesion() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/medseg");
        let slices = data::read_folder(&dir, Target::Infection).unwrap();
        let ex = data::example(&slices[0], 64, Normalisation::ZscorePerSlice);
        let share = ex.lung.iter().sum::<f32>() as f64 / ex.lung.len() as f64;
        assert!((0.2..0.9).contains(&share), "lung field covers {share} of the slice");
        let device = Device::flex().autodiff();
        device.seed(2);
        let cfg = UNetConfig {
            depth: 2,
            base: 8,
            input_size: 64,
            lung_field: true,
            ..Default::default()
        };
        let mut model = cfg.init(&device);
        let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
        let chance = -(share * share.ln() + (1.0 - share) * (1.0 - share).ln());
        let mut last = f64::MAX;
        for _ in 0..80 {
            let b = batch(std::slice::from_ref(&ex), 64, &device);
            let (_, lung) = model.forward_with_lung(b.planes);
            let l = loss::bce_with_logits(lung.expect("a lung head"), b.lung);
            last = f64::from(l.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        assert!(
            last < 0.5 * chance,
            "lung bce {last} after 80 steps; the share alone gives {chance}"
        );

        let model = model.valid();
        let x = batch(std::slice::from_ref(&ex), 64, &Device::flex()).planes;
        let (lesion, lung) = model.forward_with_lung(x.clone());
        let want: Vec<f32> = (burn::tensor::activation::sigmoid(lesion)
            * burn::tensor::activation::sigmoid(lung.unwrap()))
        .into_data()
        .try_to_vec()
        .unwrap();
        let got: Vec<f32> = model.probability(x).into_data().try_to_vec().unwrap();
        assert_eq!(got, want);
    }
}
