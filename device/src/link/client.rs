//! The calling side of the link: requests with a reply timeout, resent after a damaged or lost
//! frame.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::server::open_port;
use super::{is_wait, write_frames, LinkConfig, LinkError};
use crate::inference::SliceReport;
use crate::protocol::{
    decode_frame, encode_message, Deframed, Deframer, DeviceInfo, ErrorCode, InferRequest, Limits,
    Message, Reassembled, Reassembler, UNKNOWN_REQUEST,
};

/// Bytes read from the stream at a time.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A connection to a device over any byte stream.
pub struct Client<S> {
    stream: S,
    config: LinkConfig,
    send_limits: Limits,
    deframer: Deframer,
    reassembler: Reassembler,
    queue: VecDeque<Deframed>,
    buf: Vec<u8>,
    next_id: u32,
    last_link_bytes: u64,
}

impl Client<TcpStream> {
    /// Connects to `addr` (`host:port`).
    ///
    /// # Errors
    /// [`LinkError::Io`] when no address resolves or connects within
    /// [`LinkConfig::connect_timeout`].
    pub fn connect_tcp(addr: &str, config: LinkConfig) -> Result<Self, LinkError> {
        let mut last = None;
        for candidate in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&candidate, config.connect_timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(config.poll_interval))?;
                    stream.set_write_timeout(Some(config.write_timeout))?;
                    stream.set_nodelay(true)?;
                    return Ok(Self::new(stream, config));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{addr} resolves to nothing"),
                )
            })
            .into())
    }
}

impl Client<Box<dyn serialport::SerialPort>> {
    /// Opens the serial port at `path` at `baud` bits/s.
    ///
    /// # Errors
    /// [`LinkError::Serial`] when the port cannot be opened.
    pub fn open_serial(path: &str, baud: u32, config: LinkConfig) -> Result<Self, LinkError> {
        let port = open_port(path, baud, config.poll_interval)?;
        Ok(Self::new(port, config))
    }
}

impl<S: Read + Write> Client<S> {
    /// Wraps a stream; give it a read timeout of about [`LinkConfig::poll_interval`] so that
    /// reply timeouts are enforced.
    pub fn new(stream: S, config: LinkConfig) -> Self {
        let limits = config.limits;
        Self {
            stream,
            send_limits: limits,
            deframer: Deframer::new(limits.max_frame_bytes),
            reassembler: Reassembler::new(limits.max_message_bytes, config.chunk_timeout),
            queue: VecDeque::new(),
            buf: vec![0; READ_BUFFER_BYTES],
            next_id: 1,
            last_link_bytes: 0,
            config,
        }
    }

