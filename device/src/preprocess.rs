//! Slice in, model tensor out: the one copy of the preprocessing that training, evaluation and
//! the device all call, so that what is measured is what ships.

use image::{imageops::FilterType, ImageBuffer, Luma};
use serde::{Deserialize, Serialize};

/// How a slice's grey values become the network's input plane. The model's metadata names it
/// (`tvunet.normalisation`); a model asking for another is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalisation {
    /// Zero mean and unit deviation over the slice ([`normalise`]).
    #[default]
    ZscorePerSlice,
    /// The median grey level of the dark class (air and aerated lung) to -1 and that of the
    /// bright class (soft tissue and bone) to +1, the classes split by Otsu's threshold
    /// ([`anchor_to_tissue`]).
    TissueAnchored,
}

impl Normalisation {
    /// Every normalisation this runtime knows.
    pub const ALL: [Normalisation; 2] =
        [Normalisation::ZscorePerSlice, Normalisation::TissueAnchored];

    /// The name written into the model's metadata.
    pub fn name(self) -> &'static str {
        match self {
            Normalisation::ZscorePerSlice => "zscore-per-slice",
            Normalisation::TissueAnchored => "tissue-anchored",
        }
    }

    /// The normalisation called `name` in a model's metadata, if this runtime knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.name() == name)
    }

    /// Normalises a plane of grey values in place.
    pub fn apply(self, values: &mut [f32]) {
        match self {
            Normalisation::ZscorePerSlice => normalise(values),
            Normalisation::TissueAnchored => anchor_to_tissue(values),
        }
    }
}

/// Which mirror images of the input plane the network also sees, each probability map mirrored
/// back and all of them averaged (test-time flips). Training flips slices both ways, so the
/// network has learnt each mirror image; averaging them cancels part of its error, at one
/// inference per image. The model's metadata names it (`tvunet.flip_average`; absent means
/// [`FlipAverage::None`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlipAverage {
    /// The plane as it is: one inference.
    #[default]
    None,
    /// The plane and its left-right mirror: two inferences.
    LeftRight,
    /// The plane and its top-bottom mirror: two inferences.
    TopBottom,
    /// The plane, both mirrors and the two together (a half turn): four inferences.
    FourWay,
}

impl FlipAverage {
    /// Every flip average this runtime knows.
    pub const ALL: [FlipAverage; 4] =
        [FlipAverage::None, FlipAverage::LeftRight, FlipAverage::TopBottom, FlipAverage::FourWay];

    /// The name written into the model's metadata.
    pub fn name(self) -> &'static str {
        match self {
            FlipAverage::None => "none",
            FlipAverage::LeftRight => "left-right",
            FlipAverage::TopBottom => "top-bottom",
            FlipAverage::FourWay => "four-way",
        }
    }

    /// The flip average called `name` in a model's metadata, if this runtime knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The mirror images averaged, as (left-right, top-bottom) pairs; the first is the plane.
    pub fn mirrors(self) -> &'static [(bool, bool)] {
        match self {
            FlipAverage::None => &[(false, false)],
            FlipAverage::LeftRight => &[(false, false), (true, false)],
            FlipAverage::TopBottom => &[(false, false), (false, true)],
            FlipAverage::FourWay => &[(false, false), (true, false), (false, true), (true, true)],
        }
    }
}

/// A row-major `width` x `height` map mirrored left-right and/or top-bottom; its own inverse.
pub fn mirror<T: Copy>(
    map: &[T],
    width: u32,
    height: u32,
    left_right: bool,
    top_bottom: bool,
) -> Vec<T> {
    let (w, h) = (width as usize, height as usize);
    debug_assert_eq!(map.len(), w * h);
    let mut out = Vec::with_capacity(map.len());
    for y in 0..h {
        let row = if top_bottom { h - 1 - y } else { y };
        let src = &map[row * w..(row + 1) * w];
        if left_right {
            out.extend(src.iter().rev());
        } else {
            out.extend_from_slice(src);
        }
    }
    out
}

/// Fewest grey levels between the 1st and 99th percentile of a slice worth segmenting; a CT
/// slice in any window spans far more (air to soft tissue). Percentiles rather than the darkest
/// and brightest pixel, so that a few stray pixels do not make a blank export pass.
pub const MIN_GREY_SPREAD: u8 = 8;

/// Share of pixels at each end of the grey range left out of the contrast check.
pub const CONTRAST_TAIL: f64 = 0.01;

