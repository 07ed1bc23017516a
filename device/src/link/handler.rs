//! From an [`InferRequest`] to a segmented slice, with every check a device applies before
//! running the model. The `infer` command goes through the same steps, so a slice segmented
//! locally and one segmented over the link give the same mask.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};

use crate::inference::{Segmenter, SliceReport};
use crate::postprocess::LesionMask;
use crate::preprocess::{GraySlice, SliceError};
use crate::protocol::{ErrorCode, InferRequest, Limits, SliceData};

/// A request the device will not run, with the code and text it replies with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Detail naming the limit or value at fault.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<SliceError> for Refusal {
    fn from(e: SliceError) -> Self {
        let code = match e {
            SliceError::Empty { .. } => ErrorCode::EmptySlice,
            SliceError::TooLarge { .. } => ErrorCode::SliceTooLarge,
            SliceError::SizeMismatch { .. } | SliceError::BadWindow(_) => ErrorCode::BadRequest,
            SliceError::Decode(_) | SliceError::Truncated { .. } | SliceError::Dicom { .. } => {
                ErrorCode::BadImage
            }
            SliceError::NoContrast { .. } => ErrorCode::EmptySlice,
        };
        Self::new(code, e.to_string())
    }
}

fn check_size(width: u32, height: u32, limits: &Limits) -> Result<(), Refusal> {
    if width == 0 || height == 0 {
        return Err(SliceError::Empty { width, height }.into());
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_slice_pixels {
        return Err(Refusal::new(
            ErrorCode::SliceTooLarge,
            format!(
                "slice of {width}x{height} = {pixels} pixels exceeds the limit of {} pixels",
                limits.max_slice_pixels
            ),
        ));
    }
    Ok(())
}

/// Turns request pixels into a slice, checking the declared size against the slice limit
/// before any pixel is decoded or allocated.
///
/// # Errors
/// [`ErrorCode::EmptySlice`] for no bytes, a zero side or a slice without contrast, [`ErrorCode::SliceTooLarge`] naming
/// the size and the limit, [`ErrorCode::BadImage`] for bytes that are not a readable PNG or
/// JPEG, [`ErrorCode::BadRequest`] for a pixel count that does not match the size or a bad
/// window.
pub fn prepare_slice(data: SliceData, limits: &Limits) -> Result<GraySlice, Refusal> {
    let slice = decode_slice(data, limits)?;
    slice.check_contrast()?;
    Ok(slice)
}

fn decode_slice(data: SliceData, limits: &Limits) -> Result<GraySlice, Refusal> {
    match data {
        SliceData::Encoded { bytes } => {
            if bytes.is_empty() {
                return Err(Refusal::new(ErrorCode::EmptySlice, "image holds 0 bytes"));
            }
            let bad = |what: &str, e: &dyn std::fmt::Display| {
                Refusal::new(ErrorCode::BadImage, format!("{what}: {e}"))
            };
            let mut reader = ImageReader::new(Cursor::new(&bytes[..]))
                .with_guessed_format()
                .map_err(|e| bad("cannot read image", &e))?;
            reader.no_limits();
            match reader.format() {
                Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
                Some(other) => {
                    return Err(Refusal::new(
                        ErrorCode::BadImage,
                        format!("{other:?} images are not accepted; send PNG or JPEG"),
                    ))
                }
                None => {
                    return Err(Refusal::new(
                        ErrorCode::BadImage,
                        format!("{} bytes are not a PNG or JPEG image", bytes.len()),
                    ))
                }
            }
            let (width, height) =
                reader.into_dimensions().map_err(|e| bad("cannot read image header", &e))?;
            check_size(width, height, limits)?;
            Ok(GraySlice::decode(&bytes)?)
        }
        SliceData::Grey8 { width, height, pixels } => {
            check_size(width, height, limits)?;
            Ok(GraySlice::new(width, height, pixels)?)
        }
        SliceData::Hu16 { width, height, hu, window } => {
            check_size(width, height, limits)?;
            Ok(GraySlice::from_hu(width, height, &hu, window)?)
        }
    }
}

/// Checks a request, prepares its slice and segments it.
///
/// # Errors
/// [`ErrorCode::BadRequest`] for a threshold outside (0, 1) or a pixel spacing that is not a
/// positive number of mm, the refusals of [`prepare_slice`], and [`ErrorCode::Inference`]
/// when the model fails.
pub fn run_request(
    segmenter: &Segmenter,
    request: InferRequest,
    limits: &Limits,
) -> Result<(SliceReport, LesionMask), Refusal> {
    if let Some(t) = request.threshold {
        if !(t > 0.0 && t < 1.0) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("threshold {t} lies outside (0, 1)"),
            ));
        }
    }
    if let Some(s) = request.spacing_mm {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !(ok(s.row_mm) && ok(s.col_mm)) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("pixel spacing {} x {} mm is not positive", s.row_mm, s.col_mm),
            ));
        }
    }
    let slice = prepare_slice(request.slice, limits)?;
    segmenter
        .segment(&slice, request.threshold, request.spacing_mm)
        .map_err(|e| Refusal::new(ErrorCode::Inference, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::HuWindow;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let pixels: Vec<u8> = (0..width * height).map(|i| (i * 7) as u8).collect();
        image::GrayImage::from_raw(width, height, pixels)
            .unwrap()
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    /// A PNG decodes to its own pixels.
    #[test]
    fn png_is_decoded() {
        let slice = prepare_slice(SliceData::Encoded { bytes: png(5, 3) }, &Limits::default());
        let slice = slice.unwrap();
        assert_eq!((slice.width, slice.height), (5, 3));
        assert_eq!(slice.pixels[4], 28);
    }

    /// Sizes past the limit are refused from the declared size, naming size and limit.
    #[test]
    fn oversized_slices_are_refused_before_decoding() {
        let limits = Limits { max_slice_pixels: 10, ..Limits::default() };
        let err = prepare_slice(SliceData::Encoded { bytes: png(4, 3) }, &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::SliceTooLarge);
        assert!(err.message.contains("4x3 = 12") && err.message.contains("10 pixels"), "{err}");
        let huge = SliceData::Grey8 { width: 100_000, height: 100_000, pixels: vec![0; 4] };
        let err = prepare_slice(huge, &Limits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::SliceTooLarge);
        assert!(err.message.contains("10000000000"), "{err}");
    }

    /// Empty, corrupt and mismatched inputs each get their own code.
    #[test]
    fn bad_inputs_are_classified() {
        let limits = Limits::default();
        let code = |data| prepare_slice(data, &limits).unwrap_err().code;
        assert_eq!(code(SliceData::Encoded { bytes: vec![] }), ErrorCode::EmptySlice);
        assert_eq!(
            code(SliceData::Grey8 { width: 0, height: 5, pixels: vec![] }),
            ErrorCode::EmptySlice
        );
        assert_eq!(
            code(SliceData::Encoded { bytes: b"not an image".to_vec() }),
            ErrorCode::BadImage
        );
        let mut corrupt = png(16, 16);
        let n = corrupt.len();
        corrupt[40..n - 12].iter_mut().for_each(|b| *b ^= 0x5A);
        assert_eq!(code(SliceData::Encoded { bytes: corrupt }), ErrorCode::BadImage);
        assert_eq!(
            code(SliceData::Grey8 { width: 3, height: 3, pixels: vec![0; 8] }),
            ErrorCode::BadRequest
        );
        let window = HuWindow { center_hu: 0.0, width_hu: 0.0 };
        assert_eq!(
            code(SliceData::Hu16 { width: 1, height: 1, hu: vec![0], window }),
            ErrorCode::BadRequest
        );
    }
}