    /// The stream, for writing bytes outside the protocol.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sets the longest wait for the reply to one attempt of a request.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.config.reply_timeout = timeout;
    }

    /// Bytes of request and reply frames of the last successful exchange, delimiters included.
    pub fn last_link_bytes(&self) -> u64 {
        self.last_link_bytes
    }

    /// Asks the device to describe itself, and from then on keeps frames and messages within
    /// the device's limits.
    ///
    /// # Errors
    /// As [`Client::infer`].
    pub fn hello(&mut self) -> Result<DeviceInfo, LinkError> {
        let reply = self.exchange(&Message::Hello, "info", |m| matches!(m, Message::Info(_)))?;
        let Message::Info(info) = reply else { unreachable!("accepted as info") };
        let own = self.config.limits;
        let device_frame = usize::try_from(info.max_frame_bytes).unwrap_or(usize::MAX);
        let device_message = usize::try_from(info.max_message_bytes).unwrap_or(usize::MAX);
        self.send_limits.max_frame_bytes = own.max_frame_bytes.min(device_frame);
        self.send_limits.max_message_bytes = own.max_message_bytes.min(device_message);
        self.deframer.set_limit(own.max_frame_bytes.max(device_frame));
        Ok(info)
    }

    /// Sends one slice and waits for its segmentation.
    ///
    /// Waits up to [`LinkConfig::reply_timeout`] per attempt; after a damaged frame in either
    /// direction or no reply, sends the same request (same id) again, up to
    /// [`LinkConfig::retries`] times.
    ///
    /// # Errors
    /// [`LinkError::Remote`] when the device refuses the request, [`LinkError::Exhausted`]
    /// when every attempt met a link fault, [`LinkError::Closed`] or [`LinkError::Io`] when
    /// the stream fails.
    pub fn infer(&mut self, request: &InferRequest) -> Result<SliceReport, LinkError> {
        let message = Message::InferRequest(request.clone());
        let reply =
            self.exchange(&message, "infer-result", |m| matches!(m, Message::InferResult(_)))?;
        let Message::InferResult(report) = reply else { unreachable!("accepted as a result") };
        Ok(report)
    }

    /// Checks that the device answers; returns the round-trip time.
    ///
    /// # Errors
    /// As [`Client::infer`].
    pub fn keep_alive(&mut self) -> Result<Duration, LinkError> {
        let start = Instant::now();
        let nonce = u64::from(self.next_id);
        self.exchange(&Message::Ping { nonce }, "pong", |m| *m == Message::Pong { nonce })?;
        Ok(start.elapsed())
    }

    /// Writes bytes as they are, outside any frame.
    ///
    /// # Errors
    /// [`LinkError::Io`] or [`LinkError::Timeout`] when the stream does not take them.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        write_frames(&mut self.stream, &[bytes.to_vec()], self.config.write_timeout).map(|_| ())
    }

    /// Waits up to `timeout` for the next message, reassembling chunks; returns its request id.
    ///
    /// # Errors
    /// [`LinkError::Protocol`] for a damaged frame, [`LinkError::Timeout`] when nothing
    /// arrives, [`LinkError::Closed`] or [`LinkError::Io`] when the stream fails.
    pub fn receive(&mut self, timeout: Duration) -> Result<(u32, Message), LinkError> {
        let deadline = Instant::now() + timeout;
        self.next_message(deadline, timeout).map(|(id, message, _)| (id, message))
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1).max(1);
        id
    }

    fn exchange(
        &mut self,
        message: &Message,
        expected: &'static str,
        accept: impl Fn(&Message) -> bool,
    ) -> Result<Message, LinkError> {
        let id = self.take_id();
        let frames = encode_message(id, message, &self.send_limits)?;
        let attempts = self.config.retries + 1;
        let mut attempt = 1;
        loop {
            let sent = write_frames(&mut self.stream, &frames, self.config.write_timeout)?;
            match self.await_reply(id, expected, &accept) {
                Ok((reply, received)) => {
                    self.last_link_bytes = sent + received;
                    return Ok(reply);
                }
                Err(e) if e.is_retryable() && attempt < attempts => {
                    warn!(request_id = id, attempt, error = %e, "request sent again");
                    attempt += 1;
                }
                Err(e) if e.is_retryable() && attempts > 1 => {
                    return Err(LinkError::Exhausted { attempts, last: Box::new(e) })
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn await_reply(
        &mut self,
        id: u32,
        expected: &'static str,
        accept: &impl Fn(&Message) -> bool,
    ) -> Result<(Message, u64), LinkError> {
        let timeout = self.config.reply_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let (reply_id, message, wire_bytes) = self.next_message(deadline, timeout)?;
            match message {
                Message::Error(e) if reply_id == id || e.request_id == id => {
                    return Err(LinkError::Remote {
                        request_id: e.request_id,
                        code: e.code,
                        message: e.message,
                    })
                }
                // A fault in a frame the device could not attribute, or a refusal of the whole
                // connection (busy), answers whatever was in flight.
                Message::Error(e)
                    if reply_id == UNKNOWN_REQUEST
                        && (e.code.is_transient() || e.code == ErrorCode::Busy) =>
                {
                    return Err(LinkError::Remote {
                        request_id: e.request_id,
                        code: e.code,
                        message: e.message,
                    })
                }
                m if reply_id != id => {
                    debug!(request_id = reply_id, kind = m.kind_name(), "stale reply ignored");
                }
                m if accept(&m) => return Ok((m, wire_bytes)),
                m => return Err(LinkError::Unexpected { expected, got: m.kind_name() }),
            }
        }
    }

    fn next_message(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(u32, Message, u64), LinkError> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                let bytes = match item {
                    Deframed::Frame(bytes) => bytes,
                    Deframed::Oversized(e) => return Err(e.into()),
                };
                let frame = decode_frame(&bytes)?;
                match frame.message {
                    Message::Chunk(chunk) => {
                        match self.reassembler.push(
                            frame.request_id,
                            chunk,
                            frame.wire_bytes,
                            Instant::now(),
                        )? {
                            Reassembled::Pending => continue,
                            Reassembled::Complete { message, wire_bytes } => {
                                return Ok((frame.request_id, message, wire_bytes))
                            }
                        }
                    }
                    message => return Ok((frame.request_id, message, frame.wire_bytes)),
                }
            }
            let now = Instant::now();
            self.reassembler.expire(now)?;
            if now >= deadline {
                return Err(LinkError::Timeout {
                    what: "reply",
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => {
                    let items = self.deframer.push(&self.buf[..n]);
                    self.queue.extend(items);
                }
                Err(e) if is_wait(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