/// An 8-bit greyscale axial CT slice, row-major, as the workstation exports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraySlice {
    /// Columns, in pixels.
    pub width: u32,
    /// Rows, in pixels.
    pub height: u32,
    /// `width * height` grey values, row-major.
    pub pixels: Vec<u8>,
}

/// A display window over Hounsfield units (DICOM C.11.2.1.2.1, linear function).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HuWindow {
    /// Window centre, HU.
    pub center_hu: f32,
    /// Window width, HU.
    pub width_hu: f32,
}

impl HuWindow {
    /// A lung window (centre -600 HU, width 1500 HU): the kind of window the training slices
    /// were exported with.
    pub const LUNG: HuWindow = HuWindow { center_hu: -600.0, width_hu: 1500.0 };
}

/// Physical size of one pixel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelSpacing {
    /// Distance between row centres, mm.
    pub row_mm: f64,
    /// Distance between column centres, mm.
    pub col_mm: f64,
}

impl PixelSpacing {
    /// Parses `ROW_MM,COL_MM` (for example `0.7,0.7`), as command lines take it.
    ///
    /// # Errors
    /// A message naming the text when it is not two positive, finite numbers.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (row, col) = text
            .split_once(',')
            .ok_or_else(|| format!("spacing `{text}`: expected ROW,COL in mm, e.g. 0.7,0.7"))?;
        let parse = |v: &str| -> Result<f64, String> {
            let mm: f64 = v.trim().parse().map_err(|_| format!("spacing `{v}` is not a number"))?;
            if mm.is_finite() && mm > 0.0 {
                Ok(mm)
            } else {
                Err(format!("spacing {mm} mm is not a finite positive number"))
            }
        };
        Ok(Self { row_mm: parse(row)?, col_mm: parse(col)? })
    }

    /// Area of one pixel, mm².
    pub fn pixel_area_mm2(&self) -> f64 {
        self.row_mm * self.col_mm
    }
}

/// Why a slice could not be turned into a model input.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("slice is empty ({width}x{height} pixels)")]
    Empty { width: u32, height: u32 },
    #[error("slice is {width}x{height} pixels, above the limit of {limit} pixels")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("slice declares {width}x{height} pixels but carries {got} values")]
    SizeMismatch { width: u32, height: u32, got: usize },
    #[error("window width {0} HU is not positive")]
    BadWindow(f32),
    #[error("cannot decode image: {0}")]
    Decode(String),
    #[error(
        "slice has no contrast: 98 % of its pixels lie within {spread} grey levels \
         (a blank slice or a failed export), so there is no anatomy to segment"
    )]
    NoContrast { spread: u8 },
    #[error(
        "JPEG is truncated: {bytes} bytes end before the image's end marker (an interrupted \
         copy or export)"
    )]
    Truncated { bytes: usize },
    #[error(
        "this is a DICOM file ({bytes} bytes); send the slice as PNG or JPEG exported with a \
         lung window, or as Hounsfield units in a request"
    )]
    Dicom { bytes: usize },
}

