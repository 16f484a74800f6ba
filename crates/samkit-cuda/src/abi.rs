//! The structures shared with the kernels, field for field as in samkit-kernels' `kernels/*.cu`.
//!
//! Every device pointer is a `u64` (`CUdeviceptr`), every struct is `#[repr(C)]` with its 8-byte
//! fields first, so the layouts agree on every target. The `sk_abi*` kernels report the kernels'
//! sizes and a few offsets; [`expected`] lists the host's, and a device refuses to run kernels
//! whose report differs (a host built against other kernel sources).
#![allow(missing_docs)]
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// Elements per unit (`SK_UNIT`).
pub const UNIT: usize = 4096;
/// Threads per block of the streaming kernels (`SK_BLOCK`).
pub const BLOCK: u32 = 256;
/// Warps per streaming block (`SK_WARPS`).
pub const WARPS: usize = 8;
/// Threads of the finalize kernel (`SK_FIN_BLOCK`).
pub const FIN_BLOCK: u32 = 256;
/// Threads of the eq-count scan (`SK_SCAN_BLOCK`).
pub const SCAN_BLOCK: u32 = 1024;
/// Histogram counters of one selection (`SK_HIST_BINS`).
pub const HIST_BINS: usize = 2048 + 2048 + 1024;

pub const KIND_WEIGHT: u32 = 0;
pub const KIND_BIAS: u32 = 1;

macro_rules! device_repr {
    ($($t:ty),*) => {$(
        // SAFETY: a #[repr(C)] struct of plain integers and floats, laid out as its CUDA twin.
        unsafe impl DeviceRepr for $t {}
        // SAFETY: all-zero bits are a valid value of every field.
        unsafe impl ValidAsZeroBits for $t {}
    )*};
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    pub global: u64,
    pub seg_off: u64,
    pub seg: u32,
    pub len: u32,
    pub kind: u32,
    pub pad: u32,
}

