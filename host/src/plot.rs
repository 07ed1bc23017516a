//! Small line charts as PNG files, drawn with embedded-graphics and its built-in bitmap font so
//! they need no system fonts.

use std::convert::Infallible;
use std::path::Path;

use anyhow::{Context, Result};
use embedded_graphics::mono_font::{ascii::FONT_6X10, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, Polyline, PrimitiveStyle, Rectangle};
use embedded_graphics::text::Text;
use image::RgbImage;

struct Canvas(RgbImage);

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(p, c) in pixels {
            if p.x >= 0
                && p.y >= 0
                && (p.x as u32) < self.0.width()
                && (p.y as u32) < self.0.height()
            {
                self.0.put_pixel(p.x as u32, p.y as u32, image::Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

const COLOURS: [Rgb888; 5] = [
    Rgb888::new(31, 119, 180),
    Rgb888::new(214, 39, 40),
    Rgb888::new(44, 160, 44),
    Rgb888::new(255, 127, 14),
    Rgb888::new(148, 103, 189),
];

/// Draws named series of `(x, y)` points on shared, automatically ranged axes and writes a PNG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    let (w, h) = (640i32, 420i32);
    let (left, right, top, bottom) = (60i32, 20i32, 30i32, 50i32);
    let mut canvas = Canvas(RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255])));
    let points =
        series.iter().flat_map(|s| s.1.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    y0 = y0.min(0.0);
    let to_px = |x: f64, y: f64| {
        Point::new(
            left + ((x - x0) / (x1 - x0) * f64::from(w - left - right)) as i32,
            h - bottom - ((y - y0) / (y1 - y0) * f64::from(h - top - bottom)) as i32,
        )
    };
    let black = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let axis = PrimitiveStyle::with_stroke(Rgb888::new(90, 90, 90), 1);
    let grid = PrimitiveStyle::with_stroke(Rgb888::new(225, 225, 225), 1);
    let draw = |c: &mut Canvas| -> Result<(), Infallible> {
        Rectangle::new(
            Point::new(left, top),
            Size::new((w - left - right) as u32, (h - top - bottom) as u32),
        )
        .into_styled(axis)
        .draw(c)?;
        for k in 0..=4 {
            let fx = x0 + (x1 - x0) * f64::from(k) / 4.0;
            let fy = y0 + (y1 - y0) * f64::from(k) / 4.0;
            let (px, py) = (to_px(fx, y0), to_px(x0, fy));
            Line::new(Point::new(px.x, top), Point::new(px.x, h - bottom))
                .into_styled(grid)
                .draw(c)?;
            Line::new(Point::new(left, py.y), Point::new(w - right, py.y))
                .into_styled(grid)
                .draw(c)?;
            Text::new(&format!("{fx:.3}"), Point::new(px.x - 15, h - bottom + 14), black)
                .draw(c)?;
            Text::new(&format!("{fy:.3}"), Point::new(4, py.y + 3), black).draw(c)?;
        }
        Text::new(title, Point::new(left, 12), black).draw(c)?;
        Text::new(x_label, Point::new(w / 2 - 20, h - 12), black).draw(c)?;
        Text::new(y_label, Point::new(4, top - 2), black).draw(c)?;
        for (k, (name, pts)) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let px: Vec<Point> = pts.iter().map(|&(x, y)| to_px(x, y)).collect();
            Polyline::new(&px).into_styled(PrimitiveStyle::with_stroke(colour, 1)).draw(c)?;
            let ly = top + 14 + 12 * k as i32;
            Line::new(Point::new(w - right - 120, ly - 3), Point::new(w - right - 100, ly - 3))
                .into_styled(PrimitiveStyle::with_stroke(colour, 1))
                .draw(c)?;
            Text::new(name, Point::new(w - right - 95, ly), black).draw(c)?;
        }
        Ok(())
    };
    let Ok(()) = draw(&mut canvas);
    canvas.0.save(path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Curves with a sharp spike (a validation loss jumping fivefold, as seen in a real run)
    /// draw without panicking.
    #[test]
    fn spiky_curves_draw() {
        let dir = tempfile::tempdir().unwrap();
        let train = vec![(1.0, 0.35306), (2.0, 0.30174), (3.0, 0.3017), (4.0, 0.2873)];
        let val = vec![(1.0, 0.36617), (2.0, 0.33265), (3.0, 0.3605), (4.0, 1.7678)];
        let tv = vec![(1.0, 0.04751), (2.0, 0.03127), (3.0, 0.0254), (4.0, 0.0243)];
        let path = dir.path().join("loss.png");
        line_chart(&path, "loss", "epoch", "loss", &[("train", train), ("val", val), ("tv", tv)])
            .unwrap();
        assert!(path.is_file());
        let precision = vec![(1.0, 1.0), (2.0, 1.0), (3.0, 0.965), (4.0, 0.18)];
        let recall = vec![(1.0, 0.0), (2.0, 0.0), (3.0, 0.06), (4.0, 0.747)];
        let dice = vec![(1.0, 0.0), (2.0, 0.0), (3.0, 0.113), (4.0, 0.29)];
        let series = [("precision", precision), ("recall", recall), ("dice", dice)];
        line_chart(&dir.path().join("validation.png"), "validation", "epoch", "", &series).unwrap();
    }
}