impl GraySlice {
    /// Wraps raw pixels, checking that the count matches the size.
    ///
    /// # Errors
    /// [`SliceError::Empty`] for a zero side, [`SliceError::SizeMismatch`] when the pixel count
    /// is not `width * height`.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self, SliceError> {
        check_size(width, height, pixels.len())?;
        Ok(Self { width, height, pixels })
    }

    /// Decodes PNG or JPEG bytes; colour images are converted to luma.
    ///
    /// # Errors
    /// [`SliceError::Decode`] when the bytes are not a readable image, [`SliceError::Truncated`]
    /// for a JPEG cut short (the decoder would fill the missing rows with grey),
    /// [`SliceError::Dicom`] for a DICOM file, [`SliceError::Empty`] for a zero-sized image.
    pub fn decode(bytes: &[u8]) -> Result<Self, SliceError> {
        if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
            return Err(SliceError::Dicom { bytes: bytes.len() });
        }
        if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_is_complete(bytes) {
            return Err(SliceError::Truncated { bytes: bytes.len() });
        }
        let img = image::load_from_memory(bytes).map_err(|e| SliceError::Decode(e.to_string()))?;
        let grey = img.into_luma8();
        let (width, height) = grey.dimensions();
        Self::new(width, height, grey.into_raw())
    }

    /// Maps signed Hounsfield units through a window to 8-bit grey.
    ///
    /// # Errors
    /// [`SliceError::BadWindow`] for a window width that is not positive, and the size checks
    /// of [`GraySlice::new`].
    pub fn from_hu(
        width: u32,
        height: u32,
        hu: &[i16],
        window: HuWindow,
    ) -> Result<Self, SliceError> {
        if window.width_hu.is_nan() || window.width_hu <= 0.0 {
            return Err(SliceError::BadWindow(window.width_hu));
        }
        check_size(width, height, hu.len())?;
        let low = window.center_hu - window.width_hu / 2.0;
        let pixels = hu
            .iter()
            .map(|&v| {
                ((f32::from(v) - low) / window.width_hu * 255.0).round().clamp(0.0, 255.0) as u8
            })
            .collect();
        Ok(Self { width, height, pixels })
    }

    /// Refuses a slice whose grey levels, leaving out the darkest and brightest
    /// [`CONTRAST_TAIL`] of its pixels, span fewer than [`MIN_GREY_SPREAD`] levels: after
    /// per-slice standardisation it would be a flat plane or a few specks, which the network was
    /// never shown.
    ///
    /// # Errors
    /// [`SliceError::NoContrast`] with the spread found.
    pub fn check_contrast(&self) -> Result<(), SliceError> {
        let mut histogram = [0usize; 256];
        for &p in &self.pixels {
            histogram[usize::from(p)] += 1;
        }
        let tail = (self.pixels.len() as f64 * CONTRAST_TAIL).floor() as usize;
        // First grey level, walking from one end, past which more than `tail` pixels lie.
        let level = |levels: &[usize]| {
            let mut seen = 0;
            levels
                .iter()
                .copied()
                .find(|&g| {
                    seen += histogram[g];
                    seen > tail
                })
                .unwrap_or(0) as u8
        };
        let upward: Vec<usize> = (0..256).collect();
        let downward: Vec<usize> = (0..256).rev().collect();
        let low = level(&upward);
        let high = level(&downward);
        let spread = high.saturating_sub(low);
        if spread < MIN_GREY_SPREAD {
            return Err(SliceError::NoContrast { spread });
        }
        Ok(())
    }

    /// Number of pixels.
    pub fn len(&self) -> usize {
        self.pixels.len()
    }

    /// True for a slice without pixels (never produced by the constructors).
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }
}

/// Whether a JPEG stream reaches its end-of-image marker after its last scan. Inside a scan's
/// entropy-coded data every 0xFF byte is followed by 0x00 or a restart marker, so 0xFF 0xD9 there
/// can only be the end marker; an embedded thumbnail's markers all come before the main scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn check_size(width: u32, height: u32, got: usize) -> Result<(), SliceError> {
    if width == 0 || height == 0 {
        return Err(SliceError::Empty { width, height });
    }
    if u64::from(width) * u64::from(height) != got as u64 {
        return Err(SliceError::SizeMismatch { width, height, got });
    }
    Ok(())
}

/// Resizes a row-major f32 map bilinearly.
///
/// # Shapes
/// `map` is `from.1` rows by `from.0` columns; the result is `to.1` rows by `to.0` columns.
pub fn resize_map(map: &[f32], from: (u32, u32), to: (u32, u32)) -> Vec<f32> {
    if from == to {
        return map.to_vec();
    }
    // The image crate resizes the columns first, into a buffer of from.0 x to.1 pixels at 16
    // bytes each. For a long thin slice (65535 x 16 to 256 x 256: 268 MB) that buffer dwarfs
    // both maps, so the rows are resized first instead; every buffer then stays within the
    // larger of the two maps.
    let columns_first = u64::from(from.0) * u64::from(to.1);
    let larger_map = (u64::from(from.0) * u64::from(from.1)).max(u64::from(to.0) * u64::from(to.1));
    if columns_first > larger_map {
        let rows_resized = resize_map(map, from, (to.0, from.1));
        return resize_map(&rows_resized, (to.0, from.1), to);
    }
    // The image crate clamps f32 pixels to 0..=1 while filtering, so the map is brought into
    // that range and back; the triangle filter never leaves the input's range.
    let low = map.iter().copied().fold(f32::INFINITY, f32::min);
    let high = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = if high > low { high - low } else { 1.0 };
    let unit: Vec<f32> = map.iter().map(|&v| (v - low) / span).collect();
    let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(from.0, from.1, unit).expect("map length is from.0 * from.1");
    let resized = image::imageops::resize(&buf, to.0, to.1, FilterType::Triangle).into_raw();
    resized.into_iter().map(|v| v * span + low).collect()
}

