//! The messages exchanged over the link.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::inference::SliceReport;
use crate::preprocess::{HuWindow, PixelSpacing};

/// Everything that travels over the link. The variant order is the wire tag: new variants go
/// at the end, and [`MESSAGE_KINDS`] grows with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Asks the device to describe itself; answered with [`Message::Info`].
    Hello,
    /// The device's model and limits.
    Info(DeviceInfo),
    /// One slice to segment; answered with [`Message::InferResult`] or [`Message::Error`].
    InferRequest(InferRequest),
    /// The segmentation of one slice.
    InferResult(SliceReport),
    /// A refused request or a damaged frame.
    Error(ErrorReply),
    /// Keep-alive probe; answered with [`Message::Pong`] carrying the same nonce.
    Ping { nonce: u64 },
    /// Keep-alive answer.
    Pong { nonce: u64 },
    /// One piece of a message too large for one frame.
    Chunk(Chunk),
}

/// Number of message types this version knows; a tag at or above it is an unknown type.
pub const MESSAGE_KINDS: u32 = 8;

impl Message {
    /// Short name of the message type, for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Info(_) => "info",
            Self::InferRequest(_) => "infer-request",
            Self::InferResult(_) => "infer-result",
            Self::Error(_) => "error",
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
            Self::Chunk(_) => "chunk",
        }
    }
}

/// What a device reports about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// File name of the loaded model.
    pub model_name: String,
    /// sha256 of the model file, hex.
    pub model_sha256: String,
    /// Side of the square model input, pixels.
    pub input_size: u32,
    /// Default probability threshold.
    pub threshold: f32,
    /// What the mask marks (`infection` or `ggo`).
    pub target: String,
    /// Number representation of the weights (`fp32` or `int8`).
    pub precision: String,
    /// Mirror images averaged into each probability map (`none`, `left-right`, `top-bottom` or
    /// `four-way`).
    pub flip_average: String,
    /// tvunet version of the device runtime.
    pub tvunet_version: String,
    /// Protocol version the device speaks.
    pub protocol_version: u8,
    /// Largest frame the device accepts, bytes.
    pub max_frame_bytes: u64,
    /// Largest slice the device accepts, pixels.
    pub max_slice_pixels: u64,
    /// Largest reassembled message the device accepts, bytes.
    pub max_message_bytes: u64,
}

/// One slice to segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// The slice pixels.
    pub slice: SliceData,
    /// Probability threshold in (0, 1); the model's default when absent.
    pub threshold: Option<f32>,
    /// Pixel spacing, for areas in mm².
    pub spacing_mm: Option<PixelSpacing>,
}

/// The pixels of a slice, in one of the forms a workstation exports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SliceData {
    /// A PNG or JPEG file's bytes; colour is converted to luma.
    Encoded { bytes: Vec<u8> },
    /// Raw 8-bit grey, row-major.
    Grey8 {
        /// Columns, pixels.
        width: u32,
        /// Rows, pixels.
        height: u32,
        /// `width * height` grey values.
        pixels: Vec<u8>,
    },
    /// Signed Hounsfield units, row-major, mapped to grey through a window.
    Hu16 {
        /// Columns, pixels.
        width: u32,
        /// Rows, pixels.
        height: u32,
        /// `width * height` values, HU.
        hu: Vec<i16>,
        /// Display window applied before segmentation.
        window: HuWindow,
    },
}

impl SliceData {
    /// Width and height the data declares, when it carries them outside an image header.
    pub fn declared_size(&self) -> Option<(u32, u32)> {
        match self {
            Self::Encoded { .. } => None,
            Self::Grey8 { width, height, .. } | Self::Hu16 { width, height, .. } => {
                Some((*width, *height))
            }
        }
    }
}

/// A refusal, naming the request it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The request refused; [`super::UNKNOWN_REQUEST`] when its id could not be read.
    pub request_id: u32,
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail naming the limit or value at fault.
    pub message: String,
}

/// Machine-readable reason of an [`ErrorReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame's CRC does not match its content.
    BadCrc,
    /// The frame ended early.
    Truncated,
    /// The frame speaks another protocol version.
    WrongVersion,
    /// The message type is unknown.
    UnknownMessage,
    /// The frame is intact but does not decode into a message.
    Malformed,
    /// The frame exceeds the frame limit.
    FrameTooLarge,
    /// The reassembled message exceeds the message limit.
    MessageTooLarge,
    /// Chunks arrived out of order.
    ChunkSequence,
    /// A chunk sequence stopped before its end.
    ChunkTimeout,
    /// The slice has more pixels than the slice limit.
    SliceTooLarge,
    /// The slice has no pixels.
    EmptySlice,
    /// The image bytes are not a readable PNG or JPEG.
    BadImage,
    /// A request field is out of range.
    BadRequest,
    /// The message is valid but not one this end accepts.
    Unexpected,
    /// The model failed on the slice.
    Inference,
    /// The device serves its maximum number of connections.
    Busy,
}

impl ErrorCode {
    /// True for faults of the link itself (a damaged or lost frame), where sending the same
    /// request again can succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::BadCrc | Self::Truncated | Self::ChunkSequence | Self::ChunkTimeout)
    }

    /// Stable snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadCrc => "bad_crc",
            Self::Truncated => "truncated",
            Self::WrongVersion => "wrong_version",
            Self::UnknownMessage => "unknown_message",
            Self::Malformed => "malformed",
            Self::FrameTooLarge => "frame_too_large",
            Self::MessageTooLarge => "message_too_large",
            Self::ChunkSequence => "chunk_sequence",
            Self::ChunkTimeout => "chunk_timeout",
            Self::SliceTooLarge => "slice_too_large",
            Self::EmptySlice => "empty_slice",
            Self::BadImage => "bad_image",
            Self::BadRequest => "bad_request",
            Self::Unexpected => "unexpected",
            Self::Inference => "inference",
            Self::Busy => "busy",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of a chunked message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Position of this piece, from 0.
    pub index: u32,
    /// Number of pieces in the sequence.
    pub count: u32,
    /// The piece's share of the message's postcard encoding.
    pub bytes: Vec<u8>,
}
