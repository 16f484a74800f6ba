//! The CUDA settings of a run, recorded in its config so that a resumed run uses the device
//! settings it started with, whatever the environment says.
//!
//! They map onto [`samkit_nn::cuda::CudaOptions`]: TF32 math and the cuDNN algorithm choice change
//! the numbers a step produces, so they are part of the run, never read from environment
//! variables.
use samkit_nn::cuda::{AlgoSearch, CudaOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The largest cuDNN workspace a run may ask for, in MiB (the H200 has about 139 GiB; a
/// workspace above this is a typo, not a need).
pub const MAX_CUDNN_WORKSPACE_MB: usize = 64 << 10;

/// How cuDNN chooses convolution algorithms, as the config names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CudnnAlgo {
    /// Time every algorithm once per shape and keep the fastest (PyTorch's
    /// `cudnn.benchmark = True`).
    #[default]
    Benchmark,
    /// cuDNN's heuristics: nothing is timed, the choice depends on the shape alone.
    Heuristic,
}

/// The device settings of a CUDA run. Ignored on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CudaRunOptions {
    /// The CUDA device ordinal.
    pub device: usize,
    /// TF32 tensor-core math in convolutions and GEMMs (off: exact FP32).
    pub tf32: bool,
    pub cudnn_algo: CudnnAlgo,
    /// Only deterministic convolution algorithms (bit-identical repeated runs).
    pub cudnn_deterministic: bool,
    /// The largest cuDNN workspace an algorithm may use, in MiB.
    pub cudnn_workspace_mb: usize,
}

impl Default for CudaRunOptions {
    fn default() -> Self {
        let o = CudaOptions::default();
        CudaRunOptions {
            device: 0,
            tf32: o.tf32,
            cudnn_algo: match o.algo {
                AlgoSearch::Benchmark => CudnnAlgo::Benchmark,
                AlgoSearch::Heuristic => CudnnAlgo::Heuristic,
            },
            cudnn_deterministic: o.deterministic,
            cudnn_workspace_mb: o.workspace_limit >> 20,
        }
    }
}

impl CudaRunOptions {
    /// Checks the values a user (or a `trainer.json`) can get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.cudnn_workspace_mb > MAX_CUDNN_WORKSPACE_MB {
            return Err(TrainError::invalid(
                "cudnn-workspace-mb",
                format!(
                    "{} MiB is more than the {MAX_CUDNN_WORKSPACE_MB} MiB allowed",
                    self.cudnn_workspace_mb
                ),
            ));
        }
        Ok(())
    }

    /// The backend options these settings give.
    pub fn backend_options(&self) -> CudaOptions {
        CudaOptions {
            tf32: self.tf32,
            algo: match self.cudnn_algo {
                CudnnAlgo::Benchmark => AlgoSearch::Benchmark,
                CudnnAlgo::Heuristic => AlgoSearch::Heuristic,
            },
            deterministic: self.cudnn_deterministic,
            workspace_limit: self.cudnn_workspace_mb << 20,
            ..CudaOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_backends_and_round_trip() {
        let d = CudaRunOptions::default();
        assert_eq!(d.backend_options(), CudaOptions::default());
        let text = serde_json::to_string(&d).expect("serializes");
        let back: CudaRunOptions = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, d);
        // A config written before these settings existed reads as the defaults.
        let old: CudaRunOptions = serde_json::from_str("{}").expect("empty reads");
        assert_eq!(old, d);
    }

    #[test]
    fn settings_reach_the_backend_and_bad_ones_are_named() {
        let o = CudaRunOptions {
            device: 1,
            tf32: true,
            cudnn_algo: CudnnAlgo::Heuristic,
            cudnn_deterministic: true,
            cudnn_workspace_mb: 4,
        };
        let b = o.backend_options();
        assert!(b.tf32 && b.deterministic);
        assert_eq!(b.algo, AlgoSearch::Heuristic);
        assert_eq!(b.workspace_limit, 4 << 20);
        let too_big = CudaRunOptions {
            cudnn_workspace_mb: MAX_CUDNN_WORKSPACE_MB + 1,
            ..o
        };
        let e = too_big.validate().expect_err("refused");
        assert!(
            e.is_bad_input() && e.to_string().contains("cudnn-workspace-mb"),
            "{e}"
        );
        let typo = serde_json::from_str::<CudaRunOptions>(r#"{"tf23": true}"#);
        assert!(typo.is_err(), "an unknown key is refused");
    }
}