/// The device-resident step state (`struct Ctl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ctl {
    pub step: u64,
    pub skipped: u64,
    pub base_steps: u64,
    pub mask_updates: u64,
    pub skip: u32,
    pub fsam_init: u32,
    pub fsam_cur: u32,
    pub mask_cur: u32,
    pub g_sq: f64,
    pub xy: f64,
    pub yy: f64,
    pub gv_sq: f64,
    pub scale: f32,
    pub kappa: f32,
    pub b: f32,
    pub coef_c: f32,
    pub sc_first: u32,
    pub sc_lr: f32,
    pub sc_step_size: f32,
    pub sc_bc2_sqrt: f32,
    pub proj: f32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NormArgs {
    pub units: u64,
    pub g: u64,
    pub w: u64,
    pub chk: u64,
    pub m: u64,
    pub mask: u64,
    pub ft: u64,
    pub ft_start: u64,
    pub ft_len: u64,
    pub ctl: u64,
    pub part: u64,
    pub bad: u64,
    pub n: u64,
    pub words: u64,
    pub n_units: u32,
    pub mask_pending: u32,
    pub sigma: f32,
    pub lambda: f32,
    pub eta: f32,
    pub ema: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DotArgs {
    pub units: u64,
    pub x: u64,
    pub y: u64,
    pub pxy: u64,
    pub pyy: u64,
    pub bad: u64,
    pub n_units: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FiltSeg {
    pub first: u64,
    pub count: u64,
    pub seg: u32,
    pub len: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FiltArgs {
    pub w: u64,
    pub segs: u64,
    pub t: u64,
    pub n_filters: u64,
    pub n_segs: u32,
    pub eta: f32,
}

pub const FIN_NORM: u32 = 0;
pub const FIN_CHECK: u32 = 1;
pub const FIN_LOOK1: u32 = 2;
pub const FIN_SECOND: u32 = 3;
pub const FIN_GV: u32 = 4;
pub const FIN_SUM: u32 = 5;
pub const FIN_SEG: u32 = 6;
pub const RULE_PLAIN: u32 = 0;
pub const RULE_GSAM: u32 = 1;
pub const RULE_LOOKSAM: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FinArgs {
    pub pa: u64,
    pub pb: u64,
    pub bad: u64,
    pub seg_units: u64,
    pub ctl: u64,
    pub seg_tmp: u64,
    pub seg_gsq: u64,
    pub seg_gv: u64,
    pub b_seg: u64,
    pub coef_c_seg: u64,
    pub eps: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub lr_hyper: f64,
    pub n_units: u32,
    pub n_segs: u32,
    pub mode: u32,
    pub rule: u32,
    pub per_seg: u32,
    pub adam: u32,
    pub rho: f32,
    pub alpha: f32,
    pub kappa: f32,
    pub b: f32,
    pub lr: f32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PerturbArgs {
    pub units: u64,
    pub w: u64,
    pub w_old: u64,
    pub g: u64,
    pub m: u64,
    pub mask: u64,
    pub ft: u64,
    pub ft_start: u64,
    pub ft_len: u64,
    pub copy_src: u64,
    pub copy_dst: u64,
    pub ctl: u64,
    pub n: u64,
    pub words: u64,
    pub n_units: u32,
    pub mask_pending: u32,
    pub sigma: f32,
    pub eta: f32,
    pub prev: u64,
    pub eta_x: f32,
    pub extra: u32,
}

/// EG-SAM/OG-SAM's extrapolation in the perturbation (`EXTRA_*` in `perturb.cu`).
pub const EXTRA_NONE: u32 = 0;
pub const EXTRA_GRAD: u32 = 1;
pub const EXTRA_PREV: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UpdateArgs {
    pub units: u64,
    pub w: u64,
    pub src: u64,
    pub x: u64,
    pub y: u64,
    pub y32: u64,
    pub side_g: u64,
    pub side_out: u64,
    pub s0: u64,
    pub s1: u64,
    pub s2: u64,
    pub b_seg: u64,
    pub coef_c_seg: u64,
    pub ctl: u64,
    pub part: u64,
    pub keep: u64,
    pub n_units: u32,
    pub nesterov: u32,
    pub centered: u32,
    pub has_momentum: u32,
    pub momentum: f32,
    pub one_m_dampening: f32,
    pub weight_decay: f32,
    pub one_m_beta1: f32,
    pub beta2: f32,
    pub one_m_beta2: f32,
    pub eps: f32,
    pub wscale: f32,
    pub alpha: f32,
    pub one_m_alpha: f32,
    pub amsgrad: u32,
    pub maximize: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreArgs {
    pub units: u64,
    pub w: u64,
    pub w_old: u64,
    pub n_units: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitArgs {
    pub ctl: u64,
    pub fsam: u32,
    pub mask_pending: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FisherArgs {
    pub units: u64,
    pub g: u64,
    pub f: u64,
    pub n_units: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelState {
    pub k_rem: u64,
    pub total: u64,
    pub prefix: u32,
    pub take_all: u32,
    /// Vectorized top-k: blocks done with the current launch (0 between launches).
    pub ticket: u32,
    /// Every threshold-equal candidate is taken (set by the last pass).
    pub eq_all: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SelArgs {
    pub units: u64,
    pub src: u64,
    pub mask: u64,
    pub ctl: u64,
    pub hist: u64,
    pub st: u64,
    pub eq: u64,
    pub eq_base: u64,
    pub out: u64,
    pub seed: u64,
    pub words: u64,
    pub k: u64,
    pub n_units: u32,
    pub update: u32,
    pub pass: u32,
    pub pad: u32,
}

pub const COMB_TO_PENDING: u32 = 0;
pub const COMB_DROP_GROW: u32 = 1;
pub const COMB_KEEP: u32 = 2;
pub const COMB_TO_CURRENT: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CombArgs {
    pub mask: u64,
    pub a: u64,
    pub b: u64,
    pub ctl: u64,
    pub words: u64,
    pub mode: u32,
    pub pad: u32,
}

// ---------------------------------------------------------------------------------------------
// samkit-nn's family (`nn.cu`): one argument struct per kernel, launched by
// crates/samkit-nn/src/cuda/kernels.rs. Pointers are device addresses of f32 buffers (u32 for
// the labels); element counts that index a whole activation are u64, dimensions u32.
// ---------------------------------------------------------------------------------------------

/// Threads per block of every kernel of `nn.cu` (`NN_BLOCK`; the kernels trap on another shape).
pub const NN_BLOCK: u32 = 256;

/// `sk_nn_relu_mask`: `dy[i] ← 0` where `y[i] ≤ 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnReluMaskArgs {
    pub y: u64,
    pub dy: u64,
    pub n: u64,
}

/// `sk_nn_add`: `dst ← dst + src`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnAddArgs {
    pub dst: u64,
    pub src: u64,
    pub n: u64,
}

/// `sk_nn_residual_relu`: `y ← act(y + r)` (`r` = 0: no residual).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnResidualReluArgs {
    pub y: u64,
    pub r: u64,
    pub n: u64,
    pub relu: u32,
    pub pad: u32,
}

/// `sk_nn_act` and `sk_nn_act_bwd`'s `kind`: ReLU.
pub const NN_ACT_RELU: u32 = 0;
/// `sk_nn_act` and `sk_nn_act_bwd`'s `kind`: tanh.
pub const NN_ACT_TANH: u32 = 1;

/// `sk_nn_act`: `x ← act(x)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnActArgs {
    pub x: u64,
    pub n: u64,
    pub kind: u32,
    pub pad: u32,
}

/// `sk_nn_act_bwd`: `dy ← dy ⊙ act'` from the activation's output `y`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnActBwdArgs {
    pub y: u64,
    pub dy: u64,
    pub n: u64,
    pub kind: u32,
    pub pad: u32,
}

/// `sk_nn_square`: `y ← x ⊙ x`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnSquareArgs {
    pub x: u64,
    pub y: u64,
    pub n: u64,
}

/// `sk_nn_sq_accumulate`: `dst[j] += Σ_{b < count} src[b·stride + j]²`, `j < len`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnSqAccumulateArgs {
    pub src: u64,
    pub dst: u64,
    pub len: u64,
    pub stride: u64,
    pub count: u32,
    pub pad: u32,
}

/// `sk_nn_bias_add`: `y[r, o] += b[o]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnBiasAddArgs {
    pub y: u64,
    pub b: u64,
    pub rows: u64,
    pub out: u32,
    pub pad: u32,
}

/// `sk_nn_col_sum`: `out[c] (+)= Σ_r f(x[r, c])`, `f` = identity or square.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnColSumArgs {
    pub x: u64,
    pub out: u64,
    pub rows: u32,
    pub cols: u32,
    pub square: u32,
    pub accumulate: u32,
}

