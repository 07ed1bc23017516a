//! The link end to end: the real model, real CT slices, the `tvunet-edge` binary, loopback TCP
//! and pseudo-terminal pairs. Every wait is bounded.

use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use serialport::{SerialPort, TTYPort};
use tvunet_device::link::{Client, LinkConfig, LinkError, Service, TcpServer};
use tvunet_device::protocol::{
    encode_frame, ErrorCode, InferRequest, Limits, Message, SliceData, PROTOCOL_VERSION,
};
use tvunet_device::{HuWindow, LesionMask, PixelSpacing, Segmenter, SliceReport};

const EDGE: &str = env!("CARGO_BIN_EXE_tvunet-edge");
/// Longest wait for one reply or one binary run.
const WAIT: Duration = Duration::from_secs(120);
/// Longest wait for an error reply.
const SHORT: Duration = Duration::from_secs(10);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    let path = workspace().join("models/tvunet-medseg.onnx");
    assert!(path.exists(), "model {} is missing; export it first", path.display());
    path
}

/// The fixture slices, sorted by name.
fn slices() -> Vec<PathBuf> {
    let dir = workspace().join("tests/fixtures/medseg/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "fixtures missing in {}", dir.display());
    files
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

fn segmenter() -> Arc<Segmenter> {
    static MODEL: OnceLock<Arc<Segmenter>> = OnceLock::new();
    MODEL.get_or_init(|| Arc::new(Segmenter::load(&model_path()).expect("model loads"))).clone()
}

fn config() -> LinkConfig {
    LinkConfig { reply_timeout: WAIT, ..LinkConfig::default() }
}

fn encoded_request(path: &Path) -> InferRequest {
    let bytes = std::fs::read(path).unwrap();
    InferRequest { slice: SliceData::Encoded { bytes }, threshold: None, spacing_mm: None }
}

/// Kills the child it holds when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tvunet-edge` to completion within [`WAIT`].
fn run_edge(args: &[&str]) -> Output {
    let mut child = Command::new(EDGE)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tvunet-edge starts");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "tvunet-edge {args:?} ran past {WAIT:?}");
        thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Starts `tvunet-edge serve` and waits for the stdout line starting with `ready`.
fn spawn_server(args: &[&str], ready: &str) -> (ChildGuard, String) {
    let mut child = Command::new(EDGE)
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tvunet-edge starts");
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("server announces itself in time");
        if let Some(rest) = line.strip_prefix(ready) {
            return (guard, rest.trim().to_string());
        }
    }
}

/// Masks and reports written by `tvunet-edge infer` for the fixture slices.
struct LocalResults {
    _dir: tempfile::TempDir,
    masks: Vec<(String, Vec<u8>, SliceReport)>,
}

fn local_results() -> &'static LocalResults {
    static LOCAL: OnceLock<LocalResults> = OnceLock::new();
    LOCAL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model = model_path();
        let files = slices();
        let mut args = vec!["infer", "--model", model.to_str().unwrap()];
        args.extend(files.iter().map(|f| f.to_str().unwrap()));
        args.extend(["--out", dir.path().to_str().unwrap()]);
        let out = run_edge(&args);
        assert!(out.status.success(), "infer failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
        let masks = files
            .iter()
            .map(|f| {
                let name = stem(f);
                assert!(stdout.lines().any(|l| l.starts_with(&format!("{name}\t"))), "{stdout}");
                let png =
                    image::open(dir.path().join(format!("{name}.mask.png"))).unwrap().into_luma8();
                let json = std::fs::read(dir.path().join(format!("{name}.json"))).unwrap();
                let report: SliceReport = serde_json::from_slice(&json).unwrap();
                (name, png.into_raw(), report)
            })
            .collect();
        LocalResults { _dir: dir, masks }
    })
}

