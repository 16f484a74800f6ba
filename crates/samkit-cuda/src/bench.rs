//! Kernel timings for `samkit bench-kernels` and the criterion bench: GPU time from CUDA events,
//! the L2 cache flushed before every repeat, bandwidth against a device-to-device copy of the
//! same size measured in the same run.
//!
//! Kernel variants (see [`crate::variants`]) are timed side by side in one run: a row
//! `name[variant]` per variant, with the kernel launches of one run of it.
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use samkit_core::{BaseOptimizer, Layout, Sgd};

use crate::abi::{self, CommitArgs};
use crate::buffers::{flat_addrs, Arena, DevBuf, Tab, TableCache};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{self, DirExtra, DirKind, Extrap, Fin, Keys, Second, SelBufs};
use crate::plan::{Plan, Work};
use crate::variants::{StepVariant, TopkVariant};

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub kernel: String,
    /// Median GPU time of one run.
    pub time_us: f64,
    /// Bytes moved per parameter (the byte floor of the kernel).
    pub bytes_per_param: f64,
    /// `bytes_per_param · n / time`.
    pub gb_s: f64,
    /// `gb_s` over the copy's `gb_s`.
    pub frac_copy: f64,
    /// Two runs gave the same bits (norms, masks); `None` where not applicable.
    pub deterministic: Option<bool>,
    /// Kernel launches of one run (copies and memsets not counted).
    pub launches: u64,
}

/// Every benchmark, in table order, with its bytes per parameter (`None`: not a streaming
/// kernel, time only).
pub const BENCHES: &[(&str, Option<f64>)] = &[
    ("copy", Some(8.0)),
    ("norm", Some(4.0)),
    ("dot", Some(8.0)),
    // The norm and its second stage (the step's scalars): two launches, or one with the second
    // stage in the norm kernel's last block.
    ("norm_fin[separate]", Some(4.0)),
    ("norm_fin[fused]", Some(4.0)),
    ("perturb", Some(16.0)),
    ("update_sgd_momentum", Some(20.0)),
    ("update_gsam", Some(24.0)),
    ("update_adam", Some(28.0)),
    ("fisher", Some(12.0)),
    // norm (4) + perturbation (16) + restore and SGD-momentum update (20): the byte floor of the
    // optimizer side of a SAM step. The pass-2 finiteness check reads g2 once more (4 B).
    ("sam_step[separate]", Some(40.0)),
    ("sam_step[fused]", Some(40.0)),
    // The top-k arrangements: SSAM-F's Fisher mask over every parameter (k = n/2), SSAM-D's
    // drop and grow selections and the mask update (half the indices live, rate 0.2).
    ("topk_fisher[baseline]", None),
    ("topk_fisher[vectorized]", None),
    ("ssam_d_drop_grow[baseline]", None),
    ("ssam_d_drop_grow[vectorized]", None),
];

/// Buffers and kernels of the benchmarks, over one layout of f32 parameters.
pub struct KernelBench {
    dev: Arc<Device>,
    plan: Plan,
    work: Work,
    sel: SelBufs,
    tables: TableCache,
    w: CudaSlice<f32>,
    g: CudaSlice<f32>,
    g2: CudaSlice<f32>,
    copy_dst: CudaSlice<f32>,
    fisher: CudaSlice<f32>,
    w_old: Arena<f32>,
    aux: Arena<f32>,
    s: [DevBuf<f32>; 2],
    masks: DevBuf<u64>,
    flush: CudaSlice<u8>,
    sgd: BaseOptimizer,
    adam: BaseOptimizer,
}

