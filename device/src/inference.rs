//! Loads an exported TV-UNet once and segments slices with it: tract by default, tract in half
//! precision on request, onnxruntime where the `ort` feature is built and the library is
//! installed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::postprocess::{Lesion, LesionMask};
use crate::preprocess::{self, GraySlice, PixelSpacing};

/// Metadata keys every exported model carries (ONNX `metadata_props`).
pub mod keys {
    /// Side of the square model input, pixels.
    pub const INPUT_SIZE: &str = "tvunet.input_size";
    /// Name of the input normalisation, one of [`crate::preprocess::Normalisation`]'s names.
    pub const NORMALISATION: &str = "tvunet.normalisation";
    /// Default probability threshold, in (0, 1).
    pub const THRESHOLD: &str = "tvunet.threshold";
    /// What the mask marks: `infection` (ground glass + consolidation) or `ggo`.
    pub const TARGET: &str = "tvunet.target";
    /// sha256 over the training slices and masks.
    pub const DATA_FINGERPRINT: &str = "tvunet.data_fingerprint";
    /// tvunet version that wrote the file.
    pub const VERSION: &str = "tvunet.version";
    /// git commit of the tree that wrote the file.
    pub const GIT_COMMIT: &str = "tvunet.git_commit";
    /// Number representation: `fp32` or `int8`.
    pub const PRECISION: &str = "tvunet.precision";
    /// Mirror images averaged at inference, one of [`crate::preprocess::FlipAverage`]'s names;
    /// absent means `none`.
    pub const FLIP_AVERAGE: &str = "tvunet.flip_average";
    /// Present in a file that holds several networks (`tvunet ensemble`): `sha256:mirror` of
    /// each member, comma-separated, in the order the graph runs them.
    pub const MEMBERS: &str = "tvunet.members";
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("model is not a readable ONNX file: {0}")]
    Parse(String),
    #[error("model metadata key `{key}` is missing")]
    MissingKey { key: &'static str },
    #[error("model metadata key `{key}` has value `{value}`: {why}")]
    BadKey { key: &'static str, value: String, why: &'static str },
    #[error("tract cannot prepare the model: {0}")]
    Prepare(String),
    #[error("inference failed: {0}")]
    Run(String),
}

/// What the model's metadata says about how to use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Side of the square input, pixels.
    pub input_size: u32,
    /// Default threshold on the probability map.
    pub threshold: f32,
    /// What the mask marks.
    pub target: String,
    /// Number representation of the weights.
    pub precision: String,
    /// How slices become the input plane.
    pub normalisation: preprocess::Normalisation,
    /// Mirror images of the input plane averaged into the probability map.
    pub flip_average: preprocess::FlipAverage,
    /// All `metadata_props`, as written.
    pub props: HashMap<String, String>,
}

impl ModelMeta {
    /// Reads and checks the metadata of an ONNX model.
    ///
    /// # Errors
    /// [`ModelError::MissingKey`] or [`ModelError::BadKey`] naming the first key at fault.
    pub fn from_props(props: HashMap<String, String>) -> Result<Self, ModelError> {
        let get = |key: &'static str| props.get(key).ok_or(ModelError::MissingKey { key });
        let bad = |key: &'static str, value: &str, why| ModelError::BadKey {
            key,
            value: value.to_string(),
            why,
        };
        let size = get(keys::INPUT_SIZE)?;
        let input_size: u32 =
            size.parse().map_err(|_| bad(keys::INPUT_SIZE, size, "not an integer"))?;
        if !(16..=2048).contains(&input_size) || !input_size.is_multiple_of(16) {
            return Err(bad(keys::INPUT_SIZE, size, "must be a multiple of 16 in 16..=2048"));
        }
        let norm = get(keys::NORMALISATION)?;
        let normalisation = preprocess::Normalisation::from_name(norm).ok_or_else(|| {
            bad(keys::NORMALISATION, norm, "not `zscore-per-slice` or `tissue-anchored`")
        })?;
        let t = get(keys::THRESHOLD)?;
        let threshold: f32 = t.parse().map_err(|_| bad(keys::THRESHOLD, t, "not a number"))?;
        if threshold.is_nan() || threshold <= 0.0 || threshold >= 1.0 {
            return Err(bad(keys::THRESHOLD, t, "must lie strictly between 0 and 1"));
        }
        let target = get(keys::TARGET)?.clone();
        if target != "infection" && target != "ggo" {
            return Err(bad(keys::TARGET, &target, "must be `infection` or `ggo`"));
        }
        let precision = props.get(keys::PRECISION).cloned().unwrap_or_else(|| "fp32".into());
        let flip_average = match props.get(keys::FLIP_AVERAGE) {
            None => preprocess::FlipAverage::None,
            Some(f) => preprocess::FlipAverage::from_name(f).ok_or_else(|| {
                bad(keys::FLIP_AVERAGE, f, "not `none`, `left-right`, `top-bottom` or `four-way`")
            })?,
        };
        Ok(Self { input_size, threshold, target, precision, normalisation, flip_average, props })
    }
}