/// Sends every fixture slice through `client` and checks each mask bit for bit against the
/// `infer` command's, and the report's other figures against its JSON.
fn check_slices_match_local<S: Read + Write>(client: &mut Client<S>) {
    let info = client.hello().unwrap();
    assert_eq!(info.model_sha256, segmenter().sha256());
    assert_eq!(info.protocol_version, PROTOCOL_VERSION);
    assert_eq!(info.flip_average, segmenter().meta().flip_average.name());
    for (file, (name, local_mask, local)) in slices().iter().zip(&local_results().masks) {
        assert_eq!(&stem(file), name);
        let report = client.infer(&encoded_request(file)).unwrap();
        let mask = report.mask().unwrap();
        assert_eq!(&mask.to_grey(), local_mask, "{name}: mask differs from tvunet-edge infer");
        assert_eq!((report.width, report.height), (local.width, local.height), "{name}");
        assert_eq!(report.mask_rle, local.mask_rle, "{name}");
        assert_eq!(report.lesion_px, local.lesion_px, "{name}");
        assert_eq!(report.lesions.len(), local.lesions.len(), "{name}");
        assert_eq!(report.model_sha256, local.model_sha256, "{name}");
        assert_eq!(report.flip_average, local.flip_average, "{name}");
        assert_eq!(report.flip_average, info.flip_average, "{name}");
        assert_eq!(local.link_bytes, None);
        assert_eq!(report.link_bytes, Some(client.last_link_bytes()), "{name}");
    }
}

/// An in-process TCP server over the shared model.
fn tcp_server(config: LinkConfig) -> TcpServer {
    let service = Service::new(segmenter(), config).unwrap();
    TcpServer::bind(Arc::new(service), "127.0.0.1:0").unwrap()
}

fn tcp_client(server: &TcpServer, config: LinkConfig) -> Client<TcpStream> {
    Client::connect_tcp(&server.local_addr().to_string(), config).unwrap()
}

/// Waits for the next error reply and checks its code and request id.
fn expect_error<S: Read + Write>(client: &mut Client<S>, code: ErrorCode, id: u32) -> String {
    let (reply_id, message) = client.receive(SHORT).unwrap();
    let Message::Error(e) = message else { panic!("expected {code} error, got {message:?}") };
    assert_eq!((e.code, e.request_id, reply_id), (code, id, id), "{}", e.message);
    e.message
}

/// A good request after a bad one still succeeds.
fn expect_serving<S: Read + Write>(client: &mut Client<S>) {
    let report = client.infer(&encoded_request(&slices()[0])).unwrap();
    assert_eq!(report.mask().unwrap().to_grey(), local_results().masks[0].1);
}

#[derive(Serialize)]
struct Header {
    version: u8,
    request_id: u32,
    len: u32,
}

/// A frame built from the documented layout: postcard header, payload, CRC-32 (ISO-HDLC,
/// little-endian), COBS between `0x00` delimiters.
fn raw_frame(version: u8, request_id: u32, payload: &[u8]) -> Vec<u8> {
    let header = Header { version, request_id, len: payload.len() as u32 };
    let mut raw = postcard::to_stdvec(&header).unwrap();
    raw.extend_from_slice(payload);
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    wrap(&raw)
}

fn wrap(raw: &[u8]) -> Vec<u8> {
    let mut wire = vec![0];
    wire.extend(cobs::encode_vec(raw));
    wire.push(0);
    wire
}

fn unwrap_frame(wire: &[u8]) -> Vec<u8> {
    cobs::decode_vec(&wire[1..wire.len() - 1]).unwrap()
}

fn png_bytes(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::GrayImage::from_fn(width, height, |x, y| image::Luma([(x * 3 + y) as u8]))
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A PNG whose header declares `width` x `height` pixels, followed by a few bytes of image
/// data.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    for (kind, data) in
        [(&b"IHDR"[..], &ihdr[..]), (b"IDAT", &[0x78, 0x9C, 0x63, 0x00]), (b"IEND", &[])]
    {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&body).to_be_bytes());
    }
    png
}