/// Standardises a map in place to zero mean and unit deviation over the slice.
///
/// Per-slice standardisation removes the brightness and contrast of whichever window the
/// workstation exported with; the deviation is floored so a flat slice stays finite.
pub fn normalise(values: &mut [f32]) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt().max(1.0);
    for v in values {
        *v = ((f64::from(*v) - mean) / std) as f32;
    }
}

/// Otsu's threshold over 256 grey-level bins: the level `t` that best separates `< t` from
/// `>= t` (largest between-class variance); 128 when there is one level only.
pub fn otsu_threshold(histogram: &[u64; 256]) -> usize {
    let total: f64 = histogram.iter().map(|&n| n as f64).sum();
    let sum_all: f64 = histogram.iter().enumerate().map(|(v, &n)| v as f64 * n as f64).sum();
    let (mut below, mut sum_below) = (0f64, 0f64);
    let (mut best_t, mut best_var) = (128, -1f64);
    for t in 1..256 {
        below += histogram[t - 1] as f64;
        sum_below += (t - 1) as f64 * histogram[t - 1] as f64;
        let above = total - below;
        if below == 0.0 || above == 0.0 {
            continue;
        }
        let var = below * above * (sum_below / below - (sum_all - sum_below) / above).powi(2);
        if var > best_var {
            (best_t, best_var) = (t, var);
        }
    }
    best_t
}

/// Histogram of grey values rounded and clamped to 0..=255.
fn grey_histogram(values: &[f32]) -> [u64; 256] {
    let mut histogram = [0u64; 256];
    for &v in values {
        histogram[v.round().clamp(0.0, 255.0) as usize] += 1;
    }
    histogram
}

/// Median bin of `histogram[range]`.
fn median_bin(histogram: &[u64; 256], range: std::ops::Range<usize>) -> f32 {
    let count: u64 = histogram[range.clone()].iter().sum();
    let mut seen = 0;
    for level in range.clone() {
        seen += histogram[level];
        if 2 * seen >= count {
            return level as f32;
        }
    }
    range.start as f32
}

/// Maps grey values so that the median of the dark class (air, aerated lung) lands on -1 and
/// the median of the bright class (soft tissue, bone) on +1, Otsu's threshold splitting them.
///
/// Per-slice standardisation moves soft tissue with the share of the slice it fills: on a slice
/// that is mostly heart and liver, the heart lands near the mean, where ground glass sits on
/// other slices. The class medians stay where the tissues are, whatever their share, and a
/// linear change of window moves them with the tissues. The span is floored at 8 grey levels so
/// a nearly flat slice stays finite.
pub fn anchor_to_tissue(values: &mut [f32]) {
    let histogram = grey_histogram(values);
    let t = otsu_threshold(&histogram);
    let dark = median_bin(&histogram, 0..t);
    let bright = median_bin(&histogram, t..256);
    let half_span = ((bright - dark) / 2.0).max(4.0);
    let centre = (bright + dark) / 2.0;
    for v in values {
        *v = (*v - centre) / half_span;
    }
}

