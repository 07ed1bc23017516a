//! A depthwise-separable U-Net goes the whole way on real slices: it trains, exports with
//! `group` convolutions that match burn in tract, quantizes to an integer graph tract runs, and
//! onnxruntime agrees with tract on both files where Python has it.

mod common;

use std::path::Path;

use common::{export, fixtures, int8_and_onnxruntime_agree, tvunet};
use prost::Message;
use tract_onnx::pb::ModelProto;
use tvunet::data::{self, Target};
use tvunet_device::Segmenter;

/// `(node name, group)` of every convolution in `model` with a `group` attribute above 1.
fn grouped_convs(model: &Path) -> Vec<(String, i64)> {
    let bytes = std::fs::read(model).unwrap();
    let proto = ModelProto::decode(bytes.as_slice()).unwrap();
    proto
        .graph
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type.ends_with("Conv"))
        .filter_map(|n| {
            let g = n.attribute.iter().find(|a| a.name == "group")?;
            (g.i > 1).then(|| (n.name.clone(), g.i))
        })
        .collect()
}

#[test]
fn separable_network_trains_exports_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let fx = fixtures();
    let (run_s, fx_s) = (run.to_str().unwrap(), fx.to_str().unwrap());
    tvunet(&[
        "train",
        "--data",
        fx_s,
        "--out",
        run_s,
        "--epochs",
        "3",
        "--depth",
        "2",
        "--base",
        "4",
        "--input-size",
        "64",
        "--folds",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "3e-3",
        "--separable",
    ]);
    let fp32 = dir.path().join("sep.onnx");
    let seg = export(&run, &fp32);
    assert_eq!(seg.meta().input_size, 64);

    // Every 3x3 convolution but the first (one input channel) is depthwise: one group per
    // channel, 4 then 8 channels down, 16 at the bottom, 8 and 4 up.
    let mut grouped = grouped_convs(&fp32);
    grouped.sort();
    let expected: Vec<(String, i64)> = [
        ("bottom.conv1.depthwise", 8),
        ("bottom.conv2.depthwise", 16),
        ("down0.conv2.depthwise", 4),
        ("down1.conv1.depthwise", 4),
        ("down1.conv2.depthwise", 8),
        ("up0.conv1.depthwise", 8),
        ("up0.conv2.depthwise", 4),
        ("up1.conv1.depthwise", 16),
        ("up1.conv2.depthwise", 8),
    ]
    .iter()
    .map(|(n, g)| (n.to_string(), *g))
    .collect();
    assert_eq!(grouped, expected);

    let int8 = dir.path().join("sep.int8.onnx");
    let out = common::quantize(&fp32, &int8);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let q = Segmenter::load(&int8).unwrap();
    assert_eq!(q.meta().precision, "int8");
    let grouped_int8: Vec<String> = grouped_convs(&int8).into_iter().map(|(n, _)| n).collect();
    assert_eq!(grouped_int8.len(), expected.len(), "int8 graph keeps the depthwise convolutions");

    let slices = data::read_folder(&fx, Target::Infection).unwrap();
    int8_and_onnxruntime_agree(&fp32, &int8, dir.path(), &slices);
}
