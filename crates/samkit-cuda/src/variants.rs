//! Kernel variants, llm.c style: the same step computed by different kernel arrangements,
//! selectable at run time so that one GPU lease times them side by side (the bench) and the
//! winner is picked from data. Every variant passes the same parity tests (CPU reference, the
//! emulated driver) and the NVRTC check.

/// How the streaming passes of a step are arranged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StepVariant {
    /// (a) One launch per stage: norm, then `sk_finalize`; update, then the commit.
    #[default]
    Separate,
    /// (b) The finalize folded into the norm kernel and the commit into the update kernel: the
    /// last block to finish (a ticket counter) does the second stage. Fewer launches per step.
    Fused,
}

/// How the global top-k mask (SSAM-F) and SSAM-D's drop/grow select.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TopkVariant {
    /// (a) The first radix select.
    Baseline,
    /// (c) 16-byte vectorised key loads, warp-aggregated histogram updates (`__match_any_sync`),
    /// the scan folded into the histogram kernel, Philox keys computed once per mask update.
    /// The default since the H200 run of 2026-11-30 (BENCHMARKS.md): the same masks (parity
    /// passed for both), Fisher top-k 197.5 vs 219.3 µs, SSAM-D drop/grow 342.8 vs 619.6 µs.
    #[default]
    Vectorized,
}

/// The kernel arrangement of a [`crate::GpuOptimizer`] (and of the bench).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Variants {
    pub step: StepVariant,
    pub topk: TopkVariant,
}

impl Variants {
    /// Every combination, for the parity tests and the bench.
    pub fn all() -> Vec<Variants> {
        let mut v = Vec::new();
        for step in [StepVariant::Separate, StepVariant::Fused] {
            for topk in [TopkVariant::Baseline, TopkVariant::Vectorized] {
                v.push(Variants { step, topk });
            }
        }
        v
    }

    /// A short name for tables and logs, e.g. `separate+baseline`.
    pub fn name(&self) -> String {
        let s = match self.step {
            StepVariant::Separate => "separate",
            StepVariant::Fused => "fused",
        };
        let t = match self.topk {
            TopkVariant::Baseline => "baseline",
            TopkVariant::Vectorized => "vectorized",
        };
        format!("{s}+{t}")
    }
}
