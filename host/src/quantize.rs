//! `tvunet quantize`: an fp32 model written by `tvunet export` to an int8 model written for
//! tract, calibrated on real unlabelled slices.
//!
//! The integer graph keeps the device's interface (a normalised f32 plane in, an f32
//! probability map out) and is shaped the way tract runs integer convolutions best:
//! - `QLinearConv` everywhere, i8 weights with one scale per tensor and zero point 0, u8
//!   activations with zero point 0 after each ReLU, so the ReLU is the requantisation clamp;
//! - the 2x2 stride-2 transposed convolutions as a 1x1 `QLinearConv` to 4x the channels
//!   followed by `DepthToSpace` (CRD), which is the same arithmetic without an integer
//!   transposed convolution;
//! - max pooling directly on u8 (it commutes with a positive scale);
//! - the skip concatenations in f32 between a `DequantizeLinear` and a `QuantizeLinear`
//!   (standard ONNX has no quantised concat), and the 1x1 head plus sigmoid in f32, so the
//!   threshold acts on a smooth probability rather than on 256 logit levels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use prost::Message;
use tract_onnx::pb::{tensor_proto::DataType, ModelProto, TensorProto};
use tract_onnx::prelude::*;
use tvunet_device::inference::keys;
use tvunet_device::preprocess::{self, GraySlice};

use crate::export::folded::{FoldedBlock, FoldedConv, FoldedUNet};
use crate::export::onnx::{self, Graph};
use crate::model::UNetConfig;

/// How activation ranges are taken from the calibration slices.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum, serde::Serialize)]
pub enum CalibrationMethod {
    /// Largest and smallest value seen over all calibration slices.
    Max,
    /// Mean over slices of each slice's 0.01 % and 99.99 % quantiles: ignores rare outliers.
    Percentile,
    /// The range, a fraction of the largest seen, whose 256 levels reproduce a sample of the
    /// tensor's values over all calibration slices with the least squared error: clips rare
    /// outliers where that buys finer steps for the bulk of the values.
    Mse,
}

impl std::fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Max => "max",
            Self::Percentile => "percentile-99.99",
            Self::Mse => "mse",
        })
    }
}

/// Observed range of one activation tensor, in its real (f32) units.
#[derive(Debug, Clone, Copy)]
struct Range {
    min: f32,
    max: f32,
}

/// Quantisation of one u8 activation tensor: real = scale x (q - zero_point).
#[derive(Debug, Clone, Copy)]
struct QParams {
    scale: f32,
    zero_point: u8,
}

impl QParams {
    /// Covers `[min, max]` (always including 0) with 256 levels.
    fn covering(r: Range) -> Self {
        let (lo, hi) = (r.min.min(0.0), r.max.max(0.0));
        let scale = ((hi - lo) / 255.0).max(1e-8);
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self { scale, zero_point }
    }

    /// Non-negative tensors (after ReLU): zero point 0.
    fn non_negative(r: Range) -> Self {
        Self { scale: (r.max / 255.0).max(1e-8), zero_point: 0 }
    }
}

/// What a quantisation wrote and measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeSummary {
    /// Calibration method.
    pub method: String,
    /// Calibration slices used.
    pub calibration_slices: usize,
    /// Bytes of the int8 file.
    pub file_bytes: u64,
    /// Bytes of the fp32 file it came from.
    pub fp32_bytes: u64,
}

