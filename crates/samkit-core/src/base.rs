//! Base optimizers with `torch.optim` semantics: SGD, Adam, AdamW, RMSprop.
//!
//! The SAM family only changes the direction the base optimizer is given; the update itself is
//! applied tile by tile by [`BaseOptimizer::apply`], fused by the caller with the weight
//! restore and the direction combination in one pass over memory.
//!
//! Derived constants (`1 − dampening`, `1 − β1`, `1 − β2`, `1 − α`, AdamW's `1 − lr·λ`, Adam's
//! `lr / (1 − β1^t)` and `sqrt(1 − β2^t)`) are formed as torch forms them: in f64 from the
//! hyperparameters' values as written ([`hyper_f64`]), rounded once to f32 where torch's kernels
//! compute in f32. [`BaseOptimizer::scalars`] forms them once per step; both backends read them
//! from there (the CUDA kernels receive them as arguments).
use serde::{Deserialize, Serialize};

use crate::error::{check_finite_nonneg, check_positive, check_unit_interval, Error, Result};

/// The value of an f32 hyperparameter as it was written: the shortest decimal that rounds to
/// `x` (Rust's `Display`), read as an f64.
///
/// torch keeps hyperparameters as Python floats (f64) and forms `1 − α` & co. in f64. Widening
/// the f32 instead (`x as f64`) would carry the f32 rounding of `x` into the difference:
/// `0.99f32 as f64` is 0.990000009…, so `1 − α` would round to 0.0099999905 where torch has
/// 0.0099999998 (the f32 nearest to 0.01).
pub fn hyper_f64(x: f32) -> f64 {
    // `Display` for f32 prints the shortest string that reads back as the same f32, which is
    // what a user wrote ("0.99", "1e-8"); the fallback is unreachable for f32's output but keeps
    // this total.
    x.to_string().parse::<f64>().unwrap_or(x as f64)
}

/// `1 − x` as torch forms it (f64 from the written value, one rounding to f32).
fn one_minus(x: f32) -> f32 {
    (1.0 - hyper_f64(x)) as f32
}

/// `torch.optim.SGD`'s hyperparameters; the default learning rate is torch's (1e-3, torch ≥ 2.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    /// Ascend instead of descend: the gradient is negated before the weight decay and the
    /// momentum (torch's `maximize=True`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// `torch.optim.Adam`'s (and `AdamW`'s) hyperparameters. `Default` is `Adam`'s defaults
/// (weight decay 0); [`Adam::adamw`] is `AdamW`'s (weight decay 0.01).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Divide by `sqrt(max_t v_t)` instead of `sqrt(v_t)` (torch's `amsgrad=True`); keeps the
    /// running maximum as the state buffer `max_exp_avg_sq`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub amsgrad: bool,
    /// Ascend instead of descend: the gradient is negated before everything else (torch's
    /// `maximize=True`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maximize: bool,
}

/// The default `eps` of `torch.optim.Adam`, `AdamW` and `RMSprop`.
pub const TORCH_EPS: f32 = 1e-8;

/// `torch.optim.AdamW`'s default weight decay.
pub const ADAMW_WEIGHT_DECAY: f32 = 0.01;

