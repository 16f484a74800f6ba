//! Base optimizers with `torch.optim` semantics: SGD, Adam, AdamW, RMSprop.
//!
//! The SAM family only changes the direction the base optimizer is given; the update itself is
//! applied tile by tile by [`BaseOptimizer::apply`], fused by the caller with the weight
//! restore and the direction combination in one pass over memory.
use serde::{Deserialize, Serialize};

use crate::error::{check_finite_nonneg, check_positive, check_unit_interval, Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            lr: 0.1,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
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
}

impl Default for RmsProp {
    fn default() -> Self {
        RmsProp {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            momentum: 0.0,
            centered: false,
            weight_decay: 0.0,
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

/// Scalars of one update, computed once per step on the host.
#[derive(Clone, Copy, Debug)]
pub struct StepScalars {
    pub lr: f32,
    /// SGD: the momentum buffer is initialised with the direction instead of blended.
    pub first: bool,
    /// Adam: `lr / (1 − β1^t)`.
    pub step_size: f32,
    /// Adam: `sqrt(1 − β2^t)`.
    pub bc2_sqrt: f32,
}

/// Mutable per-element state of one tile, in the order of [`BaseOptimizer::state_buffers`].
pub struct TileState<'a> {
    pub s: [&'a mut [f32]; 3],
}

impl BaseOptimizer {
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
            BaseOptimizer::Adam(_) | BaseOptimizer::AdamW(_) => &["exp_avg", "exp_avg_sq"],
            BaseOptimizer::RmsProp(c) => match (c.momentum != 0.0, c.centered) {
                (false, false) => &["square_avg"],
                (true, false) => &["square_avg", "momentum_buffer"],
                (false, true) => &["square_avg", "grad_avg"],
                (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
            },
        }
    }

    /// Scalars for update number `step` (1-based, as torch's `state['step']` after increment).
    pub fn scalars(&self, lr: f32, step: u64) -> StepScalars {
        let (step_size, bc2_sqrt) = match self {
            BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) => {
                let t = step as i32;
                let bc1 = 1.0 - (c.beta1 as f64).powi(t);
                let bc2 = 1.0 - (c.beta2 as f64).powi(t);
                ((lr as f64 / bc1) as f32, bc2.sqrt() as f32)
            }
            _ => (0.0, 1.0),
        };
        StepScalars {
            lr,
            first: step == 1,
            step_size,
            bc2_sqrt,
        }
    }

    /// One update of a tile: `out = update(w, d)` with `w` the (restored) weights, `d` the
    /// direction. `out` and `w` may be the same memory only through `apply_in_place`.
    #[inline]
    pub fn apply(&self, sc: &StepScalars, w: &[f32], d: &[f32], out: &mut [f32], st: TileState) {
        let n = out.len();
        let (w, d) = (&w[..n], &d[..n]);
        let [s0, s1, s2] = st.s;
        match self {
            BaseOptimizer::Sgd(c) => {
                let (lr, mu, wd) = (sc.lr, c.momentum, c.weight_decay);
                let damp = 1.0 - c.dampening;
                // `d + wd·w` with wd = 0 is `d` for every finite w, so the loops below need no
                // branch on it and vectorise; each variant is its own loop for the same reason.
                let grads = d.iter().zip(w).map(|(&d, &w)| d + wd * w);
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
                let (b1, b2, wd) = (1.0 - c.beta1, c.beta2, c.weight_decay);
                let wscale = if decoupled { 1.0 - sc.lr * wd } else { 1.0 };
                for i in 0..n {
                    let mut g = d[i];
                    let mut wi = w[i];
                    if wd != 0.0 {
                        if decoupled {
                            wi *= wscale;
                        } else {
                            g += wd * wi;
                        }
                    }
                    let mi = m[i] + (g - m[i]) * b1;
                    let vi = v[i] * b2 + (1.0 - b2) * g * g;
                    m[i] = mi;
                    v[i] = vi;
                    let denom = vi.sqrt() / sc.bc2_sqrt + c.eps;
                    out[i] = wi - sc.step_size * (mi / denom);
                }
            }
            BaseOptimizer::RmsProp(c) => {
                let (a, wd, lr, mu) = (c.alpha, c.weight_decay, sc.lr, c.momentum);
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
                    let g = if wd != 0.0 { d[i] + wd * w[i] } else { d[i] };
                    let s = a * sq[i] + (1.0 - a) * g * g;
                    sq[i] = s;
                    let avg = match gavg.as_deref_mut() {
                        Some(ga) => {
                            let m = ga[i] + (g - ga[i]) * (1.0 - a);
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
}