fn f32s(t: &TensorProto) -> Result<Vec<f32>> {
    ensure!(t.data_type == DataType::Float as i32, "initializer {} is not f32", t.name);
    if !t.raw_data.is_empty() {
        Ok(t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    } else {
        Ok(t.float_data.clone())
    }
}

/// Rebuilds the folded network from an fp32 file written by `tvunet export`.
fn folded_from_onnx(model: &ModelProto) -> Result<FoldedUNet> {
    let props: HashMap<&str, &str> =
        model.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    if props.get(keys::PRECISION) != Some(&"fp32") {
        bail!(
            "the model's {} is {:?}: quantize starts from an fp32 model",
            keys::PRECISION,
            props.get(keys::PRECISION)
        );
    }
    let input_size: u32 = props
        .get(keys::INPUT_SIZE)
        .context("no input size in the model metadata")?
        .parse()
        .context("input size in the model metadata")?;
    let arch = props.get("tvunet.architecture").context("no tvunet.architecture metadata")?;
    let words: Vec<&str> = arch.split_whitespace().collect();
    let (depth, base, options) = match words.as_slice() {
        ["unet", "depth", d, "base", b, options @ ..] => (d.parse()?, b.parse()?, options),
        _ => bail!("tvunet.architecture `{arch}` is not `unet depth D base B [separable]`"),
    };
    let (mut separable, mut lung_field) = (false, false);
    for option in options {
        match *option {
            "separable" => separable = true,
            "lung-gated" => lung_field = true,
            other => bail!("tvunet.architecture `{arch}`: unknown option `{other}`"),
        }
    }
    let graph = model.graph.as_ref().context("model has no graph")?;
    let init: HashMap<&str, &TensorProto> =
        graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let conv = |name: &str| -> Result<FoldedConv> {
        let w = init.get(format!("{name}.weight").as_str()).with_context(|| {
            format!("no initializer {name}.weight: not a model written by tvunet export")
        })?;
        let b = init.get(format!("{name}.bias").as_str()).context(format!("no {name}.bias"))?;
        ensure!(w.dims.len() == 4, "{name}.weight has {} dimensions, not 4", w.dims.len());
        let d = |i: usize| w.dims[i] as usize;
        let group = graph
            .node
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.attribute.iter().find(|a| a.name == "group"))
            .map_or(1, |a| a.i as usize);
        Ok(FoldedConv { dims: [d(0), d(1), d(2), d(3)], weight: f32s(w)?, bias: f32s(b)?, group })
    };
    let depthwise = |name: &str| -> Result<Option<FoldedConv>> {
        let dw = format!("{name}.depthwise");
        if init.contains_key(format!("{dw}.weight").as_str()) {
            Ok(Some(conv(&dw)?))
        } else {
            Ok(None)
        }
    };
    let block = |name: &str| -> Result<FoldedBlock> {
        let (c1, c2) = (format!("{name}.conv1"), format!("{name}.conv2"));
        Ok(FoldedBlock {
            dw1: depthwise(&c1)?,
            conv1: conv(&c1)?,
            dw2: depthwise(&c2)?,
            conv2: conv(&c2)?,
        })
    };
    Ok(FoldedUNet {
        config: UNetConfig { depth, base, input_size, separable, lung_field },
        down: (0..depth).map(|l| block(&format!("down{l}"))).collect::<Result<_>>()?,
        bottom: block("bottom")?,
        up: (0..depth)
            .rev()
            .map(|l| Ok((conv(&format!("up{l}.upsample"))?, block(&format!("up{l}"))?)))
            .collect::<Result<_>>()?,
        head: conv("head")?,
        lung_head: if lung_field { Some(conv("lung_head")?) } else { None },
    })
}

/// Names of the fp32 graph's tensors whose ranges the integer graph needs, in a fixed order.
fn calibration_points(depth: usize, separable: bool) -> Vec<String> {
    let mut names = vec!["slice".to_string()];
    let block = |n: &str| {
        let mut v = Vec::new();
        for conv in ["conv1", "conv2"] {
            // The first block's first convolution sees one channel and stays plain.
            if separable && !(n == "down0" && conv == "conv1") {
                v.push(format!("{n}.{conv}.depthwise.out"));
            }
            v.push(format!("{n}.{conv}.relu.out"));
        }
        v
    };
    for l in 0..depth {
        names.extend(block(&format!("down{l}")));
    }
    names.extend(block("bottom"));
    for l in (0..depth).rev() {
        names.push(format!("up{l}.upsample.out"));
        names.extend(block(&format!("up{l}")));
    }
    names
}

