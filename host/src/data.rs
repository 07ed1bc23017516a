//! Labelled CT slices: image folders and MedSeg NIfTI volumes, seeded splits and augmentation.

use std::fmt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tvunet_device::preprocess::{self, GraySlice, HuWindow, Normalisation};

/// What the mask marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Ground-glass opacity and consolidation (MedSeg labels 1 and 2).
    Infection,
    /// Ground-glass opacity only (label 1), as the TV-UNet paper.
    Ggo,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Infection => "infection",
            Target::Ggo => "ggo",
        })
    }
}

impl Target {
    /// Whether a MedSeg label counts as lesion for this target.
    pub fn is_lesion(self, label: u8) -> bool {
        match self {
            Target::Infection => label == 1 || label == 2,
            Target::Ggo => label == 1,
        }
    }
}

/// One axial slice with its lesion mask at the same size.
#[derive(Debug, Clone)]
pub struct LabelledSlice {
    /// File stem or `volume:z` index; never a patient identifier.
    pub id: String,
    /// The slice, 8-bit grey.
    pub image: GraySlice,
    /// `width * height` values, 1 = lesion.
    pub mask: Vec<u8>,
    /// A teacher model's lesion probability in steps of 1/255, `width * height` values, when the
    /// slice was labelled by a model (`tvunet pseudo-label --soft`). Training then learns this
    /// map instead of the binary `mask` (distillation); evaluation always reads `mask`.
    pub soft_target: Option<Vec<u8>>,
}

/// Why a labelled set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: {why}")]
    Image { path: PathBuf, why: String },
    #[error("slice {image} has no mask: expected {mask}")]
    MissingMask { image: PathBuf, mask: PathBuf },
    #[error("slice {image} is {iw}x{ih} but its mask {mask} is {mw}x{mh}")]
    SizeMismatch { image: PathBuf, mask: PathBuf, iw: u32, ih: u32, mw: u32, mh: u32 },
    #[error("mask {path} holds label {label}; expected 0 (background), 1 (ground glass) or 2 (consolidation)")]
    BadLabel { path: PathBuf, label: u8 },
    #[error("{path}: no slices found (expected images/<id>.jpg|png)")]
    Empty { path: PathBuf },
    #[error("NIfTI {path}: {why}")]
    Nifti { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |cause| DataError::Io { path: path.to_path_buf(), cause }
}

/// Reads a MedSeg-style folder: `images/<id>.jpg|png` with `masks_multiclass/<id>.png` (palette
/// indices) or, when that folder is absent, `masks_binary/<id>.png` (0/255, infection only).
/// A folder written by `tvunet pseudo-label --soft` also holds `masks_soft/<id>.png`, the
/// teacher's probability (0..255), read into [`LabelledSlice::soft_target`].
///
/// # Errors
/// A missing mask or a mask of another size names both files; see [`DataError`].
pub fn read_folder(dir: &Path, target: Target) -> Result<Vec<LabelledSlice>, DataError> {
    let images = dir.join("images");
    let multiclass = dir.join("masks_multiclass");
    let binary = dir.join("masks_binary");
    let soft = dir.join("masks_soft");
    let use_soft = soft.is_dir();
    let use_multiclass = multiclass.is_dir();
    if !use_multiclass && target == Target::Ggo {
        return Err(DataError::MissingMask {
            image: images.clone(),
            mask: multiclass.join("<id>.png (ground glass needs the multiclass masks)"),
        });
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&images)
        .map_err(io_err(&images))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            matches!(ext.as_str(), "jpg" | "jpeg" | "png")
        })
        .collect();
    paths.sort_by_key(|p| natural_key(p));
    if paths.is_empty() {
        return Err(DataError::Empty { path: images });
    }
    let mut out = Vec::with_capacity(paths.len());
    for image_path in paths {
        let stem = image_path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let mask_path =
            if use_multiclass { &multiclass } else { &binary }.join(format!("{stem}.png"));
        if !mask_path.is_file() {
            return Err(DataError::MissingMask { image: image_path, mask: mask_path });
        }
        let bytes = std::fs::read(&image_path).map_err(io_err(&image_path))?;
        let image = GraySlice::decode(&bytes)
            .map_err(|e| DataError::Image { path: image_path.clone(), why: e.to_string() })?;
        let (mw, mh, labels) = if use_multiclass {
            read_palette_png(&mask_path)?
        } else {
            let (w, h, grey) = read_grey_png(&mask_path)?;
            (w, h, grey.into_iter().map(|v| u8::from(v > 127)).collect())
        };
        same_size(&image, &image_path, &mask_path, (mw, mh))?;
        if let Some(&label) = labels.iter().find(|&&l| l > 2) {
            return Err(DataError::BadLabel { path: mask_path, label });
        }
        let soft_target = if use_soft {
            let soft_path = soft.join(format!("{stem}.png"));
            if !soft_path.is_file() {
                return Err(DataError::MissingMask { image: image_path, mask: soft_path });
            }
            let (sw, sh, map) = read_grey_png(&soft_path)?;
            same_size(&image, &image_path, &soft_path, (sw, sh))?;
            Some(map)
        } else {
            None
        };
        let mask = labels.into_iter().map(|l| u8::from(target.is_lesion(l))).collect();
        out.push(LabelledSlice { id: stem, image, mask, soft_target });
    }
    Ok(out)
}

/// A mask or map of `size` (width, height) must match its slice.
fn same_size(
    image: &GraySlice,
    image_path: &Path,
    mask_path: &Path,
    size: (u32, u32),
) -> Result<(), DataError> {
    if size == (image.width, image.height) {
        return Ok(());
    }
    Err(DataError::SizeMismatch {
        image: image_path.to_path_buf(),
        mask: mask_path.to_path_buf(),
        iw: image.width,
        ih: image.height,
        mw: size.0,
        mh: size.1,
    })
}

