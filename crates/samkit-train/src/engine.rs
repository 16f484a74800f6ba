//! Where a trainer's model, parameters, gradients and optimizer live: on the CPU (samkit-nn's
//! CPU backend and samkit-core's `Optimizer` on host vectors) or on a CUDA device (samkit-nn's
//! cuDNN/cuBLAS backend and samkit-cuda's `GpuOptimizer` on device arenas, all on one stream).
//!
//! A step is not written here: both engines hand their optimizer, parameters and two gradient
//! buffers to [`samkit_core::drive_step`], which runs the rule's protocol (SSAM-F's Fisher,
//! ImbSAM's head and tail, the two passes) through the trainer's gradient oracle. What an
//! [`Engine`] adds is what differs per device: how a batch is staged where the passes read it,
//! how a buffer is zeroed, and how the phases are timed ([`Clock`]: `Instant` on the CPU, CUDA
//! events on the device, where the host runs ahead of the work it enqueues).
use std::borrow::BorrowMut;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use samkit_core::{
    drive_step, Eval, GradRequest, Optimizer, Outcome, Status, StepHooks, StepPhase, StepReport,
};
use samkit_cuda::GpuOptimizer;
use samkit_nn::{Backend, BnMode, Cpu, Cuda, Model, ResNet18, ResNetConfig, Tensor};

use crate::config::RunConfig;
use crate::error::{Result, TrainError};
use crate::trainer::Phases;

/// The model a run trains, on backend `B`, with its label smoothing.
fn resnet<B: Backend>(backend: B, cfg: &RunConfig, classes: usize) -> Result<ResNet18<B>> {
    let mut mc = ResNetConfig::new(classes, cfg.width);
    mc.label_smoothing = cfg.label_smoothing;
    Ok(ResNet18::new(backend, mc)?)
}

/// A model with its parameters and two gradient buffers, `A` holding a backend arena (a host
/// `Vec<f32>`, a `CudaSlice<f32>`). The gradient buffers belong to the step
/// ([`samkit_core::drive_step`]: pass 1, ImbSAM's head and SSAM-F's Fisher in the first; pass 2
/// and ImbSAM's tail in the second).
pub struct Net<B: Backend, A> {
    pub model: ResNet18<B>,
    pub params: A,
    grad: A,
    grad2: A,
    /// SSAM-L `truncated`: pass 1's gradient of the prefix (see [`Engine::keep_prefix`]).
    kept: Option<Kept<A>>,
}

/// A prefix of pass 1's gradient, kept for pass 2.
struct Kept<A> {
    len: usize,
    buf: A,
}

/// Wraps a step's oracle so that pass 1's gradient prefix is kept and copied into pass 2's
/// buffer before pass 2 runs (see [`Engine::keep_prefix`]); `copy(model, src, dst, len)`
/// copies the first `len` values.
fn keeping_prefix<'a, B: Backend + 'a, A: 'a>(
    kept: &'a mut Option<Kept<A>>,
    mut oracle: impl Oracle<B, A> + 'a,
    copy: fn(&mut ResNet18<B>, &A, &mut A, usize) -> Result<()>,
) -> impl FnMut(&mut ResNet18<B>, GradRequest, &A, &mut A) -> Result<Eval> + 'a {
    move |model, req, w, g| {
        use samkit_core::Pass;
        let Some(k) = kept.as_mut() else {
            return oracle(model, req, w, g);
        };
        if req == GradRequest::Batch(Pass::Perturbed) {
            copy(model, &k.buf, g, k.len)?;
        }
        let e = oracle(model, req, w, g)?;
        if req == GradRequest::Batch(Pass::Clean) {
            copy(model, g, &mut k.buf, k.len)?;
        }
        Ok(e)
    }
}

impl<B: Backend, A: BorrowMut<B::Arena>> Net<B, A> {
    /// Logits `[N, classes]` on the host, batch norm in inference mode.
    pub fn logits(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        let z = self.model.forward(self.params.borrow(), x, BnMode::Eval)?;
        Ok(z.as_slice()?.to_vec())
    }
}

/// The trainer's gradient oracle: `(model, request, weights, gradient out)`, as
/// [`samkit_core::drive_step`] asks it, with the model to run the passes on.
pub trait Oracle<B: Backend, A>:
    FnMut(&mut ResNet18<B>, GradRequest, &A, &mut A) -> Result<Eval>
{
}