/// Reads every `.jpg`/`.png` in `dir` (sorted by name), keeps `count` spread evenly over the
/// list, and refuses slices without contrast.
pub fn calibration_slices(dir: &Path, count: usize) -> Result<Vec<(PathBuf, GraySlice)>> {
    let files = crate::data::unlabelled_slices(dir, None, count)
        .with_context(|| format!("reading calibration folder {}", dir.display()))?;
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let slice = GraySlice::decode(&bytes).with_context(|| format!("{}", path.display()))?;
        match slice.check_contrast() {
            Ok(()) => out.push((path, slice)),
            Err(e) => tracing::warn!("calibration slice {} skipped: {e}", path.display()),
        }
    }
    Ok(out)
}

/// The `q` quantile of `values` (reordered in place), by selection rather than a full sort.
fn quantile(values: &mut [f32], q: f64) -> f32 {
    let k = ((values.len() - 1) as f64 * q).round() as usize;
    *values.select_nth_unstable_by(k, f32::total_cmp).1
}

/// Runs the fp32 model in tract with every calibration point as an output and collects ranges.
fn calibrate(
    fp32: &[u8],
    (side, normalisation): (usize, preprocess::Normalisation),
    points: &[String],
    slices: &[(PathBuf, GraySlice)],
    method: CalibrationMethod,
) -> Result<HashMap<String, Range>> {
    tvunet_device::inference::prepare_tract();
    let mut model = tract_onnx::onnx().model_for_read(&mut &fp32[..])?;
    model.select_outputs_by_name(points)?;
    let plan = model
        .with_input_fact(0, f32::fact([1, 1, side, side]).into())?
        .into_optimized()?
        .into_runnable()?;
    let mut per_slice: Vec<Vec<Range>> = vec![Vec::new(); points.len()];
    let mut samples: Vec<Vec<f32>> = vec![Vec::new(); points.len()];
    for (_, slice) in slices {
        let plane = preprocess::model_input(slice, side as u32, normalisation);
        let input = tract_ndarray::Array4::from_shape_vec((1, 1, side, side), plane)?;
        let outputs = plan.run(tvec!(Tensor::from(input).into()))?;
        for (k, out) in outputs.iter().enumerate() {
            let view = out.to_plain_array_view::<f32>()?;
            let r = match method {
                CalibrationMethod::Max | CalibrationMethod::Mse => view.iter().fold(
                    Range { min: f32::INFINITY, max: f32::NEG_INFINITY },
                    |r, &v| Range { min: r.min.min(v), max: r.max.max(v) },
                ),
                CalibrationMethod::Percentile => {
                    let mut v: Vec<f32> = view.iter().copied().collect();
                    Range { min: quantile(&mut v, 1e-4), max: quantile(&mut v, 1.0 - 1e-4) }
                }
            };
            per_slice[k].push(r);
            if method == CalibrationMethod::Mse {
                samples[k].extend(view.iter().step_by(MSE_SAMPLE_STRIDE).copied());
            }
        }
    }
    Ok(points
        .iter()
        .zip(per_slice)
        .zip(samples)
        .map(|((name, rs), sample)| {
            let largest = || {
                rs.iter().fold(Range { min: f32::INFINITY, max: f32::NEG_INFINITY }, |a, r| Range {
                    min: a.min.min(r.min),
                    max: a.max.max(r.max),
                })
            };
            let r = match method {
                CalibrationMethod::Max => largest(),
                CalibrationMethod::Mse => {
                    least_squared_error(largest(), &sample, name.ends_with(".relu.out"))
                }
                CalibrationMethod::Percentile => Range {
                    min: rs.iter().map(|r| r.min).sum::<f32>() / rs.len() as f32,
                    max: rs.iter().map(|r| r.max).sum::<f32>() / rs.len() as f32,
                },
            };
            (name.clone(), r)
        })
        .collect())
}

/// Every this many values of each calibration output go into the sample the `mse` method fits.
const MSE_SAMPLE_STRIDE: usize = 61;

