//! The compact U-Net: conv-BN-ReLU blocks, max-pool down, transposed-conv up, skip concatenation,
//! one output channel (logits; the sigmoid is applied by the loss and by the exported graph).

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d, Relu};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Shape of the network, stored beside every checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Number of 2x down-samplings.
    pub depth: usize,
    /// Channels of the first block; each level doubles them.
    pub base: usize,
    /// Side of the square input, pixels; a multiple of `2^depth`.
    pub input_size: u32,
    /// Depthwise-separable blocks: every 3x3 convolution whose input has more than one channel
    /// becomes a depthwise 3x3 (one filter per input channel) followed by a 1x1 convolution.
    #[serde(default)]
    pub separable: bool,
    /// A second 1x1 head beside the lesion head that learns the lung field
    /// ([`crate::lung::lung_field`]); the probability the network reports is then the lesion
    /// probability times the lung-field probability.
    #[serde(default)]
    pub lung_field: bool,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self { depth: 4, base: 16, input_size: 256, separable: false, lung_field: false }
    }
}

/// Two 3x3 convolutions, each followed by batch norm and ReLU. In a separable block each 3x3
/// convolution is `dw` (depthwise 3x3, no norm or activation) then `conv` (1x1).
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub dw1: Option<Conv2d>,
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub dw2: Option<Conv2d>,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    relu: Relu,
}

/// A 3x3 convolution, plain or as depthwise 3x3 + pointwise 1x1.
fn conv3x3(
    c_in: usize,
    c_out: usize,
    separable: bool,
    device: &Device,
) -> (Option<Conv2d>, Conv2d) {
    let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
    if separable && c_in > 1 {
        let dw = Conv2dConfig::new([c_in, c_in], [3, 3])
            .with_groups(c_in)
            .with_padding(same)
            .init(device);
        (Some(dw), Conv2dConfig::new([c_in, c_out], [1, 1]).init(device))
    } else {
        (None, Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(same).init(device))
    }
}

impl ConvBlock {
    pub(crate) fn new(c_in: usize, c_out: usize, separable: bool, device: &Device) -> Self {
        let (dw1, conv1) = conv3x3(c_in, c_out, separable, device);
        let (dw2, conv2) = conv3x3(c_out, c_out, separable, device);
        Self {
            dw1,
            conv1,
            bn1: BatchNormConfig::new(c_out).init(device),
            dw2,
            conv2,
            bn2: BatchNormConfig::new(c_out).init(device),
            relu: Relu::new(),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = match &self.dw1 {
            Some(dw) => dw.forward(x),
            None => x,
        };
        let x = self.relu.forward(self.bn1.forward(self.conv1.forward(x)));
        let x = match &self.dw2 {
            Some(dw) => dw.forward(x),
            None => x,
        };
        self.relu.forward(self.bn2.forward(self.conv2.forward(x)))
    }
}

/// One decoder level: 2x2 transposed convolution up, concatenation with the skip, conv block.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub up: ConvTranspose2d,
    pub block: ConvBlock,
}

/// The U-Net.
#[derive(Module, Debug)]
pub struct UNet {
    pub down: Vec<ConvBlock>,
    pub bottom: ConvBlock,
    pub up: Vec<UpBlock>,
    pub head: Conv2d,
    /// The lung-field head, in a network built with `lung_field`.
    pub lung_head: Option<Conv2d>,
    pool: MaxPool2d,
}

impl UNetConfig {
    /// The `tvunet.architecture` metadata value: `unet depth D base B`, then `separable` where
    /// the blocks are and `lung-gated` where a lung head gates the lesion probability.
    pub fn architecture(&self) -> String {
        let kind = if self.separable { " separable" } else { "" };
        let gate = if self.lung_field { " lung-gated" } else { "" };
        format!("unet depth {} base {}{kind}{gate}", self.depth, self.base)
    }

    /// Channels at level `i` (0 = full resolution).
    pub fn channels(&self, level: usize) -> usize {
        self.base << level
    }

    /// Builds a freshly initialised network on `device`.
    ///
    /// # Panics
    /// When `input_size` is not a multiple of `2^depth`, naming both.
    pub fn init(&self, device: &Device) -> UNet {
        assert!(
            self.depth >= 1 && self.input_size.is_multiple_of(1 << self.depth),
            "input size {} is not a multiple of 2^depth (depth {})",
            self.input_size,
            self.depth
        );
        let mut down = Vec::new();
        let mut c_in = 1;
        for level in 0..self.depth {
            down.push(ConvBlock::new(c_in, self.channels(level), self.separable, device));
            c_in = self.channels(level);
        }
        let bottom = ConvBlock::new(c_in, self.channels(self.depth), self.separable, device);
        let up = (0..self.depth)
            .rev()
            .map(|level| {
                let c = self.channels(level);
                UpBlock {
                    up: ConvTranspose2dConfig::new([2 * c, c], [2, 2])
                        .with_stride([2, 2])
                        .init(device),
                    block: ConvBlock::new(2 * c, c, self.separable, device),
                }
            })
            .collect();
        UNet {
            down,
            bottom,
            up,
            head: Conv2dConfig::new([self.base, 1], [1, 1]).init(device),
            lung_head: self
                .lung_field
                .then(|| Conv2dConfig::new([self.base, 1], [1, 1]).init(device)),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        }
    }
}

impl UNet {
    /// Lesion logits.
    ///
    /// # Shapes
    /// `x`: batch x 1 x side x side normalised planes; returns batch x 1 x side x side logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.head.forward(self.features(x))
    }

    /// Lesion logits and, in a network with a lung head, lung-field logits, each
    /// batch x 1 x side x side.
    pub fn forward_with_lung(&self, x: Tensor<4>) -> (Tensor<4>, Option<Tensor<4>>) {
        let features = self.features(x);
        let lung = self.lung_head.as_ref().map(|h| h.forward(features.clone()));
        (self.head.forward(features), lung)
    }

    /// The probability the network reports, as the exported graph computes it: the lesion
    /// sigmoid, times the lung-field sigmoid where there is a lung head.
    pub fn probability(&self, x: Tensor<4>) -> Tensor<4> {
        let (lesion, lung) = self.forward_with_lung(x);
        gated_probability(lesion, lung)
    }

    /// The last decoder block's output, base x side x side per slice.
    fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let mut skips = Vec::with_capacity(self.down.len());
        let mut x = x;
        for block in &self.down {
            let y = block.forward(x);
            x = self.pool.forward(y.clone());
            skips.push(y);
        }
        x = self.bottom.forward(x);
        for up in &self.up {
            let skip = skips.pop().expect("one skip per level");
            x = up.block.forward(Tensor::cat(vec![up.up.forward(x), skip], 1));
        }
        x
    }
}

/// `sigmoid(lesion)`, times `sigmoid(lung)` when there are lung-field logits.
pub fn gated_probability(lesion: Tensor<4>, lung: Option<Tensor<4>>) -> Tensor<4> {
    let p = burn::tensor::activation::sigmoid(lesion);
    match lung {
        Some(l) => p * burn::tensor::activation::sigmoid(l),
        None => p,
    }
}
