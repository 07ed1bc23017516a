//! Helpers shared by the end-to-end tests: the repository root, running `tvunet`, and the
//! onnxruntime cross-check where Python has it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tvunet::data::LabelledSlice;
use tvunet_device::Segmenter;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures/medseg")
}

/// Runs `tvunet ARGS` and returns its stdout; fails the test with both streams otherwise.
pub fn tvunet(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tvunet")).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tvunet {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `tvunet export` of `run`'s checkpoint into `out`, with the parity check on the bundled
/// slices; returns the file loaded as the device loads it.
pub fn export(run: &Path, out: &Path) -> Segmenter {
    let (run_s, out_s) = (run.to_str().unwrap(), out.to_str().unwrap());
    let fx = fixtures();
    let text =
        tvunet(&["export", "--checkpoint", run_s, "--out", out_s, "--data", fx.to_str().unwrap()]);
    assert!(text.contains("parity with tract"), "{text}");
    Segmenter::load(out).unwrap()
}

/// int8 probabilities within 0.05 of fp32's on `slices`, and onnxruntime agreeing with tract on
/// both files where Python has it (scratch files in `dir`).
pub fn int8_and_onnxruntime_agree(fp32: &Path, int8: &Path, dir: &Path, slices: &[LabelledSlice]) {
    let (seg, q) = (Segmenter::load(fp32).unwrap(), Segmenter::load(int8).unwrap());
    let c = tvunet::quantize::compare(&seg, &q, slices).unwrap();
    println!("{c:?}");
    assert!(c.max_abs_diff < 0.05, "int8 probabilities within 0.05 of fp32: {c:?}");
    if !python_has_onnx() {
        println!("onnxruntime cross-check skipped: python3 with onnx and onnxruntime not found");
        return;
    }
    onnxruntime_agrees(fp32, dir, slices);
    onnxruntime_agrees(int8, dir, slices);
}

/// `tvunet quantize` of `model` into `out`, calibrated on the bundled slices.
pub fn quantize(model: &Path, out: &Path) -> std::process::Output {
    let calib = fixtures().join("images");
    Command::new(env!("CARGO_BIN_EXE_tvunet"))
        .args(["quantize", "--model", model.to_str().unwrap(), "--calib"])
        .arg(calib)
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap()
}

pub fn python_has_onnx() -> bool {
    Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// onnx.checker and onnxruntime on `model` against tract's probabilities on `slices`
/// (tests/python/ort_check.py), with scratch files in `dir`.
pub fn onnxruntime_agrees(model: &Path, dir: &Path, slices: &[LabelledSlice]) {
    let seg = Segmenter::load(model).unwrap();
    let side = seg.meta().input_size;
    let (mut planes, mut probs) = (Vec::new(), Vec::new());
    for s in slices {
        let plane = seg.input_plane(&s.image);
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