/// `sk_nn_avgpool_fwd`: `y[r] = inv · Σ_j x[r·hw + j]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnAvgPoolFwdArgs {
    pub x: u64,
    pub y: u64,
    pub rows: u64,
    pub inv: f64,
    pub hw: u32,
    pub pad: u32,
}

/// `sk_nn_avgpool_bwd`: `dx[r·hw + j] = dy[r] · inv`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnAvgPoolBwdArgs {
    pub dy: u64,
    pub dx: u64,
    pub rows: u64,
    pub hw: u32,
    pub inv: f32,
}

/// `sk_nn_bn_eval_stats`: the saved statistics of batch norm in eval mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnBnEvalStatsArgs {
    pub rmean: u64,
    pub rvar: u64,
    pub smean: u64,
    pub sinvstd: u64,
    pub eps: f64,
    pub c: u32,
    pub pad: u32,
}

/// `sk_nn_bn_eval_bwd`: batch-norm backward with fixed statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnBnEvalBwdArgs {
    pub x: u64,
    pub dy: u64,
    pub gamma: u64,
    pub mean: u64,
    pub invstd: u64,
    pub dgamma: u64,
    pub dbeta: u64,
    pub dx: u64,
    pub n: u32,
    pub c: u32,
    pub hw: u32,
    pub psq: u32,
}

/// `sk_nn_smooth_ce`: label-smoothed cross-entropy (`dz` = 0: no gradient).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnSmoothCeArgs {
    pub z: u64,
    pub labels: u64,
    pub w: u64,
    pub loss: u64,
    pub dz: u64,
    pub n: u64,
    pub k: u32,
    pub smoothing: f32,
}

/// `sk_nn_kd`: MESA/SAF's distillation term (`present` = 0: every sample has a teacher; `dz` =
/// 0: no gradient, else ADDED to).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnKdArgs {
    pub z: u64,
    pub t: u64,
    pub w: u64,
    pub present: u64,
    pub kd: u64,
    pub dz: u64,
    pub n: u64,
    pub k: u32,
    pub tau: f32,
    pub lam: f32,
    pub pad: u32,
}

/// `sk_nn_ema`: MESA's teacher update `ema ← d·ema + (1 − d)·w` (`one_m_d` = `1 − d` in f32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NnEmaArgs {
    pub ema: u64,
    pub w: u64,
    pub n: u64,
    pub d: f32,
    pub one_m_d: f32,
}

