//! Messages larger than one frame: splitting into [`Chunk`]s and putting them back together.

use std::time::{Duration, Instant};

use super::frame::{self, CRC_BYTES, MAX_HEADER_BYTES};
use super::{Chunk, Limits, Message, ProtocolError};

/// Largest encoding of the chunk fields around the data: the message tag, two 5-byte varints
/// and the 5-byte length of the data.
const CHUNK_FIELDS_BYTES: usize = 16;

/// Data bytes one chunk can carry when frames are limited to `max_frame_bytes` encoded bytes.
pub fn chunk_capacity(max_frame_bytes: usize) -> usize {
    let mut raw = max_frame_bytes;
    while raw > 0 && cobs::max_encoding_length(raw) > max_frame_bytes {
        raw -= 1;
    }
    raw.saturating_sub(MAX_HEADER_BYTES + CHUNK_FIELDS_BYTES + CRC_BYTES)
}

/// Encodes a message into wire frames (delimiters included) of at most
/// [`Limits::max_frame_bytes`] encoded bytes each: one frame when it fits, otherwise a
/// sequence of [`Message::Chunk`] frames under the same request id.
///
/// # Errors
/// [`ProtocolError::MessageTooLarge`] when the message exceeds
/// [`Limits::max_message_bytes`], naming both; [`ProtocolError::BadLimits`] for limits that
/// cannot carry a chunk; [`ProtocolError::Encode`] when postcard fails.
pub fn encode_message(
    request_id: u32,
    message: &Message,
    limits: &Limits,
) -> Result<Vec<Vec<u8>>, ProtocolError> {
    limits.check()?;
    let payload = postcard::to_stdvec(message).map_err(|e| ProtocolError::Encode(e.to_string()))?;
    if payload.len() > limits.max_message_bytes {
        return Err(ProtocolError::MessageTooLarge {
            request_id: Some(request_id),
            got: payload.len() as u64,
            limit: limits.max_message_bytes as u64,
        });
    }
    let single = frame::frame_payload(request_id, &payload)?;
    if single.len() - 2 <= limits.max_frame_bytes {
        return Ok(vec![single]);
    }
    if matches!(message, Message::Chunk(_)) {
        return Err(ProtocolError::Encode(format!(
            "a chunk of {} bytes does not fit a frame of {} bytes",
            payload.len(),
            limits.max_frame_bytes
        )));
    }
    let capacity = chunk_capacity(limits.max_frame_bytes);
    let count = u32::try_from(payload.len().div_ceil(capacity)).map_err(|_| {
        ProtocolError::Encode(format!("{} bytes need too many chunks", payload.len()))
    })?;
    payload
        .chunks(capacity)
        .enumerate()
        .map(|(index, piece)| {
            let chunk = Chunk { index: index as u32, count, bytes: piece.to_vec() };
            frame::encode_frame(request_id, &Message::Chunk(chunk))
        })
        .collect()
}

/// Outcome of feeding a chunk to a [`Reassembler`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reassembled {
    /// More chunks are needed, or the chunk belonged to an abandoned sequence.
    Pending,
    /// The last chunk arrived.
    Complete {
        /// The reassembled message.
        message: Message,
        /// Wire bytes of all the sequence's frames, delimiters included.
        wire_bytes: u64,
    },
}

#[derive(Debug)]
struct Partial {
    request_id: u32,
    count: u32,
    next: u32,
    bytes: Vec<u8>,
    wire_bytes: u64,
    last: Instant,
    started: Instant,
}

/// Rebuilds chunked messages of one connection, one sequence at a time.
///
/// A chunk with index 0 starts a sequence, replacing any unfinished one (a resend, or a new
/// request after an abandoned one). After a fault, the remaining chunks of that request are
/// dropped without further reports until a new sequence starts.
#[derive(Debug)]
pub struct Reassembler {
    max_message_bytes: usize,
    timeout: Duration,
    partial: Option<Partial>,
    refused: Option<u32>,
}

