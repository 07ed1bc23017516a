//! The device's status screen: a 128x64 one-bit display drawn with embedded-graphics into an
//! in-memory framebuffer, optionally mirrored to a PNG file.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};

use crate::inference::SliceReport;
use crate::link::Observer;
use crate::protocol::ErrorCode;

/// Screen width, pixels.
pub const WIDTH: u32 = 128;
/// Screen height, pixels.
pub const HEIGHT: u32 = 64;
/// Height of one text line, pixels.
const LINE: i32 = 10;

/// A one-bit framebuffer, row-major; `true` is a lit pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framebuffer {
    width: u32,
    height: u32,
    pixels: Vec<bool>,
}

impl Framebuffer {
    /// A dark framebuffer of `width` x `height` pixels.
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, pixels: vec![false; (width * height) as usize] }
    }

    /// Whether the pixel at column `x`, row `y` is lit; `false` outside the screen.
    pub fn pixel(&self, x: u32, y: u32) -> bool {
        x < self.width && y < self.height && self.pixels[(y * self.width + x) as usize]
    }

    /// Lit pixels inside `area`.
    pub fn lit_in(&self, area: Rectangle) -> usize {
        area.points().filter(|p| p.x >= 0 && p.y >= 0 && self.pixel(p.x as u32, p.y as u32)).count()
    }

    /// The screen as 8-bit grey: lit pixels 255, dark 0.
    pub fn to_image(&self) -> image::GrayImage {
        let grey = self.pixels.iter().map(|&on| if on { 255 } else { 0 }).collect();
        image::GrayImage::from_raw(self.width, self.height, grey).expect("size matches")
    }

    /// Writes the screen as a PNG, replacing `path` in one step.
    ///
    /// # Errors
    /// [`DisplayError`] when the file cannot be written.
    pub fn save_png(&self, path: &Path) -> Result<(), DisplayError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let fail = |cause| DisplayError { path: path.display().to_string(), cause };
        self.to_image()
            .save_with_format(&tmp, image::ImageFormat::Png)
            .map_err(|e| fail(std::io::Error::other(e)))?;
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

impl OriginDimensions for Framebuffer {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Framebuffer {
    type Color = BinaryColor;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, colour) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.width && (p.y as u32) < self.height {
                self.pixels[(p.y as u32 * self.width + p.x as u32) as usize] = colour.is_on();
            }
        }
        Ok(())
    }
}

/// The status PNG could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write status screen {path}: {cause}")]
pub struct DisplayError {
    path: String,
    cause: std::io::Error,
}

/// What the link is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No connection open.
    Idle,
    /// At least one connection open, the last request served.
    Serving,
    /// The last request or frame was refused.
    Error,
}

/// Everything the screen shows.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    /// File name of the model.
    pub model: String,
    /// Link state.
    pub link: LinkState,
    /// Lesion area of the last slice, mm², when its pixel spacing was known.
    pub last_area_mm2: Option<f64>,
    /// Lesion pixels of the last slice.
    pub last_lesion_px: Option<u64>,
    /// Processing time of the last slice, ms.
    pub last_ms: Option<f64>,
    /// Slices served since start.
    pub slices: u64,
}

impl DeviceStatus {
    /// The status of a device that has served nothing yet.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            link: LinkState::Idle,
            last_area_mm2: None,
            last_lesion_px: None,
            last_ms: None,
            slices: 0,
        }
    }
}

/// Area of text line `row` (from 0), pixels.
pub fn line_area(row: i32) -> Rectangle {
    Rectangle::new(Point::new(0, row * LINE + 1), Size::new(WIDTH, LINE as u32))
}

/// Draws `status` over the whole screen: model, link state (inverted when in error), last
/// lesion area, last time and slice count.
pub fn render(status: &DeviceStatus, fb: &mut Framebuffer) {
    let _ = fb.clear(BinaryColor::Off);
    let normal = MonoTextStyle::new(&FONT_6X10, BinaryColor::On);
    let inverted = MonoTextStyle::new(&FONT_6X10, BinaryColor::Off);
    let model: String = status.model.chars().take(21).collect();
    let link = match status.link {
        LinkState::Idle => "link: idle",
        LinkState::Serving => "link: serving",
        LinkState::Error => "link: ERROR",
    };
    let area = match (status.last_area_mm2, status.last_lesion_px) {
        (Some(mm2), _) => format!("lesion: {mm2:.1} mm2"),
        (None, Some(px)) => format!("lesion: {px} px"),
        (None, None) => "lesion: -".to_string(),
    };
    let time =
        status.last_ms.map_or_else(|| "time: -".to_string(), |ms| format!("time: {ms:.0} ms"));
    let count = format!("slices: {}", status.slices);
    let lines = [model.as_str(), link, area.as_str(), time.as_str(), count.as_str()];
    for (row, text) in lines.iter().enumerate() {
        let row = row as i32;
        let style = if row == 1 && status.link == LinkState::Error {
            let _ = line_area(row).into_styled(PrimitiveStyle::with_fill(BinaryColor::On)).draw(fb);
            inverted
        } else {
            normal
        };
        let _ =
            Text::with_baseline(text, Point::new(1, row * LINE + 1), style, Baseline::Top).draw(fb);
    }
}