/// Sort key that puts `2` before `10`.
fn natural_key(p: &Path) -> (u64, String) {
    let stem = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    (stem.parse().unwrap_or(u64::MAX), stem)
}

/// Reads a palette PNG as raw palette indices (not the colours they map to).
fn read_palette_png(path: &Path) -> Result<(u32, u32, Vec<u8>), DataError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let bad = |why: String| DataError::Image { path: path.to_path_buf(), why };
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or_else(|| bad("too large".into()))?];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(e.to_string()))?;
    if info.bit_depth != png::BitDepth::Eight
        || !matches!(info.color_type, png::ColorType::Indexed | png::ColorType::Grayscale)
    {
        return Err(bad(format!(
            "mask must be 8-bit palette or grey, found {:?} {:?}",
            info.color_type, info.bit_depth
        )));
    }
    buf.truncate(info.buffer_size());
    Ok((info.width, info.height, buf))
}

fn read_grey_png(path: &Path) -> Result<(u32, u32, Vec<u8>), DataError> {
    let img = image::open(path)
        .map_err(|e| DataError::Image { path: path.to_path_buf(), why: e.to_string() })?
        .into_luma8();
    let (w, h) = img.dimensions();
    Ok((w, h, img.into_raw()))
}

/// Reads MedSeg's NIfTI release: an image volume (`tr_im.nii.gz`, pseudo-HU) and a label volume
/// (`tr_mask.nii.gz`) of the same shape. Each z index becomes one slice, windowed with the lung
/// window, laid out as MedSeg's arrays are (`[x, y]` as rows and columns, the orientation of the
/// folder release).
///
/// # Errors
/// [`DataError::Nifti`] for unreadable files or volumes of different shapes.
pub fn read_nifti_pair(
    image_path: &Path,
    mask_path: &Path,
    target: Target,
) -> Result<Vec<LabelledSlice>, DataError> {
    use nifti::{IntoNdArray, NiftiObject, ReaderOptions};
    let load = |path: &Path| {
        ReaderOptions::new()
            .read_file(path)
            .and_then(|obj| obj.into_volume().into_ndarray::<f32>())
            .map_err(|e| DataError::Nifti { path: path.to_path_buf(), why: e.to_string() })
    };
    let image = load(image_path)?;
    let mask = load(mask_path)?;
    if image.shape() != mask.shape() || image.ndim() != 3 {
        return Err(DataError::Nifti {
            path: mask_path.to_path_buf(),
            why: format!(
                "label shape {:?} does not match image shape {:?} (both must be 3-D)",
                mask.shape(),
                image.shape()
            ),
        });
    }
    let (nx, ny, nz) = (image.shape()[0], image.shape()[1], image.shape()[2]);
    let window = HuWindow::LUNG;
    let mut out = Vec::with_capacity(nz);
    for z in 0..nz {
        let mut hu = Vec::with_capacity(nx * ny);
        let mut labels = Vec::with_capacity(nx * ny);
        for x in 0..nx {
            for y in 0..ny {
                hu.push(image[[x, y, z]].round().clamp(-32768.0, 32767.0) as i16);
                let label = mask[[x, y, z]].round();
                if !(0.0..=3.0).contains(&label) {
                    return Err(DataError::Nifti {
                        path: mask_path.to_path_buf(),
                        why: format!("label {label} at x={x} y={y} z={z} is outside 0..=3"),
                    });
                }
                labels.push(u8::from(target.is_lesion(label as u8)));
            }
        }
        let slice = GraySlice::from_hu(ny as u32, nx as u32, &hu, window)
            .map_err(|e| DataError::Nifti { path: image_path.to_path_buf(), why: e.to_string() })?;
        out.push(LabelledSlice {
            id: format!("z{z}"),
            image: slice,
            mask: labels,
            soft_target: None,
        });
    }
    Ok(out)
}

/// sha256 over the ids, pixels and masks of a set, in order: names the data a model saw.
pub fn fingerprint(slices: &[LabelledSlice]) -> String {
    let mut h = Sha256::new();
    for s in slices {
        h.update(s.id.as_bytes());
        h.update(s.image.width.to_le_bytes());
        h.update(s.image.height.to_le_bytes());
        h.update(&s.image.pixels);
        h.update(&s.mask);
        if let Some(soft) = &s.soft_target {
            h.update(soft);
        }
    }
    format!("{:x}", h.finalize())
}

/// A seeded split of slice ids into training and validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Shuffle seed.
    pub seed: u64,
    /// Number of folds.
    pub folds: usize,
    /// The validation fold, `0..folds`.
    pub fold: usize,
    /// Ids used for training.
    pub train: Vec<String>,
    /// Ids held out for validation.
    pub validation: Vec<String>,
}

impl Split {
    /// Shuffles the ids with `seed` and holds out fold `fold` of `folds` for validation.
    ///
    /// # Panics
    /// When `fold >= folds` or `folds < 2`, naming both.
    pub fn k_fold(ids: &[String], seed: u64, folds: usize, fold: usize) -> Self {
        assert!(
            folds >= 2 && fold < folds,
            "fold {fold} of {folds} folds: need 0 <= fold < folds, folds >= 2"
        );
        let mut order: Vec<String> = ids.to_vec();
        order.sort();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for (i, id) in order.into_iter().enumerate() {
            if i % folds == fold {
                validation.push(id)
            } else {
                train.push(id)
            }
        }
        Self { seed, folds, fold, train, validation }
    }
}

