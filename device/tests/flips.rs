//! Test-time flips on real slices: with the four-way average, the probability map of a mirrored
//! slice is the mirror of the slice's own map, which the network alone does not give.

mod common;

use common::{fixture_slices, root};
use tvunet_device::preprocess::{mirror, FlipAverage};
use tvunet_device::{GraySlice, Segmenter};

/// Largest |p(mirror(slice)) - mirror(p(slice))| over the slices and both mirrors.
fn mirror_error(segmenter: &Segmenter, slices: &[GraySlice]) -> f32 {
    let mut worst = 0f32;
    for slice in slices {
        let prob = segmenter.probability(slice).unwrap();
        for (lr, tb) in [(true, false), (false, true)] {
            let mirrored = GraySlice {
                pixels: mirror(&slice.pixels, slice.width, slice.height, lr, tb),
                ..slice.clone()
            };
            let got = segmenter.probability(&mirrored).unwrap();
            let expected = mirror(&prob, slice.width, slice.height, lr, tb);
            for (a, b) in got.iter().zip(&expected) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

#[test]
fn four_way_average_commutes_with_mirroring() {
    let slices = fixture_slices();
    let mut segmenter =
        Segmenter::load(&root().join("models/tvunet-medseg-anchored.onnx")).unwrap();
    segmenter.set_flip_average(FlipAverage::None);
    let alone = mirror_error(&segmenter, &slices);
    segmenter.set_flip_average(FlipAverage::FourWay);
    let averaged = mirror_error(&segmenter, &slices);
    // Resizing is symmetric up to float rounding, so only the network breaks the symmetry.
    assert!(averaged < 1e-4, "four-way average against mirroring: {averaged}");
    assert!(alone > 1e-2, "the network alone should not be mirror-symmetric: {alone}");
}

#[test]
fn left_right_average_is_the_mean_of_the_plane_and_its_mirror() {
    let slices = fixture_slices();
    let mut segmenter =
        Segmenter::load(&root().join("models/tvunet-medseg-anchored.onnx")).unwrap();
    let plane = segmenter.input_plane(&slices[0]);
    let side = segmenter.meta().input_size;
    let one = segmenter.probability_plane(&plane).unwrap();
    let flipped = segmenter.probability_plane(&mirror(&plane, side, side, true, false)).unwrap();
    let mean = segmenter.averaged_plane(&plane, FlipAverage::LeftRight).unwrap();
    for ((m, a), b) in mean.iter().zip(&one).zip(mirror(&flipped, side, side, true, false)) {
        assert!((m - (a + b) / 2.0).abs() < 1e-6 && (0.0..=1.0).contains(m));
    }
    assert_eq!(segmenter.averaged_plane(&plane, FlipAverage::None).unwrap(), one);
    // The metadata's setting is what `probability` uses; `probability_with` names its own.
    segmenter.set_flip_average(FlipAverage::TopBottom);
    let by_meta = segmenter.probability(&slices[0]).unwrap();
    assert_eq!(by_meta, segmenter.probability_with(&slices[0], FlipAverage::TopBottom).unwrap());
    assert_ne!(by_meta, segmenter.probability_with(&slices[0], FlipAverage::LeftRight).unwrap());
}