device_repr!(
    Unit,
    Ctl,
    NormArgs,
    DotArgs,
    FiltSeg,
    FiltArgs,
    FinArgs,
    PerturbArgs,
    UpdateArgs,
    RestoreArgs,
    CommitArgs,
    FisherArgs,
    SelState,
    SelArgs,
    CombArgs,
    NnReluMaskArgs,
    NnAddArgs,
    NnResidualReluArgs,
    NnActArgs,
    NnActBwdArgs,
    NnSquareArgs,
    NnSqAccumulateArgs,
    NnBiasAddArgs,
    NnColSumArgs,
    NnAvgPoolFwdArgs,
    NnAvgPoolBwdArgs,
    NnBnEvalStatsArgs,
    NnBnEvalBwdArgs,
    NnSmoothCeArgs,
    NnKdArgs,
    NnEmaArgs
);

/// `(name, size)` of every shared struct, passed to NVRTC as `-DSK_ABI_SIZE_<name>=<size>` so the
/// kernels check them with `static_assert` when they compile (no GPU needed).
pub fn sizes() -> Vec<(&'static str, u32)> {
    vec![
        ("Unit", sz::<Unit>()),
        ("Ctl", sz::<Ctl>()),
        ("NormArgs", sz::<NormArgs>()),
        ("DotArgs", sz::<DotArgs>()),
        ("FiltSeg", sz::<FiltSeg>()),
        ("FiltArgs", sz::<FiltArgs>()),
        ("FinArgs", sz::<FinArgs>()),
        ("PerturbArgs", sz::<PerturbArgs>()),
        ("UpdateArgs", sz::<UpdateArgs>()),
        ("RestoreArgs", sz::<RestoreArgs>()),
        ("CommitArgs", sz::<CommitArgs>()),
        ("FisherArgs", sz::<FisherArgs>()),
        ("SelState", sz::<SelState>()),
        ("SelArgs", sz::<SelArgs>()),
        ("CombArgs", sz::<CombArgs>()),
        ("NnReluMaskArgs", sz::<NnReluMaskArgs>()),
        ("NnAddArgs", sz::<NnAddArgs>()),
        ("NnResidualReluArgs", sz::<NnResidualReluArgs>()),
        ("NnActArgs", sz::<NnActArgs>()),
        ("NnActBwdArgs", sz::<NnActBwdArgs>()),
        ("NnSquareArgs", sz::<NnSquareArgs>()),
        ("NnSqAccumulateArgs", sz::<NnSqAccumulateArgs>()),
        ("NnBiasAddArgs", sz::<NnBiasAddArgs>()),
        ("NnColSumArgs", sz::<NnColSumArgs>()),
        ("NnAvgPoolFwdArgs", sz::<NnAvgPoolFwdArgs>()),
        ("NnAvgPoolBwdArgs", sz::<NnAvgPoolBwdArgs>()),
        ("NnBnEvalStatsArgs", sz::<NnBnEvalStatsArgs>()),
        ("NnBnEvalBwdArgs", sz::<NnBnEvalBwdArgs>()),
        ("NnSmoothCeArgs", sz::<NnSmoothCeArgs>()),
        ("NnKdArgs", sz::<NnKdArgs>()),
        ("NnEmaArgs", sz::<NnEmaArgs>()),
    ]
}

