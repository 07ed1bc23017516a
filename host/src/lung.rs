//! The lung field of a labelled slice, derived from the slice and its lesion mask: the target of
//! the network's second (lung) head, which gates the lesion probability so that heart, chest
//! wall and other soft tissue outside the lungs are not marked.
//!
//! In a lung window, aerated lung is dark and soft tissue bright, but dense consolidation is as
//! bright as the chest wall: a threshold alone cuts the lesions out of the lung. The radiologist's
//! lesions lie inside the lungs by definition, so on labelled slices the field is the dark
//! region (Otsu's threshold, opened once to drop speckle) united with the lesion mask, with the
//! holes (vessels, airway walls, enclosed consolidation) filled. Dark air outside the body and
//! the airways stay in the field: the gate is meant to veto bright tissue, not to be a lung
//! segmentation for measurement.

use std::collections::VecDeque;

use tvunet_device::preprocess::{otsu_threshold, GraySlice};

/// 3x3 erosion (`grow` false) or dilation (`grow` true) of a binary map; outside the map counts
/// as unset for dilation and as set for erosion, so borders are not eaten.
fn morph(map: &[bool], w: usize, h: usize, grow: bool) -> Vec<bool> {
    let mut out = vec![false; map.len()];
    for y in 0..h {
        for x in 0..w {
            let mut any = false;
            let mut all = true;
            for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let v = map[yy * w + xx];
                    any |= v;
                    all &= v;
                }
            }
            out[y * w + x] = if grow { any } else { all };
        }
    }
    out
}

/// Sets every unset pixel that cannot reach the map's edge through unset pixels (4-connected).
fn fill_holes(map: &mut [bool], w: usize, h: usize) {
    let mut outside = vec![false; map.len()];
    let mut queue = VecDeque::new();
    for y in 0..h {
        for x in 0..w {
            let edge = x == 0 || y == 0 || x == w - 1 || y == h - 1;
            if edge && !map[y * w + x] {
                outside[y * w + x] = true;
                queue.push_back((x, y));
            }
        }
    }
    while let Some((x, y)) = queue.pop_front() {
        let mut visit = |xx: usize, yy: usize| {
            let i = yy * w + xx;
            if !map[i] && !outside[i] {
                outside[i] = true;
                queue.push_back((xx, yy));
            }
        };
        if x > 0 {
            visit(x - 1, y);
        }
        if x + 1 < w {
            visit(x + 1, y);
        }
        if y > 0 {
            visit(x, y - 1);
        }
        if y + 1 < h {
            visit(x, y + 1);
        }
    }
    for (v, out) in map.iter_mut().zip(outside) {
        *v |= !out;
    }
}

/// The lung field of `slice`, `width * height` values, 1 = field, with `lesion` (same size,
/// non-zero = lesion) inside it.
///
/// # Panics
/// When `lesion` and the slice differ in size.
pub fn lung_field(slice: &GraySlice, lesion: &[u8]) -> Vec<u8> {
    let (w, h) = (slice.width as usize, slice.height as usize);
    assert_eq!(lesion.len(), w * h, "lesion mask and slice differ in size");
    let mut histogram = [0u64; 256];
    for &p in &slice.pixels {
        histogram[usize::from(p)] += 1;
    }
    let t = otsu_threshold(&histogram);
    let dark: Vec<bool> = slice.pixels.iter().map(|&p| usize::from(p) < t).collect();
    let opened = morph(&morph(&dark, w, h, false), w, h, true);
    let mut field: Vec<bool> = opened.iter().zip(lesion).map(|(&d, &l)| d || l != 0).collect();
    fill_holes(&mut field, w, h);
    field.into_iter().map(u8::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bright 20 x 20 slice with a dark 10 x 10 "lung" holding a bright vessel (one pixel) and
    /// a bright consolidation in its corner, marked as lesion.
    fn phantom() -> (GraySlice, Vec<u8>) {
        let n = 20;
        let mut pixels = vec![220u8; n * n];
        let mut lesion = vec![0u8; n * n];
        for y in 5..15 {
            for x in 5..15 {
                pixels[y * n + x] = 20;
            }
        }
        pixels[10 * n + 10] = 200;
        for y in 5..8 {
            for x in 5..8 {
                pixels[y * n + x] = 210;
                lesion[y * n + x] = 1;
            }
        }
        (GraySlice { width: n as u32, height: n as u32, pixels }, lesion)
    }

    #[test]
    fn field_holds_the_dark_lung_its_vessels_and_the_lesion_but_not_the_wall() {
        let (slice, lesion) = phantom();
        let field = lung_field(&slice, &lesion);
        let at = |x: usize, y: usize| field[y * 20 + x];
        assert_eq!(at(10, 10), 1, "vessel inside the lung is filled");
        assert_eq!(at(6, 6), 1, "consolidation marked as lesion is in the field");
        assert_eq!(at(12, 12), 1, "dark lung is in the field");
        assert_eq!(at(2, 2), 0, "bright wall is not");
        assert_eq!(at(17, 10), 0, "bright wall is not");
        assert_eq!(field.iter().filter(|&&v| v == 1).count(), 100);
    }

    #[test]
    fn without_the_lesion_the_bright_consolidation_falls_outside() {
        let (slice, lesion) = phantom();
        let field = lung_field(&slice, &vec![0; lesion.len()]);
        assert_eq!(field[6 * 20 + 6], 0);
        assert_eq!(field[12 * 20 + 12], 1);
    }
}
