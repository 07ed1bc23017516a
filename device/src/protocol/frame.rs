//! One message per frame: postcard header and payload, CRC-32 trailer, COBS between `0x00`
//! delimiters.

use std::mem;

use crc::{Crc, CRC_32_ISO_HDLC};
use serde::{Deserialize, Serialize};

use super::{Message, ProtocolError, MESSAGE_KINDS, PROTOCOL_VERSION};

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Bytes of the CRC trailer.
pub(crate) const CRC_BYTES: usize = 4;

/// Largest encoded header: the version byte and two 5-byte varints.
pub(crate) const MAX_HEADER_BYTES: usize = 11;

/// Smallest decoded frame: a 3-byte header, a 1-byte message tag and the trailer.
const MIN_RAW_BYTES: usize = 4 + CRC_BYTES;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u8,
    request_id: u32,
    len: u32,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Request the message belongs to.
    pub request_id: u32,
    /// The message carried.
    pub message: Message,
    /// Bytes the frame occupied on the wire, both delimiters included.
    pub wire_bytes: u64,
}

/// Wire size of a frame whose COBS encoding is `encoded_len` bytes: the encoding plus the
/// leading and trailing delimiter, bytes.
pub fn wire_bytes(encoded_len: usize) -> u64 {
    encoded_len as u64 + 2
}

/// Encodes one message into one frame, delimiters included, whatever its size.
///
/// # Errors
/// [`ProtocolError::Encode`] when postcard cannot encode the message.
pub fn encode_frame(request_id: u32, message: &Message) -> Result<Vec<u8>, ProtocolError> {
    let payload = postcard::to_stdvec(message).map_err(|e| ProtocolError::Encode(e.to_string()))?;
    frame_payload(request_id, &payload)
}

/// Frames an already encoded payload with the current protocol version.
pub(crate) fn frame_payload(request_id: u32, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    frame_payload_version(PROTOCOL_VERSION, request_id, payload)
}

/// Frames a payload under any version byte.
pub(crate) fn frame_payload_version(
    version: u8,
    request_id: u32,
    payload: &[u8],
) -> Result<Vec<u8>, ProtocolError> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        ProtocolError::Encode(format!("payload of {} bytes does not fit a frame", payload.len()))
    })?;
    let header = Header { version, request_id, len };
    let mut raw = postcard::to_stdvec(&header).map_err(|e| ProtocolError::Encode(e.to_string()))?;
    raw.reserve(payload.len() + CRC_BYTES);
    raw.extend_from_slice(payload);
    let crc = CRC32.checksum(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    let mut wire = vec![0u8; cobs::max_encoding_length(raw.len()) + 2];
    let n = cobs::encode(&raw, &mut wire[1..]);
    wire.truncate(n + 1);
    wire.push(0);
    Ok(wire)
}