fn fill(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

impl KernelBench {
    /// `layout`: default the CIFAR ResNet-18 (11,173,962 parameters, 62 segments).
    pub fn new(dev: &Arc<Device>, layout: Option<Layout>) -> Result<Self> {
        let layout = match layout {
            Some(l) => l,
            None => Layout::resnet18(10, 64)?,
        };
        let stream = dev.stream().clone();
        let plan = Plan::new(&stream, layout)?;
        let n = plan.n;
        let l2 = dev
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?
            .max(1 << 20) as usize;
        let w_old = Arena::zeros(&stream, &plan.layout)?;
        let aux = Arena::from_host(&stream, &plan.layout, &fill(n, 5, 1.0))?;
        let fisher: Vec<f32> = fill(n, 4, 1.0).iter().map(|x| x * x).collect();
        Ok(KernelBench {
            w_old,
            aux,
            work: Work::new(&stream, &plan)?,
            sel: SelBufs::new(&stream, &plan)?,
            tables: TableCache::new(16),
            w: stream.clone_htod(&fill(n, 1, 1.0))?,
            g: stream.clone_htod(&fill(n, 2, 1e-2))?,
            g2: stream.clone_htod(&fill(n, 3, 1e-2))?,
            copy_dst: stream.alloc_zeros(n)?,
            fisher: stream.clone_htod(&fisher)?,
            s: [DevBuf::zeros(&stream, n)?, DevBuf::zeros(&stream, n)?],
            masks: DevBuf::zeros(&stream, 2 * plan.words)?,
            flush: stream.alloc_zeros(2 * l2)?,
            sgd: BaseOptimizer::Sgd(Sgd {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 5e-4,
                ..Sgd::default()
            }),
            adam: BaseOptimizer::Adam(samkit_core::Adam::default()),
            plan,
            dev: dev.clone(),
        })
    }

    pub fn params(&self) -> usize {
        self.plan.n
    }

    fn tab(&mut self, which: u8) -> Result<Tab<'static, f32>> {
        let stream = self.dev.stream().clone();
        let buf = match which {
            0 => &self.w,
            1 => &self.g,
            2 => &self.g2,
            _ => &self.fisher,
        };
        let (p, _g) = buf.device_ptr(&stream);
        let mut addrs = Vec::new();
        flat_addrs::<f32>(&self.plan.layout, p, &mut addrs);
        self.tables.get(&stream, &addrs)
    }

    /// Enqueues one run of benchmark `name` (see [`BENCHES`]).
    pub fn run(&mut self, name: &str) -> Result<()> {
        // The top-k arrangement of the selections (`topk_fisher[vectorized]`, ...).
        let (name, topk) = match name.split_once('[') {
            Some((base, "baseline]")) => (base, TopkVariant::Baseline),
            Some((base, "vectorized]")) => (base, TopkVariant::Vectorized),
            _ => (name, TopkVariant::Baseline),
        };
        self.sel.topk = topk;
        let (name, step) = match name.split_once('[') {
            Some((base, "fused]")) => (base, StepVariant::Fused),
            Some((base, "separate]")) => (base, StepVariant::Separate),
            _ => (name, StepVariant::Separate),
        };
        let fused = step == StepVariant::Fused;
        let (wt, gt, g2t, ft) = (self.tab(0)?, self.tab(1)?, self.tab(2)?, self.tab(3)?);
        let (dev, plan, work) = (&self.dev, &self.plan, &self.work);
        let stream = dev.stream().clone();
        let w_old = self.w_old.tab();
        let aux = self.aux.tab();
        let mom = [Some(&self.s[0]), None, None];
        let adam = [Some(&self.s[0]), Some(&self.s[1]), None];
        let x = DirExtra::default();
        // The SAM step's norm and its second stage: two launches, or one with the fused variant.
        let norm_fin = || -> Result<()> {
            let mut f = Fin::new(abi::FIN_NORM);
            f.rho = 0.05;
            f.eps = samkit_core::rules::EPS_P;
            let fa = fused.then(|| ops::fin_args(plan, work, None, f));
            let k = DirKind::Plain;
            ops::norm::<f32>(dev, plan, work, k, gt, None, None, x, false, fa.as_ref())?;
            if !fused {
                ops::finalize(dev, plan, work, None, f)?;
            }
            Ok(())
        };
        // Pass 3 of a two-pass step (from w_old, along g2) with `base` at `lr`, its state and the
        // second term `y`, the commit folded in when given.
        let update = |base: &BaseOptimizer,
                      lr: f32,
                      state: [Option<&DevBuf<f32>>; 3],
                      y: Second<f32>,
                      commit: Option<&CommitArgs>| {
            ops::update::<f32>(
                dev,
                plan,
                work,
                base,
                lr,
                state,
                wt,
                Some(w_old),
                g2t,
                y,
                false,
                None,
                None,
                commit,
            )
        };
        match name {
            "copy" => stream.memcpy_dtod(&self.w, &mut self.copy_dst)?,
            "norm" => ops::norm::<f32>(
                dev,
                plan,
                work,
                DirKind::Plain,
                gt,
                None,
                None,
                x,
                false,
                None,
            )?,
            "dot" => ops::dot::<f32>(dev, plan, work, Some(gt), g2t, None)?,
            "norm_fin" => norm_fin()?,
            "perturb" => ops::perturb::<f32>(
                dev,
                plan,
                work,
                DirKind::Plain,
                wt,
                w_old,
                gt,
                x,
                None,
                Extrap::None,
            )?,
            "update_sgd_momentum" => update(&self.sgd, 0.1, mom, Second::None, None)?,
            "update_gsam" => update(&self.sgd, 0.1, mom, Second::Typed(aux), None)?,
            "update_adam" => update(&self.adam, 1e-3, adam, Second::None, None)?,
            "fisher" => {
                let (f, _g) = self.copy_dst.device_ptr_mut(&stream);
                ops::fisher::<f32>(dev, plan, f, gt)?
            }
            "sam_step" => {
                // SAM + SGD momentum, as GpuOptimizer enqueues it in the chosen arrangement.
                norm_fin()?;
                let k = DirKind::Plain;
                ops::perturb::<f32>(dev, plan, work, k, wt, w_old, gt, x, None, Extrap::None)?;
                let mut f = Fin::new(abi::FIN_SECOND);
                f.with_b = true;
                f.lr = 0.1;
                let fa = fused.then(|| ops::fin_args(plan, work, Some(&self.sgd), f));
                ops::dot::<f32>(dev, plan, work, None, g2t, fa.as_ref())?;
                if !fused {
                    ops::finalize(dev, plan, work, Some(&self.sgd), f)?;
                }
                let commit = fused.then(|| ops::commit_args(work, false, false));
                update(&self.sgd, 0.1, mom, Second::None, commit.as_ref())?;
                if !fused {
                    ops::commit(dev, work, false, false)?;
                }
            }
            "topk_fisher" => {
                let k = (plan.n / 2) as u64;
                ops::select::<f32>(dev, plan, work, &mut self.sel, Keys::Scores(ft), k, false)?
            }
            "ssam_d_drop_grow" => {
                let live = plan.n / 2;
                let k = (live as f64 * 0.2) as u64;
                ops::select::<f32>(
                    dev,
                    plan,
                    work,
                    &mut self.sel,
                    Keys::Drop(gt, &self.masks),
                    k,
                    false,
                )?;
                ops::select::<f32>(
                    dev,
                    plan,
                    work,
                    &mut self.sel,
                    Keys::Grow(&self.masks, 7, 1),
                    k,
                    true,
                )?;
                ops::mask_combine(dev, plan, work, &self.masks, &self.sel, abi::COMB_DROP_GROW)?;
            }
            other => panic!("unknown benchmark `{other}`"),
        }
        Ok(())
    }

    /// GPU seconds of `repeats` runs of `name`, the L2 cache flushed before each.
    pub fn time(&mut self, name: &str, repeats: usize) -> Result<Vec<f64>> {
        let ctx = self.dev.context().clone();
        let stream = self.dev.stream().clone();
        let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        if name.starts_with("ssam_d_drop_grow") {
            // A mask with half the indices live.
            let words = vec![0x5555_5555_5555_5555u64; 2 * self.plan.words];
            stream.memcpy_htod(&words, &mut self.masks.slice)?;
        }
        self.run(name)?; // warm-up (and kernel loading)
        let mut out = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            stream.memset_zeros(&mut self.flush)?;
            start.record(&stream)?;
            self.run(name)?;
            end.record(&stream)?;
            out.push(start.elapsed_ms(&end)? as f64 * 1e-3);
        }
        Ok(out)
    }

    /// Runs `name` twice from the same inputs and compares the bits of its result (the norm and
    /// dot sums, the selected masks).
    pub fn deterministic(&mut self, name: &str) -> Result<Option<bool>> {
        let stream = self.dev.stream().clone();
        let probe = |b: &mut Self| -> Result<Vec<u64>> {
            match name {
                "norm" | "dot" => {
                    b.run(name)?;
                    let mut f = Fin::new(abi::FIN_SUM);
                    f.with_b = name == "dot";
                    ops::finalize(&b.dev, &b.plan, &b.work, None, f)?;
                    let c = b.work.ctl(&stream)?;
                    Ok(vec![c.g_sq.to_bits(), c.yy.to_bits()])
                }
                n if n.starts_with("topk_fisher") => {
                    b.run(name)?;
                    b.sel.a.download(&stream)
                }
                // Both slots: the committed mask (never changed here) and the updated one.
                n if n.starts_with("ssam_d_drop_grow") => {
                    b.run(name)?;
                    b.masks.download(&stream)
                }
                n if n.starts_with("norm_fin[") => {
                    b.run(name)?;
                    let c = b.work.ctl(&stream)?;
                    Ok(vec![
                        c.g_sq.to_bits(),
                        c.scale.to_bits() as u64,
                        c.skip as u64,
                    ])
                }
                _ => Ok(Vec::new()),
            }
        };
        if !(matches!(name, "norm" | "dot")
            || ["norm_fin[", "topk_fisher", "ssam_d_drop_grow"]
                .iter()
                .any(|p| name.starts_with(p)))
        {
            return Ok(None);
        }
        let a = probe(self)?;
        let b = probe(self)?;
        Ok(Some(a == b))
    }
}

