//! MESA and SAF (Du et al., NeurIPS 2022; ALGORITHMS.md "MESA and SAF"): sharpness-aware
//! training with no second pass, as a distillation term on the base optimizer's loss,
//! `L = CE_ls(z, y) + λ·τ²·mean_i KL(softmax(t_i/τ) ‖ softmax(z_i/τ))`
//! (`samkit_nn::distill`), active from epoch `E_start` on.
//!
//! - [`MesaTeacher`]: `t = f(w_ema; x_B)` without gradient (batch norm in inference mode with
//!   the averaged running statistics); `w_ema ← d·w_ema + (1−d)·w` after every optimizer step,
//!   the running statistics averaged the same way. The f32 update is written once per backend:
//!   [`ema_update_host`] on the CPU (and for the statistics, which live on the host), the
//!   `sk_nn_ema` kernel (`samkit_nn::Cuda::ema_update`) on a device, the same rounding.
//! - [`SafBuffer`]: `t` = the logits the sample got `Ẽ` epochs earlier, from a ring buffer of
//!   `N_train × (Ẽ+1) × C` values indexed by the sample's dataset index
//!   (`samkit_data::Batch::indices`), written each step with that step's logits.
//!
//! Both save their state into the checkpoint folder (`teacher.safetensors`: the EMA model with
//! PyTorch names; `saf.bin`), so a resumed run continues exactly.
use std::path::Path;

use samkit_nn::distill::DistillTargets;
use samkit_nn::{Backend, BnMode, BufferData, Cpu, Cuda, Model, NamedBuffer, ResNet18, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// `d` of MESA (the paper's and the official code's EMA decay).
pub const MESA_DECAY: f32 = 0.9998;
/// `λ` of MESA.
pub const MESA_LAMBDA: f32 = 0.8;
/// `λ` of SAF.
pub const SAF_LAMBDA: f32 = 0.3;
/// `Ẽ` of SAF: the teacher's logits are this many epochs old.
pub const SAF_LAG: u32 = 3;
/// `E_start`: the term is active from this epoch on (plain base steps before).
pub const DISTILL_START: u32 = 5;
/// `τ` of both.
pub const DISTILL_TAU: f32 = samkit_nn::distill::DEFAULT_TAU;
/// The most epochs SAF may look back (its buffer holds `Ẽ + 1` epochs of logits).
pub const MAX_SAF_LAG: u32 = 64;

/// Where the teacher's logits come from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Teacher {
    /// MESA: an exponential moving average of the weights with decay `decay`.
    Mesa { decay: f32 },
    /// SAF: the logits of `lag` epochs earlier.
    Saf { lag: u32 },
}

/// MESA's or SAF's settings, recorded in the run's config.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    pub teacher: Teacher,
    /// `λ` (0: the base optimizer's trajectory exactly).
    pub lambda: f32,
    /// `τ`.
    pub tau: f32,
    /// `E_start`.
    pub start_epoch: u32,
}

impl DistillConfig {
    /// MESA with the spec's defaults.
    pub fn mesa() -> Self {
        DistillConfig {
            teacher: Teacher::Mesa { decay: MESA_DECAY },
            lambda: MESA_LAMBDA,
            tau: DISTILL_TAU,
            start_epoch: DISTILL_START,
        }
    }

    /// SAF with the spec's defaults.
    pub fn saf() -> Self {
        DistillConfig {
            teacher: Teacher::Saf { lag: SAF_LAG },
            lambda: SAF_LAMBDA,
            tau: DISTILL_TAU,
            start_epoch: DISTILL_START,
        }
    }

