//! Pixel confusion counts and the figures derived from them.

use serde::{Deserialize, Serialize};

/// Pixel counts of a predicted mask against the ground truth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Lesion predicted, lesion in truth.
    pub tp: u64,
    /// Lesion predicted, background in truth.
    pub fp: u64,
    /// Background predicted, lesion in truth.
    pub fn_: u64,
    /// Background predicted, background in truth.
    pub tn: u64,
}

fn ratio(num: u64, den: u64, empty: f64) -> f64 {
    if den == 0 {
        empty
    } else {
        num as f64 / den as f64
    }
}

impl Counts {
    /// Counts a probability map thresholded at `threshold` (lesion when `p >= threshold`)
    /// against a 0/1 truth.
    pub fn from_probability(prob: &[f32], truth: &[u8], threshold: f32) -> Self {
        let mut c = Counts::default();
        for (&p, &t) in prob.iter().zip(truth) {
            c.add(p >= threshold, t != 0);
        }
        c
    }

    /// Adds one pixel.
    pub fn add(&mut self, predicted: bool, truth: bool) {
        match (predicted, truth) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    /// Sum of two counts.
    pub fn merge(self, o: Counts) -> Counts {
        Counts { tp: self.tp + o.tp, fp: self.fp + o.fp, fn_: self.fn_ + o.fn_, tn: self.tn + o.tn }
    }

    /// TP / (TP + FP); 1 when nothing was predicted.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp, 1.0)
    }

    /// TP / (TP + FN); 1 when there is no lesion.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_, 1.0)
    }

    /// TN / (TN + FP); 1 when there is no background.
    pub fn specificity(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp, 1.0)
    }

    /// 2 TP / (2 TP + FP + FN); 1 when both masks are empty.
    pub fn dice(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_, 1.0)
    }

    /// IoU of the lesion class; 1 when both masks are empty.
    pub fn iou(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_, 1.0)
    }

    /// IoU of the background class; 1 when both are all lesion.
    pub fn background_iou(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp + self.fn_, 1.0)
    }

    /// Mean of the lesion and background IoU.
    pub fn miou(&self) -> f64 {
        (self.iou() + self.background_iou()) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dice and IoU follow their definitions on a small hand-counted case.
    #[test]
    fn figures_follow_definitions() {
        let prob = [0.9, 0.8, 0.2, 0.6, 0.1, 0.0];
        let truth = [1, 0, 1, 1, 0, 0];
        let c = Counts::from_probability(&prob, &truth, 0.5);
        assert_eq!(c, Counts { tp: 2, fp: 1, fn_: 1, tn: 2 });
        assert_eq!(c.dice(), 4.0 / 6.0);
        assert_eq!(c.iou(), 0.5);
        assert_eq!(c.background_iou(), 0.5);
        assert_eq!(c.precision(), 2.0 / 3.0);
    }

    /// An empty prediction on an empty truth scores 1 everywhere.
    #[test]
    fn empty_vs_empty_is_perfect() {
        let c = Counts::from_probability(&[0.1, 0.2], &[0, 0], 0.5);
        assert_eq!((c.dice(), c.iou(), c.miou()), (1.0, 1.0, 1.0));
    }
}