/// Kernel launches enqueued so far by the calling thread (the optimizer's and the bench's), e.g.
/// to count the launches of a step.
pub fn launches_on_this_thread() -> u64 {
    ops::launches_on_this_thread()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
    v[v.len() / 2]
}

/// The `samkit bench-kernels` table: every benchmark of [`BENCHES`] over `layout` (default the
/// CIFAR ResNet-18, 11.2M f32 parameters), median of `repeats` runs.
pub fn kernel_table(dev: &Arc<Device>, layout: Option<Layout>, repeats: usize) -> Result<Vec<Row>> {
    let mut b = KernelBench::new(dev, layout)?;
    let n = b.params() as f64;
    let mut rows = Vec::new();
    let mut copy_gbs = f64::NAN;
    for &(name, bytes) in BENCHES {
        let before = ops::launches_on_this_thread();
        let mut t = b.time(name, repeats.max(1))?;
        // Every run (the warm-up and the repeats) enqueues the same kernels.
        let launches = (ops::launches_on_this_thread() - before) / (t.len() as u64 + 1);
        let time = median(&mut t);
        let bpp = bytes.unwrap_or(f64::NAN);
        let gb_s = bpp * n / time / 1e9;
        if name == "copy" {
            copy_gbs = gb_s;
        }
        rows.push(Row {
            kernel: name.to_string(),
            time_us: time * 1e6,
            bytes_per_param: bpp,
            gb_s,
            frac_copy: gb_s / copy_gbs,
            deterministic: b.deterministic(name)?,
            launches,
        });
    }
    Ok(rows)
}

