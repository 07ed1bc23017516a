//! `tvunet-edge`: the edge box's runtime. `serve` answers segmentation requests over a serial
//! port and/or TCP; `infer` segments files locally through the same request path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Parser, Subcommand};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

use tvunet_device::display::StatusDisplay;
use tvunet_device::link::{self, LinkConfig, SerialServer, Service, TcpServer};
use tvunet_device::preprocess::FlipAverage;
use tvunet_device::protocol::{InferRequest, Limits, SliceData};
use tvunet_device::{Engine, ModelError, PixelSpacing, Segmenter, SliceReport};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime failure (I/O, link, invalid setting)
  2  invalid command line
  3  the model cannot be loaded
  4  infer: at least one slice failed; the others were written

Logging: RUST_LOG (default `info`), to stderr.";

/// Exit code when the model cannot be loaded.
const EXIT_MODEL: u8 = 3;
/// Exit code when some slices of `infer` failed.
const EXIT_SLICES: u8 = 4;

#[derive(Debug, Parser)]
#[command(name = "tvunet-edge", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the model over a serial port and/or TCP until stopped.
    ///
    /// Prints `listening tcp ADDR` and `listening serial PATH BAUD` on stdout once ready.
    Serve(ServeArgs),
    /// Segment PNG/JPEG slices locally; writes NAME.mask.png and NAME.json per slice.
    Infer(InferArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("link").required(true).multiple(true).args(["serial", "tcp"])))]
struct ServeArgs {
    /// ONNX model file.
    #[arg(long)]
    model: PathBuf,
    /// Inference engine (`tract-f16`: half precision, for ARM cores with fp16 arithmetic; `ort`
    /// needs the cargo feature and ORT_DYLIB_PATH).
    #[arg(long, value_enum, default_value_t = Engine::Tract)]
    engine: Engine,
    /// Cores one inference may use (tract's matrix products, onnxruntime's intra-op threads).
    #[arg(long, default_value_t = 1, value_parser = thread_count)]
    threads: usize,
    /// Mirror images to average in place of the model's own setting: none, left-right,
    /// top-bottom or four-way (one inference per image: 1, 2, 2 or 4).
    #[arg(long, value_parser = flip_average)]
    flip_average: Option<FlipAverage>,
    /// Serial device to serve, e.g. /dev/ttyUSB0.
    #[arg(long)]
    serial: Option<String>,
    /// Serial speed, bits/s.
    #[arg(long, default_value_t = 921_600)]
    baud: u32,
    /// TCP address to listen on: HOST:PORT, or a port alone for 127.0.0.1:PORT (0 picks one).
    #[arg(long)]
    tcp: Option<String>,
    /// Write the status screen (128x64) to this PNG after every change.
    #[arg(long)]
    display_png: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Debug, Args)]
struct LimitArgs {
    /// Largest frame accepted or sent, bytes (COBS-encoded, between delimiters).
    #[arg(long, default_value_t = Limits::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Largest slice accepted, pixels (width times height).
    #[arg(long, default_value_t = Limits::default().max_slice_pixels)]
    max_slice_pixels: u64,
    /// Largest reassembled message accepted, bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<Limits> {
        let limits = Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_slice_pixels: self.max_slice_pixels,
            max_message_bytes: self.max_message_bytes,
        };
        limits.check()?;
        Ok(limits)
    }
}

#[derive(Debug, Args)]
struct InferArgs {
    /// ONNX model file.
    #[arg(long)]
    model: PathBuf,
    /// Inference engine (`tract-f16`: half precision, for ARM cores with fp16 arithmetic; `ort`
    /// needs the cargo feature and ORT_DYLIB_PATH).
    #[arg(long, value_enum, default_value_t = Engine::Tract)]
    engine: Engine,
    /// Cores one inference may use (tract's matrix products, onnxruntime's intra-op threads).
    #[arg(long, default_value_t = 1, value_parser = thread_count)]
    threads: usize,
    /// Mirror images to average in place of the model's own setting: none, left-right,
    /// top-bottom or four-way (one inference per image: 1, 2, 2 or 4).
    #[arg(long, value_parser = flip_average)]
    flip_average: Option<FlipAverage>,
    /// PNG or JPEG slices.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output directory (created when missing).
    #[arg(long)]
    out: PathBuf,
    /// Probability threshold in (0, 1); the model's default when absent.
    #[arg(long)]
    threshold: Option<f32>,
    /// Pixel spacing ROW,COL in mm, for lesion areas in mm².
    #[arg(long, value_parser = PixelSpacing::parse)]
    spacing_mm: Option<PixelSpacing>,
    /// Largest slice accepted, pixels (width times height).
    #[arg(long, default_value_t = Limits::default().max_slice_pixels)]
    max_slice_pixels: u64,
}

