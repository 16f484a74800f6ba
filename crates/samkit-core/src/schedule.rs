//! Learning-rate schedules, evaluated per step from the base learning rate.
use serde::{Deserialize, Serialize};

use crate::error::{check_finite_nonneg, check_positive, Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` at each milestone epoch (the survey's ×0.1 at epochs 50 and 75).
    Step {
        milestones: Vec<u64>,
        gamma: f32,
    },
    /// `lr_min + (lr − lr_min)·(1 + cos(π·t/T))/2` over `total_steps` steps.
    Cosine {
        total_steps: u64,
        lr_min: f32,
    },
}

/// A schedule with an optional linear warm-up over its first steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base_lr: f32,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub steps_per_epoch: u64,
}

impl LrSchedule {
    pub fn constant(base_lr: f32) -> Self {
        LrSchedule {
            base_lr,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            steps_per_epoch: 1,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_positive("lr", self.base_lr)?;
        if self.steps_per_epoch == 0 {
            return Err(Error::hyper("steps_per_epoch", 0, "must be > 0"));
        }
        match &self.schedule {
            Schedule::Constant => {}
            Schedule::Step { milestones, gamma } => {
                check_positive("gamma", *gamma)?;
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::hyper(
                        "milestones",
                        format!("{milestones:?}"),
                        "must be strictly increasing",
                    ));
                }
            }
            Schedule::Cosine {
                total_steps,
                lr_min,
            } => {
                if *total_steps == 0 {
                    return Err(Error::hyper("total_steps", 0, "must be > 0"));
                }
                check_finite_nonneg("lr_min", *lr_min)?;
            }
        }
        Ok(())
    }

    /// The learning rate at 0-based step `t`.
    pub fn lr_at(&self, t: u64) -> f32 {
        let base = self.base_lr as f64;
        let lr = match &self.schedule {
            Schedule::Constant => base,
            Schedule::Step { milestones, gamma } => {
                let epoch = t / self.steps_per_epoch;
                let k = milestones.iter().filter(|&&m| epoch >= m).count() as i32;
                base * (*gamma as f64).powi(k)
            }
            Schedule::Cosine {
                total_steps,
                lr_min,
            } => {
                let lo = *lr_min as f64;
                let x = (t.min(*total_steps) as f64) / (*total_steps as f64);
                lo + (base - lo) * (1.0 + (std::f64::consts::PI * x).cos()) / 2.0
            }
        };
        let warm = if self.warmup_steps > 0 && t < self.warmup_steps {
            (t + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        (lr * warm) as f32
    }

    /// The largest and smallest rates the schedule reaches (GSAM ties ρ to them).
    pub fn range(&self) -> (f32, f32) {
        let lo = match &self.schedule {
            Schedule::Constant => self.base_lr as f64,
            Schedule::Step { milestones, gamma } => {
                let g = *gamma as f64;
                let last = (self.base_lr as f64) * g.powi(milestones.len() as i32);
                last.min(self.base_lr as f64)
            }
            Schedule::Cosine { lr_min, .. } => *lr_min as f64,
        };
        (self.base_lr, lo as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_schedule_drops_at_milestones() {
        let s = LrSchedule {
            base_lr: 0.1,
            schedule: Schedule::Step {
                milestones: vec![50, 75],
                gamma: 0.1,
            },
            warmup_steps: 0,
            steps_per_epoch: 10,
        };
        assert_eq!(s.lr_at(499), 0.1);
        assert!((s.lr_at(500) - 0.01).abs() < 1e-9);
        assert!((s.lr_at(750) - 0.001).abs() < 1e-9);
        assert!((s.range().1 - 0.001).abs() < 1e-9);
    }

    #[test]
    fn cosine_and_warmup() {
        let s = LrSchedule {
            base_lr: 1.0,
            schedule: Schedule::Cosine {
                total_steps: 100,
                lr_min: 0.0,
            },
            warmup_steps: 10,
            steps_per_epoch: 1,
        };
        assert!((s.lr_at(0) - 0.1 * 1.0).abs() < 1e-3);
        assert!((s.lr_at(50) - 0.5).abs() < 1e-6);
        assert!(s.lr_at(100).abs() < 1e-6);
        assert!(LrSchedule::constant(0.0).validate().is_err());
    }
}
