//! The tvunet edge runtime: preprocessing, tract inference, postprocessing and the link
//! protocol. The host toolchain uses the same library, so every figure it measures comes from
//! the code that ships.

pub mod display;
pub mod inference;
pub mod link;
pub mod memory;
#[cfg(feature = "ort")]
pub mod ort_engine;
pub mod postprocess;
pub mod preprocess;
pub mod protocol;

pub use inference::{Engine, ModelError, ModelMeta, Segmenter, SliceReport};
pub use postprocess::{Lesion, LesionMask};
pub use preprocess::{GraySlice, HuWindow, PixelSpacing, SliceError};
