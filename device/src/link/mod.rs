//! The segmenter over a byte stream: a serving loop for one connection, TCP and serial
//! servers around it, and the matching client.
//!
//! Streams handed to [`Service::serve`] or [`Client::new`] should have a read timeout of about
//! [`LinkConfig::poll_interval`]; timeouts are checked between reads.

mod client;
mod handler;
mod server;

use std::io::{self, Write};
use std::time::{Duration, Instant};

pub use client::Client;
pub use handler::{prepare_slice, run_request, Refusal};
pub use server::{NoObserver, Observer, SerialServer, Service, SessionEnd, TcpServer};

use crate::protocol::{ErrorCode, Limits, ProtocolError};

/// Timing and size settings of a link end.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Frame, slice and message limits.
    pub limits: Limits,
    /// Longest wait between two chunks of one message.
    pub chunk_timeout: Duration,
    /// Client: longest wait for the reply to one attempt of a request.
    pub reply_timeout: Duration,
    /// Client: how many times a request is sent again after a damaged or lost frame.
    pub retries: u32,
    /// Read timeout given to streams; the period at which timeouts and shutdown are checked.
    pub poll_interval: Duration,
    /// Longest time one frame may take to write.
    pub write_timeout: Duration,
    /// Client: longest time to establish a TCP connection.
    pub connect_timeout: Duration,
    /// TCP server: a connection that sends nothing for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// TCP server: a connection that has sent no byte at all this long after it opened is
    /// closed, so that silent sockets cannot hold the connection slots for `idle_timeout`.
    pub first_byte_timeout: Option<Duration>,
    /// TCP server: most connections served at once; more are refused with
    /// [`ErrorCode::Busy`].
    pub max_connections: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            chunk_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(60),
            retries: 3,
            poll_interval: Duration::from_millis(50),
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            first_byte_timeout: Some(Duration::from_secs(10)),
            max_connections: 8,
        }
    }
}

/// Why a link operation failed. Each message carries its cause's text, so no variant also
/// exposes the cause as `source` (which would print it twice in an error chain).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link I/O failed: {0}")]
    Io(io::Error),
    #[error("cannot open serial port {path}: {cause}")]
    Serial { path: String, cause: serialport::Error },
    #[error("the peer closed the link")]
    Closed,
    #[error("no {what} within {waited_ms} ms")]
    Timeout { what: &'static str, waited_ms: u64 },
    #[error("device refused request {request_id} ({code}): {message}")]
    Remote { request_id: u32, code: ErrorCode, message: String },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("expected a {expected} reply, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: Box<LinkError> },
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl LinkError {
    /// True when sending the same request again can succeed: a damaged or lost frame in
    /// either direction, or no reply in time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Remote { code, .. } => code.is_transient(),
            Self::Protocol(e) => e.code().is_transient(),
            Self::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The error code the device sent, for refusals.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            Self::Exhausted { last, .. } => last.remote_code(),
            _ => None,
        }
    }
}

/// True for read and write errors that only mean "nothing yet".
pub(crate) fn is_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Writes whole frames, retrying writes that time out until `timeout` has passed; returns the
/// bytes written.
pub(crate) fn write_frames<W: Write>(
    out: &mut W,
    frames: &[Vec<u8>],
    timeout: Duration,
) -> Result<u64, LinkError> {
    let start = Instant::now();
    let mut total = 0u64;
    for frame in frames {
        let mut rest = &frame[..];
        while !rest.is_empty() {
            match out.write(rest) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => rest = &rest[n..],
                Err(e) if is_wait(&e) => {
                    if start.elapsed() >= timeout {
                        return Err(LinkError::Timeout {
                            what: "write",
                            waited_ms: start.elapsed().as_millis() as u64,
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        total += frame.len() as u64;
    }
    out.flush()?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cause's text is in the message once; an error chain printing sources would
    /// otherwise repeat it ("link I/O failed: reset: reset").
    #[test]
    fn io_errors_name_their_cause_once() {
        let e = LinkError::from(io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer"));
        assert_eq!(e.to_string(), "link I/O failed: reset by peer");
        assert!(std::error::Error::source(&e).is_none());
    }
}