/// Turns a slice into the model's input plane: grey values resized to `side x side`, then
/// normalised with `normalisation`.
///
/// # Shapes
/// Returns `side * side` values, row-major (the 1 x 1 x side x side input tensor).
pub fn model_input(slice: &GraySlice, side: u32, normalisation: Normalisation) -> Vec<f32> {
    let grey: Vec<f32> = slice.pixels.iter().map(|&p| f32::from(p)).collect();
    let mut plane = resize_map(&grey, (slice.width, slice.height), (side, side));
    normalisation.apply(&mut plane);
    plane
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mirroring moves each value to its mirror position and undoes itself; the names the
    /// metadata uses read back.
    #[test]
    fn mirrors_move_values_and_undo_themselves() {
        let map: Vec<u8> = (0..6).collect(); // 3 wide, 2 high: [0 1 2; 3 4 5]
        assert_eq!(mirror(&map, 3, 2, true, false), [2, 1, 0, 5, 4, 3]);
        assert_eq!(mirror(&map, 3, 2, false, true), [3, 4, 5, 0, 1, 2]);
        assert_eq!(mirror(&map, 3, 2, true, true), [5, 4, 3, 2, 1, 0]);
        for &(lr, tb) in FlipAverage::FourWay.mirrors() {
            assert_eq!(mirror(&mirror(&map, 3, 2, lr, tb), 3, 2, lr, tb), map);
        }
        for f in FlipAverage::ALL {
            assert_eq!(FlipAverage::from_name(f.name()), Some(f));
            assert_eq!(f.mirrors()[0], (false, false), "the plane itself comes first");
        }
        // (left-right, top-bottom): a left-right mirror reverses each row.
        assert_eq!(FlipAverage::LeftRight.mirrors()[1..], [(true, false)]);
        assert_eq!(FlipAverage::TopBottom.mirrors()[1..], [(false, true)]);
        assert_eq!(FlipAverage::None.mirrors().len(), 1);
        assert_eq!(FlipAverage::FourWay.mirrors().len(), 4);
        assert_eq!(FlipAverage::from_name("sideways"), None);
    }

    /// Resizing keeps the values of a map outside 0..1 (grey levels), not clamped.
    #[test]
    fn a_long_thin_slice_resizes_like_a_square_one() {
        // A ramp along a 4096 x 4 strip to 64 x 64: resizing the rows first (the path that
        // keeps memory small) gives what the image crate's own order gives, within rounding.
        let strip: Vec<f32> = (0..4 * 4096).map(|i| (i % 4096) as f32 / 4095.0).collect();
        let square = resize_map(&strip, (4096, 4), (64, 64));
        let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(4096, 4, strip.clone()).unwrap();
        let direct = image::imageops::resize(&buf, 64, 64, FilterType::Triangle).into_raw();
        assert_eq!(square.len(), direct.len());
        let worst = square.iter().zip(&direct).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "largest difference {worst}");
        // And back to the strip's shape.
        let back = resize_map(&square, (64, 64), (4096, 4));
        assert_eq!(back.len(), 4 * 4096);
        assert!((back[2048] - strip[2048]).abs() < 0.02, "{} against {}", back[2048], strip[2048]);
    }

    #[test]
    fn resize_keeps_grey_levels() {
        let map: Vec<f32> = (0..16).map(|i| (i * 16) as f32).collect();
        let up = resize_map(&map, (4, 4), (8, 8));
        let (lo, hi) = up.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(lo >= 0.0 && hi <= 240.0 && hi > 200.0, "range {lo}..{hi}");
        let same = resize_map(&[7.0; 6], (3, 2), (5, 4));
        assert!(same.iter().all(|&v| (v - 7.0).abs() < 1e-6), "{same:?}");
    }

    /// A normalised plane has mean 0 and deviation 1.
    #[test]
    fn normalised_plane_is_standard() {
        let slice = GraySlice::new(3, 2, vec![0, 50, 100, 150, 200, 250]).unwrap();
        let plane = model_input(&slice, 8, Normalisation::ZscorePerSlice);
        let mean = plane.iter().sum::<f32>() / plane.len() as f32;
        let var = plane.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / plane.len() as f32;
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((var - 1.0).abs() < 1e-3, "variance {var}");
    }

    /// A linear change of window (brightness and contrast) leaves the model input unchanged.
    #[test]
    fn input_ignores_linear_window_change() {
        let a: Vec<u8> = (0..64u32).map(|i| (i * 3) as u8).collect();
        let b: Vec<u8> = a.iter().map(|&v| v / 2 + 60).collect();
        for norm in Normalisation::ALL {
            let pa = model_input(&GraySlice::new(8, 8, a.clone()).unwrap(), 8, norm);
            let pb = model_input(&GraySlice::new(8, 8, b.clone()).unwrap(), 8, norm);
            let worst = pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(worst < 0.05, "{}: max difference {worst}", norm.name());
        }
    }

    /// Otsu's threshold falls between two grey levels; one level alone gives 128.
    #[test]
    fn otsu_splits_two_grey_levels() {
        let mut histogram = [0u64; 256];
        (histogram[20], histogram[220]) = (300, 100);
        let t = otsu_threshold(&histogram);
        assert!(t > 20 && t <= 220, "threshold {t}");
        let mut flat = [0u64; 256];
        flat[7] = 50;
        assert_eq!(otsu_threshold(&flat), 128);
    }

    /// Tissue anchoring puts soft tissue at +1 and aerated lung at -1 however much of the slice
    /// each fills; standardisation moves soft tissue towards 0 on a slice it dominates.
    #[test]
    fn tissue_anchoring_ignores_the_share_of_tissue() {
        let slice = |tissue_px: usize| -> Vec<f32> {
            let mut v: Vec<f32> = (0..400).map(|i| 20.0 + (i % 7) as f32).collect();
            for p in v.iter_mut().take(tissue_px) {
                *p = 240.0;
            }
            v
        };
        for tissue_px in [60, 200, 340] {
            let mut v = slice(tissue_px);
            anchor_to_tissue(&mut v);
            assert!((v[0] - 1.0).abs() < 0.02, "tissue at {} with {tissue_px} px", v[0]);
            assert!(v[399] < -0.9 && v[399] > -1.1, "lung at {} with {tissue_px} px", v[399]);
        }
        let (mut few, mut most) = (slice(60), slice(340));
        normalise(&mut few);
        normalise(&mut most);
        assert!(few[0] - most[0] > 1.0, "z-score tissue {} against {}", few[0], most[0]);
        assert_eq!(
            Normalisation::from_name("tissue-anchored"),
            Some(Normalisation::TissueAnchored)
        );
        assert_eq!(Normalisation::from_name("minmax"), None);
    }

    /// HU values map through the window: the low edge to 0, the high edge to 255.
    #[test]
    fn hu_window_maps_edges() {
        let w = HuWindow { center_hu: 40.0, width_hu: 400.0 };
        let s = GraySlice::from_hu(3, 1, &[-160, 40, 240], w).unwrap();
        assert_eq!(s.pixels, vec![0, 128, 255]);
    }

    /// Spacing parses from `ROW,COL` and refuses non-positive or missing values, naming them.
    #[test]
    fn spacing_parses_and_refuses() {
        assert_eq!(PixelSpacing::parse("0.7, 0.8"), Ok(PixelSpacing { row_mm: 0.7, col_mm: 0.8 }));
        for bad in ["0.7", "0,0.7", "-1,1", "a,1", "inf,1"] {
            assert!(PixelSpacing::parse(bad).is_err(), "`{bad}` accepted");
        }
    }

    /// Blank and near-uniform slices are refused; a slice with real contrast passes.
    #[test]
    fn blank_slice_is_refused() {
        for fill in [0u8, 128, 255] {
            let s = GraySlice::new(4, 4, vec![fill; 16]).unwrap();
            assert!(
                matches!(s.check_contrast(), Err(SliceError::NoContrast { spread: 0 })),
                "{fill}"
            );
        }
        let mut pixels = vec![20u8; 16];
        pixels[3] = 200;
        assert!(GraySlice::new(4, 4, pixels).unwrap().check_contrast().is_ok());
    }

    /// A uniform export with a few stray bright pixels is still blank: the check leaves out the
    /// extreme 1 % of pixels at each end.
    #[test]
    fn stray_pixels_do_not_make_a_blank_slice_pass() {
        let mut pixels = vec![100u8; 300 * 300];
        for i in 0..50 {
            pixels[i * 1_000] = 108 + (i % 100) as u8;
        }
        let s = GraySlice::new(300, 300, pixels).unwrap();
        assert!(matches!(s.check_contrast(), Err(SliceError::NoContrast { spread: 0 })));
    }

    /// A real slice cut short is refused before the decoder pads it with grey; the whole file
    /// decodes.
    #[test]
    fn truncated_jpeg_is_refused() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/medseg/images/2.jpg");
        let bytes = std::fs::read(path).unwrap();
        let whole = GraySlice::decode(&bytes).unwrap();
        assert!(whole.check_contrast().is_ok());
        for cut in [bytes.len() / 4, bytes.len() / 2, bytes.len() - 2] {
            let err = GraySlice::decode(&bytes[..cut]).unwrap_err();
            assert!(matches!(err, SliceError::Truncated { bytes } if bytes == cut), "{cut}: {err}");
        }
    }

    /// A DICOM file (preamble, then `DICM`) is named as such rather than as an unknown format.
    #[test]
    fn dicom_is_named() {
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0]);
        let err = GraySlice::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("DICOM") && err.contains("PNG or JPEG"), "{err}");
    }

    /// Pixel count and declared size must agree.
    #[test]
    fn size_mismatch_is_refused() {
        let err = GraySlice::new(4, 4, vec![0; 15]).unwrap_err();
        assert!(err.to_string().contains("4x4") && err.to_string().contains("15"), "{err}");
    }
}
