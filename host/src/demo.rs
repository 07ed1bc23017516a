//! `tvunet demo`: the whole path on real slices with nothing but this repository. A device is
//! started in-process on loopback TCP and on a pseudo-terminal pair (the same serving code as
//! `tvunet-edge serve`), the bundled slices are streamed over both links, and each mask is
//! scored against the radiologist's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serialport::SerialPort;
use tvunet_device::display::StatusDisplay;
use tvunet_device::link::{Client, LinkConfig, Service, TcpServer};
use tvunet_device::Segmenter;

use crate::client::{self, SentSlice, Target};
use crate::data::{self, Target as LesionTarget};
use crate::metrics::Counts;

/// Serial speed of the pseudo-terminal link, bits/s (the speed of a real clinic line).
pub const DEMO_BAUD: u32 = 921_600;

/// Runs the demo; returns the per-link results in slice order.
pub fn run(model: &Path, slices_dir: &Path, out: &Path) -> Result<Vec<(String, Vec<SentSlice>)>> {
    let segmenter = Arc::new(Segmenter::load(model)?);
    let target = match segmenter.meta().target.as_str() {
        "ggo" => LesionTarget::Ggo,
        _ => LesionTarget::Infection,
    };
    let truth = data::read_folder(slices_dir, target)
        .with_context(|| format!("reading the demo slices in {}", slices_dir.display()))?;
    let files: Vec<PathBuf> = truth
        .iter()
        .map(|s| {
            let jpg = slices_dir.join("images").join(format!("{}.jpg", s.id));
            if jpg.is_file() {
                jpg
            } else {
                slices_dir.join("images").join(format!("{}.png", s.id))
            }
        })
        .collect();
    println!(
        "model {} (sha256 {}…), input {}x{}, threshold {}, {} slices",
        segmenter.name(),
        &segmenter.sha256()[..12],
        segmenter.meta().input_size,
        segmenter.meta().input_size,
        segmenter.meta().threshold,
        files.len()
    );

    let config = LinkConfig::default();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let screen = out.join("display.png");
    let display = Arc::new(StatusDisplay::new(segmenter.name(), Some(screen.clone())));
    let service =
        Arc::new(Service::new(segmenter.clone(), config.clone())?.with_observer(display.clone()));
    let tcp = TcpServer::bind(service.clone(), "127.0.0.1:0")?;
    let addr = tcp.local_addr().to_string();

    // The device owns one end of a pseudo-terminal pair, as it would own /dev/ttyS0; the client
    // talks to the other end.
    let (mut device_end, host_end) = serialport::TTYPort::pair().context("opening a pty pair")?;
    device_end.set_timeout(config.poll_interval)?;
    let stop = Arc::new(AtomicBool::new(false));
    let serial_thread = {
        let (service, stop) = (service.clone(), stop.clone());
        std::thread::spawn(move || service.serve(device_end, &stop))
    };
    let host_name = host_end.name().unwrap_or_else(|| "pty".into());

    let mut results = Vec::new();
    println!("\n-- loopback TCP {addr}");
    let sent = client::send(Target::Tcp(addr.clone()), &files, &out.join("tcp"), None, None)?;
    results.push(("tcp".to_string(), sent));
    println!("\n-- serial {host_name} at {DEMO_BAUD} baud (pseudo-terminal)");
    let client = Client::new(host_end, config);
    let sent = client::send_over(client, &files, &out.join("serial"), None, None)?;
    results.push(("serial".to_string(), sent));

    stop.store(true, Ordering::SeqCst);
    tcp.shutdown();
    match serial_thread.join() {
        Ok(_) => {}
        Err(_) => bail!("the serial device thread panicked"),
    }

    println!(
        "\n{:<8} {:>10} {:>9} {:>8} {:>7} {:>11}",
        "slice", "lesion px", "lesion %", "lesions", "dice", "link bytes"
    );
    let mut pooled = Counts::default();
    let mut dice_sum = 0.0;
    for (i, s) in truth.iter().enumerate() {
        let (tcp_slice, serial_slice) = (&results[0].1[i], &results[1].1[i]);
        if tcp_slice.mask != serial_slice.mask {
            bail!("slice {}: the TCP and serial masks differ", s.id);
        }
        let mut c = Counts::default();
        for (&p, &t) in tcp_slice.mask.pixels.iter().zip(&s.mask) {
            c.add(p != 0, t != 0);
        }
        pooled = pooled.merge(c);
        dice_sum += c.dice();
        let r = &tcp_slice.report;
        println!(
            "{:<8} {:>10} {:>8.1}% {:>8} {:>7.3} {:>11}",
            s.id,
            r.lesion_px,
            100.0 * r.lesion_fraction,
            r.lesions.len(),
            c.dice(),
            serial_slice.report.link_bytes.unwrap_or(0)
        );
    }
    println!(
        "masks identical over TCP and serial; dice pooled {:.3}, mean per slice {:.3} \
         (a check of the path, not a held-out score: the model card says which of these slices \
         the model trained on); lesion area in mm² needs the pixel spacing, which these \
         exported slices do not carry",
        pooled.dice(),
        dice_sum / truth.len().max(1) as f64
    );
    println!(
        "overlays, masks and reports in {}; the device's status screen in {}",
        out.display(),
        screen.display()
    );
    Ok(results)
}
