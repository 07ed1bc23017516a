//! tract and onnxruntime run the same model file and give the same masks on real slices
//! (cargo feature `ort`; skipped with a message where no onnxruntime library is installed).
#![cfg(feature = "ort")]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{fixture_slices, root};
use tvunet_device::{Engine, Segmenter};

/// `ORT_DYLIB_PATH` when set, else the library inside the onnxruntime Python wheel.
fn onnxruntime_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import glob, os, onnxruntime; \
             print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), \
             'capi', 'libonnxruntime.so*')))[0])",
        ])
        .output()
        .ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[test]
fn both_engines_give_the_same_masks_on_real_slices() {
    let Some(lib) = onnxruntime_library() else {
        println!("skipped: no onnxruntime library (set ORT_DYLIB_PATH or pip install onnxruntime)");
        return;
    };
    // SAFETY: set before any thread of this test binary reads the environment for onnxruntime.
    std::env::set_var("ORT_DYLIB_PATH", &lib);
    let model = root().join("models/tvunet-medseg.onnx");
    let tract = Segmenter::load_with(&model, Engine::Tract).unwrap();
    let ort = Segmenter::load_with(&model, Engine::Ort).unwrap();
    assert_eq!(ort.engine(), Engine::Ort);
    let t = tract.meta().threshold;
    let (mut worst, mut differ, mut total) = (0f32, 0usize, 0usize);
    for slice in fixture_slices() {
        let a = tract.probability(&slice).unwrap();
        let b = ort.probability(&slice).unwrap();
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
            differ += usize::from((*x >= t) != (*y >= t));
        }
        total += a.len();
    }
    println!("tract vs onnxruntime: max |diff| {worst:e}, {differ} of {total} mask pixels differ");
    assert!(worst <= 1e-4, "probabilities differ by {worst}");
    assert!(differ * 10_000 <= total, "{differ} of {total} mask pixels differ");
}

#[test]
fn a_missing_library_is_named_in_the_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tvunet-edge"))
        .args(["infer", "--engine", "ort", "--model"])
        .arg(root().join("models/tvunet-medseg.onnx"))
        .arg("--out")
        .arg(std::env::temp_dir().join("tvunet-engine-test"))
        .arg(root().join("tests/fixtures/medseg/images/2.jpg"))
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
}
