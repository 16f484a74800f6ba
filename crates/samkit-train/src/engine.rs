//! Where a trainer's model, parameters, gradients and optimizer live: on the CPU (samkit-nn's
//! CPU backend and samkit-core's `Optimizer` on host vectors) or on a CUDA device (samkit-nn's
//! cuDNN/cuBLAS backend and samkit-cuda's `GpuOptimizer` on device arenas, all on one stream).
//! The trainer drives either through [`Engine`], so a step is written once. Phases are timed
//! with `Instant` on the CPU and with CUDA events on the device, where the host runs ahead of
//! the work it enqueues.
use std::borrow::BorrowMut;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use samkit_core::{FirstOutcome, Optimizer, Outcome};
use samkit_cuda::GpuOptimizer;
use samkit_nn::{Backend, BnMode, Cpu, Cuda, Losses, Model, ResNet18, ResNetConfig, Tensor};

use crate::config::RunConfig;
use crate::error::{Result, TrainError};

/// Which gradient buffer a pass writes: the first (pass 1; ImbSAM's head) or the second
/// (pass 2; ImbSAM's tail in both passes; SSAM-F's Fisher).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grad {
    First,
    Second,
}

/// Time marks of a step; the trainer records them in order and reads the spans after the step.
pub const MARKS: usize = 6;

/// The operations a training step needs, on one device.
pub trait Engine {
    type B: Backend;
    /// A parameter or gradient buffer.
    type A: BorrowMut<<Self::B as Backend>::Arena>;
    /// One line for the output: where the run executes.
    fn describe(&self) -> String;
    fn param_count(&self) -> usize;
    fn set_lr(&mut self, lr: f32) -> Result<()>;
    /// SSAM-F: the number of samples of the Fisher the next step needs.
    fn needs_fisher(&mut self) -> Result<Option<usize>>;
    /// ImbSAM: pass 1 computes separate head and tail gradients.
    fn needs_head_tail(&self) -> bool;
    /// A host batch where the passes read it (uploaded once for both passes on a device).
    fn stage(&mut self, x: Tensor) -> Result<Tensor>;
    /// The model, its parameters and gradient buffers: the forward and backward passes.
    fn net(&mut self) -> &mut Net<Self::B, Self::A>;
    /// Zeroes the Fisher accumulator (the second gradient buffer).
    fn fisher_begin(&mut self) -> Result<()>;
    /// Hands the accumulated Fisher to the optimizer (its top-k is part of the mask time).
    fn fisher_end(&mut self) -> Result<()>;
    /// The optimizer's first step with the first gradient; `split = Some(has_tail)` is
    /// ImbSAM's, with the tail gradient in the second buffer.
    fn first_step(&mut self, split: Option<bool>) -> Result<FirstOutcome>;
    /// Restore and update with the second gradient.
    fn second_step(&mut self) -> Result<()>;
    /// Restores the weights of an abandoned perturbed step.
    fn abort(&mut self) -> Result<()>;
    /// Whether the last step was skipped for a non-finite gradient.
    fn last_skipped(&mut self) -> Result<bool>;
    fn skipped_steps(&mut self) -> Result<u64>;
    /// Seconds of the mask update inside the last first step (SSAM-D's drop/grow), once.
    fn take_mask_time(&mut self) -> Result<Option<f64>>;
    /// Records time mark `slot` (< [`MARKS`]) after the work enqueued so far.
    fn mark(&mut self, slot: usize) -> Result<()>;
    /// Seconds between two recorded marks (waits for the later one on a device).
    fn seconds(&mut self, from: usize, to: usize) -> Result<f64>;
    /// Writes `model.safetensors` (PyTorch names) and `optimizer.safetensors` into `dir`.
    fn save(&mut self, dir: &Path) -> Result<()>;
    /// Reads what [`Engine::save`] wrote (from either device: the formats are the same).
    fn load(&mut self, dir: &Path) -> Result<()>;
}

/// The model a run trains, on backend `B`, with its label smoothing.
fn resnet<B: Backend>(backend: B, cfg: &RunConfig, classes: usize) -> Result<ResNet18<B>> {
    let mut mc = ResNetConfig::new(classes, cfg.width);
    mc.label_smoothing = cfg.label_smoothing;
    ResNet18::new(backend, mc).map_err(TrainError::from)
}

