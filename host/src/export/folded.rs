//! The trained network with batch norm folded into its convolutions, as plain arrays: the form
//! the ONNX writer (and any later integer writer) starts from.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::prelude::*;

use crate::model::{ConvBlock, UNet, UNetConfig};

/// A convolution with its bias, weights in ONNX layout.
#[derive(Debug, Clone)]
pub struct FoldedConv {
    /// Conv: out x in x kh x kw. ConvTranspose: in x out x kh x kw (ONNX's order for each).
    pub dims: [usize; 4],
    /// Weights, row-major in `dims`.
    pub weight: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
    /// Channel groups (ONNX `group`): 1 for a plain convolution, the channel count for a
    /// depthwise one.
    pub group: usize,
}

/// Two folded 3x3 convolutions, each followed by ReLU; in a separable block each is a depthwise
/// 3x3 (`dw1`, `dw2`, no activation) then a 1x1 convolution.
#[derive(Debug, Clone)]
pub struct FoldedBlock {
    pub dw1: Option<FoldedConv>,
    pub conv1: FoldedConv,
    pub dw2: Option<FoldedConv>,
    pub conv2: FoldedConv,
}

/// The whole network, batch norm folded, evaluation mode.
#[derive(Debug, Clone)]
pub struct FoldedUNet {
    pub config: UNetConfig,
    pub down: Vec<FoldedBlock>,
    pub bottom: FoldedBlock,
    /// Per decoder level, from the deepest: the 2x2 transposed convolution and the block.
    pub up: Vec<(FoldedConv, FoldedBlock)>,
    /// 1x1 convolution to one channel of logits.
    pub head: FoldedConv,
    /// 1x1 convolution to one channel of lung-field logits, in a lung-gated network.
    pub lung_head: Option<FoldedConv>,
}

fn values<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
    p.val().into_data().try_to_vec::<f32>().expect("f32 parameters")
}

fn plain(conv: &Conv2d) -> FoldedConv {
    let w = conv.weight.val();
    let dims = w.dims();
    let bias = conv.bias.as_ref().map(values).unwrap_or_else(|| vec![0.0; dims[0]]);
    // Burn's weight is out x (in / groups) x kh x kw, as ONNX's.
    FoldedConv { dims, weight: values(&conv.weight), bias, group: conv.groups }
}

/// Folds `bn(conv(x))` into one convolution:
/// w' = w g / sqrt(v + e), b' = (b - m) g / sqrt(v + e) + beta.
fn fold(conv: &Conv2d, bn: &BatchNorm) -> FoldedConv {
    let mut c = plain(conv);
    let gamma = values(&bn.gamma);
    let beta = values(&bn.beta);
    let mean: Vec<f32> = bn.running_mean.value().into_data().try_to_vec().expect("f32 mean");
    let var: Vec<f32> = bn.running_var.value().into_data().try_to_vec().expect("f32 variance");
    let per_out = c.weight.len() / c.dims[0];
    for o in 0..c.dims[0] {
        let scale = (f64::from(gamma[o]) / (f64::from(var[o]) + bn.epsilon).sqrt()) as f32;
        for w in &mut c.weight[o * per_out..(o + 1) * per_out] {
            *w *= scale;
        }
        c.bias[o] = (c.bias[o] - mean[o]) * scale + beta[o];
    }
    c
}

fn block(b: &ConvBlock) -> FoldedBlock {
    FoldedBlock {
        dw1: b.dw1.as_ref().map(plain),
        conv1: fold(&b.conv1, &b.bn1),
        dw2: b.dw2.as_ref().map(plain),
        conv2: fold(&b.conv2, &b.bn2),
    }
}

impl FoldedUNet {
    /// Folds a trained network.
    pub fn from_model(model: &UNet, config: UNetConfig) -> Self {
        let model = model.valid();
        Self {
            config,
            down: model.down.iter().map(block).collect(),
            bottom: block(&model.bottom),
            up: model
                .up
                .iter()
                .map(|u| {
                    let w = u.up.weight.val();
                    let dims = w.dims();
                    let bias = u.up.bias.as_ref().map(values).unwrap_or_else(|| vec![0.0; dims[1]]);
                    let up = FoldedConv { dims, weight: values(&u.up.weight), bias, group: 1 };
                    (up, block(&u.block))
                })
                .collect(),
            head: plain(&model.head),
            lung_head: model.lung_head.as_ref().map(plain),
        }
    }
}