/// One training example at model size: the normalised input plane and the 0/1 target.
#[derive(Debug, Clone)]
pub struct Example {
    /// `side²` normalised values.
    pub plane: Vec<f32>,
    /// `side²` targets, 0 or 1.
    pub target: Vec<f32>,
    /// `side²` lung-field targets, 0 or 1 ([`crate::lung::lung_field`]), for a network with a
    /// lung head.
    pub lung: Vec<f32>,
}

/// Geometric and intensity augmentation for axial CT.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Augment {
    /// Largest rotation, degrees.
    pub max_rotation_deg: f32,
    /// Largest relative scale change (0.1 = 90 % to 110 %).
    pub max_scale: f32,
    /// Largest gamma change (0.4 = gamma in 1/1.4 .. 1.4).
    pub max_gamma: f32,
    /// Largest contrast change before normalisation, relative.
    pub max_contrast: f32,
    /// Largest change of the height-to-width ratio (0.25 = one axis stretched up to 1.25x
    /// against the other). The stored slices were cropped and resized without keeping their
    /// aspect ratio, so the same anatomy arrives stretched differently from slice to slice.
    /// 0 leaves the ratio alone and draws nothing, so older recipes replay unchanged.
    #[serde(default)]
    pub max_aspect: f32,
    /// Largest shift of an elastic grid's control points, as a share of the slice's side (0.03
    /// moves a point up to 3 % of the side). The grid has [`ELASTIC_GRID`]² points and the shift
    /// between them is interpolated, so the anatomy bends smoothly. 0 draws nothing.
    #[serde(default)]
    pub max_elastic: f32,
    /// Largest standard deviation of Gaussian noise added to the normalised plane (drawn
    /// uniformly from 0 to this per example). 0 draws nothing.
    #[serde(default)]
    pub max_noise: f32,
    /// Largest Gaussian blur of the warped grey plane, standard deviation in pixels (drawn
    /// uniformly from 0 to this per example): the slices arrive up- or down-sampled from
    /// 153 to 507 pixels, so their sharpness varies. 0 draws nothing.
    #[serde(default)]
    pub max_blur: f32,
    /// Whether half the draws mirror the slice front to back. The stored slices are transposed
    /// (spine at the right edge), so this flips the columns: the spine moves to the left edge,
    /// a view no scanner gives. The left-right mirror (the rows) is drawn either way. When
    /// false the coin is still tossed and ignored, so every other draw stays as it was.
    #[serde(default = "mirror_front_back_default")]
    pub mirror_front_back: bool,
}

fn mirror_front_back_default() -> bool {
    true
}

/// Control points per side of the elastic grid.
pub const ELASTIC_GRID: usize = 5;

impl Default for Augment {
    fn default() -> Self {
        Self {
            max_rotation_deg: 12.0,
            max_scale: 0.12,
            max_gamma: 0.5,
            max_contrast: 0.2,
            max_aspect: 0.0,
            max_elastic: 0.0,
            max_noise: 0.0,
            max_blur: 0.0,
            mirror_front_back: true,
        }
    }
}

/// A change of window applied to stored grey values, to test how a model copes with slices
/// exported differently: `v' = scale * 255 * (v / 255)^gamma + offset`, rounded and clamped
/// to 0..=255. The identity is gamma 1, scale 1, offset 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreyChange {
    /// Exponent on the grey value scaled to 0..1 (below 1 brightens the darks).
    pub gamma: f32,
    /// Factor after the gamma (below 1 narrows the grey range: a wider window).
    pub scale: f32,
    /// Grey levels added last.
    pub offset: f32,
}

impl GreyChange {
    /// Whether the change leaves every grey value as it is.
    pub fn is_identity(&self) -> bool {
        self.gamma == 1.0 && self.scale == 1.0 && self.offset == 0.0
    }

    /// Refuses a gamma or scale that is not a positive finite number, or an offset that is not
    /// finite, naming the value.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [("gamma", self.gamma), ("scale", self.scale)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("grey {name} {v} must be a positive number"));
            }
        }
        if !self.offset.is_finite() {
            return Err(format!("grey offset {} must be a finite number", self.offset));
        }
        Ok(())
    }

    /// Applies the change to every pixel of `slice`.
    pub fn apply(&self, slice: &mut GraySlice) {
        let lut: Vec<u8> = (0..=255u8)
            .map(|v| {
                let unit = f32::from(v) / 255.0;
                (self.scale * 255.0 * unit.powf(self.gamma) + self.offset).round().clamp(0.0, 255.0)
                    as u8
            })
            .collect();
        for p in &mut slice.pixels {
            *p = lut[usize::from(*p)];
        }
    }
}

/// Resizes a slice and its mask to the model side without augmentation.
pub fn example(slice: &LabelledSlice, side: u32, normalisation: Normalisation) -> Example {
    let plane = preprocess::model_input(&slice.image, side, normalisation);
    Example { plane, target: resize_mask(slice, side), lung: resize_lung_field(slice, side) }
}

/// The slice's lung field at the model side, cut at 0.5.
fn resize_lung_field(slice: &LabelledSlice, side: u32) -> Vec<f32> {
    let field: Vec<f32> =
        crate::lung::lung_field(&slice.image, &slice.mask).iter().map(|&v| f32::from(v)).collect();
    preprocess::resize_map(&field, (slice.image.width, slice.image.height), (side, side))
        .into_iter()
        .map(|v| if v >= 0.5 { 1.0 } else { 0.0 })
        .collect()
}

