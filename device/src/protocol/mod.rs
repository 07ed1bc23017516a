//! The wire protocol shared by the serial and TCP links, free of I/O.
//!
//! A message is a serde value ([`Message`]) encoded with postcard. A frame wraps one encoded
//! message as `header | payload | crc32`, where the header is the postcard encoding of
//! `(version: u8, request_id: u32, payload length: u32)` and the trailer is the CRC-32
//! (ISO-HDLC) of everything before it, little-endian. The frame is then COBS-encoded and sent
//! between two `0x00` delimiters, so a receiver can resynchronise on the next `0x00` after
//! noise or a cut. The version byte comes first and the CRC last in every protocol version.
//!
//! A message whose frame would exceed [`Limits::max_frame_bytes`] travels as a sequence of
//! [`Message::Chunk`] frames sharing the request id; the concatenated chunk bytes are the
//! postcard encoding of the real message.

mod chunk;
mod frame;
mod message;
#[cfg(test)]
mod test_rng;

use serde::{Deserialize, Serialize};

pub use chunk::{chunk_capacity, encode_message, Reassembled, Reassembler};
pub use frame::{decode_frame, encode_frame, wire_bytes, Deframed, Deframer, Frame};
pub use message::{
    Chunk, DeviceInfo, ErrorCode, ErrorReply, InferRequest, Message, SliceData, MESSAGE_KINDS,
};

/// Protocol version carried in every frame header. Version 2 added
/// [`DeviceInfo::flip_average`]; a peer speaking version 1 gets a version error, not a
/// misread message.
pub const PROTOCOL_VERSION: u8 = 2;

/// Smallest accepted [`Limits::max_frame_bytes`], bytes.
pub const MIN_FRAME_BYTES: usize = 128;

/// Request id used when the id of a faulty frame cannot be read.
pub const UNKNOWN_REQUEST: u32 = 0;

/// Size limits one end of the link enforces on what it receives and sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest COBS-encoded frame between two delimiters, bytes.
    pub max_frame_bytes: usize,
    /// Largest slice, pixels (width times height).
    pub max_slice_pixels: u64,
    /// Largest message after reassembling its chunks (postcard encoding), bytes.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            // Any CT matrix (512 to 1024 pixels a side). A larger slice is refused by name: at
            // 2048 x 2048 the device's peak memory passes its 64 MiB budget (BENCHMARKS.md).
            max_slice_pixels: 1024 * 1024,
            // A 1024 x 1024 slice in Hounsfield units (2 MiB) with room to spare.
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Checks that the limits can carry a message at all.
    ///
    /// # Errors
    /// [`ProtocolError::BadLimits`] naming the limit at fault and its value.
    pub fn check(&self) -> Result<(), ProtocolError> {
        if self.max_frame_bytes < MIN_FRAME_BYTES {
            return Err(ProtocolError::BadLimits(format!(
                "max_frame_bytes is {}, the least is {MIN_FRAME_BYTES}",
                self.max_frame_bytes
            )));
        }
        if self.max_slice_pixels == 0 {
            return Err(ProtocolError::BadLimits("max_slice_pixels is 0".into()));
        }
        if self.max_message_bytes < self.max_frame_bytes {
            return Err(ProtocolError::BadLimits(format!(
                "max_message_bytes ({}) is below max_frame_bytes ({})",
                self.max_message_bytes, self.max_frame_bytes
            )));
        }
        Ok(())
    }
}

/// Why bytes could not be turned into a message, or a message into frames.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame ends before its declared length, or inside a COBS block.
    #[error("truncated frame: {detail}")]
    Truncated { request_id: Option<u32>, detail: String },
    /// The CRC-32 trailer does not match the frame.
    #[error("frame CRC mismatch: computed {computed:#010x}, frame carries {carried:#010x}")]
    BadCrc { request_id: Option<u32>, computed: u32, carried: u32 },
    /// The frame speaks another protocol version.
    #[error("frame has protocol version {got}, this end speaks version {expected}")]
    WrongVersion { request_id: Option<u32>, got: u8, expected: u8 },
    /// The message tag names no known message.
    #[error("unknown message type {kind}; known types are 0..{known}")]
    UnknownMessage { request_id: u32, kind: u32, known: u32 },
    /// The frame is intact but its content does not decode.
    #[error("malformed frame: {detail}")]
    Malformed { request_id: Option<u32>, detail: String },
    /// A frame grew past the frame limit before its delimiter arrived.
    #[error("frame of at least {got} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { request_id: Option<u32>, got: u64, limit: u64 },
    /// A message is larger than the message limit.
    #[error("message of {got} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge { request_id: Option<u32>, got: u64, limit: u64 },
    /// A chunk arrived out of order or inconsistent with its sequence.
    #[error("chunk sequence broken: {detail}")]
    ChunkSequence { request_id: u32, detail: String },
    /// A chunk sequence stopped before its last chunk.
    #[error("chunk sequence stalled: {received} of {count} chunks after {waited_ms} ms")]
    ChunkTimeout { request_id: u32, received: u32, count: u32, waited_ms: u64 },
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The configured limits cannot work.
    #[error("invalid limits: {0}")]
    BadLimits(String),
}

impl ProtocolError {
    /// The request the fault belongs to, when it could be read.
    pub fn request_id(&self) -> Option<u32> {
        match self {
            Self::Truncated { request_id, .. }
            | Self::BadCrc { request_id, .. }
            | Self::WrongVersion { request_id, .. }
            | Self::Malformed { request_id, .. }
            | Self::FrameTooLarge { request_id, .. }
            | Self::MessageTooLarge { request_id, .. } => *request_id,
            Self::UnknownMessage { request_id, .. }
            | Self::ChunkSequence { request_id, .. }
            | Self::ChunkTimeout { request_id, .. } => Some(*request_id),
            Self::Encode(_) | Self::BadLimits(_) => None,
        }
    }

    /// The error code reported to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Truncated { .. } => ErrorCode::Truncated,
            Self::BadCrc { .. } => ErrorCode::BadCrc,
            Self::WrongVersion { .. } => ErrorCode::WrongVersion,
            Self::UnknownMessage { .. } => ErrorCode::UnknownMessage,
            Self::Malformed { .. } | Self::Encode(_) | Self::BadLimits(_) => ErrorCode::Malformed,
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            Self::ChunkSequence { .. } => ErrorCode::ChunkSequence,
            Self::ChunkTimeout { .. } => ErrorCode::ChunkTimeout,
        }
    }

    /// The error reply that reports this fault to the peer.
    pub fn to_reply(&self) -> ErrorReply {
        ErrorReply {
            request_id: self.request_id().unwrap_or(UNKNOWN_REQUEST),
            code: self.code(),
            message: self.to_string(),
        }
    }
}
