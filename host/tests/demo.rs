//! The README's first command on the bundled real slices.

use std::process::Command;

/// `tvunet demo` streams every bundled slice over TCP and the pseudo-terminal, gets identical
/// masks back, scores them and writes the overlays and the status screen.
#[test]
fn demo_runs_on_bundled_slices() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tvunet"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["demo", "--out", out.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("masks identical over TCP and serial"), "{text}");
    let images =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/medseg/images"))
            .unwrap()
            .count();
    for link in ["tcp", "serial"] {
        let overlays = std::fs::read_dir(out.path().join(link))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".overlay.png"))
            .count();
        assert_eq!(overlays, images, "one overlay per slice over {link}");
    }
    assert!(out.path().join("display.png").is_file(), "status screen written");
    // One score row per slice: id, lesion px, lesion %, lesions, dice, link bytes.
    let rows = text
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 6 && f[0].parse::<u32>().is_ok() && f[4].parse::<f64>().is_ok()
        })
        .count();
    assert_eq!(rows, images, "{text}");
}