/// The per-slice result the device reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceReport {
    /// Slice columns, pixels.
    pub width: u32,
    /// Slice rows, pixels.
    pub height: u32,
    /// Threshold applied to the probability map.
    pub threshold: f32,
    /// Mirror images averaged into the probability map (`none`, `left-right`, `top-bottom` or
    /// `four-way`).
    pub flip_average: String,
    /// Lesion pixels in the mask.
    pub lesion_px: u64,
    /// Lesion pixels over all pixels of the slice.
    pub lesion_fraction: f64,
    /// Lesion area, mm²; `None` when the pixel spacing was not given.
    pub lesion_area_mm2: Option<f64>,
    /// Pixel spacing the area was computed with.
    pub spacing_mm: Option<PixelSpacing>,
    /// The 8-connected lesions.
    pub lesions: Vec<Lesion>,
    /// Time for preprocessing, inference and postprocessing, ms.
    pub inference_ms: f64,
    /// sha256 of the model file, hex.
    pub model_sha256: String,
    /// The mask, run-length coded (see [`LesionMask::to_rle`]).
    pub mask_rle: Vec<u32>,
    /// Bytes that crossed the link for this slice (request and reply frames); set by the link.
    pub link_bytes: Option<u64>,
}

impl SliceReport {
    /// Decodes the mask carried in the report.
    ///
    /// # Errors
    /// When the run lengths do not cover the slice.
    pub fn mask(&self) -> Result<LesionMask, String> {
        LesionMask::from_rle(self.width, self.height, &self.mask_rle)
    }
}

/// The engine that runs the network. All run the same files and give the same masks (f16
/// within its rounding, `device/tests/half.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// tract: pure Rust, cross-builds, nothing to install.
    #[default]
    Tract,
    /// onnxruntime, loaded from `ORT_DYLIB_PATH` (cargo feature `ort`).
    Ort,
    /// Experimental, speed unmeasured: tract with the network in half precision (f16), meant for
    /// ARM cores with fp16 arithmetic (Armv8.2-A and later, such as Cortex-A55 and A76), where
    /// tract has f16 kernels. The input plane is rounded to f16; the probabilities come back as
    /// f32. Masks checked against f32 on x86 only, where it takes seconds per inference.
    #[value(name = "tract-f16")]
    #[serde(rename = "tract-f16")]
    TractF16,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Tract => "tract",
            Engine::TractF16 => "tract-f16",
            Engine::Ort => "ort",
        })
    }
}

/// Threads a single inference may use, for every engine; 1 unless [`set_threads`] was called.
static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Lets each inference use `threads` cores: tract's matrix products run on a pool of that many
/// threads, and onnxruntime sessions created afterwards get as many intra-op threads. Call it
/// before loading models; 1 (the default) keeps everything on the calling thread.
///
/// # Errors
/// [`ModelError::Prepare`] for 0 threads.
pub fn set_threads(threads: usize) -> Result<(), ModelError> {
    use tract_onnx::prelude::tract_linalg::multithread::{set_default_executor, Executor};
    if threads == 0 {
        return Err(ModelError::Prepare("threads: 0 given, at least 1 is needed".into()));
    }
    prepare_tract();
    THREADS.store(threads, std::sync::atomic::Ordering::Relaxed);
    set_default_executor(if threads == 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(threads)
    });
    tracing::info!(threads, "inference threads");
    Ok(())
}