/// Squared error of quantising `sample` with `q` and back.
fn quantisation_error(sample: &[f32], q: QParams) -> f64 {
    let z = f32::from(q.zero_point);
    sample
        .iter()
        .map(|&x| {
            let level = (x / q.scale + z).round().clamp(0.0, 255.0);
            let e = f64::from(x - (level - z) * q.scale);
            e * e
        })
        .sum()
}

/// The fraction (1 % to 100 %) of `largest` whose quantisation reproduces `sample` best, as the
/// integer graph will quantise it: from zero for a ReLU output, covering both signs otherwise.
fn least_squared_error(largest: Range, sample: &[f32], non_negative: bool) -> Range {
    let qparams = |r: Range| {
        if non_negative {
            QParams::non_negative(r)
        } else {
            QParams::covering(r)
        }
    };
    (1..=100)
        .map(|percent| {
            let f = percent as f32 / 100.0;
            let r = Range { min: largest.min * f, max: largest.max * f };
            (quantisation_error(sample, qparams(r)), r)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(largest, |(_, r)| r)
}

fn scalar(name: &str, dt: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto { name: name.into(), data_type: dt as i32, raw_data: raw, ..Default::default() }
}

/// Adds a scale / zero-point pair of initializers and returns their names.
fn qparam_inputs(g: &mut Graph, name: &str, q: QParams) -> (String, String) {
    let (s, z) = (format!("{name}.scale"), format!("{name}.zero_point"));
    g.initializers.push(scalar(&s, DataType::Float, q.scale.to_le_bytes().to_vec()));
    g.initializers.push(scalar(&z, DataType::Uint8, vec![q.zero_point]));
    (s, z)
}

/// The graph writer's state: the tensor name and quantisation of the current activation.
#[derive(Clone)]
struct QTensor {
    name: String,
    q: QParams,
}

struct Writer<'a> {
    g: Graph,
    ranges: &'a HashMap<String, Range>,
}

impl Writer<'_> {
    fn range(&self, point: &str) -> Result<Range> {
        self.ranges.get(point).copied().with_context(|| format!("no range for {point}"))
    }

    /// `QLinearConv` with per-tensor symmetric i8 weights; output quantised with `out`.
    fn qconv(&mut self, name: &str, x: &QTensor, c: &FoldedConv, out: QParams) -> QTensor {
        let (weight, dims, bias) = (&c.weight, c.dims, &c.bias);
        let w_max = weight.iter().fold(0f32, |m, w| m.max(w.abs())).max(1e-12);
        let w_scale = w_max / 127.0;
        let w_q: Vec<u8> =
            weight.iter().map(|w| (w / w_scale).round().clamp(-127.0, 127.0) as i8 as u8).collect();
        let acc_scale = x.q.scale * w_scale;
        let b_q: Vec<u8> = bias
            .iter()
            .flat_map(|b| ((f64::from(*b) / f64::from(acc_scale)).round() as i32).to_le_bytes())
            .collect();
        let (xs, xz) = qparam_inputs(&mut self.g, &format!("{name}.x"), x.q);
        let (ys, yz) = qparam_inputs(&mut self.g, &format!("{name}.y"), out);
        let (w, ws, wz, b) = (
            format!("{name}.weight"),
            format!("{name}.weight.scale"),
            format!("{name}.weight.zero_point"),
            format!("{name}.bias"),
        );
        self.g.initializers.push(TensorProto {
            name: w.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int8 as i32,
            raw_data: w_q,
            ..Default::default()
        });
        self.g.initializers.push(scalar(&ws, DataType::Float, w_scale.to_le_bytes().to_vec()));
        self.g.initializers.push(scalar(&wz, DataType::Int8, vec![0]));
        self.g.initializers.push(TensorProto {
            name: b.clone(),
            dims: vec![dims[0] as i64],
            data_type: DataType::Int32 as i32,
            raw_data: b_q,
            ..Default::default()
        });
        let y = self.g.node(
            "QLinearConv",
            name,
            &[&x.name, &xs, &xz, &w, &ws, &wz, &ys, &yz, &b],
            onnx::conv_attributes(dims, c.group),
        );
        QTensor { name: y, q: out }
    }

    /// conv + ReLU: the ReLU is the u8 clamp of an output with zero point 0.
    fn qconv_relu(&mut self, name: &str, x: &QTensor, c: &FoldedConv) -> Result<QTensor> {
        let out = QParams::non_negative(self.range(&format!("{name}.relu.out"))?);
        Ok(self.qconv(name, x, c, out))
    }

    fn block(&mut self, name: &str, x: &QTensor, b: &FoldedBlock) -> Result<QTensor> {
        let mut x = x.clone();
        for (conv, dw, c) in [("conv1", &b.dw1, &b.conv1), ("conv2", &b.dw2, &b.conv2)] {
            let name = format!("{name}.{conv}");
            if let Some(dw) = dw {
                // No activation after the depthwise filter: its output keeps both signs.
                let dw_name = format!("{name}.depthwise");
                let out = QParams::covering(self.range(&format!("{dw_name}.out"))?);
                x = self.qconv(&dw_name, &x, dw, out);
            }
            x = self.qconv_relu(&name, &x, c)?;
        }
        Ok(x)
    }

    fn dequantize(&mut self, name: &str, x: &QTensor) -> String {
        let (s, z) = qparam_inputs(&mut self.g, name, x.q);
        self.g.node("DequantizeLinear", name, &[&x.name, &s, &z], vec![])
    }

    fn quantize(&mut self, name: &str, x: &str, q: QParams) -> QTensor {
        let (s, z) = qparam_inputs(&mut self.g, name, q);
        QTensor { name: self.g.node("QuantizeLinear", name, &[x, &s, &z], vec![]), q }
    }

    /// 2x2 stride-2 transposed convolution as a 1x1 conv to 4 x out channels + DepthToSpace.
    fn upsample(&mut self, name: &str, x: &QTensor, up: &FoldedConv) -> Result<QTensor> {
        let [c_in, c_out, kh, kw] = up.dims;
        ensure!(kh == 2 && kw == 2, "{name}: a {kh}x{kw} transposed convolution, not 2x2");
        // CRD order: output channel co*4 + dy*2 + dx lands at (2i+dy, 2j+dx) of channel co.
        let mut weight = vec![0f32; c_out * 4 * c_in];
        let mut bias = vec![0f32; c_out * 4];
        for ci in 0..c_in {
            for co in 0..c_out {
                for k in 0..4 {
                    weight[(co * 4 + k) * c_in + ci] = up.weight[((ci * c_out + co) * 4) + k];
                }
            }
        }
        for co in 0..c_out {
            for k in 0..4 {
                bias[co * 4 + k] = up.bias[co];
            }
        }
        let out = QParams::covering(self.range(&format!("{name}.out"))?);
        let as_1x1 = FoldedConv { dims: [c_out * 4, c_in, 1, 1], weight, bias, group: 1 };
        let y = self.qconv(name, x, &as_1x1, out);
        let attrs = vec![onnx::int("blocksize", 2), onnx::string("mode", "CRD")];
        let d2s = self.g.node("DepthToSpace", &format!("{name}.d2s"), &[&y.name], attrs);
        Ok(QTensor { name: d2s, q: out })
    }
}