/// The training target at the model side: the binary mask (resized, then cut at 0.5), or the
/// teacher's probability in 0..1 where the slice has one.
fn resize_mask(slice: &LabelledSlice, side: u32) -> Vec<f32> {
    let from = (slice.image.width, slice.image.height);
    if let Some(soft) = &slice.soft_target {
        let m: Vec<f32> = soft.iter().map(|&v| f32::from(v) / 255.0).collect();
        return preprocess::resize_map(&m, from, (side, side));
    }
    let m: Vec<f32> = slice.mask.iter().map(|&v| f32::from(v)).collect();
    preprocess::resize_map(&m, from, (side, side))
        .into_iter()
        .map(|v| if v >= 0.5 { 1.0 } else { 0.0 })
        .collect()
}

/// One draw of the augmentation: where each output pixel comes from (rotation, scale and
/// flips about the centre) and the grey-level change applied before normalisation.
#[derive(Debug, Clone, Copy)]
pub struct Warp {
    /// Sine and cosine of the rotation angle.
    sin: f32,
    cos: f32,
    /// Scale along x and along y (1 = unchanged).
    scale_x: f32,
    scale_y: f32,
    flip_x: bool,
    flip_y: bool,
    /// Exponent on the grey value scaled to 0..1.
    gamma: f32,
    /// Contrast factor about mid-grey.
    contrast: f32,
    /// Shift of each elastic control point (row-major, x then y), as a share of the side.
    elastic: Option<[[f32; 2]; ELASTIC_GRID * ELASTIC_GRID]>,
    /// Blur of the warped grey plane, standard deviation in pixels (0 = none).
    blur_sigma: f32,
    /// Noise on the normalised plane: standard deviation and the seed of its draws.
    noise_sd: f32,
    noise_seed: u64,
}

impl Warp {
    /// Draws a warp within `aug`'s ranges.
    pub fn draw(aug: &Augment, rng: &mut StdRng) -> Self {
        let angle = rng.random_range(-aug.max_rotation_deg..=aug.max_rotation_deg).to_radians();
        let scale = 1.0 + rng.random_range(-aug.max_scale..=aug.max_scale);
        let (flip_x, flip_y) = (rng.random_bool(0.5), rng.random_bool(0.5));
        let flip_x = flip_x && aug.mirror_front_back;
        let (gamma, contrast) = grey_draw(aug, rng);
        // Stretch along x by sqrt(aspect) and squeeze along y by the same factor.
        let stretch = if aug.max_aspect > 0.0 {
            (1.0 + aug.max_aspect).powf(rng.random_range(-0.5f32..=0.5))
        } else {
            1.0
        };
        let (scale_x, scale_y) = (scale * stretch, scale / stretch);
        let (sin, cos) = angle.sin_cos();
        // Each optional part draws only when enabled, so that older recipes replay unchanged.
        let elastic = (aug.max_elastic > 0.0).then(|| {
            let mut grid = [[0f32; 2]; ELASTIC_GRID * ELASTIC_GRID];
            for point in &mut grid {
                for v in point.iter_mut() {
                    *v = rng.random_range(-aug.max_elastic..=aug.max_elastic);
                }
            }
            grid
        });
        let blur_sigma =
            if aug.max_blur > 0.0 { rng.random_range(0.0..=aug.max_blur) } else { 0.0 };
        let (noise_sd, noise_seed) = if aug.max_noise > 0.0 {
            (rng.random_range(0.0..=aug.max_noise), rng.random())
        } else {
            (0.0, 0)
        };
        Self {
            sin,
            cos,
            scale_x,
            scale_y,
            flip_x,
            flip_y,
            gamma,
            contrast,
            elastic,
            blur_sigma,
            noise_sd,
            noise_seed,
        }
    }

    /// The same geometry with a fresh grey-level change: a second view of the same anatomy
    /// at the same place, exported differently.
    pub fn with_new_grey(self, aug: &Augment, rng: &mut StdRng) -> Self {
        let (gamma, contrast) = grey_draw(aug, rng);
        Self { gamma, contrast, ..self }
    }

    /// The output pixel `(x, y)` of an `n` x `n` plane maps to this source position.
    fn source(&self, n: usize, x: usize, y: usize) -> (f32, f32) {
        let c = (n as f32 - 1.0) / 2.0;
        let (sin, cos) = (self.sin, self.cos);
        let (ex, ey) = match &self.elastic {
            Some(grid) => elastic_shift(grid, n, x, y),
            None => (0.0, 0.0),
        };
        let (dx, dy) = ((x as f32 + ex - c) / self.scale_x, (y as f32 + ey - c) / self.scale_y);
        let mut sx = cos * dx + sin * dy + c;
        let mut sy = -sin * dx + cos * dy + c;
        if self.flip_x {
            sx = n as f32 - 1.0 - sx;
        }
        if self.flip_y {
            sy = n as f32 - 1.0 - sy;
        }
        (sx, sy)
    }

    /// Warps a grey plane (0..255 values, `n` x `n`) and normalises it.
    fn plane(&self, grey: &[f32], n: usize, normalisation: Normalisation) -> Vec<f32> {
        let background = grey.iter().copied().fold(f32::MAX, f32::min);
        let mut plane = vec![0f32; n * n];
        for y in 0..n {
            for x in 0..n {
                let (sx, sy) = self.source(n, x, y);
                plane[y * n + x] = bilinear(grey, n, sx, sy).unwrap_or(background);
            }
        }
        if self.blur_sigma > 0.0 {
            gaussian_blur(&mut plane, n, self.blur_sigma);
        }
        for v in &mut plane {
            let unit = (*v / 255.0).clamp(0.0, 1.0).powf(self.gamma);
            *v = ((unit - 0.5) * self.contrast + 0.5) * 255.0;
        }
        normalisation.apply(&mut plane);
        if self.noise_sd > 0.0 {
            add_gaussian_noise(
                &mut plane,
                self.noise_sd,
                &mut StdRng::seed_from_u64(self.noise_seed),
            );
        }
        plane
    }

