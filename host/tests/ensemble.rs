//! `tvunet ensemble` puts several networks in one model file. The file's map must be the mean
//! of its members' maps, each member fed its mirror image of the slice, and the device must
//! serve it like any other model.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixtures, onnxruntime_agrees, python_has_onnx, root, tvunet};
use tvunet_device::preprocess::FlipAverage;
use tvunet_device::Segmenter;

/// A labelled folder in `dir` holding only the bundled slice 2 (tract runs the int8
/// separable network in seconds per slice, so its checks use one slice).
fn one_slice(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("one");
    for (sub, file) in [("images", "2.jpg"), ("masks_binary", "2.png")] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
        std::fs::copy(fixtures().join(sub).join(file), data.join(sub).join(file)).unwrap();
    }
    data
}

fn ensemble(models: &[&Path], mirrors: &[&str], out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tvunet"));
    cmd.arg("ensemble");
    for m in models {
        cmd.arg("--model").arg(m);
    }
    for m in mirrors {
        cmd.args(["--mirror", m]);
    }
    cmd.arg("--out").arg(out).args(extra);
    if !extra.contains(&"--threshold") {
        cmd.args(["--threshold", "0.4"]);
    }
    if !extra.contains(&"--data") {
        cmd.arg("--data").arg(fixtures());
    }
    cmd
}

/// A network paired with itself on the top-bottom mirror image is that network's top-bottom
/// flip average, computed the other way: the mirrors inside the graph against the device's
/// own averaging. Checked for the fp32 and the int8 file of the shipped default.
#[test]
fn a_network_paired_with_its_mirror_is_its_flip_average() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_slice(dir.path());
    for (file, data) in [
        ("tvunet-medseg-anchored.onnx", fixtures()),
        ("tvunet-medseg-anchored.int8.onnx", one.clone()),
    ] {
        let slices = tvunet::data::read_folder(&data, tvunet::data::Target::Infection).unwrap();
        let model = root().join("models").join(file);
        let out = dir.path().join(format!("pair-{file}"));
        let data_arg = ["--data", data.to_str().unwrap()];
        let o =
            ensemble(&[&model, &model], &["none", "top-bottom"], &out, &data_arg).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
        assert!(text.contains("2 members"), "{text}");

        let (single, pair) = (Segmenter::load(&model).unwrap(), Segmenter::load(&out).unwrap());
        assert_eq!(pair.meta().flip_average, FlipAverage::None, "the mirrors are in the graph");
        assert_eq!(pair.meta().threshold, 0.4);
        assert_eq!(single.meta().threshold, 0.4, "the test compares at the file's own threshold");
        assert_eq!(pair.meta().precision, single.meta().precision);
        let listed = format!("{0}:none,{0}:top-bottom", single.sha256());
        assert_eq!(pair.meta().props["tvunet.members"], listed);
        let kept = |key: &str| pair.meta().props.get(key) == single.meta().props.get(key);
        assert!(kept("tvunet.data_fingerprint"), "both members carry it, so the file does");
        let mut worst = 0f32;
        for s in &slices {
            let plane = single.input_plane(&s.image);
            let want = single.averaged_plane(&plane, FlipAverage::TopBottom).unwrap();
            let got = pair.probability_plane(&plane).unwrap();
            let alone = single.probability_plane(&plane).unwrap();
            let moved = alone.iter().zip(&want).map(|(a, w)| (a - w).abs()).fold(0f32, f32::max);
            assert!(moved > 1e-3, "the mirror changes the map ({moved})");
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((g - w).abs());
            }
        }
        assert!(worst < 1e-5, "{file}: pair against flip average, max |diff| {worst}");
        if python_has_onnx() {
            onnxruntime_agrees(&out, dir.path(), &slices);
        }
    }
}

#[test]
fn members_that_do_not_fit_together_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let anchored = root().join("models/tvunet-medseg-anchored.onnx");
    let other = root().join("models/tvunet-medseg-separable.onnx");
    let out = dir.path().join("e.onnx");
    let refused = |cmd: &mut Command, needle: &str| {
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "expected `{needle}` in: {err}");
        assert!(!out.exists(), "nothing written after: {err}");
    };
    refused(&mut ensemble(&[&anchored, &other], &[], &out, &[]), "tvunet-medseg-separable.onnx");
    let int8 = root().join("models/tvunet-medseg-anchored.int8.onnx");
    refused(&mut ensemble(&[&anchored, &int8], &[], &out, &[]), "int8");
    refused(&mut ensemble(&[&anchored, &anchored], &["none"], &out, &[]), "1 --mirror for 2");
    refused(&mut ensemble(&[&anchored], &[], &out, &[]), "at least two");
    let member = dir.path().join("member.onnx");
    std::fs::copy(&anchored, &member).unwrap();
    let o = ensemble(&[&anchored, &member], &[], &member, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is member 1"), "{err}");
    assert_eq!(std::fs::read(&member).unwrap(), std::fs::read(&anchored).unwrap(), "untouched");
    refused(&mut ensemble(&[&anchored, &anchored], &[], &out, &["--threshold", "1.5"]), "1.5");

    // An ensemble is not re-quantized as one network.
    tvunet(&[
        "ensemble",
        "--model",
        anchored.to_str().unwrap(),
        "--model",
        anchored.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--data",
        fixtures().join("images").to_str().unwrap(),
        "--threshold",
        "0.45",
    ]);
    let q = common::quantize(&out, &dir.path().join("q.onnx"));
    let err = String::from_utf8_lossy(&q.stderr);
    assert!(!q.status.success() && err.contains("quantize each member"), "{err}");
}