/// Threads a single inference may use (see [`set_threads`]).
pub fn threads() -> usize {
    THREADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Keeps tract off its Intel AMX int8 matrix kernel. On CPUs that have AMX (Xeon Sapphire
/// Rapids and later), tract-linalg 0.23.9 picks that kernel for int8 models, and it reads past
/// the end of its packed input: when the buffer ends at the edge of the heap's mapped memory
/// the process dies with a segmentation fault, seemingly at random. Without it, tract uses its
/// AVX-512 VNNI kernel, whose integer sums are identical. The setting sits below the
/// environment, so `TRACT_CPU_ISA` set by an operator still wins. Called before any model is
/// prepared ([`Segmenter`] does; so must other code that prepares models with tract).
pub fn prepare_tract() {
    #[cfg(target_arch = "x86_64")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Err(e) = tract_onnx::prelude::tract_data::knobs::set_config_global(
                "TRACT_CPU_ISA",
                "-amx-int8",
            ) {
                tracing::warn!("could not keep tract off its AMX int8 kernel: {e:#}");
            }
        });
    }
}

/// Warns that `tract-f16` will be slow where the CPU has no fp16 arithmetic for its kernels.
fn warn_without_fp16_arithmetic() {
    #[cfg(target_arch = "aarch64")]
    let native = std::arch::is_aarch64_feature_detected!("fp16");
    #[cfg(not(target_arch = "aarch64"))]
    let native = false;
    if !native {
        tracing::warn!(
            "engine tract-f16 on a CPU without Arm fp16 arithmetic: expect seconds per \
             inference, far slower than the f32 engine"
        );
    }
}

enum Runner {
    Tract(std::sync::Arc<TypedSimplePlan>),
    /// A plan whose floats are f16, its input and output included.
    TractF16(std::sync::Arc<TypedSimplePlan>),
    #[cfg(feature = "ort")]
    Ort(crate::ort_engine::OrtRunner),
}

/// A loaded, optimised model ready to segment slices. Cheap to share between threads.
pub struct Segmenter {
    runner: Runner,
    engine: Engine,
    meta: ModelMeta,
    sha256: String,
    name: String,
}