    /// Warps a map (`n` x `n`) by nearest neighbour; 0 outside the source.
    fn nearest(&self, map: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * n];
        for y in 0..n {
            for x in 0..n {
                let (sx, sy) = self.source(n, x, y);
                let (mx, my) = (sx.round(), sy.round());
                if mx >= 0.0 && my >= 0.0 && (mx as usize) < n && (my as usize) < n {
                    out[y * n + x] = map[my as usize * n + mx as usize];
                }
            }
        }
        out
    }
}

/// The elastic shift at output pixel `(x, y)` of an `n` x `n` plane, pixels: the control
/// points' shifts interpolated bilinearly.
fn elastic_shift(grid: &[[f32; 2]], n: usize, x: usize, y: usize) -> (f32, f32) {
    let last = (ELASTIC_GRID - 1) as f32;
    let to_grid = |v: usize| v as f32 / (n.max(2) - 1) as f32 * last;
    let (gx, gy) = (to_grid(x), to_grid(y));
    let (x0, y0) =
        ((gx.floor() as usize).min(ELASTIC_GRID - 2), (gy.floor() as usize).min(ELASTIC_GRID - 2));
    let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
    let at = |i: usize, j: usize, k: usize| grid[j * ELASTIC_GRID + i][k];
    let mix = |k: usize| {
        let top = at(x0, y0, k) * (1.0 - fx) + at(x0 + 1, y0, k) * fx;
        let bottom = at(x0, y0 + 1, k) * (1.0 - fx) + at(x0 + 1, y0 + 1, k) * fx;
        (top * (1.0 - fy) + bottom * fy) * n as f32
    };
    (mix(0), mix(1))
}

/// Separable Gaussian blur of an `n` x `n` plane, standard deviation `sigma` pixels; edges
/// repeat the border pixel.
fn gaussian_blur(plane: &mut [f32], n: usize, sigma: f32) {
    let radius = (2.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> =
        (-radius..=radius).map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|w| *w /= total);
    let clamp = |i: isize| i.clamp(0, n as isize - 1) as usize;
    let mut rows = vec![0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            rows[y * n + x] = kernel
                .iter()
                .zip(-radius..)
                .map(|(w, d)| w * plane[y * n + clamp(x as isize + d)])
                .sum();
        }
    }
    for y in 0..n {
        for x in 0..n {
            plane[y * n + x] = kernel
                .iter()
                .zip(-radius..)
                .map(|(w, d)| w * rows[clamp(y as isize + d) * n + x])
                .sum();
        }
    }
}

/// Adds Gaussian noise of standard deviation `sd` to every value.
fn add_gaussian_noise(plane: &mut [f32], sd: f32, rng: &mut StdRng) {
    for pair in plane.chunks_mut(2) {
        // Box-Muller: two independent standard normal values from two uniform ones.
        let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
        let radius = sd * (-2.0 * u1.ln()).sqrt();
        let turn = std::f32::consts::TAU * u2;
        pair[0] += radius * turn.cos();
        if let Some(v) = pair.get_mut(1) {
            *v += radius * turn.sin();
        }
    }
}

fn grey_draw(aug: &Augment, rng: &mut StdRng) -> (f32, f32) {
    let gamma = (1.0 + aug.max_gamma).powf(rng.random_range(-1.0f32..=1.0));
    let contrast = 1.0 + rng.random_range(-aug.max_contrast..=aug.max_contrast);
    (gamma, contrast)
}

/// The slice's grey values resized to `side` x `side`, 0..255.
fn resized_grey(image: &GraySlice, side: u32) -> Vec<f32> {
    let grey: Vec<f32> = image.pixels.iter().map(|&p| f32::from(p)).collect();
    preprocess::resize_map(&grey, (image.width, image.height), (side, side))
}

/// An augmented example: flips, rotation and scaling about the centre, and an intensity change
/// (gamma and contrast) of the grey values before the shared normalisation.
pub fn augmented_example(
    slice: &LabelledSlice,
    side: u32,
    aug: &Augment,
    normalisation: Normalisation,
    rng: &mut StdRng,
) -> Example {
    let warp = Warp::draw(aug, rng);
    let n = side as usize;
    Example {
        plane: warp.plane(&resized_grey(&slice.image, side), n, normalisation),
        target: warp.nearest(&resize_mask(slice, side), n),
        lung: warp.nearest(&resize_lung_field(slice, side), n),
    }
}

/// Two views of one unlabelled slice for a consistency loss: the same warp (so that their
/// maps correspond pixel for pixel), each with its own grey-level change; the second view also
/// carries Gaussian noise of standard deviation `noise_sd` (normalised units).
pub fn consistency_views(
    image: &GraySlice,
    side: u32,
    aug: &Augment,
    normalisation: Normalisation,
    noise_sd: f32,
    rng: &mut StdRng,
) -> [Vec<f32>; 2] {
    let first = Warp::draw(aug, rng);
    let second = first.with_new_grey(aug, rng);
    let (grey, n) = (resized_grey(image, side), side as usize);
    let mut noisy = second.plane(&grey, n, normalisation);
    if noise_sd > 0.0 {
        add_gaussian_noise(&mut noisy, noise_sd, rng);
    }
    [first.plane(&grey, n, normalisation), noisy]
}