impl Default for Adam {
    fn default() -> Self {
        Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: TORCH_EPS,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl Adam {
    /// `torch.optim.AdamW`'s defaults: Adam's, with weight decay 0.01.
    pub fn adamw() -> Self {
        Adam {
            weight_decay: ADAMW_WEIGHT_DECAY,
            ..Adam::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsProp {
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    pub momentum: f32,
    pub centered: bool,
    pub weight_decay: f32,
    /// Ascend instead of descend: the gradient is negated before the weight decay and the
    /// averages (torch's `maximize=True`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maximize: bool,
}

impl Default for RmsProp {
    fn default() -> Self {
        RmsProp {
            lr: 1e-2,
            alpha: 0.99,
            eps: TORCH_EPS,
            momentum: 0.0,
            centered: false,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// The base optimizer and its hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BaseOptimizer {
    Sgd(Sgd),
    /// L2 weight decay added to the gradient.
    Adam(Adam),
    /// Decoupled weight decay: `w *= 1 - lr·λ` before the Adam update.
    AdamW(Adam),
    RmsProp(RmsProp),
}

/// Scalars of one update, computed once per step on the host (see the module docs for how).
#[derive(Clone, Copy, Debug)]
pub struct StepScalars {
    pub lr: f32,
    /// SGD: the momentum buffer is initialised with the direction instead of blended.
    pub first: bool,
    /// Adam: `lr / (1 − β1^t)`.
    pub step_size: f32,
    /// Adam: `sqrt(1 − β2^t)`.
    pub bc2_sqrt: f32,
    /// The step-independent constants (and AdamW's `1 − lr·λ`).
    pub k: BaseConsts,
}

/// The derived constants of a base optimizer, each formed in f64 and rounded once (0 where the
/// optimizer has no such constant). The GPU's update kernels take exactly these.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BaseConsts {
    /// SGD: `1 − dampening`.
    pub one_m_dampening: f32,
    /// Adam: `1 − β1` (the weight of `exp_avg.lerp_(g, 1 − β1)`).
    pub one_m_beta1: f32,
    /// Adam: `1 − β2`.
    pub one_m_beta2: f32,
    /// AdamW: `1 − lr·λ` (1 for Adam).
    pub wscale: f32,
    /// RMSprop: `1 − α`.
    pub one_m_alpha: f32,
}

/// Mutable per-element state of one tile, in the order of [`BaseOptimizer::state_buffers`].
pub struct TileState<'a> {
    pub s: [&'a mut [f32]; 3],
}

impl BaseOptimizer {
    /// AdamW with torch's defaults but the learning rate.
    pub fn adamw(lr: f32) -> Self {
        BaseOptimizer::AdamW(Adam {
            lr,
            ..Adam::adamw()
        })
    }

    pub fn sgd(lr: f32, momentum: f32, weight_decay: f32) -> Self {
        BaseOptimizer::Sgd(Sgd {
            lr,
            momentum,
            weight_decay,
            ..Sgd::default()
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            BaseOptimizer::Sgd(_) => "sgd",
            BaseOptimizer::Adam(_) => "adam",
            BaseOptimizer::AdamW(_) => "adamw",
            BaseOptimizer::RmsProp(_) => "rmsprop",
        }
    }

    pub fn lr(&self) -> f32 {
        match self {
            BaseOptimizer::Sgd(c) => c.lr,
            BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) => c.lr,
            BaseOptimizer::RmsProp(c) => c.lr,
        }
    }

    pub fn weight_decay(&self) -> f32 {
        match self {
            BaseOptimizer::Sgd(c) => c.weight_decay,
            BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) => c.weight_decay,
            BaseOptimizer::RmsProp(c) => c.weight_decay,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_positive("lr", self.lr())?;
        check_finite_nonneg("weight_decay", self.weight_decay())?;
        match self {
            BaseOptimizer::Sgd(c) => {
                check_finite_nonneg("momentum", c.momentum)?;
                check_unit_interval("dampening", c.dampening, true)?;
                if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
                    return Err(Error::hyper(
                        "nesterov",
                        true,
                        "requires momentum > 0 and zero dampening",
                    ));
                }
            }
            BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) => {
                check_unit_interval("beta1", c.beta1, false)?;
                check_unit_interval("beta2", c.beta2, false)?;
                check_positive("eps", c.eps)?;
            }
            BaseOptimizer::RmsProp(c) => {
                check_unit_interval("alpha", c.alpha, true)?;
                check_positive("eps", c.eps)?;
                check_finite_nonneg("momentum", c.momentum)?;
            }
        }
        Ok(())
    }

    /// Names of the per-element state buffers this optimizer keeps (at most three).
    pub fn state_buffers(&self) -> &'static [&'static str] {
        match self {
            BaseOptimizer::Sgd(c) if c.momentum != 0.0 => &["momentum_buffer"],
            BaseOptimizer::Sgd(_) => &[],
            BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) if c.amsgrad => {
                &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
            }
            BaseOptimizer::Adam(_) | BaseOptimizer::AdamW(_) => &["exp_avg", "exp_avg_sq"],
            BaseOptimizer::RmsProp(c) => match (c.momentum != 0.0, c.centered) {
                (false, false) => &["square_avg"],
                (true, false) => &["square_avg", "momentum_buffer"],
                (false, true) => &["square_avg", "grad_avg"],
                (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
            },
        }
    }

    /// The derived constants at learning rate `lr` (AdamW's `1 − lr·λ` depends on it).
    pub fn consts(&self, lr: f32) -> BaseConsts {
        match self {
            BaseOptimizer::Sgd(c) => BaseConsts {
                one_m_dampening: one_minus(c.dampening),
                ..BaseConsts::default()
            },
            BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) => BaseConsts {
                one_m_beta1: one_minus(c.beta1),
                one_m_beta2: one_minus(c.beta2),
                // torch: `param.mul_(1 - lr * weight_decay)`, in f64.
                wscale: if matches!(self, BaseOptimizer::AdamW(_)) {
                    (1.0 - hyper_f64(lr) * hyper_f64(c.weight_decay)) as f32
                } else {
                    1.0
                },
                ..BaseConsts::default()
            },
            BaseOptimizer::RmsProp(c) => BaseConsts {
                one_m_alpha: one_minus(c.alpha),
                ..BaseConsts::default()
            },
        }
    }

    /// Adam's `β1` and `β2` as torch holds them (f64, as written), for the bias corrections;
    /// `None` for the other optimizers.
    pub fn adam_betas(&self) -> Option<(f64, f64)> {
        match self {
            BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) => {
                Some((hyper_f64(c.beta1), hyper_f64(c.beta2)))
            }
            _ => None,
        }
    }

    /// Scalars for update number `step` (1-based, as torch's `state['step']` after increment).
    pub fn scalars(&self, lr: f32, step: u64) -> StepScalars {
        let (step_size, bc2_sqrt) = match self.adam_betas() {
            Some((beta1, beta2)) => {
                // torch (single-tensor Adam): `step_size = lr / (1 - beta1 ** step)` and
                // `bias_correction2 ** 0.5`, in f64, rounded to f32 by the f32 kernels.
                // The powers are repeated squaring (`powi`, as the kernels' `sk_powi`) so that
                // both backends agree bit for bit; libm's `pow` may differ by an f64 ulp, which
                // survives the rounding to f32 only in rare ties.
                let t = step as i32;
                let bc1 = 1.0 - beta1.powi(t);
                let bc2 = 1.0 - beta2.powi(t);
                ((hyper_f64(lr) / bc1) as f32, bc2.sqrt() as f32)
            }
            None => (0.0, 1.0),
        };
        StepScalars {
            lr,
            first: step == 1,
            step_size,
            bc2_sqrt,
            k: self.consts(lr),
        }
    }

    /// One update of a tile: `out = update(w, d)` with `w` the (restored) weights, `d` the
    /// direction. `out` and `w` may be the same memory only through `apply_in_place`.
    /// Always inlined: the update pass compiles it into its AVX2 copy (`passes::simd`).
    #[inline(always)]
    pub fn apply(&self, sc: &StepScalars, w: &[f32], d: &[f32], out: &mut [f32], st: TileState) {
        let n = out.len();
        let (w, d) = (&w[..n], &d[..n]);
        let [s0, s1, s2] = st.s;
        match self {
            BaseOptimizer::Sgd(c) => {
                let (lr, mu, wd) = (sc.lr, c.momentum, c.weight_decay);
                let damp = sc.k.one_m_dampening;
                // torch: `grad = -grad if maximize`, before the weight decay. `±1·d` is exact
                // (a sign flip), so the factor keeps one branch-free loop per variant.
                let sign = if c.maximize { -1.0f32 } else { 1.0 };
                // `d + wd·w` with wd = 0 is `d` for every finite w, so the loops below need no
                // branch on it and vectorise; each variant is its own loop for the same reason.
                let grads = d.iter().zip(w).map(|(&d, &w)| sign * d + wd * w);
                if mu == 0.0 {
                    for ((o, &wv), g) in out.iter_mut().zip(w).zip(grads) {
                        *o = wv - lr * g;
                    }
                } else {
                    let b = &mut s0[..n];
                    let it = out.iter_mut().zip(w).zip(b.iter_mut()).zip(grads);
                    match (sc.first, c.nesterov) {
                        (true, false) => it.for_each(|(((o, &wv), b), g)| {
                            *b = g;
                            *o = wv - lr * g;
                        }),
                        (true, true) => it.for_each(|(((o, &wv), b), g)| {
                            *b = g;
                            *o = wv - lr * (g + mu * g);
                        }),
                        (false, false) => it.for_each(|(((o, &wv), b), g)| {
                            let m = mu * *b + damp * g;
                            *b = m;
                            *o = wv - lr * m;
                        }),
                        (false, true) => it.for_each(|(((o, &wv), b), g)| {
                            let m = mu * *b + damp * g;
                            *b = m;
                            *o = wv - lr * (g + mu * m);
                        }),
                    }
                }
            }
            BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) => {
                let decoupled = matches!(self, BaseOptimizer::AdamW(_));
                let (m, v) = (&mut s0[..n], &mut s1[..n]);
                // amsgrad's running maximum is the third buffer (`state_buffers`).
                let mut vmax = c.amsgrad.then(|| &mut s2[..n]);
                let (b1, b2, wd) = (sc.k.one_m_beta1, c.beta2, c.weight_decay);
                let (one_m_b2, wscale) = (sc.k.one_m_beta2, sc.k.wscale);
                for i in 0..n {
                    // torch: `grad = -grad if maximize`, before the weight decay.
                    let mut g = if c.maximize { -d[i] } else { d[i] };
                    let mut wi = w[i];
                    if wd != 0.0 {
                        if decoupled {
                            wi *= wscale;
                        } else {
                            g += wd * wi;
                        }
                    }
                    let mi = m[i] + (g - m[i]) * b1;
                    let vi = v[i] * b2 + one_m_b2 * g * g;
                    m[i] = mi;
                    v[i] = vi;
                    // torch: `torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)`.
                    let vd = match vmax.as_deref_mut() {
                        Some(vm) => {
                            let x = vm[i].max(vi);
                            vm[i] = x;
                            x
                        }
                        None => vi,
                    };
                    let denom = vd.sqrt() / sc.bc2_sqrt + c.eps;
                    out[i] = wi - sc.step_size * (mi / denom);
                }
            }
            BaseOptimizer::RmsProp(c) => {
                let (a, wd, lr, mu) = (c.alpha, c.weight_decay, sc.lr, c.momentum);
                let one_m_a = sc.k.one_m_alpha;
                let sq = &mut s0[..n];
                // Buffers after `square_avg` follow `state_buffers`: momentum first, if any.
                let (buf, gavg) = match (mu != 0.0, c.centered) {
                    (true, true) => (Some(&mut s1[..n]), Some(&mut s2[..n])),
                    (true, false) => (Some(&mut s1[..n]), None),
                    (false, true) => (None, Some(&mut s1[..n])),
                    (false, false) => (None, None),
                };
                let mut gavg = gavg;
                let mut buf = buf;
                for i in 0..n {
                    // torch: `grad = -grad if maximize`, before the weight decay.
                    let g = if c.maximize { -d[i] } else { d[i] };
                    let g = if wd != 0.0 { g + wd * w[i] } else { g };
                    let s = a * sq[i] + one_m_a * g * g;
                    sq[i] = s;
                    let avg = match gavg.as_deref_mut() {
                        Some(ga) => {
                            let m = ga[i] + (g - ga[i]) * one_m_a;
                            ga[i] = m;
                            (s - m * m).sqrt() + c.eps
                        }
                        None => s.sqrt() + c.eps,
                    };
                    out[i] = match buf.as_deref_mut() {
                        Some(b) => {
                            let bi = mu * b[i] + g / avg;
                            b[i] = bi;
                            w[i] - lr * bi
                        }
                        None => w[i] - lr * (g / avg),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(opt: &BaseOptimizer, w: &mut [f32], grads: &[&[f32]]) {
        let n = w.len();
        let mut st = vec![vec![0f32; n]; 3];
        for (t, g) in grads.iter().enumerate() {
            let sc = opt.scalars(opt.lr(), t as u64 + 1);
            let src = w.to_vec();
            let [a, b, c] = &mut st[..] else {
                unreachable!()
            };
            opt.apply(&sc, &src, g, w, TileState { s: [a, b, c] });
        }
    }

    #[test]
    fn sgd_momentum_matches_hand_computation() {
        let opt = BaseOptimizer::Sgd(Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            ..Sgd::default()
        });
        let mut w = vec![1.0f32];
        run(&opt, &mut w, &[&[0.5], &[0.25]]);
        // step 1: d = 0.5 + 0.01 = 0.51, b = 0.51, w = 1 - 0.051 = 0.949
        // step 2: d = 0.25 + 0.00949 = 0.25949, b = 0.9*0.51 + 0.25949 = 0.71849
        let expect = 0.949f64 - 0.1 * 0.71849;
        assert!((w[0] as f64 - expect).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let opt = BaseOptimizer::Adam(Adam {
            lr: 0.01,
            ..Adam::default()
        });
        let mut w = vec![1.0f32, -2.0];
        run(&opt, &mut w, &[&[3.0, -0.5]]);
        // bias-corrected first step is lr * sign(g) (up to eps)
        assert!((w[0] - 0.99).abs() < 1e-6);
        assert!((w[1] + 1.99).abs() < 1e-6);
    }

    #[test]
    fn validation_rejects_bad_values() {
        assert!(BaseOptimizer::sgd(0.0, 0.9, 0.0).validate().is_err());
        assert!(BaseOptimizer::sgd(-1.0, 0.9, 0.0).validate().is_err());
        assert!(BaseOptimizer::sgd(f32::NAN, 0.9, 0.0).validate().is_err());
        let mut s = Sgd {
            nesterov: true,
            ..Sgd::default()
        };
        assert!(BaseOptimizer::Sgd(s.clone()).validate().is_err());
        s.momentum = 0.9;
        assert!(BaseOptimizer::Sgd(s).validate().is_ok());
    }

    /// The bits of torch's constants (Python: `struct.pack('<f', 1 - 0.99)` & co., i.e. formed
    /// in f64 from the written value and rounded once to f32).
    #[test]
    fn derived_constants_are_torchs() {
        let bits = |x: f32| x.to_bits();
        let rms = BaseOptimizer::RmsProp(RmsProp::default());
        // torch: 0.0099999998 (0x3c23d70a); the f32 difference 1 − 0.99f32 is 0x3c23d700.
        assert_eq!(bits(rms.consts(1e-2).one_m_alpha), 0x3c23d70a);
        let adamw = BaseOptimizer::adamw(1e-3);
        let k = adamw.consts(1e-3);
        assert_eq!(bits(k.one_m_beta1), 0x3dcccccd);
        assert_eq!(bits(k.one_m_beta2), 0x3a83126f);
        // `1 - lr * weight_decay` with torch's AdamW defaults.
        assert_eq!(bits(k.wscale), 0x3f7fff58);
        let sc = adamw.scalars(1e-3, 1);
        // `lr / (1 - 0.9)` and `(1 - 0.999) ** 0.5`.
        assert_eq!(bits(sc.step_size), 0x3c23d70a);
        assert_eq!(bits(sc.bc2_sqrt), 0x3d0186e2);
        let sgd = BaseOptimizer::Sgd(Sgd {
            momentum: 0.9,
            dampening: 0.3,
            ..Sgd::default()
        });
        assert_eq!(bits(sgd.consts(0.1).one_m_dampening), 0x3f333333);
        // Adam (not W) has no decoupled decay: the scale is exactly 1.
        let adam = BaseOptimizer::Adam(Adam {
            weight_decay: 0.1,
            ..Adam::default()
        });
        assert_eq!(adam.consts(0.5).wscale, 1.0);
    }

    #[test]
    fn hyper_f64_reads_the_written_decimal() {
        assert_eq!(hyper_f64(0.99), 0.99);
        assert_eq!(hyper_f64(1e-8), 1e-8);
        assert_eq!(hyper_f64(0.001), 0.001);
        assert_eq!(hyper_f64(3.0), 3.0);
        assert!(hyper_f64(f32::NAN).is_nan());
        assert_eq!(hyper_f64(f32::INFINITY), f64::INFINITY);
    }

    #[test]
    fn defaults_are_torchs() {
        assert_eq!(Sgd::default().lr, 1e-3);
        assert_eq!(Adam::default().weight_decay, 0.0);
        assert_eq!(Adam::adamw().weight_decay, 0.01);
        assert_eq!(BaseOptimizer::adamw(0.1).weight_decay(), 0.01);
        assert_eq!(Adam::default().eps, 1e-8);
        let r = RmsProp::default();
        assert_eq!((r.lr, r.alpha, r.eps), (1e-2, 0.99, 1e-8));
    }

    #[test]
    fn adam_maximize_is_descent_on_the_negated_gradient() {
        for decoupled in [false, true] {
            let c = Adam {
                lr: 0.01,
                weight_decay: 0.1,
                ..Adam::default()
            };
            let wrap = |c: Adam| {
                if decoupled {
                    BaseOptimizer::AdamW(c)
                } else {
                    BaseOptimizer::Adam(c)
                }
            };
            let up = wrap(Adam {
                maximize: true,
                ..c.clone()
            });
            let down = wrap(c);
            let (mut a, mut b) = (vec![0.5f32, -1.0, 2.0], vec![0.5f32, -1.0, 2.0]);
            run(&up, &mut a, &[&[0.3, -0.2, 1.0], &[0.1, 0.4, -2.0]]);
            run(&down, &mut b, &[&[-0.3, 0.2, -1.0], &[-0.1, -0.4, 2.0]]);
            assert_eq!(a, b);
            // A positive gradient under maximize moves the weight up.
            let mut w = vec![0.0f32];
            run(&up, &mut w, &[&[1.0]]);
            assert!(w[0] > 0.0);
        }
    }

    /// Every SGD and RMSprop variant: `maximize` on `g` is exactly descent on `−g`, weight decay
    /// included (torch negates the gradient before it), and a positive gradient moves up.
    #[test]
    fn sgd_and_rmsprop_maximize_is_descent_on_the_negated_gradient() {
        let sgd = |momentum, dampening, nesterov, maximize| {
            BaseOptimizer::Sgd(Sgd {
                lr: 0.1,
                momentum,
                dampening,
                nesterov,
                weight_decay: 0.05,
                maximize,
            })
        };
        let rms = |momentum, centered, maximize| {
            BaseOptimizer::RmsProp(RmsProp {
                momentum,
                centered,
                weight_decay: 0.05,
                maximize,
                ..RmsProp::default()
            })
        };
        let pairs = [
            (sgd(0.0, 0.0, false, true), sgd(0.0, 0.0, false, false)),
            (sgd(0.9, 0.1, false, true), sgd(0.9, 0.1, false, false)),
            (sgd(0.9, 0.0, true, true), sgd(0.9, 0.0, true, false)),
            (rms(0.0, false, true), rms(0.0, false, false)),
            (rms(0.9, false, true), rms(0.9, false, false)),
            (rms(0.0, true, true), rms(0.0, true, false)),
            (rms(0.9, true, true), rms(0.9, true, false)),
        ];
        for (up, down) in pairs {
            let (mut a, mut b) = (vec![0.5f32, -1.0, 2.0], vec![0.5f32, -1.0, 2.0]);
            let g: [&[f32]; 3] = [&[0.3, -0.2, 1.0], &[0.1, 0.4, -2.0], &[-0.7, 0.0, 0.25]];
            let neg: Vec<Vec<f32>> = g.iter().map(|s| s.iter().map(|x| -x).collect()).collect();
            let neg: Vec<&[f32]> = neg.iter().map(Vec::as_slice).collect();
            run(&up, &mut a, &g);
            run(&down, &mut b, &neg);
            assert_eq!(a, b, "{up:?}");
            let mut w = vec![0.0f32];
            run(&up, &mut w, &[&[1.0]]);
            assert!(w[0] > 0.0, "{up:?}");
        }
    }

    /// The order of torch ≥ 1.13 (negate, then add `λ·w`), not torch 1.11's (add `λ·w`, then
    /// step by `+lr`), which would give `1 + 0.1·(0.5 + 0.01) = 1.051`.
    #[test]
    fn sgd_maximize_negates_before_the_weight_decay() {
        let opt = BaseOptimizer::Sgd(Sgd {
            lr: 0.1,
            weight_decay: 0.01,
            maximize: true,
            ..Sgd::default()
        });
        let mut w = vec![1.0f32];
        run(&opt, &mut w, &[&[0.5]]);
        // g = −0.5 + 0.01·1 = −0.49; w = 1 − 0.1·(−0.49) = 1.049, each op rounded in f32.
        let g = -0.5f32 + 0.01f32 * 1.0;
        assert_eq!(w[0], 1.0 - 0.1f32 * g);
        assert!((w[0] as f64 - 1.049).abs() < 1e-6);
    }

    /// `maximize` is written only when set and read as false when absent, so state files and
    /// configs from before the field load unchanged.
    #[test]
    fn maximize_defaults_to_false_in_serde() {
        let old_sgd = r#"{"type":"sgd","lr":0.1,"momentum":0.9,"dampening":0.0,"nesterov":false,"weight_decay":0.0}"#;
        let old_rms = r#"{"type":"rmsprop","lr":0.01,"alpha":0.99,"eps":1e-8,"momentum":0.0,"centered":false,"weight_decay":0.0}"#;
        for text in [old_sgd, old_rms] {
            let b: BaseOptimizer = serde_json::from_str(text).expect("an old config");
            let on = match &b {
                BaseOptimizer::Sgd(c) => c.maximize,
                BaseOptimizer::RmsProp(c) => c.maximize,
                _ => unreachable!(),
            };
            assert!(!on);
            assert!(!serde_json::to_string(&b).unwrap().contains("maximize"));
        }
        let up = BaseOptimizer::RmsProp(RmsProp {
            maximize: true,
            ..RmsProp::default()
        });
        let text = serde_json::to_string(&up).unwrap();
        assert!(text.contains(r#""maximize":true"#));
        assert_eq!(serde_json::from_str::<BaseOptimizer>(&text).unwrap(), up);
    }

    #[test]
    fn amsgrad_divides_by_the_running_maximum() {
        let opt = BaseOptimizer::Adam(Adam {
            lr: 0.1,
            amsgrad: true,
            ..Adam::default()
        });
        assert_eq!(
            opt.state_buffers(),
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        );
        let mut st = vec![vec![0f32; 1]; 3];
        let mut w = vec![1.0f32];
        for (t, g) in [[2.0f32], [0.0]].iter().enumerate() {
            let sc = opt.scalars(0.1, t as u64 + 1);
            let src = w.clone();
            let [a, b, c] = &mut st[..] else {
                unreachable!()
            };
            opt.apply(&sc, &src, g, &mut w, TileState { s: [a, b, c] });
        }
        let k = opt.consts(0.1);
        let v1 = k.one_m_beta2 * 2.0 * 2.0;
        let v2 = v1 * 0.999;
        assert_eq!(st[1][0], v2);
        // The maximum keeps v1 although v decayed.
        assert_eq!(st[2][0], v1);
        // Step 2 by hand with the maximum in the denominator.
        let m1 = 0.0 + (2.0 - 0.0) * k.one_m_beta1;
        let m2 = m1 + (0.0 - m1) * k.one_m_beta1;
        let sc = opt.scalars(0.1, 2);
        let w1 = {
            let s1 = opt.scalars(0.1, 1);
            1.0 - s1.step_size * (m1 / (v1.sqrt() / s1.bc2_sqrt + 1e-8))
        };
        let expect = w1 - sc.step_size * (m2 / (v1.sqrt() / sc.bc2_sqrt + 1e-8));
        assert_eq!(w[0], expect);
    }
}
