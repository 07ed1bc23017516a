//! TV-UNet loss: binary cross-entropy plus lambda times the anisotropic total variation of the
//! predicted probability map, with an optional soft-Dice term.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;

/// Mean binary cross-entropy computed from logits, stable for large |logit|.
///
/// # Shapes
/// `logits` and `target` are batch x 1 x height x width; `target` holds 0 or 1.
pub fn bce_with_logits(logits: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    // max(x, 0) - x y + log(1 + exp(-|x|))
    let softplus = logits.clone().abs().neg().exp().add_scalar(1.0).log();
    (logits.clone().clamp_min(0.0) - logits * target + softplus).mean()
}

/// Anisotropic total variation of a probability map, per pixel:
/// `sum |p[i+1,j] - p[i,j]| + |p[i,j+1] - p[i,j]|` divided by batch x height x width, so the
/// weight on it does not depend on the image size.
///
/// # Shapes
/// `prob` is batch x 1 x height x width.
pub fn total_variation(prob: Tensor<4>) -> Tensor<1> {
    let [b, c, h, w] = prob.dims();
    let rows = prob.clone().slice([0..b, 0..c, 1..h, 0..w])
        - prob.clone().slice([0..b, 0..c, 0..h - 1, 0..w]);
    let cols =
        prob.clone().slice([0..b, 0..c, 0..h, 1..w]) - prob.slice([0..b, 0..c, 0..h, 0..w - 1]);
    (rows.abs().sum() + cols.abs().sum()).div_scalar((b * c * h * w) as f32)
}

/// Soft Dice loss per slice, averaged over the batch: `1 - (2 sum(p y) + 1) / (sum p + sum y + 1)`
/// for each slice. The smoothing of 1 pixel keeps a slice without lesion defined (its loss is
/// then the share the marked area takes of itself plus one), and it follows the figure the
/// clinic reads, the Dice of each slice, rather than the pixel average BCE follows.
///
/// # Shapes
/// `prob` and `target` are batch x 1 x height x width.
pub fn soft_dice(prob: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let [b, c, h, w] = prob.dims();
    let p = prob.reshape([b, c * h * w]);
    let y = target.reshape([b, c * h * w]);
    let overlap = (p.clone() * y.clone()).sum_dim(1);
    let sizes = p.sum_dim(1) + y.sum_dim(1);
    let dice = overlap.mul_scalar(2.0).add_scalar(1.0) / sizes.add_scalar(1.0);
    dice.neg().add_scalar(1.0).mean()
}

/// The terms of the loss, kept apart for logging.
pub struct LossParts {
    /// BCE + lambda x TV + dice_weight x soft Dice, the value that is minimised.
    pub total: Tensor<1>,
    /// The BCE term.
    pub bce: Tensor<1>,
    /// The TV term before weighting.
    pub tv: Tensor<1>,
    /// The soft-Dice term before weighting.
    pub dice: Tensor<1>,
}

/// BCE + `lambda` x TV + `dice_weight` x soft Dice, of `sigmoid(logits)`.
pub fn tv_unet_loss(
    logits: Tensor<4>,
    target: Tensor<4>,
    lambda: f32,
    dice_weight: f32,
) -> LossParts {
    let bce = bce_with_logits(logits.clone(), target.clone());
    let prob = sigmoid(logits);
    let tv = total_variation(prob.clone());
    let dice = soft_dice(prob, target);
    let total = bce.clone() + tv.clone().mul_scalar(lambda) + dice.clone().mul_scalar(dice_weight);
    LossParts { total, bce, tv, dice }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn naive_tv(p: &[f32], b: usize, h: usize, w: usize) -> f32 {
        let mut s = 0.0;
        for n in 0..b {
            for i in 0..h {
                for j in 0..w {
                    let v = p[n * h * w + i * w + j];
                    if i + 1 < h {
                        s += (p[n * h * w + (i + 1) * w + j] - v).abs();
                    }
                    if j + 1 < w {
                        s += (p[n * h * w + i * w + j + 1] - v).abs();
                    }
                }
            }
        }
        s / (b * h * w) as f32
    }

    /// The TV term equals a direct double loop over neighbours.
    #[test]
    fn tv_matches_naive_reference() {
        let device = Device::flex();
        let (b, h, w) = (2, 5, 7);
        let values: Vec<f32> = (0..b * h * w).map(|i| ((i * 37 % 11) as f32) / 10.0).collect();
        let t = Tensor::<4>::from_data(TensorData::new(values.clone(), [b, 1, h, w]), &device);
        let got: f32 = total_variation(t).into_scalar();
        let want = naive_tv(&values, b, h, w);
        assert!((got - want).abs() < 1e-5, "tv {got} vs naive {want}");
    }

    /// TV has a non-zero gradient on a non-constant map, and pulls values together.
    #[test]
    fn tv_gradient_is_non_zero() {
        let device = Device::flex().autodiff();
        let values = vec![0.0, 1.0, 0.0, 1.0];
        let t =
            Tensor::<4>::from_data(TensorData::new(values, [1, 1, 2, 2]), &device).require_grad();
        let grads = total_variation(t.clone()).backward();
        let g: Vec<f32> = t.grad(&grads).expect("gradient").into_data().try_to_vec().unwrap();
        assert!(g.iter().any(|v| v.abs() > 1e-3), "gradient {g:?}");
        assert!(g[0] < 0.0 && g[1] > 0.0, "descent raises 0s and lowers 1s: {g:?}");
    }

    /// Soft Dice is 0 for a perfect map, near 1 for a disjoint one, and matches the formula.
    #[test]
    fn soft_dice_matches_formula() {
        let device = Device::flex();
        let y = vec![1.0f32, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let p = vec![0.9f32, 0.5, 0.2, 0.0, 0.0, 0.0, 0.0, 1.0];
        let t = |v: &Vec<f32>| {
            Tensor::<4>::from_data(TensorData::new(v.clone(), [2, 1, 2, 2]), &device)
        };
        let got: f32 = soft_dice(t(&p), t(&y)).into_scalar();
        let first = 1.0 - (2.0 * 1.4 + 1.0) / (1.6 + 2.0 + 1.0);
        let second = 1.0 - (0.0 + 1.0) / (1.0 + 1.0 + 1.0);
        let want = (first + second) / 2.0;
        assert!((got - want).abs() < 1e-5, "soft dice {got} vs {want}");
        let perfect: f32 = soft_dice(t(&y), t(&y)).into_scalar();
        assert!(perfect.abs() < 1e-6, "perfect map gives {perfect}");
    }

    /// BCE from logits equals the textbook formula on probabilities.
    #[test]
    fn bce_matches_formula() {
        let device = Device::flex();
        let x = [-3.0f32, -0.5, 0.0, 2.0];
        let y = [0.0f32, 1.0, 1.0, 0.0];
        let lx = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [1, 1, 2, 2]), &device);
        let ly = Tensor::<4>::from_data(TensorData::new(y.to_vec(), [1, 1, 2, 2]), &device);
        let got: f32 = bce_with_logits(lx, ly).into_scalar();
        let want = x
            .iter()
            .zip(&y)
            .map(|(&x, &y)| {
                let p = 1.0 / (1.0 + (-x).exp());
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            })
            .sum::<f32>()
            / 4.0;
        assert!((got - want).abs() < 1e-5, "bce {got} vs {want}");
    }
}