impl Segmenter {
    /// Loads an ONNX file.
    ///
    /// # Errors
    /// See [`Segmenter::from_bytes`]; also [`ModelError::Read`] when the file cannot be read.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_with(path, Engine::Tract)
    }

    /// Loads an ONNX file for the given engine.
    ///
    /// # Errors
    /// As [`Segmenter::load`]; [`ModelError::Prepare`] when the engine is not available.
    pub fn load_with(path: &Path, engine: Engine) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path)
            .map_err(|cause| ModelError::Read { path: path.display().to_string(), cause })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self::from_bytes_with(&bytes, &name, engine)
    }

    /// Parses, checks and optimises an ONNX model held in memory.
    ///
    /// # Errors
    /// [`ModelError::Parse`] for bytes that are not ONNX, the metadata errors of
    /// [`ModelMeta::from_props`], and [`ModelError::Prepare`] when tract cannot plan it.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, ModelError> {
        Self::from_bytes_with(bytes, name, Engine::Tract)
    }

    /// Parses and checks a model held in memory and prepares it for `engine`.
    ///
    /// # Errors
    /// As [`Segmenter::from_bytes`]; [`ModelError::Prepare`] when the engine is not built in
    /// or its library cannot be loaded.
    pub fn from_bytes_with(bytes: &[u8], name: &str, engine: Engine) -> Result<Self, ModelError> {
        prepare_tract();
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| ModelError::Parse(format!("{e:#}")))?;
        let props = proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
        let meta = ModelMeta::from_props(props)?;
        let side = meta.input_size as usize;
        let runner = match engine {
            Engine::Tract | Engine::TractF16 => {
                let plan = onnx
                    .model_for_proto_model(&proto)
                    .and_then(|m| m.with_input_fact(0, f32::fact([1, 1, side, side]).into()))
                    .and_then(|m| m.into_typed())
                    .and_then(|m| {
                        if engine == Engine::TractF16 {
                            use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
                            use tract_onnx::tract_core::transform::ModelTransform;
                            FloatPrecisionTranslator::new(f32::datum_type(), f16::datum_type())
                                .transform_into(m)
                        } else {
                            Ok(m)
                        }
                    })
                    .and_then(|m| m.into_optimized())
                    .and_then(|m| m.into_runnable())
                    .map_err(|e| ModelError::Prepare(format!("{e:#}")))?;
                if engine == Engine::TractF16 {
                    warn_without_fp16_arithmetic();
                    Runner::TractF16(plan)
                } else {
                    Runner::Tract(plan)
                }
            }
            #[cfg(feature = "ort")]
            Engine::Ort => Runner::Ort(crate::ort_engine::OrtRunner::new(bytes)?),
            #[cfg(not(feature = "ort"))]
            Engine::Ort => {
                return Err(ModelError::Prepare(
                    "engine `ort` is not in this build (cargo feature `ort`)".into(),
                ))
            }
        };
        let sha256 = format!("{:x}", Sha256::digest(bytes));
        tracing::info!(
            name,
            side,
            threshold = meta.threshold,
            flip_average = meta.flip_average.name(),
            networks = meta.props.get(keys::MEMBERS).map_or(1, |m| m.split(',').count()),
            %engine,
            "model loaded"
        );
        Ok(Self { runner, engine, meta, sha256, name: name.to_string() })
    }

    /// The model's metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// sha256 of the model file, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The engine running the network.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// File name the model was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the network on one prepared input plane.
    ///
    /// # Shapes
    /// `plane` holds `input_size²` values (1 x 1 x side x side); so does the returned
    /// probability map.
    ///
    /// # Errors
    /// [`ModelError::Run`] when tract fails.
    pub fn probability_plane(&self, plane: &[f32]) -> Result<Vec<f32>, ModelError> {
        let side = self.meta.input_size as usize;
        if plane.len() != side * side {
            return Err(ModelError::Run(format!(
                "input plane has {} values, the model takes {side}x{side}",
                plane.len()
            )));
        }
        match &self.runner {
            Runner::Tract(plan) => {
                let input = Tensor::from_shape(&[1, 1, side, side], plane)
                    .map_err(|e| ModelError::Run(format!("{e:#}")))?;
                let out =
                    plan.run(tvec!(input.into())).map_err(|e| ModelError::Run(format!("{e:#}")))?;
                let view = out[0]
                    .to_plain_array_view::<f32>()
                    .map_err(|e| ModelError::Run(format!("{e:#}")))?;
                Ok(view.iter().copied().collect())
            }
            Runner::TractF16(plan) => {
                let run = || -> TractResult<Vec<f32>> {
                    let input = Tensor::from_shape(&[1, 1, side, side], plane)?
                        .cast_to::<f16>()?
                        .into_owned();
                    let out = plan.run(tvec!(input.into()))?;
                    let prob = out[0].cast_to::<f32>()?;
                    Ok(prob.to_plain_array_view::<f32>()?.iter().copied().collect())
                };
                run().map_err(|e| ModelError::Run(format!("{e:#}")))
            }
            #[cfg(feature = "ort")]
            Runner::Ort(ort) => ort.run(plane, side),
        }
    }

    /// The model's input plane for `slice`: resized to the model's side and normalised as its
    /// metadata says.
    pub fn input_plane(&self, slice: &GraySlice) -> Vec<f32> {
        preprocess::model_input(slice, self.meta.input_size, self.meta.normalisation)
    }

    /// Probability map of a slice at the slice's own size, averaged over the mirror images the
    /// model's metadata names (or [`Segmenter::set_flip_average`] set).
    ///
    /// # Errors
    /// [`ModelError::Run`] when tract fails.
    pub fn probability(&self, slice: &GraySlice) -> Result<Vec<f32>, ModelError> {
        self.probability_with(slice, self.meta.flip_average)
    }

    /// Probability map of a slice at the slice's own size, averaged over the mirror images of
    /// `flips` whatever the model's metadata says.
    ///
    /// # Errors
    /// [`ModelError::Run`] when tract fails.
    pub fn probability_with(
        &self,
        slice: &GraySlice,
        flips: preprocess::FlipAverage,
    ) -> Result<Vec<f32>, ModelError> {
        let side = self.meta.input_size;
        let plane = self.input_plane(slice);
        let prob = self.averaged_plane(&plane, flips)?;
        Ok(preprocess::resize_map(&prob, (side, side), (slice.width, slice.height)))
    }

    /// The network's probability over `plane` averaged with the mirror images of `flips`
    /// ([`preprocess::FlipAverage`]), each mirrored back; the network's own output for
    /// [`preprocess::FlipAverage::None`]. One inference per image.
    ///
    /// # Errors
    /// As [`Segmenter::probability_plane`].
    pub fn averaged_plane(
        &self,
        plane: &[f32],
        flips: preprocess::FlipAverage,
    ) -> Result<Vec<f32>, ModelError> {
        let mirrors = flips.mirrors();
        let side = self.meta.input_size;
        let mut mean = self.probability_plane(plane)?;
        for &(lr, tb) in &mirrors[1..] {
            let prob = self.probability_plane(&preprocess::mirror(plane, side, side, lr, tb))?;
            for (m, p) in mean.iter_mut().zip(preprocess::mirror(&prob, side, side, lr, tb)) {
                *m += p;
            }
        }
        let share = 1.0 / mirrors.len() as f32;
        mean.iter_mut().for_each(|m| *m *= share);
        Ok(mean)
    }

    /// Replaces the flip average the model's metadata asked for (an evaluation of another
    /// setting on the same file).
    pub fn set_flip_average(&mut self, flip_average: preprocess::FlipAverage) {
        if flip_average != self.meta.flip_average {
            tracing::info!(
                model = self.meta.flip_average.name(),
                now = flip_average.name(),
                "flip average overridden"
            );
        }
        self.meta.flip_average = flip_average;
    }

    /// Segments one slice: probability map, threshold (the model's default unless given),
    /// lesions and areas.
    ///
    /// # Errors
    /// [`ModelError::Run`] when tract fails.
    pub fn segment(
        &self,
        slice: &GraySlice,
        threshold: Option<f32>,
        spacing: Option<PixelSpacing>,
    ) -> Result<(SliceReport, LesionMask), ModelError> {
        let start = Instant::now();
        let threshold = threshold.unwrap_or(self.meta.threshold);
        let prob = self.probability(slice)?;
        let mask = LesionMask::from_probability(&prob, slice.width, slice.height, threshold);
        let lesion_px = mask.lesion_px();
        let report = SliceReport {
            width: slice.width,
            height: slice.height,
            threshold,
            flip_average: self.meta.flip_average.name().to_string(),
            lesion_px,
            lesion_fraction: lesion_px as f64 / slice.len() as f64,
            lesion_area_mm2: spacing.map(|s| lesion_px as f64 * s.pixel_area_mm2()),
            spacing_mm: spacing,
            lesions: mask.lesions(spacing),
            inference_ms: start.elapsed().as_secs_f64() * 1e3,
            model_sha256: self.sha256.clone(),
            mask_rle: mask.to_rle(),
            link_bytes: None,
        };
        Ok((report, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::FlipAverage;

    fn props(normalisation: &str) -> HashMap<String, String> {
        [
            (keys::INPUT_SIZE, "64"),
            (keys::NORMALISATION, normalisation),
            (keys::THRESHOLD, "0.4"),
            (keys::TARGET, "infection"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The metadata picks the normalisation; a name this runtime does not know is refused with
    /// the key and the value.
    #[test]
    fn metadata_names_the_normalisation() {
        for norm in preprocess::Normalisation::ALL {
            assert_eq!(ModelMeta::from_props(props(norm.name())).unwrap().normalisation, norm);
        }
        let err = ModelMeta::from_props(props("minmax")).unwrap_err().to_string();
        assert!(err.contains("tvunet.normalisation") && err.contains("`minmax`"), "{err}");
    }

    /// A model without the key averages nothing; one naming an unknown average is refused.
    #[test]
    fn metadata_names_the_flip_average() {
        let mut p = props("tissue-anchored");
        assert_eq!(ModelMeta::from_props(p.clone()).unwrap().flip_average, FlipAverage::None);
        for f in FlipAverage::ALL {
            p.insert(keys::FLIP_AVERAGE.into(), f.name().into());
            assert_eq!(ModelMeta::from_props(p.clone()).unwrap().flip_average, f);
        }
        p.insert(keys::FLIP_AVERAGE.into(), "diagonal".into());
        let err = ModelMeta::from_props(p).unwrap_err().to_string();
        assert!(err.contains("tvunet.flip_average") && err.contains("`diagonal`"), "{err}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tract_never_dispatches_to_its_amx_int8_kernel() {
        use tract_onnx::prelude::tract_linalg::{isa, knobs};
        if std::env::var_os("TRACT_CPU_ISA").is_some() {
            return; // an operator's setting wins; nothing of ours to check
        }
        super::prepare_tract();
        assert_eq!(knobs::TRACT_CPU_ISA.get().as_deref(), Some("-amx-int8"));
        // On a CPU with AMX the probed set had it; the set tract dispatches from does not.
        assert!(!isa::native().has(isa::Isa::X86_64AmxInt8));
    }
}