/// A `window` x `window` square cut at a random place from a `side` x `side` example (plane and
/// target from the same place). The plane keeps the normalisation of the whole slice, as at
/// inference. A window as large as the slice returns the slice.
pub fn random_window(example: &Example, side: u32, window: u32, rng: &mut StdRng) -> Example {
    let (n, w) = (side as usize, window.min(side) as usize);
    if w == n {
        return example.clone();
    }
    let (x0, y0) = (rng.random_range(0..=n - w), rng.random_range(0..=n - w));
    let cut = |v: &[f32]| -> Vec<f32> {
        (y0..y0 + w).flat_map(|y| v[y * n + x0..y * n + x0 + w].iter().copied()).collect()
    };
    Example { plane: cut(&example.plane), target: cut(&example.target), lung: cut(&example.lung) }
}

fn bilinear(img: &[f32], n: usize, x: f32, y: f32) -> Option<f32> {
    if x < 0.0 || y < 0.0 || x > (n - 1) as f32 || y > (n - 1) as f32 {
        return None;
    }
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(n - 1), (y0 + 1).min(n - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let top = img[y0 * n + x0] * (1.0 - fx) + img[y0 * n + x1] * fx;
    let bottom = img[y1 * n + x0] * (1.0 - fx) + img[y1 * n + x1] * fx;
    Some(top * (1.0 - fy) + bottom * fy)
}

/// Reads one unlabelled slice for a pass over a folder: `Ok(None)`, with a warning, when the
/// file is not a slice worth segmenting (not a greyscale JPEG or PNG, or without contrast).
///
/// # Errors
/// Only when the file cannot be read.
pub fn read_unlabelled(path: &Path) -> Result<Option<GraySlice>, DataError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    match GraySlice::decode(&bytes).and_then(|s| s.check_contrast().map(|()| s)) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            tracing::warn!("{} skipped: {e}", path.display());
            Ok(None)
        }
    }
}

/// The `.jpg`, `.jpeg` and `.png` files directly in `dir` whose names contain `name_contains`
/// (all when `None`), sorted by name, then `count` of them spread evenly over that list.
///
/// # Errors
/// When `dir` cannot be read or holds no matching file.
pub fn unlabelled_slices(
    dir: &Path,
    name_contains: Option<&str>,
    count: usize,
) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            matches!(ext.as_str(), "jpg" | "jpeg" | "png")
                && name_contains.is_none_or(|s| name.contains(s))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no matching .jpg or .png slices in {}", dir.display()),
        ));
    }
    let count = count.clamp(1, files.len());
    let step = files.len() as f64 / count as f64;
    Ok((0..count).map(|k| files[(k as f64 * step) as usize].clone()).collect())
}

/// Every readable slice among `count` files spread over `dir` (all when `None`), for
/// semi-supervised training; unreadable or flat files are skipped with a warning.
///
/// # Errors
/// When `dir` cannot be read, holds no slice, or a file cannot be read.
pub fn read_unlabelled_folder(
    dir: &Path,
    count: Option<usize>,
) -> Result<Vec<GraySlice>, DataError> {
    let files = unlabelled_slices(dir, None, count.unwrap_or(usize::MAX)).map_err(io_err(dir))?;
    let mut slices = Vec::with_capacity(files.len());
    for path in &files {
        slices.extend(read_unlabelled(path)?);
    }
    if slices.is_empty() {
        return Err(DataError::Image {
            path: dir.to_path_buf(),
            why: format!("none of {} files is a readable slice", files.len()),
        });
    }
    Ok(slices)
}

/// sha256 over the size and grey values of each slice, in order.
pub fn grey_fingerprint(slices: &[GraySlice]) -> String {
    let mut h = Sha256::new();
    for s in slices {
        h.update(s.width.to_le_bytes());
        h.update(s.height.to_le_bytes());
        h.update(&s.pixels);
    }
    format!("{:x}", h.finalize())
}

