//! Train -> export on real slices: the loss falls, the ONNX file matches burn in tract, and the
//! ONNX reference tools accept it where Python has them.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixtures, python_has_onnx, tvunet};

use tvunet::data::{self, Target};

/// A small network trained for a few epochs on real slices lowers its loss, exports, passes the
/// tract parity check, refuses a run without checkpoints, and runs in onnxruntime.
#[test]
fn train_then_export_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let fx = fixtures();
    let run_s = run.to_str().unwrap();
    let fx_s = fx.to_str().unwrap();
    tvunet(&[
        "train",
        "--data",
        fx_s,
        "--out",
        run_s,
        "--epochs",
        "4",
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
    ]);
    let csv = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    let losses: Vec<f64> =
        csv.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse().unwrap()).collect();
    assert_eq!(losses.len(), 4, "{csv}");
    assert!(losses[3] < losses[0], "training loss falls: {losses:?}");
    for f in ["config.json", "split.json", "best.bpk", "last.bpk", "threshold.json", "loss.png"] {
        assert!(run.join(f).is_file(), "run folder has {f}");
    }

    let model = dir.path().join("m.onnx");
    let seg = common::export(&run, &model);
    assert_eq!(seg.meta().input_size, 64);
    assert_eq!(seg.meta().target, "infection");

    let err = Command::new(env!("CARGO_BIN_EXE_tvunet"))
        .args(["export", "--checkpoint", dir.path().to_str().unwrap(), "--out", "/dev/null"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("config.json"), "names the missing file");

    if !python_has_onnx() {
        println!("onnxruntime cross-check skipped: python3 with onnx and onnxruntime not found");
        return;
    }
    let slices = data::read_folder(&fx, Target::Infection).unwrap();
    let (mut planes, mut probs) = (Vec::new(), Vec::new());
    for s in &slices {
        let plane = seg.input_plane(&s.image);
        probs.extend(seg.probability_plane(&plane).unwrap());
        planes.extend(plane);
    }
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.path().join("planes.f32"), bytes(&planes)).unwrap();
    std::fs::write(dir.path().join("tract.f32"), bytes(&probs)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/ort_check.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(&model)
        .arg(dir.path().join("planes.f32"))
        .arg(dir.path().join("tract.f32"))
        .arg("64")
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    println!("{text}");
    assert!(o.status.success(), "onnx.checker / onnxruntime: {text}");
}
