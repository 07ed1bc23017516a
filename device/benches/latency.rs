//! Latency of the device on real slices: model load, bare inference (preprocess, tract, threshold,
//! lesions) and the whole request over loopback TCP, as medians over repeated runs.
//!
//! Run: `cargo bench -p tvunet-device --bench latency [-- MODEL [ITERATIONS] [--threads=N]
//! [--engine=E]]`. With `--threads=N` every figure is taken with N cores per inference (tract's
//! multithreaded matrix products); `--engine=tract-f16` measures half precision (on an ARM board
//! with fp16 arithmetic), `--engine=ort` onnxruntime (cargo feature `ort`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvunet_device::link::{Client, LinkConfig, Service, TcpServer};
use tvunet_device::protocol::{InferRequest, SliceData};
use tvunet_device::{Engine, GraySlice, Segmenter};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// As `tvunet-edge` does, so the request over TCP and the peak RSS are the device's.
#[global_allocator]
static ALLOCATOR: tvunet_device::memory::TensorHeap = tvunet_device::memory::TensorHeap::new();

fn main() {
    tvunet_device::memory::one_allocator_arena();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let model =
        args.first().map(PathBuf::from).unwrap_or(root.join("models/tvunet-medseg-anchored.onnx"));
    let iterations: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: usize = std::env::args()
        .find_map(|a| a.strip_prefix("--threads=").map(|n| n.parse().expect("--threads=N")))
        .unwrap_or(1);
    let engine = std::env::args()
        .find_map(|a| {
            a.strip_prefix("--engine=").map(|e| {
                <Engine as clap::ValueEnum>::from_str(e, true)
                    .unwrap_or_else(|_| panic!("--engine={e}: tract, tract-f16 or ort"))
            })
        })
        .unwrap_or_default();
    tvunet_device::inference::set_threads(threads).unwrap();
    let images = root.join("tests/fixtures/medseg/images");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let slices: Vec<(Vec<u8>, GraySlice)> = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            let slice = GraySlice::decode(&bytes).unwrap();
            (bytes, slice)
        })
        .collect();

    let loads: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            Segmenter::load_with(&model, engine).unwrap();
            t.elapsed()
        })
        .collect();
    let segmenter = Arc::new(Segmenter::load_with(&model, engine).unwrap());
    let side = segmenter.meta().input_size;
    let file_bytes = std::fs::metadata(&model).unwrap().len();

    let plane = segmenter.input_plane(&slices[0].1);
    let mut net = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..iterations {
        let t = Instant::now();
        segmenter.probability_plane(&plane).unwrap();
        net.push(t.elapsed());
        for (_, s) in &slices {
            let t = Instant::now();
            segmenter.segment(s, None, None).unwrap();
            bare.push(t.elapsed());
        }
    }

    let service = Arc::new(Service::new(segmenter.clone(), LinkConfig::default()).unwrap());
    let server = TcpServer::bind(service, "127.0.0.1:0").unwrap();
    let mut client =
        Client::connect_tcp(&server.local_addr().to_string(), LinkConfig::default()).unwrap();
    client.hello().unwrap();
    let mut over_tcp = Vec::new();
    let mut link_bytes = 0u64;
    for _ in 0..iterations {
        for (bytes, _) in &slices {
            let request = InferRequest {
                slice: SliceData::Encoded { bytes: bytes.clone() },
                threshold: None,
                spacing_mm: None,
            };
            let t = Instant::now();
            let report = client.infer(&request).unwrap();
            over_tcp.push(t.elapsed());
            link_bytes += report.link_bytes.unwrap_or(0);
        }
    }
    server.shutdown();

    let (net_m, bare_m, tcp_m) = (median(net), median(bare), median(over_tcp));
    println!(
        "model            {} ({} bytes, {}x{} input)",
        model.display(),
        file_bytes,
        side,
        side
    );
    println!("load             median {:8.2} ms", ms(median(loads)));
    println!(
        "network only     median {:8.2} ms  ({engine}, 1 x 1 x {side} x {side}, \
         {threads} thread(s))",
        ms(net_m)
    );
    println!(
        "slice, bare      median {:8.2} ms  (decode excluded; resize, network, threshold, lesions)",
        ms(bare_m)
    );
    println!(
        "slice, over TCP  median {:8.2} ms  = {:.2}x bare  (JPEG in, report and RLE mask back; {} B per slice)",
        ms(tcp_m),
        tcp_m.as_secs_f64() / bare_m.as_secs_f64(),
        link_bytes / (iterations * slices.len()) as u64
    );
    let (_, peak_live) = ALLOCATOR.live_bytes();
    println!(
        "large buffers    at most {:.1} MiB live at once (model and buffers of 256 KiB and up)",
        peak_live as f64 / (1 << 20) as f64
    );
    if let Some(kib) = peak_rss_kib() {
        println!(
            "peak RSS         {:.1} MiB (this process: model, {} slices, server and client)",
            kib as f64 / 1024.0,
            slices.len()
        );
    }
}