/// The table as text.
pub fn format_table(dev: &Device, params: usize, rows: &[Row]) -> String {
    let mut s = format!(
        "{} (sm_{}{}, {} SMs), {} f32 parameters, L2 flushed between repeats\n",
        dev.name(),
        dev.compute_capability().0,
        dev.compute_capability().1,
        dev.sm_count(),
        params
    );
    s.push_str(&format!(
        "{:<28} {:>10} {:>8} {:>9} {:>8} {:>6} {:>8}\n",
        "kernel", "time (us)", "B/param", "GB/s", "of copy", "det.", "launches"
    ));
    for r in rows {
        let num = |x: f64, p: usize| {
            if x.is_finite() {
                format!("{x:.p$}")
            } else {
                "-".into()
            }
        };
        s.push_str(&format!(
            "{:<28} {:>10} {:>8} {:>9} {:>8} {:>6} {:>8}\n",
            r.kernel,
            num(r.time_us, 1),
            num(r.bytes_per_param, 0),
            num(r.gb_s, 0),
            if r.frac_copy.is_finite() {
                format!("{:.0}%", 100.0 * r.frac_copy)
            } else {
                "-".into()
            },
            match r.deterministic {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            r.launches
        ));
    }
    let streaming: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.kernel != "copy" && !r.kernel.starts_with("sam_step") && r.frac_copy.is_finite()
        })
        .collect();
    if let Some(worst) = streaming
        .iter()
        .min_by(|a, b| a.frac_copy.total_cmp(&b.frac_copy))
    {
        s.push_str(&format!(
            "slowest streaming kernel: {} at {:.0}% of the copy bandwidth (target >= 80%)\n",
            worst.kernel,
            100.0 * worst.frac_copy
        ));
    }
    for r in rows.iter().filter(|r| r.kernel.starts_with("sam_step")) {
        s.push_str(&format!(
            "SAM optimizer side {} (norm + perturbation + restore + SGD momentum): {:.2}x its \
             byte floor of 40 B/param at the copy bandwidth (target <= 1.25x), {} launches per \
             step\n",
            r.kernel.trim_start_matches("sam_step"),
            1.0 / r.frac_copy,
            r.launches
        ));
    }
    for r in rows.iter().filter(|r| r.kernel.starts_with("topk_fisher")) {
        s.push_str(&format!(
            "Fisher top-k mask {} over {params} scores: {:.1} us (target < 150 us)\n",
            r.kernel.trim_start_matches("topk_fisher"),
            r.time_us
        ));
    }
    s
}
