//! Two threads per inference (tract's multithreaded matrix products) give the probabilities one
//! thread gives, on real slices. A test binary of its own: the thread setting is process-wide.

use std::path::{Path, PathBuf};

use tvunet_device::inference::{set_threads, threads};
use tvunet_device::{GraySlice, ModelError, Segmenter};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn two_threads_match_one_on_real_slices() {
    let dir = root().join("tests/fixtures/medseg/images");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let slices: Vec<GraySlice> =
        files.iter().map(|f| GraySlice::decode(&std::fs::read(f).unwrap()).unwrap()).collect();
    let model = root().join("models/tvunet-medseg.onnx");

    set_threads(1).unwrap();
    let one = Segmenter::load(&model).unwrap();
    let single: Vec<Vec<f32>> = slices.iter().map(|s| one.probability(s).unwrap()).collect();

    set_threads(2).unwrap();
    assert_eq!(threads(), 2);
    let two = Segmenter::load(&model).unwrap();
    let mut worst = 0f32;
    for (slice, expected) in slices.iter().zip(&single) {
        let got = two.probability(slice).unwrap();
        assert_eq!(got.len(), expected.len());
        for (a, b) in got.iter().zip(expected) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst < 1e-4, "largest probability difference, 2 threads against 1: {worst}");

    let err = set_threads(0).unwrap_err();
    assert!(matches!(err, ModelError::Prepare(_)), "{err}");
    assert!(err.to_string().contains("threads: 0"), "{err}");
    assert_eq!(threads(), 2, "a refused setting leaves the last one in place");
}

/// `--threads 0` on the command line is a usage error (exit 2) that names the value.
#[test]
fn zero_threads_on_the_command_line_is_a_usage_error() {
    let model = root().join("models/tvunet-medseg-fast.onnx");
    let slice = root().join("tests/fixtures/medseg/images/2.jpg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tvunet-edge"))
        .args(["infer", "--threads", "0", "--model"])
        .arg(&model)
        .arg(&slice)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`0` is not a thread count"), "{err}");
}
