//! The device side: one serving loop per connection, and the TCP and serial servers that run
//! it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{handler, is_wait, write_frames, LinkConfig, LinkError};
use crate::inference::{Segmenter, SliceReport};
use crate::protocol::{
    decode_frame, encode_message, Deframed, Deframer, DeviceInfo, ErrorCode, ErrorReply, Frame,
    InferRequest, Message, ProtocolError, Reassembled, Reassembler, PROTOCOL_VERSION,
    UNKNOWN_REQUEST,
};

/// Bytes read from a stream at a time.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Pause between accept attempts while no client is connecting.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// How long a refused connection is drained after the busy reply, before it is closed.
const BUSY_LINGER: Duration = Duration::from_secs(2);

/// Pause before reopening a serial port that failed.
const SERIAL_REOPEN_DELAY: Duration = Duration::from_millis(500);

/// Passes at most this many times over a reply to make its `link_bytes` count itself.
const LINK_BYTES_PASSES: usize = 8;

/// Hears what the servers do, for a status display or metrics. Called from connection
/// threads.
pub trait Observer: Send + Sync {
    /// A connection or serial session started.
    fn connection_opened(&self) {}
    /// A connection or serial session ended.
    fn connection_closed(&self) {}
    /// A slice was segmented and its result sent.
    fn slice_served(&self, _report: &SliceReport) {}
    /// A request or frame was refused with `code`.
    fn request_refused(&self, _code: ErrorCode) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// How a serving session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer closed the stream.
    Closed,
    /// The server was told to stop.
    Stopped,
    /// Nothing arrived for the idle timeout.
    Idle,
}

/// A loaded model served under one configuration; shared by all connections.
pub struct Service {
    segmenter: Arc<Segmenter>,
    config: LinkConfig,
    observer: Arc<dyn Observer>,
}

impl Service {
    /// Serves `segmenter` with `config`.
    ///
    /// # Errors
    /// [`LinkError::Protocol`] when the limits cannot work.
    pub fn new(segmenter: Arc<Segmenter>, config: LinkConfig) -> Result<Self, LinkError> {
        config.limits.check()?;
        Ok(Self { segmenter, config, observer: Arc::new(NoObserver) })
    }

    /// Reports events to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The configuration served under.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// What the device answers to [`Message::Hello`].
    pub fn info(&self) -> DeviceInfo {
        let meta = self.segmenter.meta();
        let limits = &self.config.limits;
        DeviceInfo {
            model_name: self.segmenter.name().to_string(),
            model_sha256: self.segmenter.sha256().to_string(),
            input_size: meta.input_size,
            threshold: meta.threshold,
            target: meta.target.clone(),
            precision: meta.precision.clone(),
            flip_average: meta.flip_average.name().to_string(),
            tvunet_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            max_frame_bytes: limits.max_frame_bytes as u64,
            max_slice_pixels: limits.max_slice_pixels,
            max_message_bytes: limits.max_message_bytes as u64,
        }
    }

    /// Serves one connection until the peer closes it, `stop` is set, or the stream fails.
    /// Every faulty frame or request is answered with an error and serving goes on.
    ///
    /// # Errors
    /// [`LinkError::Io`] when reading or writing the stream fails, [`LinkError::Timeout`] when
    /// a reply cannot be written within [`LinkConfig::write_timeout`].
    pub fn serve<S: Read + Write>(
        &self,
        stream: S,
        stop: &AtomicBool,
    ) -> Result<SessionEnd, LinkError> {
        self.serve_until_idle(stream, stop, Quiet::default())
    }

    fn serve_until_idle<S: Read + Write>(
        &self,
        stream: S,
        stop: &AtomicBool,
        quiet: Quiet,
    ) -> Result<SessionEnd, LinkError> {
        self.observer.connection_opened();
        let mut session = Session::new(self, stream);
        let result = session.run(stop, quiet);
        self.observer.connection_closed();
        result
    }
}

/// How long a connection may stay silent before it is closed: before its first byte and
/// between inputs. `None` waits for ever (the serial line).
#[derive(Debug, Clone, Copy, Default)]
struct Quiet {
    first_byte: Option<Duration>,
    idle: Option<Duration>,
}

struct Session<'a, S> {
    service: &'a Service,
    stream: S,
    deframer: Deframer,
    reassembler: Reassembler,
}

impl<'a, S: Read + Write> Session<'a, S> {
    fn new(service: &'a Service, stream: S) -> Self {
        let limits = &service.config.limits;
        Self {
            service,
            stream,
            deframer: Deframer::new(limits.max_frame_bytes),
            reassembler: Reassembler::new(limits.max_message_bytes, service.config.chunk_timeout),
        }
    }

