//! The f16 engine (`--engine tract-f16`) runs the default model file in half precision and
//! gives the masks of the f32 engine on real slices, within half precision's rounding.

mod common;

use common::{fixture_slices, root};
use tvunet_device::{preprocess::FlipAverage, Engine, Segmenter};

#[test]
fn half_precision_gives_the_f32_masks_on_real_slices() {
    let model = root().join("models/tvunet-medseg-anchored.onnx");
    let f32_engine = Segmenter::load_with(&model, Engine::Tract).unwrap();
    let f16_engine = Segmenter::load_with(&model, Engine::TractF16).unwrap();
    assert_eq!(f16_engine.engine(), Engine::TractF16);
    let t = f32_engine.meta().threshold;
    let (mut worst, mut differ, mut total) = (0f32, 0usize, 0usize);
    // Two slices, one inference each: on a core without fp16 arithmetic tract emulates it, at
    // seconds per inference.
    for slice in fixture_slices().iter().take(2) {
        let a = f32_engine.probability_with(slice, FlipAverage::None).unwrap();
        let b = f16_engine.probability_with(slice, FlipAverage::None).unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(y.is_finite() && (0.0..=1.0).contains(y), "f16 probability {y}");
            worst = worst.max((x - y).abs());
            differ += usize::from((*x >= t) != (*y >= t));
        }
        total += a.len();
    }
    println!("f32 vs f16: max |diff| {worst:e}, {differ} of {total} mask pixels differ");
    assert!(worst <= 0.05, "probabilities differ by {worst}");
    assert!(differ * 1_000 <= total, "{differ} of {total} mask pixels differ");
}