/// Writes the integer model for `net` with activation `ranges`.
fn integer_model(
    net: &FoldedUNet,
    ranges: &HashMap<String, Range>,
    metadata: &[(String, String)],
) -> Result<ModelProto> {
    let mut w = Writer { g: Graph::default(), ranges };
    let input = w.range("slice")?;
    let reach = input.min.abs().max(input.max.abs());
    let input_q = QParams { scale: (reach / 127.0).max(1e-8), zero_point: 128 };
    let mut x = w.quantize("slice.quantize", "slice", input_q);
    let mut skips = Vec::new();
    for (level, b) in net.down.iter().enumerate() {
        let y = w.block(&format!("down{level}"), &x, b)?;
        let pooled = w.g.node(
            "MaxPool",
            &format!("down{level}.pool"),
            &[&y.name],
            vec![onnx::ints("kernel_shape", &[2, 2]), onnx::ints("strides", &[2, 2])],
        );
        x = QTensor { name: pooled, q: y.q };
        skips.push(y);
    }
    x = w.block("bottom", &x, &net.bottom)?;
    for (k, (up, b)) in net.up.iter().enumerate() {
        let level = net.up.len() - 1 - k;
        let name = format!("up{level}");
        let u = w.upsample(&format!("{name}.upsample"), &x, up)?;
        let skip = skips.pop().context("one skip per level")?;
        let uf = w.dequantize(&format!("{name}.upsample.dequantize"), &u);
        let sf = w.dequantize(&format!("{name}.skip.dequantize"), &skip);
        let cat =
            w.g.node("Concat", &format!("{name}.concat"), &[&uf, &sf], vec![onnx::int("axis", 1)]);
        let ur = w.range(&format!("{name}.upsample.out"))?;
        let sr = w.range(&format!("down{level}.conv2.relu.out"))?;
        let both = Range { min: ur.min.min(sr.min), max: ur.max.max(sr.max) };
        let cq = w.quantize(&format!("{name}.concat.quantize"), &cat, QParams::covering(both));
        x = w.block(&name, &cq, b)?;
    }
    let features = w.dequantize("head.dequantize", &x);
    w.g.probability(&features, &net.head, net.lung_head.as_ref());
    Ok(onnx::model(w.g, net.config.input_size as usize, metadata))
}

