//! onnxruntime as a second engine (cargo feature `ort`), loaded at run time from an installed
//! library: nothing is downloaded at build time and the default build does not need it.
//!
//! The library is found through `ORT_DYLIB_PATH` (for example the `libonnxruntime.so.*`
//! shipped inside the onnxruntime Python wheel, under `onnxruntime/capi/`).

use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

use crate::inference::ModelError;

/// Environment variable naming the onnxruntime shared library.
pub const LIBRARY_VARIABLE: &str = "ORT_DYLIB_PATH";

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

fn environment() -> Result<&'static Environment, ModelError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = std::env::var_os(LIBRARY_VARIABLE).ok_or_else(|| {
                format!("{LIBRARY_VARIABLE} is not set: point it at libonnxruntime.so")
            })?;
            let shown = std::path::Path::new(&path).display().to_string();
            ort::init_from(&path)
                .map_err(|e| format!("{LIBRARY_VARIABLE}={shown}: {e}"))?
                .with_name("tvunet")
                .build()
                .map_err(|e| format!("{LIBRARY_VARIABLE}={shown}: {e}"))
        })
        .as_ref()
        .map_err(|e| ModelError::Prepare(e.clone()))
}

/// One onnxruntime session, on as many threads as [`crate::inference::threads`] says.
pub struct OrtRunner {
    session: Mutex<Session>,
}

impl OrtRunner {
    /// Creates a session for the model bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, ModelError> {
        let env = environment()?;
        let prepare = |e: String| ModelError::Prepare(format!("onnxruntime: {e}"));
        let session = Session::builder(env)
            .map_err(|e| prepare(e.to_string()))?
            .with_intra_threads(crate::inference::threads())
            .map_err(|e| prepare(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| prepare(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(|e| prepare(e.to_string()))?;
        Ok(Self { session: Mutex::new(session) })
    }

    /// Probability plane for one normalised input plane of side x side values.
    pub fn run(&self, plane: &[f32], side: usize) -> Result<Vec<f32>, ModelError> {
        let run = |e: String| ModelError::Run(format!("onnxruntime: {e}"));
        let input = Tensor::from_array(([1usize, 1, side, side], plane.to_vec()))
            .map_err(|e| run(e.to_string()))?;
        let mut session = self.session.lock().map_err(|_| run("session lock poisoned".into()))?;
        let outputs =
            session.run(ort::inputs!["slice" => input]).map_err(|e| run(e.to_string()))?;
        let (_, values) =
            outputs["probability"].try_extract_tensor::<f32>().map_err(|e| run(e.to_string()))?;
        Ok(values.to_vec())
    }
}