impl<B: Backend, A, F> Oracle<B, A> for F where
    F: FnMut(&mut ResNet18<B>, GradRequest, &A, &mut A) -> Result<Eval>
{
}

/// One device a trainer runs on: the model and its arenas, the optimizer for them, a clock.
///
/// The optimizer's protocol is not mirrored here: [`Engine::step`] hands the optimizer to
/// [`samkit_core::drive_step`] (both optimizers implement [`samkit_core::SamOptimizer`]), and
/// the rest is what differs per device (staging a batch, zeroing a buffer, timing, the host
/// copy of a checkpoint).
pub trait Engine {
    /// The network backend (samkit-nn), with what MESA's teacher needs of it.
    type B: crate::distill::TeacherBackend;
    /// A parameter or gradient buffer.
    type A: BorrowMut<<Self::B as Backend>::Arena>;
    /// One line for the output: where the run executes.
    fn describe(&self) -> String;
    fn param_count(&self) -> usize;
    /// The model and its parameters.
    fn net(&mut self) -> &mut Net<Self::B, Self::A>;
    /// A host batch where the passes read it (uploaded once for both passes on a device).
    fn stage(model: &mut ResNet18<Self::B>, x: Tensor) -> Result<Tensor>;
    /// Zeroes a gradient buffer (SSAM-F's Fisher accumulates into one).
    fn zero(model: &mut ResNet18<Self::B>, a: &mut Self::A) -> Result<()>;
    /// Sets the learning rate of the next steps.
    fn set_lr(&mut self, lr: f32) -> Result<()>;
    /// The optimizer's counters after the last step (waits for it on a device).
    fn status(&mut self) -> Result<Status>;
    /// One step of the optimizer through `oracle` ([`samkit_core::drive_step`]), with the
    /// seconds of each phase.
    fn step(&mut self, oracle: impl Oracle<Self::B, Self::A>) -> Result<(StepReport, Phases)>;
    /// SSAM-L `truncated`: the first `len` values of pass 1's gradient are copied into pass 2's
    /// gradient buffer before pass 2 (whose backward stops after them), so that the segments
    /// before the first perturbed unit step with their pass-1 gradient. `None`: nothing kept.
    /// Holds for the following steps until changed.
    fn keep_prefix(&mut self, len: Option<usize>) -> Result<()>;
    /// The first segment the optimizer's committed sparse mask perturbs (SSAM-L: where pass 2
    /// starts); `None` without a mask.
    fn first_perturbed_segment(&mut self) -> Result<Option<usize>>;
    /// Writes `model.safetensors` (PyTorch names) and `optimizer.safetensors` into `dir`.
    fn save(&mut self, dir: &Path) -> Result<()>;
    /// Reads what [`Engine::save`] wrote (from either device: the formats are the same).
    fn load(&mut self, dir: &Path) -> Result<()>;
}

/// The time marks of a step: before SSAM-F's Fisher, before pass 1, after pass 1, after the
/// first step, after pass 2, after the second step.
const MARKS: usize = 6;

/// Records time marks and reads the seconds between two of them.
trait Timer {
    /// Records mark `slot` (< 6) after the work enqueued so far.
    fn record(&mut self, slot: usize) -> Result<()>;
    /// Seconds between two marks recorded since the last [`Timer::clear`] (waits for the
    /// later one on a device).
    fn seconds(&mut self, from: usize, to: usize) -> Result<f64>;
    /// Forgets the marks of the previous step.
    fn clear(&mut self);
}

/// The hooks of [`samkit_core::drive_step`] that time a step: each phase boundary is a mark of
/// the [`Timer`], and [`Clock::phases`] turns the marks into [`Phases`].
struct Clock<T> {
    timer: T,
    fisher: bool,
    perturbed: bool,
}

impl<T: Timer> Clock<T> {
    fn new(timer: T) -> Self {
        Clock {
            timer,
            fisher: false,
            perturbed: false,
        }
    }

    /// Before a step.
    fn reset(&mut self) {
        self.timer.clear();
        self.fisher = false;
        self.perturbed = false;
    }