/// Quantizes the fp32 model at `model` into `out`, calibrating on `calib`.
pub fn quantize(
    model: &Path,
    calib: &[(PathBuf, GraySlice)],
    method: CalibrationMethod,
    out: &Path,
) -> Result<QuantizeSummary> {
    let fp32 = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let proto = ModelProto::decode(&fp32[..])
        .with_context(|| format!("{}: not an ONNX model", model.display()))?;
    if proto.metadata_props.iter().any(|p| p.key == crate::export::ensemble::MEMBERS_KEY) {
        bail!(
            "{} is an ensemble (`tvunet ensemble`): quantize each member, then build the \
             ensemble of the int8 files",
            model.display()
        );
    }
    let net = folded_from_onnx(&proto).with_context(|| format!("{}", model.display()))?;
    if calib.is_empty() {
        bail!("no calibration slices");
    }
    let normalisation = tvunet_device::Segmenter::from_bytes(&fp32, "")?.meta().normalisation;
    let side = net.config.input_size as usize;
    let points = calibration_points(net.config.depth, net.config.separable);
    let ranges = calibrate(&fp32, (side, normalisation), &points, calib, method)?;
    for p in &points {
        tracing::debug!(point = p.as_str(), min = ranges[p].min, max = ranges[p].max, "range");
    }
    let fp32_sha = tvunet_device::Segmenter::from_bytes(&fp32, "")?.sha256().to_string();
    let mut metadata: Vec<(String, String)> = proto
        .metadata_props
        .iter()
        .filter(|p| p.key != keys::PRECISION)
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    metadata.extend([
        (keys::PRECISION.to_string(), "int8".to_string()),
        ("tvunet.calibration".to_string(), format!("{method}, {} slices", calib.len())),
        ("tvunet.fp32_sha256".to_string(), fp32_sha),
    ]);
    let bytes = integer_model(&net, &ranges, &metadata)?.encode_to_vec();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The device's own loader is the first judge of the file.
    tvunet_device::Segmenter::from_bytes(&bytes, &out.display().to_string())
        .context("the int8 model does not load in tract")?;
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(QuantizeSummary {
        method: method.to_string(),
        calibration_slices: calib.len(),
        file_bytes: bytes.len() as u64,
        fp32_bytes: fp32.len() as u64,
    })
}

/// fp32 against int8 on labelled slices, each at its own default threshold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agreement {
    /// Slices compared.
    pub slices: usize,
    /// Pooled Dice of the fp32 model.
    pub dice_fp32: f64,
    /// Pooled Dice of the int8 model.
    pub dice_int8: f64,
    /// Fraction of pixels where the two masks agree.
    pub mask_agreement: f64,
    /// Largest |p_fp32 - p_int8| over all pixels.
    pub max_abs_diff: f32,
    /// Fraction of pixels the int8 model marks as lesion (0 means a collapsed model).
    pub int8_lesion_fraction: f64,
}

