//! `pseudo-label --soft --flips` on real slices with a shipped model as the teacher: the folder
//! it writes reads back as training slices whose target is the teacher's own probability map.

use std::path::{Path, PathBuf};

use tvunet::data::{self, Target};
use tvunet::pseudo::{pseudo_label, PseudoOptions};
use tvunet_device::preprocess::GraySlice;
use tvunet_device::Segmenter;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The default model as teacher, and the bundled real slices as the unlabelled folder.
fn teacher_and_slices() -> (Segmenter, PathBuf) {
    let teacher = Segmenter::load(&root().join("models/tvunet-medseg-fast.onnx")).unwrap();
    (teacher, root().join("tests/fixtures/medseg/images"))
}

fn options(soft: bool, flips: bool) -> PseudoOptions {
    PseudoOptions {
        candidates: 10,
        keep: 10,
        name_contains: None,
        max_uncertain: 1.0,
        max_empty_share: 1.0,
        soft,
        flips,
    }
}

/// Mean absolute difference of two probability maps, in 0..1.
fn mean_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

#[test]
fn soft_labels_carry_the_teachers_probability() {
    let (teacher, images) = teacher_and_slices();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    let flipped = dir.path().join("flipped");

    let s = pseudo_label(&teacher, &images, &plain, &options(true, false)).unwrap();
    assert_eq!((s.examined, s.kept, s.refused), (4, 4, 0), "{s:?}");
    pseudo_label(&teacher, &images, &flipped, &options(true, true)).unwrap();

    let threshold = teacher.meta().threshold;
    let read = data::read_folder(&plain, Target::Infection).unwrap();
    let read_flipped = data::read_folder(&flipped, Target::Infection).unwrap();
    assert_eq!(read.len(), 4);
    for (s, f) in read.iter().zip(&read_flipped) {
        let bytes = std::fs::read(images.join(format!("{}.jpg", s.id))).unwrap();
        let prob = teacher.probability(&GraySlice::decode(&bytes).unwrap()).unwrap();
        let soft: Vec<f32> =
            s.soft_target.as_ref().unwrap().iter().map(|&v| f32::from(v) / 255.0).collect();
        let worst = prob.iter().zip(&soft).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst <= 0.5 / 255.0 + 1e-6, "{}: soft map off by {worst}", s.id);
        let marked = s.mask.iter().filter(|&&v| v != 0).count();
        let expected = prob.iter().filter(|&&p| p >= threshold).count();
        assert_eq!(marked, expected, "{}: binary mask is the cut at {threshold}", s.id);
        assert!(marked > 0, "{}: the teacher marks lesion on a real infected slice", s.id);

        // Averaging over flips changes the map a little, not wholesale.
        let soft_f: Vec<f32> =
            f.soft_target.as_ref().unwrap().iter().map(|&v| f32::from(v) / 255.0).collect();
        let d = mean_diff(&soft, &soft_f);
        assert!(d > 0.0 && d < 0.05, "{}: flip mean differs by {d} per pixel", s.id);
    }
    assert!(plain.join("pseudo.csv").is_file());
}

#[test]
fn a_soft_folder_without_its_map_names_the_missing_file() {
    let (teacher, images) = teacher_and_slices();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soft");
    pseudo_label(&teacher, &images, &out, &options(true, false)).unwrap();
    std::fs::remove_file(out.join("masks_soft/52.png")).unwrap();
    let err = data::read_folder(&out, Target::Infection).unwrap_err().to_string();
    assert!(err.contains("masks_soft") && err.contains("52.png"), "{err}");
}

#[test]
fn pseudo_labelling_refuses_to_mix_runs_or_to_keep_nothing() {
    let (teacher, images) = teacher_and_slices();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soft");
    pseudo_label(&teacher, &images, &out, &options(true, false)).unwrap();
    let err = pseudo_label(&teacher, &images, &out, &options(false, false)).unwrap_err();
    assert!(err.to_string().contains("already holds a labelled set"), "{err}");

    let strict = PseudoOptions { max_uncertain: 0.0, ..options(false, false) };
    let err = pseudo_label(&teacher, &images, &dir.path().join("strict"), &strict).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("kept none of 4") && text.contains("--max-uncertain 0"), "{text}");

    let bad = PseudoOptions { max_uncertain: 1.5, ..options(false, false) };
    let err = pseudo_label(&teacher, &images, &dir.path().join("bad"), &bad).unwrap_err();
    assert!(err.to_string().contains("--max-uncertain 1.5"), "{err}");
}
