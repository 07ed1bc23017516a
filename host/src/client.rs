//! Sends slices to an edge device over TCP or a serial port and writes what comes back.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tvunet_device::link::{Client, LinkConfig};
use tvunet_device::protocol::{InferRequest, SliceData};
use tvunet_device::{GraySlice, LesionMask, PixelSpacing, SliceReport};

/// Where the device listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port` of a device serving TCP.
    Tcp(String),
    /// A serial port and its speed in bits/s.
    Serial { path: String, baud: u32 },
}

/// One slice sent to the device and what it answered.
#[derive(Debug, Clone)]
pub struct SentSlice {
    /// File stem of the slice; the output files are named after it.
    pub name: String,
    /// The device's report; `link_bytes` counts the request and reply frames.
    pub report: SliceReport,
    /// The mask decoded from the report, at the slice's size.
    pub mask: LesionMask,
}

/// Sends each PNG/JPEG file to the device and writes, per slice, `NAME.mask.png` (0/255 at the
/// slice's size), `NAME.overlay.png` (lesions tinted red over the slice, RGB) and `NAME.json`
/// (the report) into `out`, printing one line per slice.
///
/// # Errors
/// When the device cannot be reached or the link fails (stops there), or when some slices could
/// not be read or were refused (named on stderr; the remaining slices are still sent).
pub fn send(
    target: Target,
    files: &[PathBuf],
    out: &Path,
    threshold: Option<f32>,
    spacing: Option<PixelSpacing>,
) -> Result<Vec<SentSlice>> {
    let config = LinkConfig::default();
    match target {
        Target::Tcp(addr) => {
            let client = Client::connect_tcp(&addr, config)
                .with_context(|| format!("connecting to tcp {addr}"))?;
            send_over(client, files, out, threshold, spacing)
        }
        Target::Serial { path, baud } => {
            let client = Client::open_serial(&path, baud, config)?;
            send_over(client, files, out, threshold, spacing)
        }
    }
}

/// As [`send`], over a client already connected.
///
/// # Errors
/// As [`send`].
pub fn send_over<S: Read + Write>(
    mut client: Client<S>,
    files: &[PathBuf],
    out: &Path,
    threshold: Option<f32>,
    spacing: Option<PixelSpacing>,
) -> Result<Vec<SentSlice>> {
    check_unique_names(files)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating output directory {}", out.display()))?;
    let info = client.hello().context("the device does not answer")?;
    tracing::info!(
        model = %info.model_name,
        sha256 = %info.model_sha256,
        input_size = info.input_size,
        target = %info.target,
        threshold = info.threshold,
        flip_average = %info.flip_average,
        "device ready"
    );
    let mut sent = Vec::with_capacity(files.len());
    let mut failed = 0usize;
    for file in files {
        match send_one(&mut client, file, out, threshold, spacing) {
            Ok(slice) => sent.push(slice),
            // The device refused this slice and goes on serving: report it and carry on.
            Err(SendError::Slice(e)) => {
                eprintln!("{}: {e:#}", file.display());
                failed += 1;
            }
            Err(SendError::Link(e)) => return Err(e),
        }
    }
    if failed > 0 {
        bail!("{failed} of {} slices failed (named above); the others were written", files.len());
    }
    Ok(sent)
}

/// Two slices with the same file stem would write the same `NAME.json` and `NAME.mask.png`,
/// the second over the first: refused before anything is sent.
fn check_unique_names(files: &[PathBuf]) -> Result<()> {
    let mut seen: std::collections::HashMap<&std::ffi::OsStr, &Path> = Default::default();
    for file in files {
        let Some(stem) = file.file_stem() else { continue };
        if let Some(first) = seen.insert(stem, file) {
            bail!(
                "{} and {} would both write {}.json and {}.mask.png; send them in separate runs \
                 or rename one",
                first.display(),
                file.display(),
                stem.to_string_lossy(),
                stem.to_string_lossy()
            );
        }
    }
    Ok(())
}

enum SendError {
    /// This slice could not be read or was refused; the link is fine.
    Slice(anyhow::Error),
    /// The link or the output folder failed; nothing further can be sent.
    Link(anyhow::Error),
}

