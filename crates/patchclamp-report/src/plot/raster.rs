//! An RGB canvas with the embedded 12-px DejaVu Sans Mono bitmap font, encoded as PNG by the
//! `png` crate (real deflate: a flagship attention pattern is kilobytes, not megabytes).

use super::font_data;

/// Width in pixels of `s` in the embedded font.
pub fn text_width(s: &str) -> usize {
    s.chars().count() * font_data::W
}

/// An RGB canvas.
pub struct Raster {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Raster {
    pub fn new(w: usize, h: usize) -> Self {
        Raster {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    pub fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Blends black text with coverage `a` at (x, y).
    fn dot(&mut self, x: usize, y: usize, a: u8) {
        if x >= self.w || y >= self.h || a == 0 {
            return;
        }
        let i = (y * self.w + x) * 3;
        for v in &mut self.px[i..i + 3] {
            *v = ((*v as u32 * (255 - a as u32)) / 255) as u8;
        }
    }

    /// Draws `s` from (x, y) (top-left); `vertical` reads bottom to top, ending at y + width.
    pub fn text(&mut self, x: usize, y: usize, s: &str, vertical: bool) {
        let n = s.chars().count();
        for (k, ch) in s.chars().enumerate() {
            let code = ch as u32;
            let g = if (32..127).contains(&code) {
                &font_data::GLYPHS[(code - 32) as usize]
            } else {
                &font_data::GLYPHS[('?' as u32 - 32) as usize]
            };
            for gy in 0..font_data::H {
                for gx in 0..font_data::W {
                    let a = g[gy * font_data::W + gx];
                    if vertical {
                        // Rotated 90° counter-clockwise: glyph x runs up the page.
                        let px = x + gy;
                        let py = y + (n - k) * font_data::W - gx - 1;
                        self.dot(px, py, a);
                    } else {
                        self.dot(x + k * font_data::W + gx, y + gy, a);
                    }
                }
            }
        }
    }
}

impl Raster {
    /// The canvas as PNG bytes (8-bit RGB, compressed).
    pub fn png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::High);
        // Writing into a Vec cannot fail, and the size matches the buffer by construction.
        let mut w = enc.write_header().expect("PNG header into memory");
        w.write_image_data(&self.px).expect("PNG data into memory");
        w.finish().expect("PNG end into memory");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_the_pixels_and_compresses_flat_areas() {
        let mut r = Raster::new(300, 200);
        r.fill(10, 10, 100, 50, [178, 24, 43]);
        r.text(20, 120, "head 0.0", false);
        let bytes = r.png();
        assert!(
            bytes.len() < r.px.len() / 20,
            "{} bytes for {} pixels",
            bytes.len(),
            r.px.len()
        );
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (300, 200));
        assert_eq!(&buf[..info.buffer_size()], &r.px[..], "lossless");
    }
}