impl Reassembler {
    /// A reassembler refusing messages above `max_message_bytes` and abandoning sequences
    /// whose next chunk takes longer than `timeout`.
    pub fn new(max_message_bytes: usize, timeout: Duration) -> Self {
        Self { max_message_bytes, timeout, partial: None, refused: None }
    }

    /// Request id of the sequence being assembled.
    pub fn pending_request(&self) -> Option<u32> {
        self.partial.as_ref().map(|p| p.request_id)
    }

    /// Feeds one chunk that arrived in a frame of `wire_bytes` bytes at `now`.
    ///
    /// # Errors
    /// [`ProtocolError::ChunkSequence`] for a chunk out of order or inconsistent with its
    /// sequence, [`ProtocolError::MessageTooLarge`] when the sequence passes the message limit,
    /// and the payload errors of [`super::decode_frame`] for reassembled bytes that are not a
    /// message.
    pub fn push(
        &mut self,
        request_id: u32,
        chunk: Chunk,
        wire_bytes: u64,
        now: Instant,
    ) -> Result<Reassembled, ProtocolError> {
        let Chunk { index, count, bytes } = chunk;
        if index == 0 {
            if let Some(old) = self.partial.take() {
                tracing::debug!(
                    old = old.request_id,
                    new = request_id,
                    received = old.next,
                    count = old.count,
                    "chunk sequence restarted"
                );
            }
            self.refused = None;
            if count == 0 {
                return Err(self.refuse(request_id, "chunk 0 of a sequence of 0".into()));
            }
            self.partial = Some(Partial {
                request_id,
                count,
                next: 0,
                bytes: Vec::new(),
                wire_bytes: 0,
                last: now,
                started: now,
            });
        } else if self.refused == Some(request_id) {
            return Ok(Reassembled::Pending);
        }
        let max = self.max_message_bytes;
        let Some(partial) = self.partial.as_mut().filter(|p| p.request_id == request_id) else {
            let detail = format!("chunk {index} of {count} arrived with no sequence started");
            return Err(self.refuse(request_id, detail));
        };
        if index != partial.next || count != partial.count {
            let detail = format!(
                "expected chunk {} of {}, got chunk {index} of {count}",
                partial.next, partial.count
            );
            return Err(self.refuse(request_id, detail));
        }
        let total = partial.bytes.len() + bytes.len();
        if total > max {
            self.refuse(request_id, String::new());
            return Err(ProtocolError::MessageTooLarge {
                request_id: Some(request_id),
                got: total as u64,
                limit: max as u64,
            });
        }
        partial.bytes.extend_from_slice(&bytes);
        partial.wire_bytes += wire_bytes;
        partial.next += 1;
        partial.last = now;
        if partial.next < partial.count {
            return Ok(Reassembled::Pending);
        }
        let done = self.partial.take().expect("sequence present");
        tracing::debug!(
            request_id,
            chunks = done.count,
            bytes = done.bytes.len(),
            ms = now.duration_since(done.started).as_millis() as u64,
            "chunk sequence complete"
        );
        let message = frame::decode_payload(request_id, &done.bytes)?;
        if matches!(message, Message::Chunk(_)) {
            return Err(ProtocolError::Malformed {
                request_id: Some(request_id),
                detail: "a chunk sequence reassembles into another chunk".into(),
            });
        }
        Ok(Reassembled::Complete { message, wire_bytes: done.wire_bytes })
    }

    /// Abandons the sequence in progress when its next chunk is overdue at `now`.
    ///
    /// # Errors
    /// [`ProtocolError::ChunkTimeout`] naming the request, the chunks received and the wait.
    pub fn expire(&mut self, now: Instant) -> Result<(), ProtocolError> {
        let Some(partial) = &self.partial else { return Ok(()) };
        let waited = now.saturating_duration_since(partial.last);
        if waited <= self.timeout {
            return Ok(());
        }
        let partial = self.partial.take().expect("sequence present");
        self.refused = Some(partial.request_id);
        Err(ProtocolError::ChunkTimeout {
            request_id: partial.request_id,
            received: partial.next,
            count: partial.count,
            waited_ms: waited.as_millis() as u64,
        })
    }

