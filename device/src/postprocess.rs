//! Probability map to clinical figures: the thresholded mask, its connected lesions and their
//! areas, and the run-length code that carries the mask over the link.

use serde::{Deserialize, Serialize};

use crate::preprocess::PixelSpacing;

/// A binary lesion mask at the slice's own size: 1 = lesion, 0 = background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LesionMask {
    /// Columns, in pixels.
    pub width: u32,
    /// Rows, in pixels.
    pub height: u32,
    /// `width * height` values, row-major, each 0 or 1.
    pub pixels: Vec<u8>,
}

/// One 8-connected lesion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lesion {
    /// Pixels in the lesion.
    pub area_px: u64,
    /// Area in mm², when the pixel spacing is known.
    pub area_mm2: Option<f64>,
    /// Bounding box `[x_min, y_min, x_max, y_max]`, inclusive, pixels.
    pub bbox: [u32; 4],
    /// Centroid `[x, y]`, pixels.
    pub centroid: [f64; 2],
}

impl LesionMask {
    /// Thresholds a probability map: a pixel is lesion when its probability is at least
    /// `threshold`.
    pub fn from_probability(prob: &[f32], width: u32, height: u32, threshold: f32) -> Self {
        let pixels = prob.iter().map(|&p| u8::from(p >= threshold)).collect();
        Self { width, height, pixels }
    }

    /// Lesion pixel count.
    pub fn lesion_px(&self) -> u64 {
        self.pixels.iter().filter(|&&p| p != 0).count() as u64
    }

    /// The 8-connected lesions, in order of their first pixel (row-major scan).
    pub fn lesions(&self, spacing: Option<PixelSpacing>) -> Vec<Lesion> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut seen = vec![false; w * h];
        let mut stack = Vec::new();
        let mut out = Vec::new();
        for start in 0..w * h {
            if self.pixels[start] == 0 || seen[start] {
                continue;
            }
            seen[start] = true;
            stack.push(start);
            let (mut n, mut sx, mut sy) = (0u64, 0f64, 0f64);
            let mut bbox = [u32::MAX, u32::MAX, 0, 0];
            while let Some(i) = stack.pop() {
                let (x, y) = (i % w, i / w);
                n += 1;
                sx += x as f64;
                sy += y as f64;
                bbox = [
                    bbox[0].min(x as u32),
                    bbox[1].min(y as u32),
                    bbox[2].max(x as u32),
                    bbox[3].max(y as u32),
                ];
                for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                    for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                        let j = ny * w + nx;
                        if self.pixels[j] != 0 && !seen[j] {
                            seen[j] = true;
                            stack.push(j);
                        }
                    }
                }
            }
            out.push(Lesion {
                area_px: n,
                area_mm2: spacing.map(|s| n as f64 * s.pixel_area_mm2()),
                bbox,
                centroid: [sx / n as f64, sy / n as f64],
            });
        }
        out
    }

    /// Run-length code of the mask: alternating run lengths, starting with background (the
    /// first run is 0 when the first pixel is lesion).
    pub fn to_rle(&self) -> Vec<u32> {
        let mut runs = Vec::new();
        let mut current = 0u8;
        let mut len = 0u32;
        for &p in &self.pixels {
            let p = u8::from(p != 0);
            if p == current {
                len += 1;
            } else {
                runs.push(len);
                current = p;
                len = 1;
            }
        }
        runs.push(len);
        runs
    }

    /// Rebuilds a mask from [`LesionMask::to_rle`] output.
    ///
    /// # Errors
    /// When the runs do not add up to `width * height`, naming both counts.
    pub fn from_rle(width: u32, height: u32, runs: &[u32]) -> Result<Self, String> {
        let expected = u64::from(width) * u64::from(height);
        let total: u64 = runs.iter().map(|&r| u64::from(r)).sum();
        if total != expected {
            return Err(format!("mask runs cover {total} pixels, the slice has {expected}"));
        }
        let mut pixels = Vec::with_capacity(expected as usize);
        for (k, &r) in runs.iter().enumerate() {
            pixels.extend(std::iter::repeat_n((k % 2) as u8, r as usize));
        }
        Ok(Self { width, height, pixels })
    }

    /// The mask as 0/255 greyscale, for PNG files.
    pub fn to_grey(&self) -> Vec<u8> {
        self.pixels.iter().map(|&p| if p != 0 { 255 } else { 0 }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> LesionMask {
        let width = rows[0].len() as u32;
        let pixels = rows.iter().flat_map(|r| r.bytes().map(|b| u8::from(b == b'#'))).collect();
        LesionMask { width, height: rows.len() as u32, pixels }
    }

    /// Diagonal neighbours join one lesion; separate blobs stay apart.
    #[test]
    fn lesions_are_eight_connected() {
        let m = mask(&["#....", ".#..#", "....#", "##..."]);
        let lesions = m.lesions(None);
        let areas: Vec<u64> = lesions.iter().map(|l| l.area_px).collect();
        assert_eq!(areas, vec![2, 2, 2]);
        assert_eq!(lesions[0].bbox, [0, 0, 1, 1]);
        assert_eq!(lesions[1].centroid, [4.0, 1.5]);
        assert!(lesions.iter().all(|l| l.area_mm2.is_none()));
    }

    /// Areas in mm² are pixel counts times the pixel area.
    #[test]
    fn area_uses_spacing() {
        let m = mask(&["##", "##"]);
        let s = PixelSpacing { row_mm: 0.5, col_mm: 0.8 };
        assert_eq!(m.lesions(Some(s))[0].area_mm2, Some(4.0 * 0.4));
    }

    /// Run-length coding round-trips, whichever value the mask starts with.
    #[test]
    fn rle_round_trips() {
        for rows in [&["#..#", "##.."][..], &["....", "...."][..], &["####", "###."][..]] {
            let m = mask(rows);
            let runs = m.to_rle();
            assert_eq!(LesionMask::from_rle(4, 2, &runs).unwrap(), m, "rows {rows:?}");
        }
        assert!(LesionMask::from_rle(4, 2, &[3, 2]).is_err());
    }
}