fn infer_message(slice: SliceData) -> Message {
    Message::InferRequest(InferRequest { slice, threshold: None, spacing_mm: None })
}

/// Every kind of bad input, each answered with its own error naming the request, each
/// followed by a good request that succeeds.
fn bad_input_suite<S: Read + Write>(client: &mut Client<S>) {
    let limits = Limits::default();

    client.send_raw(b"\x00\x13\x37 line noise \xff\xfe\x00").unwrap();
    let (id, message) = client.receive(SHORT).unwrap();
    let Message::Error(e) = message else { panic!("{message:?}") };
    assert_eq!(id, 0);
    assert!(matches!(e.code, ErrorCode::Truncated | ErrorCode::BadCrc), "{e:?}");
    expect_serving(client);

    let good =
        encode_frame(501, &infer_message(SliceData::Encoded { bytes: png_bytes(64, 64) })).unwrap();
    let mut raw = unwrap_frame(&good);
    let last = raw.len() - 1;
    raw[last] ^= 0x55;
    client.send_raw(&wrap(&raw)).unwrap();
    expect_error(client, ErrorCode::BadCrc, 501);
    expect_serving(client);

    let mut cut = good[..good.len() / 2].to_vec();
    cut.push(0);
    client.send_raw(&cut).unwrap();
    expect_error(client, ErrorCode::Truncated, 501);
    expect_serving(client);

    let huge =
        infer_message(SliceData::Grey8 { width: 100_000, height: 100_000, pixels: vec![0; 64] });
    client.send_raw(&encode_frame(502, &huge).unwrap()).unwrap();
    let text = expect_error(client, ErrorCode::SliceTooLarge, 502);
    assert!(text.contains("10000000000") && text.contains(&limits.max_slice_pixels.to_string()));
    expect_serving(client);

    let huge_png = infer_message(SliceData::Encoded { bytes: png_header_only(100_000, 100_000) });
    client.send_raw(&encode_frame(503, &huge_png).unwrap()).unwrap();
    let text = expect_error(client, ErrorCode::SliceTooLarge, 503);
    assert!(text.contains("100000x100000"), "{text}");
    expect_serving(client);

    let huge_hu = infer_message(SliceData::Hu16 {
        width: 100_000,
        height: 100_000,
        hu: vec![-1000; 16],
        window: HuWindow::LUNG,
    });
    client.send_raw(&encode_frame(504, &huge_hu).unwrap()).unwrap();
    expect_error(client, ErrorCode::SliceTooLarge, 504);

    client
        .send_raw(&encode_frame(505, &infer_message(SliceData::Encoded { bytes: vec![] })).unwrap())
        .unwrap();
    expect_error(client, ErrorCode::EmptySlice, 505);
    let empty_raw = infer_message(SliceData::Grey8 { width: 0, height: 0, pixels: vec![] });
    client.send_raw(&encode_frame(506, &empty_raw).unwrap()).unwrap();
    expect_error(client, ErrorCode::EmptySlice, 506);
    expect_serving(client);

    let mut corrupt = png_bytes(64, 64);
    corrupt.truncate(corrupt.len() / 2);
    let corrupt_png = infer_message(SliceData::Encoded { bytes: corrupt });
    client.send_raw(&encode_frame(507, &corrupt_png).unwrap()).unwrap();
    expect_error(client, ErrorCode::BadImage, 507);
    let mut scrambled = png_bytes(64, 64);
    let n = scrambled.len();
    scrambled[41..n - 12].iter_mut().for_each(|b| *b = 0xFF);
    let scrambled_png = infer_message(SliceData::Encoded { bytes: scrambled });
    client.send_raw(&encode_frame(508, &scrambled_png).unwrap()).unwrap();
    expect_error(client, ErrorCode::BadImage, 508);
    let text_file = infer_message(SliceData::Encoded { bytes: b"patient scan".to_vec() });
    client.send_raw(&encode_frame(509, &text_file).unwrap()).unwrap();
    expect_error(client, ErrorCode::BadImage, 509);
    expect_serving(client);

    let unknown = postcard::to_stdvec(&200u32).unwrap();
    client.send_raw(&raw_frame(PROTOCOL_VERSION, 510, &unknown)).unwrap();
    expect_error(client, ErrorCode::UnknownMessage, 510);
    expect_serving(client);

    let hello = postcard::to_stdvec(&Message::Hello).unwrap();
    assert_eq!(
        raw_frame(PROTOCOL_VERSION, 511, &hello),
        encode_frame(511, &Message::Hello).unwrap()
    );
    client.send_raw(&raw_frame(PROTOCOL_VERSION + 1, 511, &hello)).unwrap();
    expect_error(client, ErrorCode::WrongVersion, 511);
    expect_serving(client);

    let bad_threshold = Message::InferRequest(InferRequest {
        slice: SliceData::Encoded { bytes: png_bytes(8, 8) },
        threshold: Some(1.5),
        spacing_mm: None,
    });
    client.send_raw(&encode_frame(512, &bad_threshold).unwrap()).unwrap();
    expect_error(client, ErrorCode::BadRequest, 512);
    let bad_spacing = Message::InferRequest(InferRequest {
        slice: SliceData::Encoded { bytes: png_bytes(8, 8) },
        threshold: None,
        spacing_mm: Some(PixelSpacing { row_mm: -1.0, col_mm: 0.7 }),
    });
    client.send_raw(&encode_frame(513, &bad_spacing).unwrap()).unwrap();
    expect_error(client, ErrorCode::BadRequest, 513);
    client.send_raw(&encode_frame(514, &Message::Pong { nonce: 1 }).unwrap()).unwrap();
    expect_error(client, ErrorCode::Unexpected, 514);
    expect_serving(client);

    let mut oversized = encode_frame(515, &Message::Hello).unwrap();
    oversized.pop();
    oversized.extend(std::iter::repeat_n(0x41, limits.max_frame_bytes + 10));
    oversized.push(0);
    client.send_raw(&oversized).unwrap();
    let text = expect_error(client, ErrorCode::FrameTooLarge, 515);
    assert!(text.contains(&limits.max_frame_bytes.to_string()), "{text}");
    expect_serving(client);

    let (done, message) =
        client.receive(Duration::from_millis(300)).map_or((true, None), |m| (false, Some(m)));
    assert!(done, "unexpected extra message {message:?}");
}