    /// The phases of the step just driven. `in_first` is the time of a mask update inside the
    /// first step (SSAM-D's drop/grow): it moves from the first step's span to `mask`. After
    /// SSAM-F's Fisher the mask is the whole span from the Fisher to pass 1 (its top-k is in
    /// it), so `in_first` must then be `None`.
    fn phases(&mut self, report: &StepReport, in_first: Option<Duration>) -> Result<Phases> {
        let t = &mut self.timer;
        let in_first = in_first.map_or(0.0, |d| d.as_secs_f64());
        let mut sec = Phases {
            mask: in_first,
            pass1: t.seconds(1, 2)?,
            ..Phases::default()
        };
        if self.fisher {
            sec.mask += t.seconds(0, 1)?;
        }
        let first = (t.seconds(2, 3)? - in_first).max(0.0);
        if self.perturbed {
            sec.perturb = first;
            sec.pass2 = t.seconds(3, 4)?;
            sec.update = t.seconds(4, 5)?;
        } else if report.outcome == Outcome::Applied {
            // A one-pass step's first step is its update; a skipped one's is neither.
            sec.update = first;
        }
        Ok(sec)
    }
}

impl<T: Timer> StepHooks<TrainError> for Clock<T> {
    fn begin(&mut self, p: StepPhase) -> Result<()> {
        match p {
            StepPhase::Fisher => {
                self.fisher = true;
                self.timer.record(0)
            }
            StepPhase::Pass1 => self.timer.record(1),
            _ => Ok(()),
        }
    }

    fn end(&mut self, p: StepPhase) -> Result<()> {
        match p {
            StepPhase::Pass1 => self.timer.record(2),
            StepPhase::Perturb => self.timer.record(3),
            StepPhase::Pass2 => {
                self.perturbed = true;
                self.timer.record(4)
            }
            StepPhase::Update => self.timer.record(5),
            StepPhase::Fisher | StepPhase::Mask => Ok(()),
        }
    }
}

fn prefix_too_long(len: usize, n: usize) -> TrainError {
    TrainError::Run(format!(
        "a kept gradient prefix of {len} values in a model of {n} parameters"
    ))
}

fn unrecorded(slot: usize) -> TrainError {
    TrainError::Run(format!("time mark {slot} was not recorded"))
}

/// The host clock.
#[derive(Default)]
struct HostTimer([Option<Instant>; MARKS]);

impl Timer for HostTimer {
    fn record(&mut self, slot: usize) -> Result<()> {
        *self.0.get_mut(slot).ok_or_else(|| unrecorded(slot))? = Some(Instant::now());
        Ok(())
    }

    fn seconds(&mut self, from: usize, to: usize) -> Result<f64> {
        let mark = |s: usize| {
            self.0
                .get(s)
                .copied()
                .flatten()
                .ok_or_else(|| unrecorded(s))
        };
        Ok(mark(to)?
            .saturating_duration_since(mark(from)?)
            .as_secs_f64())
    }

    fn clear(&mut self) {
        self.0 = [None; MARKS];
    }
}

/// CUDA events recorded on the stream the step's work is enqueued on.
struct EventTimer {
    stream: Arc<CudaStream>,
    events: Vec<CudaEvent>,
    recorded: [bool; MARKS],
}

impl EventTimer {
    fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context().clone();
        let events = (0..MARKS)
            .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(EventTimer {
            stream,
            events,
            recorded: [false; MARKS],
        })
    }
}

impl Timer for EventTimer {
    fn record(&mut self, slot: usize) -> Result<()> {
        self.events
            .get(slot)
            .ok_or_else(|| unrecorded(slot))?
            .record(&self.stream)?;
        self.recorded[slot] = true;
        Ok(())
    }

    fn seconds(&mut self, from: usize, to: usize) -> Result<f64> {
        for s in [from, to] {
            if !self.recorded.get(s).copied().unwrap_or(false) {
                return Err(unrecorded(s));
            }
        }
        let ms = self.events[from].elapsed_ms(&self.events[to])?;
        Ok(f64::from(ms.max(0.0)) / 1e3)
    }

    fn clear(&mut self) {
        self.recorded = [false; MARKS];
    }
}

/// The CPU: host vectors and the reference optimizer.
pub struct CpuEngine {
    pub net: Net<Cpu, Vec<f32>>,
    pub opt: Optimizer,
    clock: Clock<HostTimer>,
}

impl CpuEngine {
    /// The model of `cfg` for `classes` classes, initialised from `cfg.seed`, and its optimizer.
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
                kept: None,
            },
            opt,
            clock: Clock::new(HostTimer::default()),
        })
    }
}

impl Engine for CpuEngine {
    type B = Cpu;
    type A = Vec<f32>;