    fn run(&mut self, stop: &AtomicBool, quiet: Quiet) -> Result<SessionEnd, LinkError> {
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        let mut last_input = Instant::now();
        let mut heard = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(SessionEnd::Stopped);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(SessionEnd::Closed),
                Ok(n) => {
                    last_input = Instant::now();
                    heard = true;
                    for item in self.deframer.push(&buf[..n]) {
                        match item {
                            Deframed::Frame(bytes) => match decode_frame(&bytes) {
                                Ok(frame) => self.on_frame(frame)?,
                                Err(e) => self.refuse_fault(&e)?,
                            },
                            Deframed::Oversized(e) => self.refuse_fault(&e)?,
                        }
                    }
                }
                Err(e) if is_wait(&e) => {}
                Err(e) => return Err(e.into()),
            }
            let now = Instant::now();
            if let Err(e) = self.reassembler.expire(now) {
                self.refuse_fault(&e)?;
            }
            let limit = if heard { quiet.idle } else { quiet.first_byte.or(quiet.idle) };
            if limit.is_some_and(|limit| now.duration_since(last_input) > limit) {
                return Ok(SessionEnd::Idle);
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), LinkError> {
        let Frame { request_id, message, wire_bytes } = frame;
        match message {
            Message::Chunk(chunk) => {
                match self.reassembler.push(request_id, chunk, wire_bytes, Instant::now()) {
                    Ok(Reassembled::Pending) => Ok(()),
                    Ok(Reassembled::Complete { message, wire_bytes }) => {
                        self.on_message(request_id, message, wire_bytes)
                    }
                    Err(e) => self.refuse_fault(&e),
                }
            }
            message => self.on_message(request_id, message, wire_bytes),
        }
    }

    fn on_message(&mut self, id: u32, message: Message, wire_bytes: u64) -> Result<(), LinkError> {
        debug!(request_id = id, kind = message.kind_name(), wire_bytes, "message received");
        match message {
            Message::Hello => self.send(id, &Message::Info(self.service.info())),
            Message::Ping { nonce } => self.send(id, &Message::Pong { nonce }),
            Message::InferRequest(request) => self.infer(id, request, wire_bytes),
            Message::Error(e) => {
                warn!(request_id = id, code = %e.code, "peer reported an error");
                Ok(())
            }
            other => self.refuse(
                id,
                ErrorCode::Unexpected,
                format!("a device does not accept {} messages", other.kind_name()),
            ),
        }
    }

    fn infer(
        &mut self,
        id: u32,
        request: InferRequest,
        request_bytes: u64,
    ) -> Result<(), LinkError> {
        let limits = self.service.config.limits;
        let (report, _mask) = match handler::run_request(&self.service.segmenter, request, &limits)
        {
            Ok(done) => done,
            Err(refusal) => return self.refuse(id, refusal.code, refusal.message),
        };
        let (frames, report) = match result_frames(id, report, request_bytes, &limits) {
            Ok(done) => done,
            Err(e) => return self.refuse_fault(&e),
        };
        write_frames(&mut self.stream, &frames, self.service.config.write_timeout)?;
        info!(
            request_id = id,
            width = report.width,
            height = report.height,
            lesion_px = report.lesion_px,
            inference_ms = report.inference_ms,
            link_bytes = report.link_bytes,
            frames = frames.len(),
            "slice served"
        );
        self.service.observer.slice_served(&report);
        Ok(())
    }

    fn refuse_fault(&mut self, fault: &ProtocolError) -> Result<(), LinkError> {
        let reply = fault.to_reply();
        self.refuse(reply.request_id, reply.code, reply.message)
    }

    fn refuse(&mut self, id: u32, code: ErrorCode, message: String) -> Result<(), LinkError> {
        warn!(request_id = id, %code, detail = %message, "request refused");
        self.service.observer.request_refused(code);
        self.send(id, &Message::Error(ErrorReply { request_id: id, code, message }))
    }

    fn send(&mut self, id: u32, message: &Message) -> Result<(), LinkError> {
        let frames = encode_message(id, message, &self.service.config.limits)?;
        write_frames(&mut self.stream, &frames, self.service.config.write_timeout)?;
        Ok(())
    }
}

/// Encodes an inference result whose `link_bytes` counts the request frames and the result's
/// own frames.
fn result_frames(
    id: u32,
    report: SliceReport,
    request_bytes: u64,
    limits: &crate::protocol::Limits,
) -> Result<(Vec<Vec<u8>>, SliceReport), ProtocolError> {
    let mut message = Message::InferResult(report);
    let mut total = request_bytes;
    let mut frames = Vec::new();
    for _ in 0..LINK_BYTES_PASSES {
        if let Message::InferResult(r) = &mut message {
            r.link_bytes = Some(total);
        }
        frames = encode_message(id, &message, limits)?;
        let counted = request_bytes + frames.iter().map(|f| f.len() as u64).sum::<u64>();
        if counted == total {
            break;
        }
        total = counted;
    }
    let Message::InferResult(report) = message else { unreachable!("built as a result") };
    Ok((frames, report))
}

