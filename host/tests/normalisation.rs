//! A network trained with tissue-anchored input carries the normalisation in its exported file,
//! and the device prepares slices for it exactly as training did.

mod common;

use common::{export, fixtures, onnxruntime_agrees, python_has_onnx, tvunet};
use tvunet::data::{self, Target};
use tvunet_device::preprocess::Normalisation;

#[test]
fn tissue_anchored_input_goes_from_training_to_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let fx = fixtures();
    let (run_s, fx_s) = (run.to_str().unwrap(), fx.to_str().unwrap());
    let shape = ["--epochs", "2", "--depth", "2", "--base", "4", "--input-size", "64"];
    let more = ["--folds", "2", "--batch-size", "2", "--normalisation", "tissue-anchored"];
    let mut train = vec!["train", "--data", fx_s, "--out", run_s];
    train.extend(shape.iter().chain(&more));
    tvunet(&train);
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(config.contains("\"normalisation\": \"tissue-anchored\""), "{config}");

    let model = dir.path().join("anchored.onnx");
    let seg = export(&run, &model);
    assert_eq!(seg.meta().normalisation, Normalisation::TissueAnchored);

    // The device's input plane is the one training built for the same slice, and differs from
    // a standardised plane.
    let slices = data::read_folder(&fx, Target::Infection).unwrap();
    for s in &slices {
        let trained = data::example(s, 64, Normalisation::TissueAnchored).plane;
        assert_eq!(seg.input_plane(&s.image), trained, "slice {}", s.id);
        let standard = data::example(s, 64, Normalisation::ZscorePerSlice).plane;
        assert_ne!(trained, standard, "slice {}", s.id);
    }

    // A wrong name on the command line is refused with the value.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tvunet"))
        .args(["train", "--data", fx_s, "--out", dir.path().join("bad").to_str().unwrap()])
        .args(["--normalisation", "minmax"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("--normalisation minmax"), "{stderr}");

    if python_has_onnx() {
        onnxruntime_agrees(&model, dir.path(), &slices);
    }
}
