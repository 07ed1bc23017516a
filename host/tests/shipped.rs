//! Every model file in `models/` is what its model card says it is: the sha256 and size the card
//! lists, metadata that matches its name, and masks that overlap the radiologist's on the
//! bundled real slices (which are among the training slices, so this checks the file, not the
//! model's accuracy on unseen patients).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tvunet::data::{self, Target};
use tvunet::metrics::Counts;
use tvunet_device::Segmenter;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The card for `name.onnx` or `name.int8.onnx` is `name.md`.
fn card_for(model: &Path) -> PathBuf {
    let file = model.file_name().unwrap().to_str().unwrap();
    let stem = file.trim_end_matches(".onnx").trim_end_matches(".int8");
    model.with_file_name(format!("{stem}.md"))
}

#[test]
fn shipped_models_match_their_cards_and_segment_real_slices() {
    let mut models: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();
    assert!(models.len() >= 4, "fp32 and int8 of the base-8 and base-16 models: {models:?}");
    let slices =
        data::read_folder(&root().join("tests/fixtures/medseg"), Target::Infection).unwrap();
    for model in &models {
        let bytes = std::fs::read(model).unwrap();
        let sha = format!("{:x}", Sha256::digest(&bytes));
        let card_path = card_for(model);
        let card = std::fs::read_to_string(&card_path).unwrap_or_else(|e| {
            panic!("{}: no model card {}: {e}", model.display(), card_path.display())
        });
        assert!(
            card.contains(&sha),
            "{} does not list sha256 {sha} of {}",
            card_path.display(),
            model.display()
        );
        let size = bytes.len().to_string();
        let size_grouped = size
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            card.contains(&size_grouped),
            "{} does not give the size {size_grouped} B",
            card_path.display()
        );

        let segmenter = Segmenter::load(model).unwrap();
        let int8 = model.to_str().unwrap().ends_with(".int8.onnx");
        assert_eq!(
            segmenter.meta().precision,
            if int8 { "int8" } else { "fp32" },
            "{}",
            model.display()
        );
        let threshold = segmenter.meta().threshold;
        assert!(
            card.contains(&format!("**{threshold:.2}**")),
            "{} does not give threshold {threshold}",
            card_path.display()
        );
        let mut counts = Counts::default();
        for s in &slices {
            let prob = segmenter.probability(&s.image).unwrap();
            counts = counts.merge(Counts::from_probability(&prob, &s.mask, threshold));
        }
        println!("{}: pooled Dice {:.3} on the bundled slices", model.display(), counts.dice());
        assert!(counts.dice() > 0.6, "{}: pooled Dice {}", model.display(), counts.dice());
    }
}