fn send_one<S: Read + Write>(
    client: &mut Client<S>,
    file: &Path,
    out: &Path,
    threshold: Option<f32>,
    spacing: Option<PixelSpacing>,
) -> Result<SentSlice, SendError> {
    let slice_err = |e: anyhow::Error| SendError::Slice(e);
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| slice_err(anyhow::anyhow!("no file name")))?;
    let bytes = std::fs::read(file).context("reading the slice").map_err(slice_err)?;
    let slice = GraySlice::decode(&bytes).context("decoding the slice").map_err(slice_err)?;
    let request =
        InferRequest { slice: SliceData::Encoded { bytes }, threshold, spacing_mm: spacing };
    let report = client.infer(&request).map_err(|e| {
        let refused = e.remote_code().is_some();
        let e = anyhow::Error::new(e).context("segmenting the slice");
        if refused {
            SendError::Slice(e)
        } else {
            SendError::Link(e)
        }
    })?;
    let mask =
        report.mask().map_err(|e| SendError::Link(anyhow::anyhow!("decoding the mask: {e}")))?;
    if (mask.width, mask.height) != (slice.width, slice.height) {
        return Err(SendError::Link(anyhow::anyhow!(
            "{}: device returned a {}x{} mask for a {}x{} slice",
            file.display(),
            mask.width,
            mask.height,
            slice.width,
            slice.height
        )));
    }
    write_outputs(out, &name, &slice, &mask, &report).map_err(SendError::Link)?;
    println!("{}", summary_line(&name, &report));
    Ok(SentSlice { name, report, mask })
}

fn write_outputs(
    out: &Path,
    name: &str,
    slice: &GraySlice,
    mask: &LesionMask,
    report: &SliceReport,
) -> Result<()> {
    let mask_path = out.join(format!("{name}.mask.png"));
    image::GrayImage::from_raw(mask.width, mask.height, mask.to_grey())
        .context("mask size")?
        .save(&mask_path)
        .with_context(|| format!("writing {}", mask_path.display()))?;
    let overlay_path = out.join(format!("{name}.overlay.png"));
    overlay(slice, mask)
        .save(&overlay_path)
        .with_context(|| format!("writing {}", overlay_path.display()))?;
    let json_path = out.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(())
}

/// The slice in grey with lesion pixels tinted red: red raised halfway to 255, green and
/// blue halved.
///
/// # Panics
/// When the mask and the slice differ in size.
pub fn overlay(slice: &GraySlice, mask: &LesionMask) -> image::RgbImage {
    assert_eq!((slice.width, slice.height), (mask.width, mask.height), "mask and slice sizes");
    let rgb = slice
        .pixels
        .iter()
        .zip(&mask.pixels)
        .flat_map(|(&g, &m)| if m != 0 { [g / 2 + 128, g / 2, g / 2] } else { [g, g, g] })
        .collect();
    image::RgbImage::from_raw(slice.width, slice.height, rgb).expect("size matches")
}

/// One line per slice: name, lesion pixels, area, lesion count, device time, link bytes.
fn summary_line(name: &str, report: &SliceReport) -> String {
    let area = report.lesion_area_mm2.map_or_else(|| "n/a".to_string(), |a| format!("{a:.1} mm2"));
    let link = report.link_bytes.map_or_else(|| "n/a".to_string(), |b| format!("{b} B"));
    format!(
        "{name}\t{} px\t{area}\t{} lesions\t{:.1} ms\tlink {link}",
        report.lesion_px,
        report.lesions.len(),
        report.inference_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lesion pixels turn red, the rest stays grey.
    #[test]
    fn overlay_tints_lesions() {
        let slice = GraySlice::new(2, 1, vec![100, 100]).unwrap();
        let mask = LesionMask { width: 2, height: 1, pixels: vec![1, 0] };
        let img = overlay(&slice, &mask);
        assert_eq!(img.get_pixel(0, 0).0, [178, 50, 50]);
        assert_eq!(img.get_pixel(1, 0).0, [100, 100, 100]);
    }

    #[test]
    fn slices_that_would_overwrite_each_other_are_named() {
        let files = [PathBuf::from("a/s.jpg"), PathBuf::from("t.png"), PathBuf::from("b/s.png")];
        let err = check_unique_names(&files).unwrap_err().to_string();
        assert!(
            err.contains("a/s.jpg") && err.contains("b/s.png") && err.contains("s.json"),
            "{err}"
        );
        assert!(check_unique_names(&files[..2]).is_ok());
    }
}