    /// The name of the method (`mesa`, `saf`).
    pub fn name(&self) -> &'static str {
        match self.teacher {
            Teacher::Mesa { .. } => "mesa",
            Teacher::Saf { .. } => "saf",
        }
    }

    /// An error naming the flag (`distill-lambda`, `distill-tau`, `mesa-decay`, `saf-lag`)
    /// of a value out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(TrainError::invalid(
                "distill-lambda",
                format!("{} must be finite and ≥ 0", self.lambda),
            ));
        }
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(TrainError::invalid(
                "distill-tau",
                format!("{} must be finite and > 0", self.tau),
            ));
        }
        match self.teacher {
            Teacher::Mesa { decay } if !(0.0..1.0).contains(&decay) => Err(TrainError::invalid(
                "mesa-decay",
                format!("{decay} must lie in [0, 1)"),
            )),
            Teacher::Saf { lag } if !(1..=MAX_SAF_LAG).contains(&lag) => Err(TrainError::invalid(
                "saf-lag",
                format!("{lag} must lie between 1 and {MAX_SAF_LAG}"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the term is active in `epoch` (from `E_start` on).
    pub fn active(&self, epoch: u32) -> bool {
        epoch >= self.start_epoch
    }
}

/// `ema ← d·ema + (1 − d)·w` in f32: two products and a sum, `1 − d` rounded once (the
/// device's `sk_nn_ema` rounds the same way).
pub fn ema_update_host(ema: &mut [f32], w: &[f32], d: f32) {
    let c = 1.0 - d;
    for (e, &x) in ema.iter_mut().zip(w) {
        *e = d * *e + c * x;
    }
}

/// What MESA's teacher needs of a backend: an owned copy of a parameter arena, the EMA
/// update on it, and host copies for checkpoints.
pub trait TeacherBackend: Backend {
    /// An owned arena.
    type Owned;
    fn arena(o: &Self::Owned) -> &Self::Arena;
    fn copy_arena(&mut self, src: &Self::Arena) -> Result<Self::Owned>;
    fn upload_arena(&mut self, v: &[f32]) -> Result<Self::Owned>;
    fn to_host(&mut self, a: &Self::Arena) -> Result<Vec<f32>>;
    /// `ema ← d·ema + (1 − d)·w`.
    fn ema(&mut self, ema: &mut Self::Owned, w: &Self::Arena, d: f32) -> Result<()>;
    /// Waits for the work enqueued so far (a no-op on the host), so that the wall clock
    /// around the teacher's work times that work alone.
    fn synchronize(&mut self) -> Result<()>;
}

impl TeacherBackend for Cpu {
    type Owned = Vec<f32>;

    fn arena(o: &Vec<f32>) -> &[f32] {
        o
    }

    fn copy_arena(&mut self, src: &[f32]) -> Result<Vec<f32>> {
        Ok(src.to_vec())
    }

    fn upload_arena(&mut self, v: &[f32]) -> Result<Vec<f32>> {
        Ok(v.to_vec())
    }

    fn to_host(&mut self, a: &[f32]) -> Result<Vec<f32>> {
        Ok(a.to_vec())
    }

    fn ema(&mut self, ema: &mut Vec<f32>, w: &[f32], d: f32) -> Result<()> {
        if ema.len() != w.len() {
            return Err(TrainError::Run(format!(
                "EMA of {} values from {} weights",
                ema.len(),
                w.len()
            )));
        }
        ema_update_host(ema, w, d);
        Ok(())
    }

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
}

impl TeacherBackend for Cuda {
    type Owned = cudarc::driver::CudaSlice<f32>;

    fn arena(o: &Self::Owned) -> &Self::Arena {
        o
    }

    fn copy_arena(&mut self, src: &Self::Arena) -> Result<Self::Owned> {
        let host = self.arena_to_host(src)?;
        Ok(self.arena_from(&host)?)
    }

    fn upload_arena(&mut self, v: &[f32]) -> Result<Self::Owned> {
        Ok(self.arena_from(v)?)
    }

    fn to_host(&mut self, a: &Self::Arena) -> Result<Vec<f32>> {
        Ok(self.arena_to_host(a)?)
    }

    fn ema(&mut self, ema: &mut Self::Owned, w: &Self::Arena, d: f32) -> Result<()> {
        Ok(self.ema_update(ema, w, d)?)
    }

    fn synchronize(&mut self) -> Result<()> {
        Ok(Cuda::synchronize(self)?)
    }
}

/// MESA's teacher: the EMA of the weights and of the batch-norm running statistics.
pub struct MesaTeacher<B: TeacherBackend> {
    pub decay: f32,
    params: B::Owned,
    buffers: Vec<NamedBuffer>,
}

/// The checkpoint file of MESA's teacher (a model file with PyTorch names).
pub const TEACHER_FILE: &str = "teacher.safetensors";

impl<B: TeacherBackend> MesaTeacher<B> {
    /// A teacher equal to the model now (`w_ema = w`, the current running statistics).
    pub fn new(model: &mut ResNet18<B>, params: &B::Arena, decay: f32) -> Result<Self> {
        let buffers = model.buffers()?;
        let params = model.backend_mut().copy_arena(params)?;
        Ok(MesaTeacher {
            decay,
            params,
            buffers,
        })
    }

    /// After an optimizer step: the weights and the running statistics move towards the
    /// model's (`num_batches_tracked` is copied: inference-mode batch norm does not read it).
    pub fn update(&mut self, model: &mut ResNet18<B>, params: &B::Arena) -> Result<()> {
        let d = self.decay;
        model.backend_mut().ema(&mut self.params, params, d)?;
        let student = model.buffers()?;
        for (e, s) in self.buffers.iter_mut().zip(&student) {
            match (&mut e.data, &s.data) {
                (BufferData::F32(e), BufferData::F32(s)) if e.len() == s.len() => {
                    ema_update_host(e, s, d)
                }
                (BufferData::I64(e), BufferData::I64(s)) => e.clone_from(s),
                _ => {
                    return Err(TrainError::Run(format!(
                        "teacher buffer `{}` does not match the model's",
                        e.name
                    )))
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on the model with the teacher's running statistics in place of its own, and
    /// puts the model's back (bit for bit) whatever `f` returns.
    fn with_teacher_stats<T>(
        &mut self,
        model: &mut ResNet18<B>,
        f: impl FnOnce(&mut ResNet18<B>, &B::Owned) -> Result<T>,
    ) -> Result<T> {
        let student = model.buffers()?;
        model.set_buffers(&self.buffers)?;
        let out = f(model, &self.params);
        model.set_buffers(&student)?;
        out
    }

    /// `t = f(w_ema; x)`: the teacher's logits `[n, k]` on the host, without gradient, batch
    /// norm in inference mode with the averaged statistics. The model's own statistics and
    /// what its last training pass kept are left as they were.
    pub fn logits(&mut self, model: &mut ResNet18<B>, x: &Tensor) -> Result<Vec<f32>> {
        self.with_teacher_stats(model, |m, p| {
            let z = m.forward(B::arena(p), x, BnMode::Eval)?;
            Ok(z.as_slice()?.to_vec())
        })
    }

    /// The teacher's weights on the host.
    pub fn host_params(&mut self, model: &mut ResNet18<B>) -> Result<Vec<f32>> {
        model.backend_mut().to_host(B::arena(&self.params))
    }

    /// The teacher's running statistics.
    pub fn buffers(&self) -> &[NamedBuffer] {
        &self.buffers
    }

    /// Writes the teacher as a model file (`dir/teacher.safetensors`, PyTorch names).
    pub fn save(&mut self, model: &mut ResNet18<B>, dir: &Path) -> Result<()> {
        let host = self.host_params(model)?;
        self.with_teacher_stats(model, |m, _| {
            Ok(samkit_nn::checkpoint::save(
                dir.join(TEACHER_FILE),
                m,
                &host,
            )?)
        })
    }

    /// Reads what [`MesaTeacher::save`] wrote.
    pub fn load(&mut self, model: &mut ResNet18<B>, dir: &Path) -> Result<()> {
        let mut host = vec![0f32; model.layout().len()];
        let student = model.buffers()?;
        let loaded = samkit_nn::checkpoint::load(dir.join(TEACHER_FILE), model, &mut host)
            .and_then(|()| {
                let b = model.buffers()?;
                Ok(b)
            });
        model.set_buffers(&student)?;
        self.buffers = loaded?;
        self.params = model.backend_mut().upload_arena(&host)?;
        Ok(())
    }
}

/// The checkpoint file of SAF's buffer.
pub const SAF_FILE: &str = "saf.bin";
const SAF_MAGIC: &[u8; 8] = b"SKSAF01\0";

/// SAF's ring buffer: for every training sample, the logits of its last `Ẽ + 1` epochs, slot
/// `epoch mod (Ẽ+1)`, and the epoch each slot was written in (a sample an epoch skipped, e.g.
/// past `--steps-per-epoch`, has no teacher `Ẽ` epochs later).
#[derive(Clone, Debug, PartialEq)]
pub struct SafBuffer {
    lag: u32,
    classes: usize,
    samples: usize,
    /// `[samples, lag + 1, classes]`.
    logits: Vec<f32>,
    /// `[samples, lag + 1]`: the epoch written, −1 for never.
    written: Vec<i64>,
}

impl SafBuffer {
    /// An empty buffer for `samples` training samples of `classes` classes.
    pub fn new(samples: usize, classes: usize, lag: u32) -> Result<Self> {
        let slots = lag as usize + 1;
        let len = samples
            .checked_mul(slots)
            .and_then(|v| v.checked_mul(classes))
            .ok_or_else(|| {
                TrainError::invalid("saf-lag", "the buffer's size overflows".to_string())
            })?;
        Ok(SafBuffer {
            lag,
            classes,
            samples,
            logits: vec![0.0; len],
            written: vec![-1; samples * slots],
        })
    }

    fn slots(&self) -> usize {
        self.lag as usize + 1
    }

    fn check(&self, indices: &[usize]) -> Result<()> {
        match indices.iter().find(|&&i| i >= self.samples) {
            Some(i) => Err(TrainError::Run(format!(
                "dataset index {i} of a SAF buffer of {} samples",
                self.samples
            ))),
            None => Ok(()),
        }
    }

    /// The teacher logits `[n, k]` of the samples `indices` in `epoch` (their logits of
    /// `epoch − Ẽ`) and which samples have them (zeros where not).
    pub fn teacher(&self, indices: &[usize], epoch: u32) -> Result<(Vec<f32>, Vec<bool>)> {
        self.check(indices)?;
        let k = self.classes;
        let mut t = vec![0f32; indices.len() * k];
        let mut present = vec![false; indices.len()];
        if let Some(src) = epoch.checked_sub(self.lag) {
            let slot = src as usize % self.slots();
            for (j, &i) in indices.iter().enumerate() {
                let cell = i * self.slots() + slot;
                if self.written[cell] == i64::from(src) {
                    t[j * k..(j + 1) * k].copy_from_slice(&self.logits[cell * k..(cell + 1) * k]);
                    present[j] = true;
                }
            }
        }
        Ok((t, present))
    }

    /// Stores the logits `[n, k]` the samples `indices` got in `epoch`.
    pub fn write(&mut self, indices: &[usize], epoch: u32, logits: &[f32]) -> Result<()> {
        self.check(indices)?;
        let k = self.classes;
        if logits.len() != indices.len() * k {
            return Err(TrainError::Run(format!(
                "{} logits for {} samples of {k} classes",
                logits.len(),
                indices.len()
            )));
        }
        let slot = epoch as usize % self.slots();
        for (j, &i) in indices.iter().enumerate() {
            let cell = i * self.slots() + slot;
            self.logits[cell * k..(cell + 1) * k].copy_from_slice(&logits[j * k..(j + 1) * k]);
            self.written[cell] = i64::from(epoch);
        }
        Ok(())
    }

    /// The file's bytes: magic, `samples`, `lag`, `classes` (u64 LE), the logits (f32 LE),
    /// the epochs (i64 LE), and an FNV-1a 64 checksum of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32 + 4 * self.logits.len() + 8 * self.written.len() + 8);
        b.extend_from_slice(SAF_MAGIC);
        for v in [self.samples as u64, self.lag as u64, self.classes as u64] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in &self.logits {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in &self.written {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let sum = fnv1a64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Reads [`SafBuffer::to_bytes`]; `path` names the file in errors. A buffer of another
    /// shape than this one (another data set or lag) is refused.
    pub fn load_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        let bad = |why: String| {
            TrainError::Nn(samkit_nn::Error::Checkpoint {
                path: path.display().to_string(),
                detail: why,
            })
        };
        let want = self.to_bytes().len();
        if bytes.len() < 40 || &bytes[..8] != SAF_MAGIC {
            return Err(bad("not a SAF buffer".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let sum = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
        if fnv1a64(body) != sum {
            return Err(bad("checksum mismatch: the file changed".into()));
        }
        let u = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let (n, lag, k) = (u(8), u(16), u(24));
        if (n, lag, k) != (self.samples as u64, self.lag as u64, self.classes as u64)
            || bytes.len() != want
        {
            return Err(bad(format!(
                "a buffer of {n} samples, lag {lag}, {k} classes; the run has {} samples, lag {}, {} classes",
                self.samples, self.lag, self.classes
            )));
        }
        let mut o = 32;
        for v in self.logits.iter_mut() {
            *v = f32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
            o += 4;
        }
        for v in self.written.iter_mut() {
            *v = i64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
            o += 8;
        }
        Ok(())
    }

    /// Writes `dir/saf.bin` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        Ok(samkit_nn::checkpoint::write_atomic(
            &dir.join(SAF_FILE),
            &self.to_bytes(),
        )?)
    }

    /// Reads `dir/saf.bin`.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(SAF_FILE);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        self.load_bytes(&bytes, &path)
    }
}

fn fnv1a64(b: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    b.iter()
        .fold(OFFSET, |h, &x| (h ^ u64::from(x)).wrapping_mul(PRIME))
}

/// A run's MESA or SAF state, driven by the trainer around each step.
pub enum Distiller<B: TeacherBackend> {
    Mesa(DistillConfig, MesaTeacher<B>),
    Saf(DistillConfig, SafBuffer),
}

/// The teacher of one step: logits `[n, k]` and which samples have one.
pub struct StepTeacher {
    pub logits: Vec<f32>,
    pub present: Option<Vec<bool>>,
}

impl<B: TeacherBackend> Distiller<B> {
    /// The state of `cfg` for a model at its initial weights, over `samples` training samples
    /// of `classes` classes.
    pub fn new(
        cfg: DistillConfig,
        model: &mut ResNet18<B>,
        params: &B::Arena,
        samples: usize,
        classes: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        Ok(match cfg.teacher {
            Teacher::Mesa { decay } => {
                Distiller::Mesa(cfg, MesaTeacher::new(model, params, decay)?)
            }
            Teacher::Saf { lag } => Distiller::Saf(cfg, SafBuffer::new(samples, classes, lag)?),
        })
    }

    pub fn config(&self) -> &DistillConfig {
        match self {
            Distiller::Mesa(c, _) | Distiller::Saf(c, _) => c,
        }
    }

    /// Before a step in `epoch` on the samples `indices` (staged batch `x`): the teacher's
    /// logits while the term is active (MESA: one forward without gradient), else `None`.
    pub fn teacher(
        &mut self,
        model: &mut ResNet18<B>,
        x: &Tensor,
        indices: &[usize],
        epoch: u32,
    ) -> Result<Option<StepTeacher>> {
        match self {
            Distiller::Mesa(c, t) if c.active(epoch) => Ok(Some(StepTeacher {
                logits: t.logits(model, x)?,
                present: None,
            })),
            Distiller::Saf(c, b) if c.active(epoch) => {
                let (logits, present) = b.teacher(indices, epoch)?;
                Ok(Some(StepTeacher {
                    logits,
                    present: Some(present),
                }))
            }
            _ => Ok(None),
        }
    }

    /// The targets of the step's pass: labels, the teacher when there is one, `λ` and `τ`.
    pub fn targets<'a>(
        &self,
        labels: &'a [usize],
        teacher: Option<&'a StepTeacher>,
        record: Option<&'a std::cell::RefCell<Vec<f32>>>,
    ) -> DistillTargets<'a> {
        let c = self.config();
        DistillTargets {
            labels,
            teacher: teacher.map(|t| &t.logits[..]),
            present: teacher.and_then(|t| t.present.as_deref()),
            lambda: c.lambda,
            tau: c.tau,
            record,
        }
    }

    /// Whether the step's logits must be recorded (SAF).
    pub fn records(&self) -> bool {
        matches!(self, Distiller::Saf(..))
    }

    /// After the optimizer step: MESA's EMA update; SAF stores the step's logits.
    pub fn after_step(
        &mut self,
        model: &mut ResNet18<B>,
        params: &B::Arena,
        indices: &[usize],
        epoch: u32,
        logits: &[f32],
    ) -> Result<()> {
        match self {
            Distiller::Mesa(_, t) => t.update(model, params),
            Distiller::Saf(_, b) => b.write(indices, epoch, logits),
        }
    }

    /// Forwards without gradient the step ran besides its pass (MESA's teacher while active).
    pub fn nograd_forwards(&self, epoch: u32) -> u32 {
        match self {
            Distiller::Mesa(c, _) if c.active(epoch) => 1,
            _ => 0,
        }
    }

    pub fn save(&mut self, model: &mut ResNet18<B>, dir: &Path) -> Result<()> {
        match self {
            Distiller::Mesa(_, t) => t.save(model, dir),
            Distiller::Saf(_, b) => b.save(dir),
        }
    }

    pub fn load(&mut self, model: &mut ResNet18<B>, dir: &Path) -> Result<()> {
        match self {
            Distiller::Mesa(_, t) => t.load(model, dir),
            Distiller::Saf(_, b) => b.load(dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use samkit_nn::ResNetConfig;

    fn model() -> (ResNet18<Cpu>, Vec<f32>) {
        let m = ResNet18::cpu(ResNetConfig::new(10, 2)).expect("model");
        let p = m.init_params(3);
        (m, p)
    }

    fn images(n: usize, seed: u32) -> Tensor {
        let v: Vec<f32> = (0..n * 3 * 32 * 32)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect();
        Tensor::from_vec(v, &[n, 3, 32, 32]).expect("tensor")
    }

    #[test]
    fn defaults_are_the_spec_and_bad_values_name_their_flag() {
        let m = DistillConfig::mesa();
        assert_eq!(m.teacher, Teacher::Mesa { decay: 0.9998 });
        assert_eq!((m.lambda, m.tau, m.start_epoch), (0.8, 5.0, 5));
        let s = DistillConfig::saf();
        assert_eq!(s.teacher, Teacher::Saf { lag: 3 });
        assert_eq!((s.lambda, s.tau, s.start_epoch), (0.3, 5.0, 5));
        assert!(m.validate().is_ok() && s.validate().is_ok());
        assert!(!m.active(4) && m.active(5));
        let flag = |c: DistillConfig| match c.validate() {
            Err(TrainError::InvalidValue { flag, .. }) => flag,
            other => panic!("{other:?}"),
        };
        assert_eq!(flag(DistillConfig { lambda: -0.1, ..m }), "distill-lambda");
        assert_eq!(
            flag(DistillConfig {
                lambda: f32::NAN,
                ..m
            }),
            "distill-lambda"
        );
        assert_eq!(flag(DistillConfig { tau: 0.0, ..m }), "distill-tau");
        let decay = |d| DistillConfig {
            teacher: Teacher::Mesa { decay: d },
            ..m
        };
        assert_eq!(flag(decay(1.0)), "mesa-decay");
        assert_eq!(flag(decay(-0.5)), "mesa-decay");
        let lag = |l| DistillConfig {
            teacher: Teacher::Saf { lag: l },
            ..s
        };
        assert_eq!(flag(lag(0)), "saf-lag");
        assert_eq!(flag(lag(MAX_SAF_LAG + 1)), "saf-lag");
        let json = serde_json::to_string(&m).expect("json");
        assert_eq!(
            serde_json::from_str::<DistillConfig>(&json).expect("parse"),
            m
        );
    }

    #[test]
    fn ema_update_is_the_formula_in_f32() {
        let mut e = vec![1.0f32, -2.0, 0.5];
        let w = [3.0f32, 0.0, 0.5];
        ema_update_host(&mut e, &w, 0.75);
        assert_eq!(e, vec![1.5, -1.5, 0.5]);
        let mut e = vec![0.1f32];
        ema_update_host(&mut e, &[0.7], MESA_DECAY);
        assert_eq!(e[0], MESA_DECAY * 0.1 + (1.0 - MESA_DECAY) * 0.7);
    }

    #[test]
    fn saf_buffer_returns_the_logits_of_lag_epochs_earlier_by_dataset_index() {
        let mut b = SafBuffer::new(5, 2, 3).expect("buffer");
        let logits = |e: u32, i: usize| [e as f32 * 10.0 + i as f32, -(i as f32)];
        for e in 0..6u32 {
            // Epoch e visits samples in another order, and skips sample (e mod 5).
            let idx: Vec<usize> = (0..5).rev().filter(|&i| i != e as usize % 5).collect();
            let (t, present) = b.teacher(&idx, e).expect("teacher");
            for (j, &i) in idx.iter().enumerate() {
                let seen = e >= 3 && i != (e as usize - 3) % 5;
                assert_eq!(present[j], seen, "epoch {e} sample {i}");
                if seen {
                    assert_eq!(
                        &t[2 * j..2 * j + 2],
                        &logits(e - 3, i),
                        "epoch {e} sample {i}"
                    );
                } else {
                    assert_eq!(&t[2 * j..2 * j + 2], &[0.0, 0.0]);
                }
            }
            let z: Vec<f32> = idx.iter().flat_map(|&i| logits(e, i)).collect();
            b.write(&idx, e, &z).expect("write");
        }
        assert!(b.teacher(&[5], 4).is_err());
        assert!(b.write(&[0], 4, &[1.0]).is_err());
    }

    #[test]
    fn saf_buffer_round_trips_and_refuses_a_changed_or_mismatched_file() {
        let mut b = SafBuffer::new(4, 3, 2).expect("buffer");
        b.write(&[2, 0], 0, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .expect("write");
        b.write(&[1], 1, &[-1.0, f32::MIN_POSITIVE, 7.5])
            .expect("write");
        let bytes = b.to_bytes();
        let p = Path::new("saf.bin");
        let mut c = SafBuffer::new(4, 3, 2).expect("buffer");
        c.load_bytes(&bytes, p).expect("load");
        assert_eq!(c, b);
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(c.load_bytes(&flipped, p).is_err());
        assert!(SafBuffer::new(4, 3, 3)
            .expect("buffer")
            .load_bytes(&bytes, p)
            .is_err());
        assert!(c.load_bytes(&bytes[..20], p).is_err());
    }

    #[test]
    fn mesa_teacher_averages_weights_and_statistics_and_leaves_the_model_alone() {
        let (mut m, p) = model();
        let mut t = MesaTeacher::new(&mut m, &p, 0.5).expect("teacher");
        let x = images(4, 1);
        // At the start the teacher is the model in inference mode.
        let z0 = m.forward(&p, &x, BnMode::Eval).expect("forward");
        assert_eq!(
            t.logits(&mut m, &x).expect("logits"),
            z0.as_slice().expect("host")
        );
        // A training forward moves the model's statistics; a new weight vector.
        let before = m.buffers().expect("buffers");
        m.forward(&p, &x, BnMode::Train).expect("train forward");
        let stats = m.buffers().expect("buffers");
        assert_ne!(stats, before);
        let p2: Vec<f32> = p.iter().map(|v| v + 1.0).collect();
        t.update(&mut m, &p2).expect("update");
        let host = t.host_params(&mut m).expect("host");
        for (i, (&e, (&a, &b))) in host.iter().zip(p.iter().zip(&p2)).enumerate().take(100) {
            assert_eq!(e, 0.5 * a + 0.5 * b, "weight {i}");
        }
        for (e, (a, s)) in t.buffers().iter().zip(before.iter().zip(&stats)) {
            match (&e.data, &a.data, &s.data) {
                (BufferData::F32(e), BufferData::F32(a), BufferData::F32(s)) => {
                    for ((&e, &a), &s) in e.iter().zip(a).zip(s) {
                        assert_eq!(e, 0.5 * a + 0.5 * s, "{}", s);
                    }
                }
                (BufferData::I64(e), _, BufferData::I64(s)) => assert_eq!(e, s),
                _ => panic!("buffer kinds"),
            }
        }
        // The teacher's forward leaves the model's statistics as they were.
        t.logits(&mut m, &x).expect("logits");
        assert_eq!(m.buffers().expect("buffers"), stats);
        // Saved and loaded: the same teacher, the model's statistics untouched.
        let dir = std::env::temp_dir().join(format!("samkit-mesa-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        t.save(&mut m, &dir).expect("save");
        let mut u = MesaTeacher::new(&mut m, &p, 0.5).expect("teacher");
        u.load(&mut m, &dir).expect("load");
        assert_eq!(u.host_params(&mut m).expect("host"), host);
        assert_eq!(u.buffers(), t.buffers());
        assert_eq!(m.buffers().expect("buffers"), stats);
        assert_eq!(
            u.logits(&mut m, &x).expect("logits"),
            t.logits(&mut m, &x).expect("logits")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