/// Random number generator for one epoch, derived from the run seed.
pub fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No geometric or grey-level change: flips are all that is left.
    const STILL: Augment = Augment {
        max_rotation_deg: 0.0,
        max_scale: 0.0,
        max_gamma: 0.0,
        max_contrast: 0.0,
        max_aspect: 0.0,
        max_elastic: 0.0,
        max_noise: 0.0,
        max_blur: 0.0,
        mirror_front_back: true,
    };

    /// The two views of an unlabelled slice share their warp: without a grey-level change or
    /// noise they are the same plane, and the noise has the stated spread.
    #[test]
    fn consistency_views_share_the_warp() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/medseg");
        let image = read_folder(&dir, Target::Infection).unwrap().remove(0).image;
        let turn = Augment { max_rotation_deg: 20.0, max_scale: 0.2, ..STILL };
        let anchored = Normalisation::TissueAnchored;
        let mut rng = StdRng::seed_from_u64(5);
        let [a, b] = consistency_views(&image, 64, &turn, anchored, 0.0, &mut rng);
        assert_eq!(a, b);
        let [c, _] = consistency_views(&image, 64, &turn, anchored, 0.0, &mut rng);
        assert_ne!(a, c, "each draw warps anew");

        let [a, b] = consistency_views(&image, 64, &turn, anchored, 0.1, &mut rng);
        let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| f64::from(y - x)).collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let sd = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        assert!(mean.abs() < 0.01 && (sd - 0.1).abs() < 0.01, "noise mean {mean}, sd {sd}");

        // A grey-level change alone keeps the geometry: the views rise and fall together.
        let grey = Augment { max_gamma: 0.5, max_contrast: 0.2, ..turn };
        let [a, b] = consistency_views(&image, 64, &grey, anchored, 0.0, &mut rng);
        assert_ne!(a, b);
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f32>() as f64 / n, b.iter().sum::<f32>() as f64 / n);
        let cov: f64 =
            a.iter().zip(&b).map(|(x, y)| (f64::from(*x) - ma) * (f64::from(*y) - mb)).sum();
        let va: f64 = a.iter().map(|x| (f64::from(*x) - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (f64::from(*y) - mb).powi(2)).sum();
        assert!(cov / (va * vb).sqrt() > 0.95, "correlation {}", cov / (va * vb).sqrt());
    }

    /// A window cuts plane and target at the same place, and a full-size window is the slice.
    #[test]
    fn window_cuts_plane_and_target_together() {
        let side = 16u32;
        let plane: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let target: Vec<f32> = (0..256).map(|i| (i % 3) as f32).collect();
        let lung: Vec<f32> = (0..256).map(|i| (i % 5) as f32).collect();
        let whole = Example { plane, target, lung };
        let mut rng = epoch_rng(7, 1);
        for _ in 0..20 {
            let cut = random_window(&whole, side, 5, &mut rng);
            assert_eq!((cut.plane.len(), cut.target.len()), (25, 25));
            let first = cut.plane[0] as usize;
            let (x0, y0) = (first % 16, first / 16);
            assert!(x0 + 5 <= 16 && y0 + 5 <= 16, "window at {x0},{y0} leaves the slice");
            for (k, (&p, &t)) in cut.plane.iter().zip(&cut.target).enumerate() {
                let i = (y0 + k / 5) * 16 + x0 + k % 5;
                assert_eq!((p, t), (i as f32, (i % 3) as f32), "pixel {k}");
                assert_eq!(cut.lung[k], (i % 5) as f32, "lung field at pixel {k}");
            }
        }
        let same = random_window(&whole, side, 16, &mut rng);
        assert_eq!(same.plane, whole.plane);
    }

    /// Splits are deterministic, disjoint and cover every id.
    #[test]
    fn split_is_seeded_and_disjoint() {
        let ids: Vec<String> = (0..23).map(|i| i.to_string()).collect();
        let a = Split::k_fold(&ids, 7, 5, 2);
        assert_eq!(a, Split::k_fold(&ids, 7, 5, 2));
        assert_ne!(a.validation, Split::k_fold(&ids, 8, 5, 2).validation);
        let mut all: Vec<String> = a.train.iter().chain(&a.validation).cloned().collect();
        all.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(all, expected);
        let mut seen = Vec::new();
        for fold in 0..5 {
            seen.extend(Split::k_fold(&ids, 7, 5, fold).validation);
        }
        seen.sort();
        assert_eq!(seen, expected, "each id is validated in exactly one fold");
    }

    /// A greyer export (scale 0.6, offset 60) maps black to 60 and white to 213; gamma 2 darkens
    /// mid-greys; the identity changes nothing; a negative scale is refused.
    #[test]
    fn grey_changes_rewindow_the_stored_values() {
        let base = GraySlice::new(4, 1, vec![0, 64, 128, 255]).unwrap();
        let mut s = base.clone();
        GreyChange { gamma: 1.0, scale: 0.6, offset: 60.0 }.apply(&mut s);
        assert_eq!(s.pixels, vec![60, 98, 137, 213]);
        let mut s = base.clone();
        GreyChange { gamma: 2.0, scale: 1.0, offset: 0.0 }.apply(&mut s);
        assert_eq!(s.pixels, vec![0, 16, 64, 255]);
        let identity = GreyChange { gamma: 1.0, scale: 1.0, offset: 0.0 };
        assert!(identity.is_identity());
        let mut s = base.clone();
        identity.apply(&mut s);
        assert_eq!(s, base);
        let bad = GreyChange { scale: -1.0, ..identity };
        assert!(bad.check().unwrap_err().contains("-1"));
    }

    /// Augmentation keeps the mask aligned: with no rotation, scale or flip the mask is unchanged.
    #[test]
    fn augmentation_without_geometry_keeps_mask() {
        let pixels: Vec<u8> = (0..32 * 32).map(|i| (i % 251) as u8).collect();
        let mask: Vec<u8> = (0..32 * 32).map(|i| u8::from((i / 32) < 10 && (i % 32) < 5)).collect();
        let image = GraySlice::new(32, 32, pixels).unwrap();
        let s = LabelledSlice { id: "t".into(), image, mask, soft_target: None };
        let aug = STILL;
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..8 {
            let e = augmented_example(&s, 32, &aug, Normalisation::ZscorePerSlice, &mut rng);
            let lesion = e.target.iter().filter(|&&v| v > 0.5).count();
            assert_eq!(lesion, 50, "flips keep the lesion area");
        }
    }

    /// A warp with only flips off and everything else at identity, for the tests below.
    fn identity_warp() -> Warp {
        Warp {
            sin: 0.0,
            cos: 1.0,
            scale_x: 1.0,
            scale_y: 1.0,
            flip_x: false,
            flip_y: false,
            gamma: 1.0,
            contrast: 1.0,
            elastic: None,
            blur_sigma: 0.0,
            noise_sd: 0.0,
            noise_seed: 0,
        }
    }

    /// A uniform elastic shift of 0.125 of the side moves a lesion by 8 of 64 pixels; a bent
    /// grid keeps its area within a fifth; a zero grid changes nothing.
    #[test]
    fn elastic_grid_moves_and_bends_the_mask() {
        let n = 64usize;
        let mask: Vec<f32> = (0..n * n)
            .map(|i| {
                f32::from(u8::from((22..42).contains(&(i / n)) && (22..42).contains(&(i % n))))
            })
            .collect();
        let plain = identity_warp();
        assert_eq!(plain.nearest(&mask, n), mask);
        let still = Warp { elastic: Some([[0.0; 2]; ELASTIC_GRID * ELASTIC_GRID]), ..plain };
        assert_eq!(still.nearest(&mask, n), mask);
        let shifted = Warp { elastic: Some([[0.125, 0.0]; ELASTIC_GRID * ELASTIC_GRID]), ..plain };
        let moved = shifted.nearest(&mask, n);
        let xs: Vec<usize> = (0..n * n).filter(|&i| moved[i] > 0.5).map(|i| i % n).collect();
        // Output x takes source x + 8, so the lesion (22..42) appears at 14..34.
        assert_eq!((*xs.iter().min().unwrap(), *xs.iter().max().unwrap()), (14, 33));

        let aug = Augment { max_elastic: 0.05, ..STILL };
        let mut rng = StdRng::seed_from_u64(3);
        let mut bent = 0;
        for _ in 0..8 {
            let w = Warp { flip_x: false, flip_y: false, ..Warp::draw(&aug, &mut rng) };
            let out = w.nearest(&mask, n);
            let area = out.iter().filter(|&&v| v > 0.5).count() as f32;
            assert!((area - 400.0).abs() < 80.0, "area {area} of 400 after bending");
            bent += usize::from(out != mask);
        }
        assert_eq!(bent, 8, "every draw bends the slice");
    }

    /// Blur keeps the mean grey and removes fine detail; noise has the drawn spread and the
    /// same warp gives the same noise.
    #[test]
    fn blur_and_noise_change_the_plane_as_drawn() {
        let n = 32usize;
        let grey: Vec<f32> = (0..n * n)
            .map(|i| if (i / n + i % n).is_multiple_of(2) { 200.0 } else { 50.0 })
            .collect();
        let spread = |v: &[f32]| {
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt())
        };
        let mut blurred = grey.clone();
        gaussian_blur(&mut blurred, n, 1.5);
        let ((m0, s0), (m1, s1)) = (spread(&grey), spread(&blurred));
        assert!((m0 - m1).abs() < 0.5 && s1 < 0.05 * s0, "mean {m0} -> {m1}, sd {s0} -> {s1}");

        let z = Normalisation::ZscorePerSlice;
        let clean = identity_warp().plane(&grey, n, z);
        let noisy = Warp { noise_sd: 0.2, noise_seed: 9, ..identity_warp() };
        let a = noisy.plane(&grey, n, z);
        assert_eq!(a, noisy.plane(&grey, n, z), "the seed fixes the noise");
        let d: Vec<f32> = a.iter().zip(&clean).map(|(x, y)| x - y).collect();
        let (mean, sd) = spread(&d);
        assert!(mean.abs() < 0.03 && (sd - 0.2).abs() < 0.02, "noise mean {mean}, sd {sd}");
    }

    /// Aspect jitter stretches one axis against the other: a centred square lesion comes out
    /// as a rectangle of about the same area, wider in some draws and taller in others.
    #[test]
    fn aspect_jitter_stretches_one_axis_against_the_other() {
        let n = 64usize;
        let pixels: Vec<u8> = (0..n * n).map(|i| (i * 7 % 251) as u8).collect();
        let mask: Vec<u8> = (0..n * n)
            .map(|i| u8::from((22..42).contains(&(i / n)) && (22..42).contains(&(i % n))))
            .collect();
        let s = LabelledSlice {
            id: "t".into(),
            image: GraySlice::new(n as u32, n as u32, pixels).unwrap(),
            mask,
            soft_target: None,
        };
        let aug = Augment { max_aspect: 0.5, ..STILL };
        let mut rng = StdRng::seed_from_u64(5);
        let (mut wider, mut taller) = (false, false);
        for _ in 0..16 {
            let e = augmented_example(&s, n as u32, &aug, Normalisation::ZscorePerSlice, &mut rng);
            let marked: Vec<(usize, usize)> =
                (0..n * n).filter(|&i| e.target[i] > 0.5).map(|i| (i % n, i / n)).collect();
            let span = |f: fn(&(usize, usize)) -> usize| {
                marked.iter().map(f).max().unwrap() - marked.iter().map(f).min().unwrap() + 1
            };
            let (w, h) = (span(|p| p.0) as f32, span(|p| p.1) as f32);
            assert!(w / h <= 1.6 && h / w <= 1.6, "stretch beyond 1.5: {w} x {h}");
            let area = marked.len() as f32;
            assert!((area - 400.0).abs() < 60.0, "area {area} of 400 after stretching");
            wider |= w / h > 1.08;
            taller |= h / w > 1.08;
        }
        assert!(wider && taller, "16 draws stretch both ways");
    }

    /// A teacher's probability map is the target as it is, not cut at 0.5, and flips move it
    /// with the slice.
    #[test]
    fn soft_target_is_learned_as_a_probability() {
        let pixels: Vec<u8> = (0..32 * 32).map(|i| (i % 251) as u8).collect();
        let soft: Vec<u8> = (0..32 * 32).map(|i| if (i / 32) < 10 { 51 } else { 0 }).collect();
        let mask = soft.iter().map(|&v| u8::from(v >= 128)).collect();
        let image = GraySlice::new(32, 32, pixels).unwrap();
        let s = LabelledSlice { id: "t".into(), image, mask, soft_target: Some(soft) };
        let e = example(&s, 32, Normalisation::ZscorePerSlice);
        assert!((e.target[0] - 0.2).abs() < 1e-6, "top rows carry 51/255: {}", e.target[0]);
        assert_eq!(e.target[31 * 32], 0.0);
        let aug = STILL;
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..8 {
            let e = augmented_example(&s, 32, &aug, Normalisation::ZscorePerSlice, &mut rng);
            let total: f32 = e.target.iter().sum();
            assert!((total - 320.0 * 0.2).abs() < 1e-3, "flips keep the soft mass: {total}");
        }
    }
}
