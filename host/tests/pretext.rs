//! `tvunet pretext` on real slices: the folder it writes reads back as training slices whose
//! input is the painted slice and whose target is the original, and it never overwrites a set.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, tvunet};

use tvunet::data::{self, Target};
use tvunet::pretext::{write_pretext, PretextOptions};
use tvunet_device::preprocess::GraySlice;

fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/medseg/images")
}

#[test]
fn a_pretext_set_reads_back_as_painted_slices_with_the_original_as_target() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pretext");
    let (written, refused) = write_pretext(&images(), &out, &PretextOptions::default()).unwrap();
    assert_eq!((written, refused), (4, 0));

    let read = data::read_folder(&out, Target::Infection).unwrap();
    assert_eq!(read.len(), 4);
    for s in &read {
        let bytes = std::fs::read(images().join(format!("{}.jpg", s.id))).unwrap();
        let original = GraySlice::decode(&bytes).unwrap();
        assert_eq!((s.image.width, s.image.height), (original.width, original.height));
        // At most 6 rectangles of at most 22 % of each side are painted.
        let painted = s.image.pixels.iter().zip(&original.pixels).filter(|(a, b)| a != b).count();
        let share = painted as f64 / original.len() as f64;
        assert!(share > 0.005 && share < 6.0 * 0.22 * 0.22, "{}: {share:.3} painted", s.id);

        // The target follows the original's grey values, stretched: it rises where they rise.
        let target = s.soft_target.as_ref().expect("masks_soft/ is read as the target");
        let dark: Vec<usize> = (0..original.len()).filter(|&i| original.pixels[i] < 60).collect();
        let bright: Vec<usize> =
            (0..original.len()).filter(|&i| original.pixels[i] > 200).collect();
        let mean = |idx: &[usize]| {
            idx.iter().map(|&i| f64::from(target[i])).sum::<f64>() / idx.len().max(1) as f64
        };
        assert!(mean(&dark) < 60.0 && mean(&bright) > 200.0, "{}: target off the original", s.id);
    }

    let again = write_pretext(&images(), &out, &PretextOptions::default()).unwrap_err();
    assert!(again.to_string().contains("already holds slices"), "{again}");

    // The same seed writes the same set.
    let twin = dir.path().join("twin");
    write_pretext(&images(), &twin, &PretextOptions::default()).unwrap();
    for s in &read {
        let name = format!("images/{}.png", s.id);
        assert_eq!(
            std::fs::read(out.join(&name)).unwrap(),
            std::fs::read(twin.join(&name)).unwrap()
        );
    }
}

/// Training loss of each epoch, from a run's epochs.csv.
fn losses(run: &Path) -> Vec<f64> {
    let csv = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    csv.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse().unwrap()).collect()
}

/// Pre-train on the restoration task, then fine-tune on the lesion masks: with --fresh-head the
/// run keeps the pre-trained body and starts the head at the lesion prior, so its first epoch
/// costs less than one that keeps the restoration head (which paints the slice, not lesions).
#[test]
fn a_pretrained_run_fine_tunes_on_lesions_with_a_fresh_head() {
    let dir = tempfile::tempdir().unwrap();
    let pretext = dir.path().join("pretext");
    write_pretext(&images(), &pretext, &PretextOptions::default()).unwrap();
    let net = ["--depth", "2", "--base", "4", "--input-size", "64", "--folds", "2"];
    let steps = ["--batch-size", "2", "--lr", "3e-3"];
    let run = |data: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--data", data.to_str().unwrap(), "--out"];
        args.push(out.to_str().unwrap());
        args.extend(net.iter().chain(&steps).chain(extra));
        tvunet(&args);
    };
    let pre = dir.path().join("pre");
    run(&pretext, &pre, &["--epochs", "3", "--all-slices"]);
    let pre_s = pre.to_str().unwrap();
    let fresh = dir.path().join("fresh");
    run(&fixtures(), &fresh, &["--epochs", "1", "--init-from", pre_s, "--fresh-head"]);
    let kept = dir.path().join("kept");
    run(&fixtures(), &kept, &["--epochs", "1", "--init-from", pre_s]);

    let config = std::fs::read_to_string(fresh.join("config.json")).unwrap();
    assert!(config.contains("\"fresh_head\": true"), "{config}");
    let (fresh_loss, kept_loss) = (losses(&fresh)[0], losses(&kept)[0]);
    assert!(fresh_loss < kept_loss, "fresh head {fresh_loss} against kept head {kept_loss}");
}