/// Decodes the bytes found between two delimiters.
///
/// Checks run in this order: COBS structure and minimum length ([`ProtocolError::Truncated`]),
/// CRC ([`ProtocolError::BadCrc`], or [`ProtocolError::Truncated`] when the header declares
/// more payload than arrived), version ([`ProtocolError::WrongVersion`]), message type
/// ([`ProtocolError::UnknownMessage`]) and content ([`ProtocolError::Malformed`]).
///
/// # Errors
/// As above; each error names the request id when it could be read.
pub fn decode_frame(encoded: &[u8]) -> Result<Frame, ProtocolError> {
    let raw = cobs::decode_vec(encoded).map_err(|e| ProtocolError::Truncated {
        request_id: header_hint(encoded),
        detail: format!("{} encoded bytes end inside a COBS block ({e})", encoded.len()),
    })?;
    if raw.len() < MIN_RAW_BYTES {
        return Err(ProtocolError::Truncated {
            request_id: None,
            detail: format!("{} bytes, the smallest frame is {MIN_RAW_BYTES}", raw.len()),
        });
    }
    let (body, trailer) = raw.split_at(raw.len() - CRC_BYTES);
    let carried = u32::from_le_bytes(trailer.try_into().expect("trailer is 4 bytes"));
    let computed = CRC32.checksum(body);
    let header = postcard::take_from_bytes::<Header>(body);
    let request_id = header.as_ref().ok().map(|(h, _)| h.request_id);
    if computed != carried {
        return Err(match &header {
            Err(postcard::Error::DeserializeUnexpectedEnd) => ProtocolError::Truncated {
                request_id: None,
                detail: format!("{} bytes end inside the header", raw.len()),
            },
            Ok((h, rest)) if h.version == PROTOCOL_VERSION && h.len as usize > rest.len() => {
                ProtocolError::Truncated {
                    request_id: Some(h.request_id),
                    detail: format!(
                        "header declares {} payload bytes, {} arrived",
                        h.len,
                        rest.len()
                    ),
                }
            }
            _ => ProtocolError::BadCrc { request_id, computed, carried },
        });
    }
    if body[0] != PROTOCOL_VERSION {
        return Err(ProtocolError::WrongVersion {
            request_id,
            got: body[0],
            expected: PROTOCOL_VERSION,
        });
    }
    let (header, payload) = header.map_err(|e| ProtocolError::Malformed {
        request_id: None,
        detail: format!("header does not decode: {e}"),
    })?;
    if header.len as usize != payload.len() {
        return Err(ProtocolError::Malformed {
            request_id,
            detail: format!(
                "header declares {} payload bytes, the frame holds {}",
                header.len,
                payload.len()
            ),
        });
    }
    let message = decode_payload(header.request_id, payload)?;
    Ok(Frame { request_id: header.request_id, message, wire_bytes: wire_bytes(encoded.len()) })
}

/// Decodes a message's postcard encoding, telling an unknown message type from bad content.
pub(crate) fn decode_payload(request_id: u32, payload: &[u8]) -> Result<Message, ProtocolError> {
    let malformed =
        |detail: String| ProtocolError::Malformed { request_id: Some(request_id), detail };
    let (kind, _) = postcard::take_from_bytes::<u32>(payload)
        .map_err(|e| malformed(format!("message tag does not decode: {e}")))?;
    if kind >= MESSAGE_KINDS {
        return Err(ProtocolError::UnknownMessage { request_id, kind, known: MESSAGE_KINDS });
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(payload)
        .map_err(|e| malformed(format!("message does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes follow the message", rest.len())));
    }
    Ok(message)
}

/// Reads the request id from the first bytes of an encoded frame, when they hold a header of
/// this protocol version.
fn header_hint(encoded: &[u8]) -> Option<u32> {
    let mut state = cobs::DecoderState::default();
    let mut prefix = Vec::with_capacity(MAX_HEADER_BYTES);
    for &byte in encoded.iter().take(MAX_HEADER_BYTES + 2) {
        match state.feed(byte) {
            Ok(cobs::DecodeResult::DataContinue(b)) => prefix.push(b),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let (header, _) = postcard::take_from_bytes::<Header>(&prefix).ok()?;
    (header.version == PROTOCOL_VERSION).then_some(header.request_id)
}

/// What a [`Deframer`] found in the byte stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Deframed {
    /// The encoded bytes of one frame, delimiters removed; decode with [`decode_frame`].
    Frame(Vec<u8>),
    /// A frame grew past the limit; its bytes up to the next delimiter are discarded.
    Oversized(ProtocolError),
}

/// Splits a byte stream at `0x00` delimiters into encoded frames, holding at most the frame
/// limit in memory.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    limit: usize,
    discarding: bool,
}

impl Deframer {
    /// A deframer accepting frames of up to `limit` encoded bytes.
    pub fn new(limit: usize) -> Self {
        Self { buf: Vec::new(), limit, discarding: false }
    }

    /// Changes the frame limit, bytes.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Bytes held of a frame whose delimiter has not arrived.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forgets any partial frame.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// Feeds received bytes; returns the frames they completed, in order. Empty frames (two
    /// delimiters in a row) are skipped. A frame passing the limit is reported once, as soon
    /// as it does, and its remaining bytes are dropped up to the next delimiter.
    pub fn push(&mut self, data: &[u8]) -> Vec<Deframed> {
        let mut out = Vec::new();
        for (i, piece) in data.split(|&b| b == 0).enumerate() {
            if i > 0 {
                self.end_frame(&mut out);
            }
            self.take(piece, &mut out);
        }
        out
    }