/// Served over loopback TCP by the `tvunet-edge` binary, every mask equals the one the
/// `infer` command writes for the same file; the status screen PNG follows the slices.
#[test]
fn tcp_binary_masks_match_infer_command() {
    let model = model_path();
    let dir = tempfile::tempdir().unwrap();
    let screen = dir.path().join("screen.png");
    let (_server, addr) = spawn_server(
        &[
            "--model",
            model.to_str().unwrap(),
            "--tcp",
            "0",
            "--display-png",
            screen.to_str().unwrap(),
        ],
        "listening tcp",
    );
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let mut client = Client::connect_tcp(&addr, config()).unwrap();
    check_slices_match_local(&mut client);
    client.keep_alive().unwrap();
    let png = image::open(&screen).unwrap().into_luma8();
    assert_eq!(png.dimensions(), (128, 64));
    assert!(png.pixels().any(|p| p.0[0] == 255));
}

/// Served over a pseudo-terminal by the `tvunet-edge` binary, every mask equals the one the
/// `infer` command writes for the same file.
#[test]
fn serial_binary_masks_match_infer_command() {
    let model = model_path();
    let (mut master, slave) = TTYPort::pair().unwrap();
    let path = slave.name().expect("pty slave has a path");
    let (_server, announced) = spawn_server(
        &["--model", model.to_str().unwrap(), "--serial", &path, "--baud", "115200"],
        "listening serial",
    );
    assert!(announced.starts_with(&path), "{announced}");
    master.set_timeout(config().poll_interval).unwrap();
    let mut client = Client::new(master, config());
    check_slices_match_local(&mut client);
    drop(slave);
}