/// A TCP server: one accept thread, one thread per connection.
pub struct TcpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Binds `addr` (`host:port`; port 0 picks a free port) and starts serving.
    ///
    /// # Errors
    /// [`LinkError::Io`] when the address cannot be bound.
    pub fn bind(service: Arc<Service>, addr: &str) -> Result<Self, LinkError> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("tcp-accept".into())
            .spawn(move || accept_loop(&listener, &service, &flag))?;
        info!(%addr, "tcp server listening");
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops accepting, ends every connection at its next poll, and waits for them.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn accept_loop(listener: &TcpListener, service: &Arc<Service>, stop: &Arc<AtomicBool>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                workers.retain(|w| !w.is_finished());
                if workers.len() >= service.config.max_connections {
                    let service = Arc::clone(service);
                    let spawned = thread::Builder::new()
                        .name("tcp-busy".into())
                        .spawn(move || refuse_busy(stream, &service));
                    if let Err(e) = spawned {
                        warn!(error = %e, "cannot start a thread to refuse a connection");
                    }
                    continue;
                }
                let service = Arc::clone(service);
                let stop = Arc::clone(stop);
                let spawned = thread::Builder::new()
                    .name("tcp-conn".into())
                    .spawn(move || serve_tcp(stream, peer, &service, &stop));
                match spawned {
                    Ok(worker) => workers.push(worker),
                    Err(e) => warn!(error = %e, "cannot start a connection thread"),
                }
            }
            Err(e) if is_wait(&e) => thread::sleep(ACCEPT_POLL),
            Err(e) => {
                warn!(error = %e, "accept failed");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

fn configure(stream: &TcpStream, config: &LinkConfig) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(config.poll_interval))?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    stream.set_nodelay(true)
}

fn serve_tcp(stream: TcpStream, peer: SocketAddr, service: &Service, stop: &AtomicBool) {
    if let Err(e) = configure(&stream, &service.config) {
        warn!(%peer, error = %e, "cannot configure connection");
        return;
    }
    info!(%peer, "tcp connection opened");
    let quiet =
        Quiet { first_byte: service.config.first_byte_timeout, idle: service.config.idle_timeout };
    match service.serve_until_idle(stream, stop, quiet) {
        Ok(end) => info!(%peer, ?end, "tcp connection ended"),
        Err(e) => warn!(%peer, error = %e, "tcp connection failed"),
    }
}

fn refuse_busy(mut stream: TcpStream, service: &Service) {
    let config = &service.config;
    warn!(max = config.max_connections, "connection refused: all slots busy");
    service.observer.request_refused(ErrorCode::Busy);
    let reply = ErrorReply {
        request_id: UNKNOWN_REQUEST,
        code: ErrorCode::Busy,
        message: format!("the device serves its limit of {} connections", config.max_connections),
    };
    let sent = configure(&stream, config).map_err(LinkError::from).and_then(|()| {
        let frames = encode_message(UNKNOWN_REQUEST, &Message::Error(reply), &config.limits)?;
        write_frames(&mut stream, &frames, config.write_timeout)
    });
    if let Err(e) = sent {
        debug!(error = %e, "busy reply not delivered");
        return;
    }
    // Close gently: stop writing, then read and drop what the client sends for a moment, so the
    // close does not reset the connection and discard the reply before the client reads it.
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + BUSY_LINGER;
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_wait(&e) => {}
            Err(_) => break,
        }
    }
}

/// A serial-port server on its own thread; reopens the port after a failure.
pub struct SerialServer {
    path: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SerialServer {
    /// Opens `path` at `baud` bits/s and starts serving it.
    ///
    /// # Errors
    /// [`LinkError::Serial`] when the port cannot be opened.
    pub fn open(service: Arc<Service>, path: &str, baud: u32) -> Result<Self, LinkError> {
        let port = open_port(path, baud, service.config.poll_interval)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let owned = path.to_string();
        let thread = thread::Builder::new()
            .name("serial".into())
            .spawn(move || serial_loop(port, &owned, baud, &service, &flag))?;
        info!(path, baud, "serial server listening");
        Ok(Self { path: path.to_string(), stop, thread: Some(thread) })
    }

    /// The port served.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Blocks until the server stops.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops serving at the next poll and waits for it.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SerialServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Opens a serial port with `poll` as its read timeout.
pub(crate) fn open_port(
    path: &str,
    baud: u32,
    poll: Duration,
) -> Result<Box<dyn serialport::SerialPort>, LinkError> {
    serialport::new(path, baud)
        .timeout(poll)
        .open()
        .map_err(|cause| LinkError::Serial { path: path.to_string(), cause })
}

fn serial_loop(
    first: Box<dyn serialport::SerialPort>,
    path: &str,
    baud: u32,
    service: &Service,
    stop: &AtomicBool,
) {
    let mut port = Some(first);
    while !stop.load(Ordering::Relaxed) {
        let current = match port.take() {
            Some(p) => p,
            None => match open_port(path, baud, service.config.poll_interval) {
                Ok(p) => {
                    info!(path, "serial port reopened");
                    p
                }
                Err(e) => {
                    debug!(error = %e, "serial port not available");
                    thread::sleep(SERIAL_REOPEN_DELAY);
                    continue;
                }
            },
        };
        match service.serve(current, stop) {
            Ok(SessionEnd::Stopped) => break,
            Ok(end) => info!(path, ?end, "serial session ended"),
            Err(e) => warn!(path, error = %e, "serial link failed"),
        }
        if !stop.load(Ordering::Relaxed) {
            thread::sleep(SERIAL_REOPEN_DELAY);
        }
    }
}