    fn take(&mut self, piece: &[u8], out: &mut Vec<Deframed>) {
        if self.discarding || piece.is_empty() {
            return;
        }
        let total = self.buf.len() + piece.len();
        if total > self.limit {
            let mut prefix = self.buf.clone();
            prefix.extend(piece.iter().take(MAX_HEADER_BYTES + 2));
            out.push(Deframed::Oversized(ProtocolError::FrameTooLarge {
                request_id: header_hint(&prefix),
                got: total as u64,
                limit: self.limit as u64,
            }));
            self.buf = Vec::new();
            self.discarding = true;
        } else {
            self.buf.extend_from_slice(piece);
        }
    }

    fn end_frame(&mut self, out: &mut Vec<Deframed>) {
        if mem::take(&mut self.discarding) {
            return;
        }
        if !self.buf.is_empty() {
            out.push(Deframed::Frame(mem::take(&mut self.buf)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_rng::{random_message, Rng};
    use crate::protocol::ErrorCode;

    fn encoded_part(wire: &[u8]) -> &[u8] {
        &wire[1..wire.len() - 1]
    }

    fn raw_of(wire: &[u8]) -> Vec<u8> {
        cobs::decode_vec(encoded_part(wire)).unwrap()
    }

    fn reencode(raw: &[u8]) -> Vec<u8> {
        cobs::encode_vec(raw)
    }

    /// Every message kind survives encode and decode, with its request id and wire size.
    #[test]
    fn frames_round_trip() {
        let mut rng = Rng::new(1);
        for _ in 0..500 {
            let message = random_message(&mut rng, 2000);
            let id = rng.next_u32();
            let wire = encode_frame(id, &message).unwrap();
            assert_eq!(wire[0], 0);
            assert_eq!(*wire.last().unwrap(), 0);
            assert!(!encoded_part(&wire).contains(&0));
            let frame = decode_frame(encoded_part(&wire)).unwrap();
            assert_eq!(frame.request_id, id);
            assert_eq!(frame.message, message);
            assert_eq!(frame.wire_bytes, wire.len() as u64);
        }
    }

    /// Noise between frames costs at most error reports; every frame after it still decodes,
    /// in order, whatever the read boundaries.
    #[test]
    fn noise_between_frames_is_skipped() {
        let mut rng = Rng::new(2);
        for _ in 0..200 {
            let messages: Vec<Message> =
                (0..rng.below(6) + 1).map(|_| random_message(&mut rng, 300)).collect();
            let mut stream = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                let n = rng.below(40);
                stream.extend(rng.bytes(n));
                stream.extend(encode_frame(i as u32 + 1, m).unwrap());
            }
            let n = rng.below(40);
            stream.extend(rng.bytes(n));
            let mut deframer = Deframer::new(4096);
            let mut decoded = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let step = (rng.below(64) + 1).min(stream.len() - at);
                for item in deframer.push(&stream[at..at + step]) {
                    if let Deframed::Frame(bytes) = item {
                        if let Ok(frame) = decode_frame(&bytes) {
                            decoded.push((frame.request_id, frame.message));
                        }
                    }
                }
                at += step;
            }
            let expected: Vec<(u32, Message)> =
                messages.into_iter().enumerate().map(|(i, m)| (i as u32 + 1, m)).collect();
            assert_eq!(decoded, expected);
        }
    }

    /// A flipped bit in the payload or the trailer is a CRC error naming the request.
    #[test]
    fn corrupt_crc_is_detected() {
        let mut rng = Rng::new(3);
        for _ in 0..300 {
            let message = random_message(&mut rng, 500);
            let id = rng.next_u32() | 1;
            let wire = encode_frame(id, &message).unwrap();
            let mut raw = raw_of(&wire);
            let (_, rest) = postcard::take_from_bytes::<Header>(&raw).unwrap();
            let header_len = raw.len() - rest.len();
            let at = header_len + rng.below(raw.len() - header_len);
            raw[at] ^= 1 << rng.below(8);
            let err = decode_frame(&reencode(&raw)).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadCrc, "{err}");
            assert_eq!(err.request_id(), Some(id));
        }
    }

    /// Any change to an encoded frame is refused, never decoded into another message.
    #[test]
    fn any_corruption_is_refused() {
        let mut rng = Rng::new(4);
        for _ in 0..1000 {
            let message = random_message(&mut rng, 200);
            let wire = encode_frame(rng.next_u32(), &message).unwrap();
            let mut encoded = encoded_part(&wire).to_vec();
            let at = rng.below(encoded.len());
            let old = encoded[at];
            encoded[at] = loop {
                let b = rng.next_u32() as u8;
                if b != 0 && b != old {
                    break b;
                }
            };
            assert!(decode_frame(&encoded).is_err());
        }
    }

    /// A frame cut short anywhere is reported as truncated.
    #[test]
    fn truncated_frames_are_reported() {
        let mut rng = Rng::new(5);
        for _ in 0..500 {
            let message = random_message(&mut rng, 400);
            let wire = encode_frame(rng.next_u32(), &message).unwrap();
            let encoded = encoded_part(&wire);
            let cut = 1 + rng.below(encoded.len() - 1);
            let err = decode_frame(&encoded[..cut]).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Truncated, "cut {cut}/{}: {err}", encoded.len());
        }
    }