struct Screen {
    status: DeviceStatus,
    connections: usize,
    framebuffer: Framebuffer,
}

/// A status screen kept up to date from link events, optionally written to a PNG after
/// every change.
pub struct StatusDisplay {
    screen: Mutex<Screen>,
    png: Option<PathBuf>,
}

impl StatusDisplay {
    /// A screen for `model`, mirrored to `png` when given.
    pub fn new(model: &str, png: Option<PathBuf>) -> Self {
        let display = Self {
            screen: Mutex::new(Screen {
                status: DeviceStatus::new(model),
                connections: 0,
                framebuffer: Framebuffer::new(WIDTH, HEIGHT),
            }),
            png,
        };
        display.update(|_| {});
        display
    }

    /// The status shown now.
    pub fn status(&self) -> DeviceStatus {
        self.lock().status.clone()
    }

    /// The framebuffer shown now.
    pub fn framebuffer(&self) -> Framebuffer {
        self.lock().framebuffer.clone()
    }

    /// Shows the error state, as after a refused request.
    pub fn set_error(&self) {
        self.update(|s| s.status.link = LinkState::Error);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Screen> {
        self.screen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Screen)) {
        let mut screen = self.lock();
        change(&mut screen);
        let Screen { status, framebuffer, .. } = &mut *screen;
        render(status, framebuffer);
        if let Some(path) = &self.png {
            if let Err(e) = framebuffer.save_png(path) {
                tracing::warn!(error = %e, "status screen not written");
            }
        }
    }
}

impl Observer for StatusDisplay {
    fn connection_opened(&self) {
        self.update(|s| {
            s.connections += 1;
            if s.status.link == LinkState::Idle {
                s.status.link = LinkState::Serving;
            }
        });
    }

    fn connection_closed(&self) {
        self.update(|s| {
            s.connections = s.connections.saturating_sub(1);
            if s.connections == 0 && s.status.link == LinkState::Serving {
                s.status.link = LinkState::Idle;
            }
        });
    }

    fn slice_served(&self, report: &SliceReport) {
        self.update(|s| {
            s.status.link = LinkState::Serving;
            s.status.slices += 1;
            s.status.last_area_mm2 = report.lesion_area_mm2;
            s.status.last_lesion_px = Some(report.lesion_px);
            s.status.last_ms = Some(report.inference_ms);
        });
    }

    fn request_refused(&self, _code: ErrorCode) {
        self.set_error();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(status: &DeviceStatus) -> Framebuffer {
        let mut fb = Framebuffer::new(WIDTH, HEIGHT);
        render(status, &mut fb);
        fb
    }

    /// Each line of text lights pixels in its own row band, and nothing is drawn off-screen
    /// lines.
    #[test]
    fn text_is_drawn_on_its_lines() {
        let mut status = DeviceStatus::new("tvunet-medseg.onnx");
        status.last_area_mm2 = Some(412.5);
        status.last_ms = Some(38.0);
        status.slices = 12;
        let fb = drawn(&status);
        for row in 0..5 {
            assert!(fb.lit_in(line_area(row)) > 20, "line {row} is blank");
        }
        assert_eq!(fb.lit_in(line_area(5)), 0);
    }

    /// The error state inverts the link line; idle and serving differ only on that line.
    #[test]
    fn error_state_differs_from_idle() {
        let mut status = DeviceStatus::new("m.onnx");
        let idle = drawn(&status);
        status.link = LinkState::Error;
        let error = drawn(&status);
        let line = line_area(1);
        assert!(error.lit_in(line) > line.size.width as usize * line.size.height as usize / 2);
        assert!(idle.lit_in(line) < line.size.width as usize * line.size.height as usize / 4);
        for row in [0, 2, 3, 4] {
            assert_eq!(idle.lit_in(line_area(row)), error.lit_in(line_area(row)), "line {row}");
        }
    }

    /// Different numbers draw different pixels.
    #[test]
    fn slice_count_changes_the_screen() {
        let mut status = DeviceStatus::new("m.onnx");
        status.slices = 1;
        let one = drawn(&status);
        status.slices = 2;
        assert_ne!(one, drawn(&status));
    }

    /// Link events drive the state, and the PNG mirrors the framebuffer.
    #[test]
    fn observer_updates_screen_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.png");
        let display = StatusDisplay::new("m.onnx", Some(path.clone()));
        assert_eq!(display.status().link, LinkState::Idle);
        display.connection_opened();
        assert_eq!(display.status().link, LinkState::Serving);
        display.request_refused(ErrorCode::BadCrc);
        assert_eq!(display.status().link, LinkState::Error);
        display.connection_closed();
        assert_eq!(display.status().link, LinkState::Error);
        let png = image::open(&path).unwrap().into_luma8();
        assert_eq!(png.dimensions(), (WIDTH, HEIGHT));
        assert_eq!(png, display.framebuffer().to_image());
    }
}