/// A model with its parameters and two gradient buffers, `A` holding a backend arena (a host
/// `Vec<f32>`, a `CudaSlice<f32>`): the passes, written once for both devices.
pub struct Net<B: Backend, A> {
    pub model: ResNet18<B>,
    pub params: A,
    grad: A,
    grad2: A,
}

impl<B: Backend, A: BorrowMut<B::Arena>> Net<B, A> {
    pub fn forward_backward(
        &mut self,
        x: &Tensor,
        labels: &[usize],
        weights: &[f32],
        mode: BnMode,
        into: Grad,
    ) -> Result<Losses> {
        let g = match into {
            Grad::First => &mut self.grad,
            Grad::Second => &mut self.grad2,
        };
        self.model
            .forward_backward(
                self.params.borrow(),
                x,
                labels.into(),
                weights,
                mode,
                g.borrow_mut(),
            )
            .map_err(TrainError::from)
    }

    /// Logits `[N, classes]` on the host, batch norm in inference mode.
    pub fn logits(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        let z = self
            .model
            .forward(self.params.borrow(), x, BnMode::Eval)
            .map_err(TrainError::from)?;
        Ok(z.as_slice().map_err(TrainError::from)?.to_vec())
    }

    /// Adds the per-sample squared gradients of a sub-batch to the second buffer.
    pub fn fisher_add(&mut self, x: &Tensor, labels: &[usize]) -> Result<()> {
        self.model
            .per_sample_grad_sq(
                self.params.borrow(),
                x,
                labels.into(),
                self.grad2.borrow_mut(),
            )
            .map_err(TrainError::from)?;
        Ok(())
    }
}

/// The CPU: host vectors and the reference optimizer.
pub struct CpuEngine {
    pub net: Net<Cpu, Vec<f32>>,
    pub opt: Optimizer,
    last_skipped: bool,
    marks: [Option<Instant>; MARKS],
}

impl CpuEngine {
    pub fn new(cfg: &RunConfig, classes: usize) -> Result<Self> {
        let model = resnet(Cpu::new(), cfg, classes)?;
        let params = model.init_params(cfg.seed);
        let opt = Optimizer::new(model.layout().clone(), cfg.rule.clone(), cfg.base.clone())?;
        let n = params.len();
        Ok(CpuEngine {
            net: Net {
                model,
                params,
                grad: vec![0.0; n],
                grad2: vec![0.0; n],
            },
            opt,
            last_skipped: false,
            marks: [None; MARKS],
        })
    }
}

fn mark_of(marks: &[Option<Instant>], slot: usize) -> Result<Instant> {
    marks
        .get(slot)
        .copied()
        .flatten()
        .ok_or_else(|| TrainError::Run(format!("time mark {slot} was not recorded")))
}

impl Engine for CpuEngine {
    type B = Cpu;
    type A = Vec<f32>;

    fn net(&mut self) -> &mut Net<Cpu, Vec<f32>> {
        &mut self.net
    }

    fn describe(&self) -> String {
        format!("CPU, {} threads", rayon::current_num_threads())
    }

    fn param_count(&self) -> usize {
        self.net.params.len()
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        Ok(self.opt.set_lr(lr)?)
    }

    fn needs_fisher(&mut self) -> Result<Option<usize>> {
        Ok(self.opt.needs_fisher())
    }

    fn needs_head_tail(&self) -> bool {
        self.opt.needs_head_tail()
    }

    fn stage(&mut self, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }

    fn fisher_begin(&mut self) -> Result<()> {
        self.net.grad2.fill(0.0);
        Ok(())
    }

    fn fisher_end(&mut self) -> Result<()> {
        self.opt.set_fisher(&self.net.grad2)?;
        // The top-k is timed with the Fisher by the trainer's marks.
        self.opt.take_mask_time();
        Ok(())
    }

    fn first_step(&mut self, split: Option<bool>) -> Result<FirstOutcome> {
        let out = match split {
            Some(has_tail) => {
                let tail = has_tail.then_some(&self.net.grad2[..]);
                self.opt
                    .first_step_split(&mut self.net.params[..], &self.net.grad[..], tail)?
            }
            None => self
                .opt
                .first_step(&mut self.net.params[..], &self.net.grad[..])?,
        };
        self.last_skipped = out == FirstOutcome::Skipped;
        Ok(out)
    }

