//! A depthwise-separable U-Net goes the whole way on real slices: it trains, exports with
//! `group` convolutions that match burn in tract, quantizes to an integer graph tract runs, and
//! onnxruntime agrees with tract on both files where Python has it.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use tract_onnx::pb::ModelProto;
use tvunet::data::{self, Target};
use tvunet_device::{preprocess, Segmenter};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tvunet(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tvunet")).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tvunet {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

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

fn python_has_onnx() -> bool {
    Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// onnx.checker and onnxruntime on `model`, against tract's probabilities on the fixtures.
fn onnxruntime_agrees(model: &Path, dir: &Path, slices: &[data::LabelledSlice]) {
    let seg = Segmenter::load(model).unwrap();
    let side = seg.meta().input_size;
    let (mut planes, mut probs) = (Vec::new(), Vec::new());
    for s in slices {
        let plane = preprocess::model_input(&s.image, side);
        probs.extend(seg.probability_plane(&plane).unwrap());
        planes.extend(plane);
    }
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("planes.f32"), bytes(&planes)).unwrap();
    std::fs::write(dir.join("tract.f32"), bytes(&probs)).unwrap();
    let o = Command::new("python3")
        .arg(root().join("tests/python/ort_check.py"))
        .arg(model)
        .arg(dir.join("planes.f32"))
        .arg(dir.join("tract.f32"))
        .arg(side.to_string())
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    println!("{}: {text}", model.display());
    assert!(o.status.success(), "onnx.checker / onnxruntime on {}: {text}", model.display());
}

#[test]
fn separable_network_trains_exports_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let fx = root().join("tests/fixtures/medseg");
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
    let out =
        tvunet(&["export", "--checkpoint", run_s, "--out", fp32.to_str().unwrap(), "--data", fx_s]);
    assert!(out.contains("parity with tract"), "{out}");
    let seg = Segmenter::load(&fp32).unwrap();
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
    tvunet(&[
        "quantize",
        "--model",
        fp32.to_str().unwrap(),
        "--calib",
        fx.join("images").to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
    ]);
    let q = Segmenter::load(&int8).unwrap();
    assert_eq!(q.meta().precision, "int8");
    let grouped_int8: Vec<String> = grouped_convs(&int8).into_iter().map(|(n, _)| n).collect();
    assert_eq!(grouped_int8.len(), expected.len(), "int8 graph keeps the depthwise convolutions");

    let slices = data::read_folder(&fx, Target::Infection).unwrap();
    let c = tvunet::quantize::compare(&seg, &q, &slices).unwrap();
    println!("{c:?}");
    assert!(c.max_abs_diff < 0.05, "int8 probabilities within 0.05 of fp32: {c:?}");

    if !python_has_onnx() {
        println!("onnxruntime cross-check skipped: python3 with onnx and onnxruntime not found");
        return;
    }
    onnxruntime_agrees(&fp32, dir.path(), &slices);
    onnxruntime_agrees(&int8, dir.path(), &slices);
}
