//! A seeded generator of bytes and messages for the codec's property tests.

use crate::inference::SliceReport;
use crate::postprocess::Lesion;
use crate::preprocess::{HuWindow, PixelSpacing};

use super::{Chunk, DeviceInfo, ErrorCode, ErrorReply, InferRequest, Message, SliceData};

/// xorshift64*: reproducible, no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n`; `n` must be positive.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u32() as u8).collect()
    }

    fn text(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'a' + (self.below(26) as u8))).collect()
    }
}

/// A message of a random kind with random content of up to about `size` bytes.
pub(crate) fn random_message(rng: &mut Rng, size: usize) -> Message {
    let n = rng.below(size + 1);
    match rng.below(8) {
        0 => Message::Hello,
        1 => Message::Info(DeviceInfo {
            model_name: rng.text(12),
            model_sha256: rng.text(64),
            input_size: 256,
            threshold: rng.unit() as f32,
            target: "infection".into(),
            precision: "fp32".into(),
            flip_average: "none".into(),
            tvunet_version: "0.1.0".into(),
            protocol_version: 2,
            max_frame_bytes: rng.next_u64() >> 40,
            max_slice_pixels: rng.next_u64(),
            max_message_bytes: rng.next_u64(),
        }),
        2 => Message::InferRequest(random_request(rng, n)),
        3 => Message::InferResult(random_report(rng, n)),
        4 => Message::Error(ErrorReply {
            request_id: rng.next_u32(),
            code: ErrorCode::SliceTooLarge,
            message: rng.text(n.min(200)),
        }),
        5 => Message::Ping { nonce: rng.next_u64() },
        6 => Message::Pong { nonce: rng.next_u64() },
        _ => Message::Chunk(Chunk {
            index: rng.next_u32(),
            count: rng.next_u32(),
            bytes: rng.bytes(n),
        }),
    }
}

/// An inference request carrying `n` pixels or bytes in a random slice form.
pub(crate) fn random_request(rng: &mut Rng, n: usize) -> InferRequest {
    let width = (n as u32).max(1);
    let slice = match rng.below(3) {
        0 => SliceData::Encoded { bytes: rng.bytes(n) },
        1 => SliceData::Grey8 { width, height: 1, pixels: rng.bytes(n) },
        _ => SliceData::Hu16 {
            width,
            height: 1,
            hu: (0..n).map(|_| rng.next_u32() as i16).collect(),
            window: HuWindow::LUNG,
        },
    };
    let threshold = (rng.below(2) == 0).then(|| rng.unit() as f32);
    let spacing_mm = (rng.below(2) == 0)
        .then(|| PixelSpacing { row_mm: rng.unit() + 0.1, col_mm: rng.unit() + 0.1 });
    InferRequest { slice, threshold, spacing_mm }
}

/// A report with `n` mask runs and a few lesions.
pub(crate) fn random_report(rng: &mut Rng, n: usize) -> SliceReport {
    let lesions = (0..rng.below(5))
        .map(|_| Lesion {
            area_px: rng.next_u64() >> 40,
            area_mm2: Some(rng.unit() * 100.0),
            bbox: [rng.next_u32(), rng.next_u32(), rng.next_u32(), rng.next_u32()],
            centroid: [rng.unit(), rng.unit()],
        })
        .collect();
    SliceReport {
        width: rng.next_u32(),
        height: rng.next_u32(),
        threshold: 0.5,
        flip_average: "top-bottom".into(),
        lesion_px: rng.next_u64() >> 20,
        lesion_fraction: rng.unit(),
        lesion_area_mm2: None,
        spacing_mm: None,
        lesions,
        inference_ms: rng.unit() * 1000.0,
        model_sha256: rng.text(64),
        mask_rle: (0..n).map(|_| rng.next_u32() >> rng.below(32)).collect(),
        link_bytes: Some(rng.next_u64() >> rng.below(64)),
    }
}