    fn second_step(&mut self) -> Result<()> {
        let out = self
            .opt
            .second_step(&mut self.net.params[..], &self.net.grad2[..])?;
        self.last_skipped = out == Outcome::Skipped;
        Ok(())
    }

    fn abort(&mut self) -> Result<()> {
        Ok(self.opt.abort(&mut self.net.params[..])?)
    }

    fn last_skipped(&mut self) -> Result<bool> {
        Ok(self.last_skipped)
    }

    fn skipped_steps(&mut self) -> Result<u64> {
        Ok(self.opt.skipped_steps())
    }

    fn take_mask_time(&mut self) -> Result<Option<f64>> {
        Ok(self.opt.take_mask_time().map(|d| d.as_secs_f64()))
    }

    fn mark(&mut self, slot: usize) -> Result<()> {
        self.marks[slot] = Some(Instant::now());
        Ok(())
    }

    fn seconds(&mut self, from: usize, to: usize) -> Result<f64> {
        let (a, b) = (mark_of(&self.marks, from)?, mark_of(&self.marks, to)?);
        Ok(b.saturating_duration_since(a).as_secs_f64())
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        samkit_nn::checkpoint::save(
            dir.join("model.safetensors"),
            &mut self.net.model,
            &self.net.params,
        )
        .map_err(TrainError::from)?;
        Ok(self.opt.save_state(dir.join("optimizer.safetensors"))?)
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        samkit_nn::checkpoint::load(
            dir.join("model.safetensors"),
            &mut self.net.model,
            &mut self.net.params,
        )
        .map_err(TrainError::from)?;
        Ok(self.opt.load_state(dir.join("optimizer.safetensors"))?)
    }
}

/// A CUDA device: the model's cuDNN/cuBLAS backend and the optimizer's kernels on one stream,
/// parameters and gradients in device arenas, no host synchronisation inside a step except
/// where the host needs a value (the losses, which the model reads to compute the loss).
pub struct CudaEngine {
    net: Net<Cuda, CudaSlice<f32>>,
    opt: GpuOptimizer<f32>,
    stream: Arc<CudaStream>,
    events: Vec<CudaEvent>,
    recorded: [bool; MARKS],
    describe: String,
}

impl CudaEngine {
    /// Opens the device of `SAMKIT_CUDA_DEVICE` (default 0). No driver or no GPU is an invalid
    /// `--device` (exit code 2) with the reason; nothing panics.
    pub fn new(cfg: &RunConfig, classes: usize) -> Result<Self> {
        let cuda = Cuda::open_default().map_err(|e| {
            if e.is_no_device() {
                TrainError::invalid(
                    "device",
                    format!("cuda: no usable CUDA device ({e}); run with --device cpu"),
                )
            } else {
                TrainError::Nn(e)
            }
        })?;
        let gpu = cuda.gpu().clone();
        let (major, minor) = gpu.compute_capability();
        let describe = format!(
            "CUDA: {} (sm_{major}{minor}, {} SMs), cuDNN {}, fp32{}",
            gpu.name(),
            gpu.sm_count(),
            cuda.cudnn_version(),
            if cuda.options().tf32 {
                " (TF32 GEMMs)"
            } else {
                ""
            }
        );
        let stream = cuda.stream().clone();
        let mut model = resnet(cuda, cfg, classes)?;
        let host = model.init_params(cfg.seed);
        let be = model.backend_mut();
        let params = be.arena_from(&host).map_err(TrainError::from)?;
        let grad = be.arena_zeros(host.len()).map_err(TrainError::from)?;
        let grad2 = be.arena_zeros(host.len()).map_err(TrainError::from)?;
        let mut opt = GpuOptimizer::<f32>::new(
            &gpu,
            model.layout().clone(),
            cfg.rule.clone(),
            cfg.base.clone(),
        )
        .map_err(TrainError::from)?;
        opt.time_mask_updates(true).map_err(TrainError::from)?;
        // The trainer enqueues pass 2 without waiting for pass 1's skip decision; a skip then
        // surfaces from second_step's status, which `last_skipped` reads.
        opt.set_sync_outcomes(false);
        let ctx = gpu.context().clone();
        let events = (0..MARKS)
            .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(TrainError::from)?;
        Ok(CudaEngine {
            net: Net {
                model,
                params,
                grad,
                grad2,
            },
            opt,
            stream,
            events,
            recorded: [false; MARKS],
            describe,
        })
    }