fn sz<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// What each family's `sk_abi*` kernel must report: `(family, kernel, values)`, for every family
/// of samkit-kernels' registry (its probe kernel named there). `Device::module` runs the probe
/// and refuses the family when the report differs.
pub fn expected() -> Vec<(&'static str, &'static str, Vec<u32>)> {
    use std::mem::offset_of;
    vec![
        (
            samkit_kernels::NORM.name,
            samkit_kernels::NORM.abi_probe,
            vec![
                sz::<Unit>(),
                sz::<Ctl>(),
                sz::<NormArgs>(),
                sz::<DotArgs>(),
                sz::<FiltSeg>(),
                sz::<FiltArgs>(),
                sz::<FinArgs>(),
                offset_of!(Ctl, g_sq) as u32,
                offset_of!(Ctl, scale) as u32,
                offset_of!(Ctl, sc_first) as u32,
                offset_of!(NormArgs, n_units) as u32,
                offset_of!(FinArgs, eps) as u32,
            ],
        ),
        (
            samkit_kernels::PERTURB.name,
            samkit_kernels::PERTURB.abi_probe,
            vec![sz::<PerturbArgs>(), offset_of!(PerturbArgs, n_units) as u32],
        ),
        (
            samkit_kernels::UPDATE.name,
            samkit_kernels::UPDATE.abi_probe,
            vec![
                sz::<UpdateArgs>(),
                offset_of!(UpdateArgs, n_units) as u32,
                sz::<RestoreArgs>(),
                sz::<CommitArgs>(),
            ],
        ),
        (
            samkit_kernels::FISHER.name,
            samkit_kernels::FISHER.abi_probe,
            vec![sz::<FisherArgs>()],
        ),
        (
            samkit_kernels::SELECT.name,
            samkit_kernels::SELECT.abi_probe,
            vec![
                sz::<SelState>(),
                sz::<SelArgs>(),
                offset_of!(SelArgs, n_units) as u32,
                sz::<CombArgs>(),
            ],
        ),
        (
            samkit_kernels::NN.name,
            samkit_kernels::NN.abi_probe,
            vec![
                NN_BLOCK,
                sz::<NnReluMaskArgs>(),
                sz::<NnAddArgs>(),
                sz::<NnResidualReluArgs>(),
                sz::<NnActArgs>(),
                sz::<NnActBwdArgs>(),
                sz::<NnSquareArgs>(),
                sz::<NnSqAccumulateArgs>(),
                sz::<NnBiasAddArgs>(),
                sz::<NnColSumArgs>(),
                sz::<NnAvgPoolFwdArgs>(),
                sz::<NnAvgPoolBwdArgs>(),
                sz::<NnBnEvalStatsArgs>(),
                sz::<NnBnEvalBwdArgs>(),
                sz::<NnSmoothCeArgs>(),
                offset_of!(NnSqAccumulateArgs, count) as u32,
                offset_of!(NnAvgPoolFwdArgs, inv) as u32,
                offset_of!(NnAvgPoolBwdArgs, inv) as u32,
                offset_of!(NnBnEvalStatsArgs, eps) as u32,
                offset_of!(NnBnEvalBwdArgs, n) as u32,
                offset_of!(NnSmoothCeArgs, n) as u32,
                offset_of!(NnSmoothCeArgs, smoothing) as u32,
                sz::<NnKdArgs>(),
                offset_of!(NnKdArgs, n) as u32,
                offset_of!(NnKdArgs, lam) as u32,
                sz::<NnEmaArgs>(),
                offset_of!(NnEmaArgs, one_m_d) as u32,
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_layouts_have_no_surprises() {
        assert_eq!(std::mem::size_of::<Unit>(), 32);
        assert_eq!(std::mem::size_of::<Ctl>(), 120);
        assert_eq!(std::mem::size_of::<SelState>(), 32);
        assert_eq!(std::mem::size_of::<NormArgs>(), 136);
        assert_eq!(std::mem::size_of::<FinArgs>(), 160);
        assert_eq!(std::mem::size_of::<NnReluMaskArgs>(), 24);
        assert_eq!(std::mem::size_of::<NnAvgPoolFwdArgs>(), 40);
        assert_eq!(std::mem::size_of::<NnBnEvalBwdArgs>(), 80);
        assert_eq!(std::mem::size_of::<NnSmoothCeArgs>(), 56);
        assert_eq!(std::mem::size_of::<NnKdArgs>(), 72);
        assert_eq!(std::mem::size_of::<NnEmaArgs>(), 32);
    }

    #[test]
    fn every_registered_family_has_one_expected_report_under_its_probe() {
        let exp = expected();
        for f in crate::samkit_kernels::FAMILIES {
            let reports: Vec<_> = exp.iter().filter(|(name, _, _)| *name == f.name).collect();
            assert_eq!(reports.len(), 1, "{}: one expected report", f.name);
            let (_, kernel, values) = reports[0];
            assert_eq!(*kernel, f.abi_probe, "{}: the registry's probe", f.name);
            assert!(
                !values.is_empty(),
                "{}: the probe reports something",
                f.name
            );
        }
        assert_eq!(exp.len(), crate::samkit_kernels::FAMILIES.len());
    }

    #[test]
    fn every_shared_struct_is_checked_by_a_static_assert() {
        // A struct of `sizes()` that no source checks with SK_ABI_CHECK would only be caught by a
        // probe, if one reports it; every struct gets the compile-time check.
        let sources: Vec<&str> = crate::samkit_kernels::FAMILIES
            .iter()
            .map(|f| f.source)
            .chain([crate::samkit_kernels::HEADER])
            .collect();
        for (name, _) in sizes() {
            let check = format!("SK_ABI_CHECK({name});");
            assert!(
                sources.iter().any(|s| s.contains(&check)),
                "{name}: no `{check}` in samkit-kernels' sources"
            );
        }
    }
}
