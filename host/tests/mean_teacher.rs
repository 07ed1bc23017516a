//! `tvunet train --unlabelled`: a mean-teacher run on real slices keeps the teacher (a moving
//! average of the trained network) as its model, saves the student beside it, resumes, and
//! refuses settings it cannot use, naming them.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixtures, tvunet};

const NET: [&str; 8] = ["--depth", "2", "--base", "4", "--input-size", "48", "--folds", "2"];
const STEPS: [&str; 8] =
    ["--batch-size", "2", "--lr", "3e-3", "--unlabelled-per-step", "2", "--consistency", "5"];

fn train(out: &Path, extra: &[&str]) -> String {
    let images = fixtures().join("images");
    let mut args = vec!["train", "--data"];
    let fx = fixtures();
    args.push(fx.to_str().unwrap());
    args.extend(["--out", out.to_str().unwrap(), "--unlabelled", images.to_str().unwrap()]);
    args.extend(NET.iter().chain(&STEPS).chain(extra));
    tvunet(&args)
}

/// Column `name` of each row of a run's epochs.csv.
fn column(run: &Path, name: &str) -> Vec<f64> {
    let csv = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    let mut lines = csv.lines();
    let k = lines.next().unwrap().split(',').position(|c| c == name).expect("column");
    lines.map(|l| l.split(',').nth(k).unwrap().parse().unwrap()).collect()
}

#[test]
fn a_mean_teacher_run_keeps_the_teacher_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["--epochs", "2", "--consistency-ramp", "0"]);

    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
    let mt = &cfg["mean_teacher"];
    assert_eq!(mt["unlabelled"], 4, "{config}");
    assert_eq!(mt["weight"], 5.0);
    assert_eq!(mt["unlabelled_fingerprint"].as_str().unwrap().len(), 64);
    let consistency = column(&run, "train_consistency");
    assert!(consistency.iter().all(|&c| c > 0.0 && c < 1.0), "{consistency:?}");

    // The kept model is the teacher, not the student, and it exports and loads like any run.
    let (teacher, student) =
        (std::fs::read(run.join("last.bpk")).unwrap(), std::fs::read(run.join("student.bpk")));
    assert_ne!(teacher, student.unwrap());
    assert_eq!(std::fs::read(run.join("best.bpk")).unwrap(), teacher);
    common::export(&run, &dir.path().join("teacher.onnx"));

    train(&run, &["--epochs", "3", "--consistency-ramp", "0", "--resume"]);
    assert_eq!(column(&run, "epoch"), vec![1.0, 2.0, 3.0]);
    assert_ne!(std::fs::read(run.join("last.bpk")).unwrap(), teacher);
}

/// Each bad setting is refused before training, by name; a run resumed without its teacher
/// is refused too.
#[test]
fn bad_mean_teacher_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let fx = fixtures();
    let images = fx.join("images");
    let cases: [(&[&str], &str); 7] = [
        (&["--consistency", "-1"], "--consistency -1"),
        (&["--ema-decay", "1"], "--ema-decay 1"),
        (&["--ema-decay", "-0.1"], "--ema-decay -0.1"),
        (&["--unlabelled-count", "0"], "--unlabelled-count 0"),
        (&["--unlabelled-per-step", "0"], "--unlabelled-per-step 0"),
        (&["--consistency-noise", "NaN"], "--consistency-noise NaN"),
        (&["--unlabelled", empty.to_str().unwrap()], "no matching"),
    ];
    for (extra, says) in cases {
        let out = dir.path().join("never");
        let mut args = vec!["train", "--data", fx.to_str().unwrap(), "--out"];
        args.push(out.to_str().unwrap());
        if !extra.contains(&"--unlabelled") {
            args.extend(["--unlabelled", images.to_str().unwrap()]);
        }
        args.extend(NET.iter().chain(extra).chain(&["--epochs", "1"]));
        let o = Command::new(env!("CARGO_BIN_EXE_tvunet")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} wrote a run");
    }

    let run = dir.path().join("run");
    train(&run, &["--epochs", "1"]);
    let mut args = vec!["train", "--data", fx.to_str().unwrap(), "--out"];
    args.push(run.to_str().unwrap());
    args.extend(NET.iter().chain(&["--epochs", "2", "--resume"]));
    let o = Command::new(env!("CARGO_BIN_EXE_tvunet")).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("mean-teacher settings"), "{err}");
    // Resumed with another weight: refused too, and the run is left as it was.
    let before = std::fs::read(run.join("epochs.csv")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tvunet"))
        .args(["train", "--data", fx.to_str().unwrap(), "--out", run.to_str().unwrap()])
        .args(NET.iter().chain(&STEPS[..6]).chain(&["--consistency", "2", "--epochs", "2"]))
        .arg("--resume")
        .args(["--unlabelled", images.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("weight: 5.0"), "{err}");
    assert_eq!(std::fs::read(run.join("epochs.csv")).unwrap(), before);
}