    fn describe(&self) -> String {
        format!("CPU, {} threads", rayon::current_num_threads())
    }

    fn param_count(&self) -> usize {
        self.net.params.len()
    }

    fn net(&mut self) -> &mut Net<Cpu, Vec<f32>> {
        &mut self.net
    }

    fn stage(_: &mut ResNet18<Cpu>, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }

    fn zero(_: &mut ResNet18<Cpu>, a: &mut Vec<f32>) -> Result<()> {
        a.fill(0.0);
        Ok(())
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        Ok(self.opt.set_lr(lr)?)
    }

    fn status(&mut self) -> Result<Status> {
        Ok(self.opt.status())
    }

    fn keep_prefix(&mut self, len: Option<usize>) -> Result<()> {
        self.net.kept = match len {
            Some(len) if len <= self.net.params.len() => match self.net.kept.take() {
                Some(k) if k.len == len => Some(k),
                _ => Some(Kept {
                    len,
                    buf: vec![0.0; len],
                }),
            },
            Some(len) => return Err(prefix_too_long(len, self.net.params.len())),
            None => None,
        };
        Ok(())
    }

    fn first_perturbed_segment(&mut self) -> Result<Option<usize>> {
        Ok(self.opt.first_perturbed_segment())
    }

    fn step(&mut self, oracle: impl Oracle<Cpu, Vec<f32>>) -> Result<(StepReport, Phases)> {
        let Net {
            model,
            params,
            grad,
            grad2,
            kept,
        } = &mut self.net;
        let mut oracle = keeping_prefix(kept, oracle, |_, src: &Vec<f32>, dst, len| {
            dst[..len].copy_from_slice(&src[..len]);
            Ok(())
        });
        self.clock.reset();
        let report = drive_step(
            &mut self.opt,
            params,
            (grad, grad2),
            |r, w: &Vec<f32>, g: &mut Vec<f32>| oracle(model, r, w, g),
            &mut self.clock,
        )?;
        // Taken after a Fisher too, so that its top-k (timed with the Fisher) is not counted
        // again in a later step.
        let in_first = self.opt.take_mask_time();
        let in_first = if self.clock.fisher { None } else { in_first };
        let phases = self.clock.phases(&report, in_first)?;
        Ok((report, phases))
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        samkit_nn::checkpoint::save(
            dir.join("model.safetensors"),
            &mut self.net.model,
            &self.net.params,
        )?;
        Ok(self.opt.save_state(dir.join("optimizer.safetensors"))?)
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        samkit_nn::checkpoint::load(
            dir.join("model.safetensors"),
            &mut self.net.model,
            &mut self.net.params,
        )?;
        Ok(self.opt.load_state(dir.join("optimizer.safetensors"))?)
    }
}

/// A CUDA device: the model's cuDNN/cuBLAS backend and the optimizer's kernels on one stream,
/// parameters and gradients in device arenas, no host synchronisation inside a step except
/// where the host needs a value (the losses, which the model reads to compute the loss).
pub struct CudaEngine {
    net: Net<Cuda, CudaSlice<f32>>,
    opt: GpuOptimizer<f32>,
    clock: Clock<EventTimer>,
    describe: String,
}

impl CudaEngine {
    /// Opens the device and backend settings of `cfg.cuda`. No driver or no GPU is an invalid
    /// `device` ([`TrainError::InvalidValue`]) with the reason; nothing panics.
    pub fn new(cfg: &RunConfig, classes: usize) -> Result<Self> {
        cfg.cuda.validate()?;
        let cuda = Cuda::open(cfg.cuda.device, cfg.cuda.backend_options()).map_err(|e| {
            if e.is_no_device() {
                TrainError::invalid(
                    "device",
                    format!("cuda: no usable CUDA device ({e}); run with --device cpu"),
                )
            } else {
                TrainError::Nn(e)
            }
        })?;
        Self::on(cuda, cfg, classes)
    }