    /// An intact frame from another protocol version is refused as such.
    #[test]
    fn wrong_version_is_reported() {
        let payload = postcard::to_stdvec(&Message::Hello).unwrap();
        let wire = frame_payload_version(PROTOCOL_VERSION + 1, 42, &payload).unwrap();
        let err = decode_frame(encoded_part(&wire)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::WrongVersion);
        assert_eq!(err.request_id(), Some(42));
        assert!(err.to_string().contains('2'), "{err}");
    }

    /// A tag past the known messages is an unknown message, not malformed content.
    #[test]
    fn unknown_message_is_reported() {
        for tag in [MESSAGE_KINDS, 127, 70000] {
            let payload = postcard::to_stdvec(&tag).unwrap();
            let wire = frame_payload(9, &payload).unwrap();
            let err = decode_frame(encoded_part(&wire)).unwrap_err();
            assert_eq!(err.code(), ErrorCode::UnknownMessage, "{err}");
            assert_eq!(err.request_id(), Some(9));
        }
        let last = postcard::to_stdvec(&Message::Chunk(crate::protocol::Chunk {
            index: 0,
            count: 1,
            bytes: vec![],
        }))
        .unwrap();
        assert_eq!(u32::from(last[0]), MESSAGE_KINDS - 1, "MESSAGE_KINDS is out of date");
    }

    /// A known tag with content that does not decode is malformed.
    #[test]
    fn bad_content_is_malformed() {
        let wire = frame_payload(5, &[4, 200]).unwrap();
        let err = decode_frame(encoded_part(&wire)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Malformed, "{err}");
    }

    /// An over-long frame is reported once, with the limit and its id, and the stream recovers
    /// at the next delimiter.
    #[test]
    fn oversized_frame_is_dropped_to_next_delimiter() {
        let big =
            Message::Chunk(crate::protocol::Chunk { index: 0, count: 1, bytes: vec![7; 1000] });
        let mut stream = encode_frame(77, &big).unwrap();
        stream.extend(encode_frame(78, &Message::Hello).unwrap());
        let mut deframer = Deframer::new(256);
        let mut items = Vec::new();
        for piece in stream.chunks(100) {
            items.extend(deframer.push(piece));
        }
        assert_eq!(items.len(), 2, "{items:?}");
        let Deframed::Oversized(err) = &items[0] else { panic!("{items:?}") };
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert_eq!(err.request_id(), Some(77));
        assert!(err.to_string().contains("256"), "{err}");
        let Deframed::Frame(bytes) = &items[1] else { panic!("{items:?}") };
        assert_eq!(decode_frame(bytes).unwrap().message, Message::Hello);
        assert_eq!(deframer.pending(), 0);
    }
}
