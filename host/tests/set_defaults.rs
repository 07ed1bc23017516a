//! `tvunet set-defaults` changes what a model file asks of the device (threshold, flip average)
//! and nothing else; `tvunet eval --flip-average` measures another setting on the same file.

mod common;

use std::process::Command;

use common::{fixtures, root, tvunet};
use tvunet_device::preprocess::FlipAverage;
use tvunet_device::{GraySlice, Segmenter};

#[test]
fn new_defaults_reach_the_device_and_leave_the_network_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("models/tvunet-medseg-anchored.onnx");
    let out = dir.path().join("four-way.onnx");
    let text = tvunet(&[
        "set-defaults",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--flip-average",
        "four-way",
        "--threshold",
        "0.4",
    ]);
    assert!(text.contains("sha256"), "{text}");

    let (before, after) = (Segmenter::load(&model).unwrap(), Segmenter::load(&out).unwrap());
    assert_eq!(after.meta().flip_average, FlipAverage::FourWay);
    assert_eq!(after.meta().threshold, 0.4);
    assert_ne!(before.meta().flip_average, FlipAverage::FourWay, "the test changes the setting");
    let untouched = |key: &str| before.meta().props.get(key) == after.meta().props.get(key);
    assert!(untouched("tvunet.architecture") && untouched("tvunet.data_fingerprint"));
    let bytes = std::fs::read(fixtures().join("images/2.jpg")).unwrap();
    let plane = before.input_plane(&GraySlice::decode(&bytes).unwrap());
    assert_eq!(
        before.probability_plane(&plane).unwrap(),
        after.probability_plane(&plane).unwrap(),
        "the network itself is unchanged"
    );

    // The evaluation names the average it ran with, whether the file or the flag chose it.
    let report_of = |model: &std::path::Path, extra: &[&str], name: &str| -> serde_json::Value {
        let out = dir.path().join(name);
        let data = fixtures();
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tvunet(&args);
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
    };
    assert_eq!(report_of(&out, &[], "file")["flip_average"], "four-way");
    let flag = report_of(&model, &["--flip-average", "left-right"], "flag");
    assert_ne!(before.meta().flip_average, FlipAverage::LeftRight, "the flag changes the setting");
    assert_eq!(flag["flip_average"], "left-right");
    assert_eq!(flag["threshold"].as_f64().unwrap() as f32, before.meta().threshold);
}

#[test]
fn a_flip_average_it_does_not_know_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("models/tvunet-medseg-anchored.onnx");
    let out = dir.path().join("x.onnx");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "set-defaults",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_tvunet")).args(&args).output().unwrap()
    };
    let bad = run(&["--flip-average", "diagonal"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("diagonal"), "{err}");
    let bad = run(&["--threshold", "1.5"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("--threshold 1.5"), "{err}");
    let nothing = run(&[]);
    assert!(!nothing.status.success());
    assert!(!out.exists(), "nothing is written when the new defaults are refused");
}
