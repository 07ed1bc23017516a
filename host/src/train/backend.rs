//! The burn backend a training run computes on. `flex` (pure Rust, always built) is the
//! default; the others are cargo features of this crate because each pulls in a large stack:
//! `cpu` (CubeCL kernels compiled through a bundled LLVM), `tch` (libtorch, for example the one
//! inside a PyTorch wheel), `cuda` and `wgpu` for machines with a GPU.

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

/// Which burn backend trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainBackend {
    /// burn-flex: eager CPU kernels in Rust (gemm, SIMD); built into every tvunet.
    #[default]
    Flex,
    /// burn-cpu: CubeCL kernels JIT-compiled through LLVM, with fusion (cargo feature `cpu`).
    Cpu,
    /// libtorch on the CPU through tch (cargo feature `tch`; build with `LIBTORCH` or with
    /// `LIBTORCH_USE_PYTORCH=1` in a Python environment that has the matching PyTorch).
    Tch,
    /// CUDA on the first NVIDIA GPU (cargo feature `cuda`).
    Cuda,
    /// wgpu on the GPU its adapter selection prefers (cargo feature `wgpu`).
    Wgpu,
}

/// A backend this build of tvunet was compiled without.
#[derive(Debug, thiserror::Error)]
#[error(
    "training backend `{name}` is not in this build of tvunet; rebuild it with \
     `cargo build --release -p tvunet --features {name}`"
)]
pub struct MissingBackend {
    name: &'static str,
}

impl TrainBackend {
    /// The name used on the command line and in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Cpu => "cpu",
            Self::Tch => "tch",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
        }
    }

    /// The device (without autodiff) this backend computes on.
    ///
    /// # Errors
    /// [`MissingBackend`] when the matching cargo feature was not enabled.
    pub fn device(self) -> Result<Device, MissingBackend> {
        match self {
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "cpu")]
            Self::Cpu => Ok(Device::cpu()),
            #[cfg(feature = "tch")]
            Self::Tch => Ok(Device::libtorch()),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(0usize)),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(Default::default())),
            #[allow(unreachable_patterns)]
            other => Err(MissingBackend { name: other.name() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flex is always there; a backend left out of the build is named with the fix.
    #[test]
    fn flex_is_built_and_missing_backends_say_how_to_get_them() {
        assert!(TrainBackend::Flex.device().is_ok());
        #[cfg(not(feature = "cuda"))]
        {
            let e = TrainBackend::Cuda.device().unwrap_err().to_string();
            assert!(e.contains("`cuda`") && e.contains("--features cuda"), "{e}");
        }
    }
}
