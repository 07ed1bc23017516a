//! Helpers shared by the device's integration tests: the repository root and the bundled real
//! slices.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tvunet_device::GraySlice;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bundled real slices (`tests/fixtures/medseg/images`), in file-name order.
pub fn fixture_slices() -> Vec<GraySlice> {
    let dir = root().join("tests/fixtures/medseg/images");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|f| GraySlice::decode(&std::fs::read(f).unwrap()).unwrap()).collect()
}