    fn host_params(&mut self) -> Result<Vec<f32>> {
        self.net
            .model
            .backend_mut()
            .arena_to_host(&self.net.params)
            .map_err(TrainError::from)
    }
}

impl Engine for CudaEngine {
    type B = Cuda;
    type A = CudaSlice<f32>;

    fn net(&mut self) -> &mut Net<Cuda, CudaSlice<f32>> {
        &mut self.net
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn param_count(&self) -> usize {
        self.net.params.len()
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        self.opt.set_lr(lr).map_err(TrainError::from)
    }

    fn needs_fisher(&mut self) -> Result<Option<usize>> {
        self.opt.needs_fisher().map_err(TrainError::from)
    }

    fn needs_head_tail(&self) -> bool {
        self.opt.needs_head_tail()
    }

    fn stage(&mut self, x: Tensor) -> Result<Tensor> {
        self.net
            .model
            .backend_mut()
            .to_device(&x)
            .map_err(TrainError::from)
    }

    fn fisher_begin(&mut self) -> Result<()> {
        self.stream
            .memset_zeros(&mut self.net.grad2)
            .map_err(TrainError::from)
    }

    fn fisher_end(&mut self) -> Result<()> {
        self.opt
            .set_fisher::<f32, _>(&self.net.grad2)
            .map_err(TrainError::from)
    }

    fn first_step(&mut self, split: Option<bool>) -> Result<FirstOutcome> {
        match split {
            Some(has_tail) => {
                let tail = has_tail.then_some(&self.net.grad2);
                self.opt
                    .first_step_split(&mut self.net.params, &self.net.grad, tail)
            }
            None => self.opt.first_step(&mut self.net.params, &self.net.grad),
        }
        .map_err(TrainError::from)
    }

    fn second_step(&mut self) -> Result<()> {
        // The outcome is also the optimizer's status, which `last_skipped` reads.
        self.opt
            .second_step(&mut self.net.params, &self.net.grad2)
            .map(|_| ())
            .map_err(TrainError::from)
    }

    fn abort(&mut self) -> Result<()> {
        self.opt
            .abort(&mut self.net.params)
            .map_err(TrainError::from)
    }

    fn last_skipped(&mut self) -> Result<bool> {
        let out = self.opt.last_outcome().map_err(TrainError::from)?;
        Ok(out == Some(Outcome::Skipped))
    }

    fn skipped_steps(&mut self) -> Result<u64> {
        self.opt.skipped_steps().map_err(TrainError::from)
    }

    fn take_mask_time(&mut self) -> Result<Option<f64>> {
        let t = self.opt.take_mask_time().map_err(TrainError::from)?;
        Ok(t.map(|d| d.as_secs_f64()))
    }

    fn mark(&mut self, slot: usize) -> Result<()> {
        self.events[slot]
            .record(&self.stream)
            .map_err(TrainError::from)?;
        self.recorded[slot] = true;
        Ok(())
    }

    fn seconds(&mut self, from: usize, to: usize) -> Result<f64> {
        for s in [from, to] {
            if !self.recorded.get(s).copied().unwrap_or(false) {
                return Err(TrainError::Run(format!("time mark {s} was not recorded")));
            }
        }
        let ms = self.events[from]
            .elapsed_ms(&self.events[to])
            .map_err(TrainError::from)?;
        Ok(f64::from(ms.max(0.0)) / 1e3)
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        let host = self.host_params()?;
        samkit_nn::checkpoint::save(dir.join("model.safetensors"), &mut self.net.model, &host)
            .map_err(TrainError::from)?;
        self.opt
            .save_state(dir.join("optimizer.safetensors"))
            .map_err(TrainError::from)
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        let mut host = self.host_params()?;
        samkit_nn::checkpoint::load(
            dir.join("model.safetensors"),
            &mut self.net.model,
            &mut host,
        )
        .map_err(TrainError::from)?;
        self.opt
            .load_state(dir.join("optimizer.safetensors"))
            .map_err(TrainError::from)?;
        self.net.params = self
            .net
            .model
            .backend_mut()
            .arena_from(&host)
            .map_err(TrainError::from)?;
        Ok(())
    }
}
