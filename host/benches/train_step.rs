//! Seconds per training step of the TV-UNet recipe (forward, loss, backward, Adam) on the
//! burn backends this build has, on real MedSeg slices.
//!
//! `cargo bench -p tvunet --bench train_step [-- --steps N --batch B --size S --base C
//! --backend flex|cpu|cuda|wgpu]` (a backend other than flex needs its cargo feature)
//! prints the median and spread of N timed steps after two warm-up steps, and the split
//! between forward and backward+update.

use std::path::Path;
use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;
use clap::ValueEnum;
use tvunet::data::{self, Augment, Target};
use tvunet::model::UNetConfig;
use tvunet::train::{init_with_prior, loss, TrainBackend};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} {v}: not a whole number")))
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let steps = arg("--steps", 5);
    let batch = arg("--batch", 4);
    let size = arg("--size", 256) as u32;
    let base = arg("--base", 16);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/medseg");
    let slices = data::read_folder(&root, Target::Infection).expect("fixture slices");
    let cfg = UNetConfig { depth: 4, base, input_size: size, ..UNetConfig::default() };
    let mut rng = data::epoch_rng(7, 1);
    let side = size as usize;

    let backend = std::env::args()
        .skip_while(|a| a != "--backend")
        .nth(1)
        .map_or(Ok(TrainBackend::Flex), |v| TrainBackend::from_str(&v, true))
        .unwrap_or_else(|e| panic!("--backend: {e}"));
    let device = backend.device().unwrap_or_else(|e| panic!("{e}")).autodiff();
    device.seed(7);
    let mut model = init_with_prior(&cfg, 0.03, &device);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let (mut forward_s, mut total_s) = (Vec::new(), Vec::new());
    for step in 0..steps + 2 {
        let examples: Vec<_> = (0..batch)
            .map(|i| {
                let s = &slices[(step * batch + i) % slices.len()];
                data::augmented_example(s, size, &Augment::default(), Default::default(), &mut rng)
            })
            .collect();
        let planes: Vec<f32> = examples.iter().flat_map(|e| e.plane.clone()).collect();
        let targets: Vec<f32> = examples.iter().flat_map(|e| e.target.clone()).collect();
        let started = Instant::now();
        let x = Tensor::from_data(TensorData::new(planes, [batch, 1, side, side]), &device);
        let y = Tensor::from_data(TensorData::new(targets, [batch, 1, side, side]), &device);
        let parts = loss::tv_unet_loss(model.forward(x), y, 0.3, 0.0);
        let _ = parts.total.clone().into_scalar::<f32>();
        let forward = started.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(parts.total.backward(), &model);
        model = optim.step(1e-3, model, grads);
        let _ = model.head.weight.val().into_data();
        let total = started.elapsed().as_secs_f64();
        if step >= 2 {
            forward_s.push(forward);
            total_s.push(total);
        }
    }
    let (f, t) = (median(forward_s), median(total_s.clone()));
    let spread = total_s.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        - total_s.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "backend {}, batch {batch}, {size}x{size}, base {base}, depth 4, {} threads: \
         step median {t:.3} s (spread {spread:.3} s over {steps}), forward+loss {f:.3} s, \
         backward+Adam {:.3} s, {:.1} slices/s",
        backend.name(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
            std::thread::available_parallelism().map_or(1, |n| n.get()).to_string()
        }),
        t - f,
        batch as f64 / t
    );
}