/// Parses a flip average by the name models carry in their metadata.
fn flip_average(text: &str) -> Result<FlipAverage, String> {
    FlipAverage::from_name(text).ok_or_else(|| {
        format!("`{text}` is not a flip average: give none, left-right, top-bottom or four-way")
    })
}

/// Parses a thread count: a whole number of at least 1, so that 0 is a usage error like any
/// other bad argument.
fn thread_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a thread count: give a whole number of at least 1")),
    }
}

/// Large inference buffers are kept for the next slice instead of fragmenting the heap.
#[global_allocator]
static ALLOCATOR: tvunet_device::memory::TensorHeap = tvunet_device::memory::TensorHeap::new();

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before any link thread starts.
    tvunet_device::memory::one_allocator_arena();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Infer(args) => infer(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ModelError>().is_some() {
                ExitCode::from(EXIT_MODEL)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn load_model(
    path: &Path,
    engine: Engine,
    threads: usize,
    flips: Option<FlipAverage>,
) -> anyhow::Result<Segmenter> {
    tvunet_device::inference::set_threads(threads).context("--threads")?;
    let mut segmenter = Segmenter::load_with(path, engine)
        .with_context(|| format!("loading model {} for engine {engine}", path.display()))?;
    if let Some(f) = flips {
        segmenter.set_flip_average(f);
    }
    Ok(segmenter)
}

/// `PORT` alone means loopback.
fn tcp_address(text: &str) -> String {
    match text.parse::<u16>() {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => text.to_string(),
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = LinkConfig { limits: args.limits.limits()?, ..LinkConfig::default() };
    let segmenter =
        Arc::new(load_model(&args.model, args.engine, args.threads, args.flip_average)?);
    let display = Arc::new(StatusDisplay::new(segmenter.name(), args.display_png.clone()));
    let service = Arc::new(Service::new(segmenter, config)?.with_observer(display));
    let mut stdout = std::io::stdout();
    let tcp = match &args.tcp {
        Some(addr) => {
            let addr = tcp_address(addr);
            let server = TcpServer::bind(Arc::clone(&service), &addr)
                .with_context(|| format!("listening on tcp {addr}"))?;
            writeln!(stdout, "listening tcp {}", server.local_addr())?;
            Some(server)
        }
        None => None,
    };
    let serial = match &args.serial {
        Some(path) => {
            let server = SerialServer::open(Arc::clone(&service), path, args.baud)?;
            writeln!(stdout, "listening serial {path} {}", args.baud)?;
            Some(server)
        }
        None => None,
    };
    stdout.flush()?;
    if let Some(server) = tcp {
        server.wait();
    }
    if let Some(server) = serial {
        server.wait();
    }
    Ok(ExitCode::SUCCESS)
}

fn infer(args: &InferArgs) -> anyhow::Result<ExitCode> {
    let limits = Limits { max_slice_pixels: args.max_slice_pixels, ..Limits::default() };
    limits.check()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output directory {}", args.out.display()))?;
    let segmenter = load_model(&args.model, args.engine, args.threads, args.flip_average)?;
    let mut failed = 0usize;
    for file in &args.files {
        match infer_one(&segmenter, file, args, &limits) {
            Ok((name, report)) => println!("{}", summary_line(&name, &report)),
            Err(e) => {
                eprintln!("{}: {e:#}", file.display());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        tracing::warn!(failed, total = args.files.len(), "some slices failed");
        return Ok(ExitCode::from(EXIT_SLICES));
    }
    Ok(ExitCode::SUCCESS)
}

fn infer_one(
    segmenter: &Segmenter,
    file: &Path,
    args: &InferArgs,
    limits: &Limits,
) -> anyhow::Result<(String, SliceReport)> {
    let Some(name) = file.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
        bail!("no file name");
    };
    let bytes = std::fs::read(file).context("reading slice")?;
    let request = InferRequest {
        slice: SliceData::Encoded { bytes },
        threshold: args.threshold,
        spacing_mm: args.spacing_mm,
    };
    let (report, mask) = link::run_request(segmenter, request, limits)?;
    let mask_path = args.out.join(format!("{name}.mask.png"));
    image::GrayImage::from_raw(mask.width, mask.height, mask.to_grey())
        .context("mask size")?
        .save(&mask_path)
        .with_context(|| format!("writing {}", mask_path.display()))?;
    let json_path = args.out.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    tracing::info!(
        width = report.width,
        height = report.height,
        lesion_px = report.lesion_px,
        inference_ms = report.inference_ms,
        "slice segmented"
    );
    Ok((name, report))
}

/// One line per slice: name, lesion pixels, area, lesion count, time.
fn summary_line(name: &str, report: &SliceReport) -> String {
    let area = report.lesion_area_mm2.map_or_else(|| "n/a".to_string(), |a| format!("{a:.1} mm2"));
    format!(
        "{name}\t{} px\t{area}\t{} lesions\t{:.1} ms",
        report.lesion_px,
        report.lesions.len(),
        report.inference_ms
    )
}