/// Bad frames and bad slices over loopback TCP are each refused with their own code, and the
/// connection keeps serving.
#[test]
fn tcp_bad_inputs_are_refused_and_serving_goes_on() {
    let server = tcp_server(config());
    let mut client = tcp_client(&server, config());
    bad_input_suite(&mut client);
}

/// The same bad inputs over a pseudo-terminal pair.
#[test]
fn serial_bad_inputs_are_refused_and_serving_goes_on() {
    let (mut master, slave) = TTYPort::pair().unwrap();
    let service = Service::new(segmenter(), config()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let server = thread::spawn(move || service.serve(slave, &flag));
    master.set_timeout(config().poll_interval).unwrap();
    let mut client = Client::new(master, config());
    bad_input_suite(&mut client);
    stop.store(true, Ordering::Relaxed);
    let end = server.join().unwrap().unwrap();
    assert_eq!(end, tvunet_device::link::SessionEnd::Stopped);
}

/// A client that drops mid-frame, or stalls mid-frame, does not disturb another.
#[test]
fn client_dropping_mid_frame_leaves_others_served() {
    let server = tcp_server(config());
    let frame = encode_frame(7, &Message::InferRequest(encoded_request(&slices()[1]))).unwrap();

    let mut stalled = TcpStream::connect(server.local_addr()).unwrap();
    stalled.write_all(&frame[..frame.len() / 3]).unwrap();
    let mut dropped = TcpStream::connect(server.local_addr()).unwrap();
    dropped.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(dropped);

    let mut client = tcp_client(&server, config());
    expect_serving(&mut client);
    client.keep_alive().unwrap();

    stalled.write_all(&frame[frame.len() / 3..]).unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    let mut stalled = Client::new(stalled, config());
    let (id, message) = stalled.receive(WAIT).unwrap();
    assert_eq!(id, 7);
    assert!(matches!(message, Message::InferResult(_)), "{message:?}");
    expect_serving(&mut client);
}

/// With small frame limits both ways, requests and results travel as chunk sequences and
/// give the same masks.
#[test]
fn chunked_messages_give_the_same_masks() {
    let limits = Limits { max_frame_bytes: 1024, ..Limits::default() };
    let small = LinkConfig { limits, ..config() };
    let server = tcp_server(small.clone());
    let mut client = tcp_client(&server, config());
    let info = client.hello().unwrap();
    assert_eq!(info.max_frame_bytes, 1024);
    for (file, (_, local_mask, _)) in slices().iter().zip(&local_results().masks) {
        let request = encoded_request(file);
        let report = client.infer(&request).unwrap();
        assert_eq!(&report.mask().unwrap().to_grey(), local_mask);
        let frames =
            tvunet_device::protocol::encode_message(1, &Message::InferRequest(request), &limits)
                .unwrap();
        assert!(frames.len() > 1, "request was not chunked");
        assert!(report.link_bytes.unwrap() > frames.iter().map(|f| f.len() as u64).sum::<u64>());
        assert_eq!(report.link_bytes, Some(client.last_link_bytes()));
    }
}

/// A chunk sequence that stops is abandoned after the chunk timeout with an error naming it;
/// the connection then serves normally.
#[test]
fn stalled_chunk_sequence_times_out() {
    let timed = LinkConfig { chunk_timeout: Duration::from_millis(300), ..config() };
    let server = tcp_server(timed);
    let mut client = tcp_client(&server, config());
    let limits = Limits { max_frame_bytes: 512, ..Limits::default() };
    let frames = tvunet_device::protocol::encode_message(
        40,
        &Message::InferRequest(encoded_request(&slices()[0])),
        &limits,
    )
    .unwrap();
    client.send_raw(&frames[0]).unwrap();
    client.send_raw(&frames[1]).unwrap();
    let text = expect_error(&mut client, ErrorCode::ChunkTimeout, 40);
    assert!(text.contains(&format!("2 of {}", frames.len())), "{text}");
    client.send_raw(&frames[2]).unwrap();
    expect_serving(&mut client);
}

/// A stream that damages or loses chosen writes, as a noisy line would.
struct Faulty<S> {
    inner: S,
    writes: usize,
    damage: Vec<usize>,
    lose: Vec<usize>,
}

impl<S: Read + Write> Read for Faulty<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Read + Write> Write for Faulty<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.writes;
        self.writes += 1;
        if self.lose.contains(&n) {
            return Ok(buf.len());
        }
        if self.damage.contains(&n) {
            let mut copy = buf.to_vec();
            let at = copy.len() / 2;
            copy[at] = if copy[at] == 0x7E { 0x7F } else { 0x7E };
            self.inner.write_all(&copy)?;
            return Ok(buf.len());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn faulty_client(
    server: &TcpServer,
    damage: Vec<usize>,
    lose: Vec<usize>,
) -> Client<Faulty<TcpStream>> {
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(config().poll_interval)).unwrap();
    Client::new(Faulty { inner: stream, writes: 0, damage, lose }, config())
}

/// A damaged request is answered with a transient error and sent again; the result is the
/// same as over a clean line.
#[test]
fn damaged_request_is_sent_again() {
    let server = tcp_server(config());
    let mut client = faulty_client(&server, vec![0], vec![]);
    expect_serving(&mut client);
    assert_eq!(client.get_mut().writes, 2);
}

/// A lost request is sent again after the reply timeout.
#[test]
fn lost_request_is_sent_again() {
    let server = tcp_server(config());
    let mut client = faulty_client(&server, vec![], vec![0]);
    client.set_reply_timeout(Duration::from_secs(2));
    client.keep_alive().unwrap();
    assert_eq!(client.get_mut().writes, 2);
}

/// Retries are bounded: a line that damages every frame gives up after `retries + 1`
/// attempts, reporting the device's last error.
#[test]
fn retries_are_bounded() {
    let server = tcp_server(config());
    let mut client = faulty_client(&server, (0..100).collect(), vec![]);
    let err = client.hello().unwrap_err();
    let LinkError::Exhausted { attempts, .. } = &err else { panic!("{err}") };
    assert_eq!(*attempts, config().retries + 1);
    assert!(err.remote_code().is_some_and(ErrorCode::is_transient), "{err}");
    assert_eq!(client.get_mut().writes as u32, config().retries + 1);
}

/// Past the connection limit, a new connection is told the device is busy.
#[test]
fn connections_past_the_limit_are_refused() {
    let server = tcp_server(LinkConfig { max_connections: 1, ..config() });
    let mut first = tcp_client(&server, config());
    first.keep_alive().unwrap();
    let mut second = tcp_client(&server, config());
    let (id, message) = second.receive(SHORT).unwrap();
    assert_eq!(id, 0);
    assert!(matches!(message, Message::Error(ref e) if e.code == ErrorCode::Busy), "{message:?}");
    first.keep_alive().unwrap();
}

/// A client turned away by a full device is told why (busy, with the limit), not shown a reset
/// connection: the device drains the refused connection before closing it.
#[test]
fn a_refused_client_reads_the_reason() {
    let server = tcp_server(LinkConfig { max_connections: 1, ..config() });
    let mut first = tcp_client(&server, config());
    first.keep_alive().unwrap();
    for _ in 0..3 {
        let mut second = tcp_client(&server, config());
        let err = second.hello().unwrap_err();
        assert_eq!(err.remote_code(), Some(ErrorCode::Busy), "{err}");
        assert!(err.to_string().contains("limit of 1 connection"), "{err}");
    }
    first.keep_alive().unwrap();
}

/// Silent sockets do not hold the slots: a connection that sends no byte within
/// `first_byte_timeout` is closed and the next client is served.
#[test]
fn silent_connections_free_their_slots() {
    let quick = Duration::from_millis(300);
    let server =
        tcp_server(LinkConfig { max_connections: 2, first_byte_timeout: Some(quick), ..config() });
    let silent: Vec<std::net::TcpStream> =
        (0..2).map(|_| std::net::TcpStream::connect(server.local_addr()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let err = tcp_client(&server, config()).hello().unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::Busy), "{err}");
    std::thread::sleep(quick * 3);
    let info = tcp_client(&server, config()).hello().unwrap();
    assert!(info.input_size > 0);
    drop(silent);
}

/// HU slices and raw grey slices give the same mask as the same pixels sent as an image.
#[test]
fn raw_and_hu_slices_match_encoded() {
    let server = tcp_server(config());
    let mut client = tcp_client(&server, config());
    let file = &slices()[0];
    let grey = image::open(file).unwrap().into_luma8();
    let (width, height) = grey.dimensions();
    let pixels = grey.into_raw();
    let expected: &Vec<u8> = &local_results().masks[0].1;
    let raw = InferRequest {
        slice: SliceData::Grey8 { width, height, pixels: pixels.clone() },
        threshold: None,
        spacing_mm: Some(PixelSpacing { row_mm: 0.5, col_mm: 0.5 }),
    };
    let report = client.infer(&raw).unwrap();
    assert_eq!(&report.mask().unwrap().to_grey(), expected);
    let area = report.lesion_area_mm2.unwrap();
    assert!((area - report.lesion_px as f64 * 0.25).abs() < 1e-9);
    let window = HuWindow { center_hu: 127.5, width_hu: 255.0 };
    let hu = pixels.iter().map(|&p| i16::from(p)).collect();
    let hu_request = InferRequest {
        slice: SliceData::Hu16 { width, height, hu, window },
        threshold: None,
        spacing_mm: None,
    };
    let report = client.infer(&hu_request).unwrap();
    let mask: LesionMask = report.mask().unwrap();
    assert_eq!(&mask.to_grey(), expected);
}

/// The command line refuses missing links and unreadable models with the documented codes.
#[test]
fn command_line_exit_codes() {
    let out = run_edge(&["serve", "--model", "m.onnx"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.onnx");
    let out = run_edge(&["serve", "--model", missing.to_str().unwrap(), "--tcp", "0"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_edge(&[
        "infer",
        "--model",
        missing.to_str().unwrap(),
        "x.png",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let help = run_edge(&["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
}

/// `infer` writes what it can and exits 4 when a slice fails.
#[test]
fn infer_command_reports_failed_slices() {
    let model = model_path();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let good = &slices()[0];
    let out_dir = dir.path().join("out");
    let out = run_edge(&[
        "infer",
        "--model",
        model.to_str().unwrap(),
        bad.to_str().unwrap(),
        good.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--spacing-mm",
        "0.7,0.8",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(" mm2"), "{stdout}");
    let name = stem(good);
    assert!(out_dir.join(format!("{name}.mask.png")).exists());
    assert!(!out_dir.join("bad.mask.png").exists());
}

/// A blank slice (one grey level everywhere, as from a failed export) is refused as empty
/// rather than reported as lesion, and the connection keeps serving.
#[test]
fn blank_slice_is_refused_not_segmented() {
    let server = tcp_server(config());
    let mut client = tcp_client(&server, config());
    for fill in [0u8, 128, 255] {
        let mut png = Vec::new();
        image::GrayImage::from_pixel(512, 512, image::Luma([fill]))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let request = InferRequest {
            slice: SliceData::Encoded { bytes: png },
            threshold: None,
            spacing_mm: None,
        };
        match client.infer(&request) {
            Err(e) => assert_eq!(e.remote_code(), Some(ErrorCode::EmptySlice), "fill {fill}: {e}"),
            Ok(r) => panic!("fill {fill}: blank slice segmented with {} lesion px", r.lesion_px),
        }
        expect_serving(&mut client);
    }
}
