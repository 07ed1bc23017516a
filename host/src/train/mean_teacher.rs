//! Mean teacher on unlabelled slices (semi-supervised): a second copy of the network whose
//! weights are an exponential moving average of the trained network's. On each step the
//! trained network (the student) sees an unlabelled slice with one grey-level change and noise,
//! the teacher the same warp with another grey-level change, and the student is pulled towards
//! the teacher's lesion probabilities (mean squared difference). The teacher is the kept model.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::UNet;

/// Settings of the mean-teacher term; written into the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanTeacherConfig {
    /// Weight of the consistency term once fully ramped up (the supervised loss has weight 1).
    pub weight: f32,
    /// Largest decay of the teacher's moving average per optimiser step (0.95 averages over
    /// about the last 20 steps); early steps use `1 - 1 / (step + 1)` when that is smaller.
    pub ema_decay: f64,
    /// Epochs over which the weight rises from 0 along `exp(-5 (1 - t)²)`.
    pub ramp_epochs: usize,
    /// Unlabelled slices per optimiser step.
    pub per_step: usize,
    /// Standard deviation of the Gaussian noise on the student's view, normalised units.
    pub noise_sd: f32,
    /// Number of unlabelled slices read.
    pub unlabelled: usize,
    /// sha256 over the unlabelled slices' grey values, in reading order.
    pub unlabelled_fingerprint: String,
}

/// Weight of the consistency term in 1-based `epoch`.
pub fn ramped_weight(cfg: &MeanTeacherConfig, epoch: usize) -> f32 {
    if cfg.ramp_epochs == 0 {
        return cfg.weight;
    }
    let t = (epoch as f32 / cfg.ramp_epochs as f32).min(1.0);
    cfg.weight * (-5.0 * (1.0 - t).powi(2)).exp()
}

/// Decay of the teacher's average after `step` optimiser steps (0-based).
pub fn decay_at(cfg: &MeanTeacherConfig, step: usize) -> f64 {
    cfg.ema_decay.min(1.0 - 1.0 / (step as f64 + 1.0))
}

/// Every float tensor of a module (weights and batch-norm running statistics), flattened,
/// without autodiff, in visiting order.
struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().inner().flatten(0, D - 1));
    }
}

/// Moves each float tensor of the teacher towards the student's tensor at the same place.
struct Average {
    student: std::vec::IntoIter<Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Average {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let student = self.student.next().expect("teacher and student have the same network");
        let decay = self.decay;
        param.map(|teacher| {
            let shape = teacher.shape();
            teacher.mul_scalar(decay).add(student.reshape(shape).mul_scalar(1.0 - decay))
        })
    }
}

/// The teacher after one step: `decay x teacher + (1 - decay) x student` for every weight and
/// running statistic. The teacher lives without autodiff (`student.valid()` at the start).
pub fn update_teacher(teacher: UNet, student: &UNet, decay: f64) -> UNet {
    let mut collect = Collect(Vec::new());
    // `valid` settles the running statistics' latest update, which a plain visit would miss.
    student.valid().visit(&mut collect);
    let mut average = Average { student: collect.0.into_iter(), decay };
    let teacher = teacher.map(&mut average);
    assert!(average.student.next().is_none(), "teacher and student have the same network");
    teacher
}

/// Mean squared difference between the student's lesion probabilities and the teacher's (both
/// as the network reports them, gated by the lung field where it has a lung head), over all
/// pixels.
pub fn consistency_loss(student: Tensor<4>, teacher: Tensor<4>) -> Tensor<1> {
    let target = Tensor::from_inner(teacher.inner());
    (student - target).powi_scalar(2).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UNetConfig;

    fn floats(model: &UNet) -> Vec<f32> {
        let mut c = Collect(Vec::new());
        model.valid().visit(&mut c);
        c.0.into_iter().flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap()).collect()
    }

    /// The average moves every weight and running statistic the stated share of the way, and
    /// leaves the student alone, for plain and depthwise-separable networks.
    #[test]
    fn teacher_moves_towards_the_student() {
        for separable in [false, true] {
            let cfg =
                UNetConfig { depth: 2, base: 4, input_size: 32, separable, ..Default::default() };
            moves_towards_the_student(&cfg);
        }
    }

    fn moves_towards_the_student(cfg: &UNetConfig) {
        let device = Device::flex().autodiff();
        device.seed(3);
        let student = cfg.init(&device);
        // A training-mode forward moves the student's batch-norm running statistics.
        let x = Tensor::<4>::random([2, 1, 32, 32], burn::tensor::Distribution::Default, &device);
        let _ = student.forward(x);
        let teacher = cfg.init(&device).valid();
        let (s, t0) = (floats(&student), floats(&teacher));
        assert_eq!(s.len(), t0.len());
        assert!(s.iter().zip(&t0).any(|(a, b)| (a - b).abs() > 1e-3), "two inits differ");

        let t1 = floats(&update_teacher(teacher.clone(), &student, 0.75));
        for ((a, b), c) in s.iter().zip(&t0).zip(&t1) {
            let want = 0.75 * b + 0.25 * a;
            assert!((c - want).abs() <= 1e-5 * (1.0 + want.abs()), "{c} against {want}");
        }
        assert_eq!(floats(&update_teacher(teacher, &student, 0.0)), s);
        assert_eq!(floats(&student), s);
    }

    /// The weight rises from near 0 to its full value over the ramp, and the decay starts
    /// small so that the first teacher follows the student.
    #[test]
    fn ramp_and_decay() {
        let cfg = MeanTeacherConfig {
            weight: 2.0,
            ema_decay: 0.99,
            ramp_epochs: 30,
            per_step: 4,
            noise_sd: 0.1,
            unlabelled: 1,
            unlabelled_fingerprint: String::new(),
        };
        assert!(ramped_weight(&cfg, 1) < 0.02);
        assert!(ramped_weight(&cfg, 15) < ramped_weight(&cfg, 25));
        assert_eq!(ramped_weight(&cfg, 30), 2.0);
        assert_eq!(ramped_weight(&cfg, 90), 2.0);
        assert_eq!(decay_at(&cfg, 0), 0.0);
        assert_eq!(decay_at(&cfg, 9), 0.9);
        assert_eq!(decay_at(&cfg, 5000), 0.99);
    }
}