    /// The model of `cfg` for `classes` classes on an opened backend (a device and its
    /// options), initialised from `cfg.seed` as on the CPU, and its optimizer on the same
    /// device and stream.
    pub fn on(cuda: Cuda, cfg: &RunConfig, classes: usize) -> Result<Self> {
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
        // Refuse what cannot fit before the first allocation of the run (issue 12, item 6).
        crate::limits::check_cuda_memory(gpu.context(), cfg, classes)?;
        let stream = cuda.stream().clone();
        let mut model = resnet(cuda, cfg, classes)?;
        let host = model.init_params(cfg.seed);
        let be = model.backend_mut();
        let params = be.arena_from(&host)?;
        let grad = be.arena_zeros(host.len())?;
        let grad2 = be.arena_zeros(host.len())?;
        let mut opt = GpuOptimizer::<f32>::new(
            &gpu,
            model.layout().clone(),
            cfg.rule.clone(),
            cfg.base.clone(),
        )?;
        opt.time_mask_updates(true)?;
        // The trainer enqueues pass 2 without waiting for pass 1's skip decision; a skip then
        // surfaces from second_step's outcome or, for a one-pass step, from the status the
        // trainer reads after the step.
        opt.set_sync_outcomes(false);
        Ok(CudaEngine {
            net: Net {
                model,
                params,
                grad,
                grad2,
                kept: None,
            },
            opt,
            clock: Clock::new(EventTimer::new(stream)?),
            describe,
        })
    }

    /// The parameters, copied to the host.
    pub fn host_params(&mut self) -> Result<Vec<f32>> {
        Ok(self
            .net
            .model
            .backend_mut()
            .arena_to_host(&self.net.params)?)
    }
}

impl Engine for CudaEngine {
    type B = Cuda;
    type A = CudaSlice<f32>;

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn param_count(&self) -> usize {
        self.net.params.len()
    }

    fn net(&mut self) -> &mut Net<Cuda, CudaSlice<f32>> {
        &mut self.net
    }

    fn stage(model: &mut ResNet18<Cuda>, x: Tensor) -> Result<Tensor> {
        Ok(model.backend_mut().to_device(&x)?)
    }

    fn zero(model: &mut ResNet18<Cuda>, a: &mut CudaSlice<f32>) -> Result<()> {
        Ok(model.backend_mut().stream().memset_zeros(a)?)
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        Ok(self.opt.set_lr(lr)?)
    }

    fn status(&mut self) -> Result<Status> {
        Ok(self.opt.status()?)
    }

    fn keep_prefix(&mut self, len: Option<usize>) -> Result<()> {
        let n = self.net.params.len();
        self.net.kept = match len {
            Some(len) if len <= n => match self.net.kept.take() {
                Some(k) if k.len == len => Some(k),
                _ => Some(Kept {
                    len,
                    buf: self.net.model.backend_mut().arena_zeros(len)?,
                }),
            },
            Some(len) => return Err(prefix_too_long(len, n)),
            None => None,
        };
        Ok(())
    }

    fn first_perturbed_segment(&mut self) -> Result<Option<usize>> {
        Ok(self.opt.first_perturbed_segment()?)
    }

    fn step(&mut self, oracle: impl Oracle<Cuda, CudaSlice<f32>>) -> Result<(StepReport, Phases)> {
        let Net {
            model,
            params,
            grad,
            grad2,
            kept,
        } = &mut self.net;
        let mut oracle = keeping_prefix(kept, oracle, |model, src, dst, len| {
            let stream = model.backend_mut().stream().clone();
            stream.memcpy_dtod(&src.slice(..len), &mut dst.slice_mut(..len))?;
            Ok(())
        });
        self.clock.reset();
        let report = drive_step(
            &mut self.opt,
            params,
            (grad, grad2),
            |r, w: &CudaSlice<f32>, g: &mut CudaSlice<f32>| oracle(model, r, w, g),
            &mut self.clock,
        )?;
        // SSAM-F's top-k runs in `set_fisher`, timed with the Fisher; only a mask update
        // inside the first step (SSAM-D) is timed by the optimizer.
        let in_first = self.opt.take_mask_time()?;
        let in_first = if self.clock.fisher { None } else { in_first };
        let phases = self.clock.phases(&report, in_first)?;
        Ok((report, phases))
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        let host = self.host_params()?;
        samkit_nn::checkpoint::save(dir.join("model.safetensors"), &mut self.net.model, &host)?;
        Ok(self.opt.save_state(dir.join("optimizer.safetensors"))?)
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        let mut host = self.host_params()?;
        samkit_nn::checkpoint::load(
            dir.join("model.safetensors"),
            &mut self.net.model,
            &mut host,
        )?;
        self.opt.load_state(dir.join("optimizer.safetensors"))?;
        self.net.params = self.net.model.backend_mut().arena_from(&host)?;
        Ok(())
    }
}
