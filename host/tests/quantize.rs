//! int8 quantisation of the shipped model on real slices: the file loads in the device's tract
//! code, is about 4x smaller, keeps the masks, and onnxruntime agrees where Python has it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tvunet::data::{self, Target};
use tvunet_device::Segmenter;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tvunet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tvunet")).args(args).output().unwrap()
}

/// int8 against fp32 on `slices`: pooled Dice drops by at most 0.005, at least 99 % of mask
/// pixels agree, and the int8 model still marks lesions.
fn within_the_accuracy_budget(fp32: &Segmenter, int8: &Segmenter, slices: &[data::LabelledSlice]) {
    let c = tvunet::quantize::compare(fp32, int8, slices).unwrap();
    println!("{c:?}");
    assert!(c.dice_int8 >= c.dice_fp32 - 0.005, "pooled Dice {} -> {}", c.dice_fp32, c.dice_int8);
    assert!(c.mask_agreement >= 0.99, "masks agree on {}", c.mask_agreement);
    assert!(c.int8_lesion_fraction > 0.01, "int8 model still marks lesions");
}

#[test]
fn shipped_model_quantizes_within_the_accuracy_budget() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = root().join("models/tvunet-medseg.onnx");
    let int8 = dir.path().join("m.int8.onnx");
    let fx = root().join("tests/fixtures/medseg");
    let out = common::quantize(&fp32, &int8);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let a = Segmenter::load(&fp32).unwrap();
    let b = Segmenter::load(&int8).unwrap();
    assert_eq!(b.meta().precision, "int8");
    assert_eq!(b.meta().threshold, a.meta().threshold);
    let (na, nb) =
        (std::fs::metadata(&fp32).unwrap().len(), std::fs::metadata(&int8).unwrap().len());
    assert!(nb * 3 < na, "int8 file {nb} bytes against fp32 {na}");

    let slices = data::read_folder(&fx, Target::Infection).unwrap();
    within_the_accuracy_budget(&a, &b, &slices);

    // Quantizing twice is refused with the reason.
    let again = tvunet(&[
        "quantize",
        "--model",
        int8.to_str().unwrap(),
        "--calib",
        fx.join("images").to_str().unwrap(),
        "--out",
        dir.path().join("x.onnx").to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("fp32") && err.contains("m.int8.onnx"), "{err}");

    let has_ort = Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_ort {
        println!("onnxruntime cross-check skipped: python3 with onnx and onnxruntime not found");
        return;
    }
    let side = b.meta().input_size;
    let (mut planes, mut probs) = (Vec::new(), Vec::new());
    for s in &slices {
        let plane = b.input_plane(&s.image);
        probs.extend(b.probability_plane(&plane).unwrap());
        planes.extend(plane);
    }
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.path().join("planes.f32"), bytes(&planes)).unwrap();
    std::fs::write(dir.path().join("tract.f32"), bytes(&probs)).unwrap();
    let o = Command::new("python3")
        .arg(root().join("tests/python/ort_check.py"))
        .arg(&int8)
        .arg(dir.path().join("planes.f32"))
        .arg(dir.path().join("tract.f32"))
        .arg(side.to_string())
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    println!("{text}");
    assert!(o.status.success(), "onnx.checker / onnxruntime on the int8 file: {text}");
}

#[test]
fn mse_calibration_quantizes_the_default_model_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = root().join("models/tvunet-medseg-anchored.onnx");
    let int8 = dir.path().join("anchored.int8.onnx");
    let fx = root().join("tests/fixtures/medseg");
    let out = tvunet(&[
        "quantize",
        "--model",
        fp32.to_str().unwrap(),
        "--calib",
        fx.join("images").to_str().unwrap(),
        "--method",
        "mse",
        "--out",
        int8.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("calibrated with mse on 4 slices"), "{stdout}");

    let a = Segmenter::load(&fp32).unwrap();
    let b = Segmenter::load(&int8).unwrap();
    // The int8 file infers as the fp32 file asks: same threshold, same flip average.
    assert_eq!(b.meta().threshold, a.meta().threshold);
    assert_eq!(b.meta().flip_average, a.meta().flip_average);
    let slices = data::read_folder(&fx, Target::Infection).unwrap();
    within_the_accuracy_budget(&a, &b, &slices);
}