    fn refuse(&mut self, request_id: u32, detail: String) -> ProtocolError {
        self.partial = None;
        self.refused = Some(request_id);
        ProtocolError::ChunkSequence { request_id, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_rng::{random_message, random_report, random_request, Rng};
    use crate::protocol::{decode_frame, Deframed, Deframer, ErrorCode, MIN_FRAME_BYTES};

    fn limits(max_frame_bytes: usize) -> Limits {
        Limits { max_frame_bytes, ..Limits::default() }
    }

    /// Decodes a byte stream back into `(request id, message, wire bytes)` triples.
    fn receive(stream: &[u8], limits: &Limits, rng: &mut Rng) -> Vec<(u32, Message, u64)> {
        let mut deframer = Deframer::new(limits.max_frame_bytes);
        let mut reassembler = Reassembler::new(limits.max_message_bytes, Duration::from_secs(60));
        let mut out = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let step = (rng.below(5000) + 1).min(stream.len() - at);
            for item in deframer.push(&stream[at..at + step]) {
                let Deframed::Frame(bytes) = item else { panic!("{item:?}") };
                let frame = decode_frame(&bytes).unwrap();
                match frame.message {
                    Message::Chunk(chunk) => {
                        let r = reassembler
                            .push(frame.request_id, chunk, frame.wire_bytes, Instant::now())
                            .unwrap();
                        if let Reassembled::Complete { message, wire_bytes } = r {
                            out.push((frame.request_id, message, wire_bytes));
                        }
                    }
                    message => out.push((frame.request_id, message, frame.wire_bytes)),
                }
            }
            at += step;
        }
        out
    }

    /// Large messages split into frames within the limit and come back whole, with the wire
    /// size of all their frames.
    #[test]
    fn chunked_round_trip() {
        let mut rng = Rng::new(10);
        for round in 0..60 {
            let limits = limits(MIN_FRAME_BYTES + rng.below(8000));
            let id = round + 1;
            let message = match rng.below(3) {
                0 => Message::InferRequest(random_request(&mut rng, 20_000)),
                1 => Message::InferResult(random_report(&mut rng, 10_000)),
                _ => match random_message(&mut rng, 30_000) {
                    Message::Chunk(c) => Message::Error(crate::protocol::ErrorReply {
                        request_id: c.index,
                        code: ErrorCode::Busy,
                        message: "x".repeat(c.bytes.len()),
                    }),
                    other => other,
                },
            };
            let frames = encode_message(id, &message, &limits).unwrap();
            for f in &frames {
                assert!(f.len() - 2 <= limits.max_frame_bytes, "{} > {limits:?}", f.len());
            }
            let stream: Vec<u8> = frames.concat();
            let got = receive(&stream, &limits, &mut rng);
            assert_eq!(got, vec![(id, message, stream.len() as u64)], "round {round}");
        }
    }

    /// The chunk capacity fills frames exactly up to the limit, never past it.
    #[test]
    fn chunks_fill_frames() {
        for max in [MIN_FRAME_BYTES, 200, 255, 256, 1000, 64 * 1024] {
            let limits = limits(max);
            let message = big_message(5 * max);
            let frames = encode_message(u32::MAX, &message, &limits).unwrap();
            let longest = frames.iter().map(|f| f.len() - 2).max().unwrap();
            assert!(longest <= max, "{longest} > {max}");
            assert!(longest + 40 >= max, "frames of {longest} bytes waste a {max} limit");
        }
    }

    /// A message past the message limit is refused naming the limit and its size.
    #[test]
    fn oversized_message_is_refused() {
        let limits = Limits { max_message_bytes: 1000, max_frame_bytes: 200, ..Limits::default() };
        let err = encode_message(3, &big_message(2000), &limits).unwrap_err();
        assert_eq!(err.code(), ErrorCode::MessageTooLarge);
        assert!(err.to_string().contains("1000"), "{err}");
    }

    /// A chunk is never chunked again.
    #[test]
    fn oversized_chunk_is_refused() {
        let chunk = Message::Chunk(Chunk { index: 0, count: 1, bytes: vec![1; 1000] });
        let err = encode_message(3, &chunk, &limits(MIN_FRAME_BYTES)).unwrap_err();
        assert!(matches!(err, ProtocolError::Encode(_)), "{err}");
    }

    fn big_message(pixels: usize) -> Message {
        Message::InferRequest(crate::protocol::InferRequest {
            slice: crate::protocol::SliceData::Grey8 {
                width: pixels as u32,
                height: 1,
                pixels: vec![1; pixels],
            },
            threshold: None,
            spacing_mm: None,
        })
    }

    fn chunk(index: u32, count: u32) -> Chunk {
        Chunk { index, count, bytes: vec![1, 2, 3] }
    }

    /// A skipped chunk breaks the sequence once; its remaining chunks are dropped quietly and
    /// a resend from chunk 0 starts afresh.
    #[test]
    fn out_of_order_chunk_is_refused_once() {
        let now = Instant::now();
        let mut r = Reassembler::new(1 << 20, Duration::from_secs(5));
        assert_eq!(r.push(4, chunk(0, 4), 10, now).unwrap(), Reassembled::Pending);
        let err = r.push(4, chunk(2, 4), 10, now).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ChunkSequence);
        assert_eq!(err.request_id(), Some(4));
        assert_eq!(r.push(4, chunk(3, 4), 10, now).unwrap(), Reassembled::Pending);
        assert_eq!(r.pending_request(), None);
        let err = r.push(5, chunk(1, 2), 10, now).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ChunkSequence);
        assert_eq!(r.push(4, chunk(0, 4), 10, now).unwrap(), Reassembled::Pending);
        assert_eq!(r.pending_request(), Some(4));
    }

    /// A new request id replaces an unfinished sequence.
    #[test]
    fn new_request_replaces_sequence() {
        let now = Instant::now();
        let payload = postcard::to_stdvec(&Message::Ping { nonce: 99 }).unwrap();
        let mut r = Reassembler::new(1 << 20, Duration::from_secs(5));
        r.push(1, chunk(0, 3), 10, now).unwrap();
        let first = Chunk { index: 0, count: 2, bytes: payload[..1].to_vec() };
        let second = Chunk { index: 1, count: 2, bytes: payload[1..].to_vec() };
        assert_eq!(r.push(2, first, 7, now).unwrap(), Reassembled::Pending);
        assert_eq!(
            r.push(2, second, 8, now).unwrap(),
            Reassembled::Complete { message: Message::Ping { nonce: 99 }, wire_bytes: 15 }
        );
    }

    /// A stalled sequence times out, naming its progress, and only once.
    #[test]
    fn stalled_sequence_times_out() {
        let start = Instant::now();
        let mut r = Reassembler::new(1 << 20, Duration::from_millis(100));
        r.push(6, chunk(0, 3), 10, start).unwrap();
        r.push(6, chunk(1, 3), 10, start).unwrap();
        r.expire(start + Duration::from_millis(50)).unwrap();
        let err = r.expire(start + Duration::from_millis(150)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ChunkTimeout);
        assert!(err.to_string().contains("2 of 3"), "{err}");
        r.expire(start + Duration::from_secs(10)).unwrap();
        assert_eq!(r.push(6, chunk(2, 3), 10, start).unwrap(), Reassembled::Pending);
    }

    /// A sequence passing the message limit is refused as soon as it does.
    #[test]
    fn sequence_past_message_limit_is_refused() {
        let now = Instant::now();
        let mut r = Reassembler::new(5, Duration::from_secs(5));
        r.push(8, chunk(0, 3), 10, now).unwrap();
        let err = r.push(8, chunk(1, 3), 10, now).unwrap_err();
        assert_eq!(err.code(), ErrorCode::MessageTooLarge);
        assert!(err.to_string().contains("6 bytes") && err.to_string().contains('5'), "{err}");
    }
}