/// Runs both models through the device's inference code on `slices`.
pub fn compare(
    fp32: &tvunet_device::Segmenter,
    int8: &tvunet_device::Segmenter,
    slices: &[crate::data::LabelledSlice],
) -> Result<Agreement> {
    use crate::metrics::Counts;
    let (mut a, mut b) = (Counts::default(), Counts::default());
    let (mut same, mut total, mut lesion, mut worst) = (0usize, 0usize, 0usize, 0f32);
    let (ta, tb) = (fp32.meta().threshold, int8.meta().threshold);
    for s in slices {
        let pa = fp32.probability(&s.image)?;
        let pb = int8.probability(&s.image)?;
        a = a.merge(Counts::from_probability(&pa, &s.mask, ta));
        b = b.merge(Counts::from_probability(&pb, &s.mask, tb));
        for (x, y) in pa.iter().zip(&pb) {
            same += usize::from((*x >= ta) == (*y >= tb));
            lesion += usize::from(*y >= tb);
            worst = worst.max((x - y).abs());
        }
        total += pa.len();
    }
    Ok(Agreement {
        slices: slices.len(),
        dice_fp32: a.dice(),
        dice_int8: b.dice(),
        mask_agreement: same as f64 / total.max(1) as f64,
        max_abs_diff: worst,
        int8_lesion_fraction: lesion as f64 / total.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_by_selection_matches_sorting() {
        let mut v: Vec<f32> = (0..1001).map(|i| ((i * 7919) % 1001) as f32).collect();
        assert_eq!(quantile(&mut v, 0.0), 0.0);
        assert_eq!(quantile(&mut v, 0.5), 500.0);
        assert_eq!(quantile(&mut v, 1.0), 1000.0);
    }

    #[test]
    fn mse_ranges_clip_a_rare_outlier_but_not_the_bulk() {
        // A million values spread over [0, 1] and one at 50: covering 50 leaves the bulk about
        // five levels, and their rounding errors add up to more than clipping the one outlier
        // costs; the best range (about 22) gives up part of the outlier.
        let mut sample: Vec<f32> = (0..1_000_000).map(|i| i as f32 / 999_999.0).collect();
        sample.push(50.0);
        let r = least_squared_error(Range { min: 0.0, max: 50.0 }, &sample, true);
        assert!(r.max > 15.0 && r.max < 30.0, "{r:?}");
        // With a hundredth of the values to gain on, the outlier keeps (almost) all its range.
        let few: Vec<f32> = sample.iter().step_by(100).copied().collect();
        let r = least_squared_error(Range { min: 0.0, max: 50.0 }, &few, true);
        assert!(r.max > 45.0, "{r:?}");
        // Without an outlier the whole range stays.
        sample.pop();
        let r = least_squared_error(Range { min: 0.0, max: 1.0 }, &sample, true);
        assert!(r.max > 0.95, "{r:?}");
        // Both signs: the range scales on both sides.
        let signed: Vec<f32> = sample.iter().map(|v| v - 0.5).collect();
        let r = least_squared_error(Range { min: -0.5, max: 0.5 }, &signed, false);
        assert!(r.min < -0.45 && r.max > 0.45, "{r:?}");
    }

    #[test]
    fn activation_ranges_keep_zero_exact_and_cover_the_range() {
        let q = QParams::covering(Range { min: -1.5, max: 4.0 });
        let real = |v: u8| q.scale * (f32::from(v) - f32::from(q.zero_point));
        assert_eq!(real(q.zero_point), 0.0);
        assert!(real(0) <= -1.5 + q.scale && real(255) >= 4.0 - q.scale);
        let r = QParams::non_negative(Range { min: 0.0, max: 2.55 });
        assert_eq!(r.zero_point, 0);
        assert!((r.scale - 0.01).abs() < 1e-6);
    }
}
