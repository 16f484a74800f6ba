//! State save/load of the GPU optimizer (or its CPU emulation): a resumed run continues
//! bit-identically to an uninterrupted one, state files move between the device and the CPU
//! optimizer of samkit-core in both directions (the same bytes back, continuations within the
//! parity tolerances of `parity.rs`), and the error cases are those of the CPU.
//!
//! Every run is fed the inputs of one CPU reference run (its gradients, Fisher sums, learning
//! rate and ρ changes), as in `parity::run_pair`: a run's deviation from the reference is the
//! deviation of its own arithmetic, not of a trajectory of its own.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use samkit_core::state::PortableState;
use samkit_core::{
    Adam, Asam, BaseOptimizer, Error as CoreError, FirstOutcome, LookSam, Optimizer, Rule, Sam,
    Ssam,
};
use samkit_cuda::{Device, Elem, Error, GpuOptimizer};

use super::parity::{
    assert_close, assert_gv, bases, gpu_first_step, mixed_layout, rules, sgd_momentum, Buf,
    Problem, Repr,
};

/// What one step of the reference run fed the optimizer.
pub struct StepInput {
    lr: Option<f32>,
    rho: Option<f32>,
    fisher: Option<Vec<f32>>,
    /// The gradient (ImbSAM: of the head).
    g: Vec<f32>,
    /// ImbSAM's tail gradient (`None`: no tail sample in the batch).
    tail: Option<Vec<f32>>,
    /// The gradient of pass 2, when the reference had one.
    g2: Option<Vec<f32>>,
    outcome: FirstOutcome,
}

/// The CPU reference: its inputs, and its weights and state before each step (and at the end).
pub struct Reference {
    pub inputs: Vec<StepInput>,
    pub w: Vec<Vec<f32>>,
    pub states: Vec<PortableState>,
}

/// Where to put a non-finite value: `(step, pass)`.
type Poison = Option<(usize, u8)>;

fn poisoned(mut g: Vec<f32>, at: Poison, step: usize, pass: u8) -> Vec<f32> {
    if at == Some((step, pass)) {
        let i = g.len() / 3;
        g[i] = if pass == 1 {
            f32::NAN
        } else {
            f32::NEG_INFINITY
        };
    }
    g
}

/// `steps` steps of the CPU optimizer; the learning rate halves before step 3 and ρ becomes
/// 0.03 before step 4 (where the rule has a settable ρ), as in `parity::run_pair`.
pub fn reference(rule: &Rule, base: &BaseOptimizer, steps: usize, poison: Poison) -> Reference {
    let layout = mixed_layout();
    let p = Problem::new(layout.clone());
    let mut cpu = Optimizer::new(layout, rule.clone(), base.clone()).unwrap();
    let mut w = p.init();
    let mut r = Reference {
        inputs: Vec::new(),
        w: vec![w.clone()],
        states: vec![cpu.portable_state().unwrap()],
    };
    for t in 0..steps {
        let b = t as u64;
        let lr = (t == 3).then(|| base.lr() * 0.5);
        if let Some(lr) = lr {
            cpu.set_lr(lr).unwrap();
        }
        let rho = (t == 4 && cpu.set_rho(0.03).is_ok()).then_some(0.03);
        let fisher = cpu.needs_fisher().map(|s| p.fisher(&w, s));
        if let Some(f) = &fisher {
            cpu.set_fisher(f).unwrap();
        }
        let split = cpu.needs_head_tail();
        let (g, tail, outcome) = if split {
            let head = poisoned(p.grad(&w, b, 1), poison, t, 1);
            let tail = (t != 2).then(|| p.grad(&w, b, 2));
            let o = cpu.first_step_split(&mut w, &head, tail.as_ref()).unwrap();
            (head, tail, o)
        } else {
            let g = poisoned(p.grad(&w, b, 0), poison, t, 1);
            let o = cpu.first_step(&mut w, &g).unwrap();
            (g, None, o)
        };
        let g2 = if outcome == FirstOutcome::Perturbed {
            let g2 = poisoned(p.grad(&w, b, if split { 2 } else { 0 }), poison, t, 2);
            cpu.second_step(&mut w, &g2).unwrap();
            Some(g2)
        } else {
            None
        };
        r.inputs.push(StepInput {
            lr,
            rho,
            fisher,
            g,
            tail,
            g2,
            outcome,
        });
        r.w.push(w.clone());
        r.states.push(cpu.portable_state().unwrap());
    }
    r
}

/// A CPU optimizer fed the reference's inputs.
struct CpuRun {
    opt: Optimizer,
    w: Vec<f32>,
}

impl CpuRun {
    fn new(rule: &Rule, base: &BaseOptimizer, w: &[f32]) -> Self {
        CpuRun {
            opt: Optimizer::new(mixed_layout(), rule.clone(), base.clone()).unwrap(),
            w: w.to_vec(),
        }
    }

    fn step(&mut self, s: &StepInput, what: &str) {
        let o = &mut self.opt;
        if let Some(lr) = s.lr {
            o.set_lr(lr).unwrap();
        }
        if let Some(rho) = s.rho {
            o.set_rho(rho).unwrap();
        }
        assert_eq!(o.needs_fisher().is_some(), s.fisher.is_some(), "{what}");
        if let Some(f) = &s.fisher {
            o.set_fisher(f).unwrap();
        }
        let fo = if o.needs_head_tail() {
            o.first_step_split(&mut self.w, &s.g, s.tail.as_ref())
                .unwrap()
        } else {
            o.first_step(&mut self.w, &s.g).unwrap()
        };
        assert_eq!(fo, s.outcome, "{what}: first step");
        if fo == FirstOutcome::Perturbed {
            o.second_step(&mut self.w, s.g2.as_ref().unwrap()).unwrap();
        }
    }
}

/// A device optimizer fed the reference's inputs, its weights in either representation.
struct GpuRun<T: Elem> {
    dev: Arc<Device>,
    opt: GpuOptimizer<T>,
    w: Buf<T>,
    repr: Repr,
}

impl<T: Elem> GpuRun<T> {
    fn new(dev: &Arc<Device>, rule: &Rule, base: &BaseOptimizer, w: &[f32], repr: Repr) -> Self {
        let layout = mixed_layout();
        GpuRun {
            dev: dev.clone(),
            opt: GpuOptimizer::new(dev, layout.clone(), rule.clone(), base.clone()).unwrap(),
            w: Buf::upload(dev, &layout, w, repr),
            repr,
        }
    }

    fn up(&self, v: &[f32], repr: Repr) -> Buf<T> {
        Buf::upload(&self.dev, &mixed_layout(), v, repr)
    }

    fn step(&mut self, s: &StepInput, what: &str) {
        let o = &mut self.opt;
        if let Some(lr) = s.lr {
            o.set_lr(lr).unwrap();
        }
        if let Some(rho) = s.rho {
            o.set_rho(rho).unwrap();
        }
        assert_eq!(
            o.needs_fisher().unwrap().is_some(),
            s.fisher.is_some(),
            "{what}: needs_fisher"
        );
        if let Some(f) = &s.fisher {
            let df = Buf::<f32>::upload(&self.dev, &mixed_layout(), f, Repr::Flat);
            let Buf::Flat(df) = &df else { unreachable!() };
            self.opt.set_fisher::<f32, _>(df).unwrap();
        }
        let g = self.up(&s.g, self.repr);
        let tail = s.tail.as_ref().map(|t| self.up(t, self.repr));
        let gfo = gpu_first_step(&mut self.opt, &mut self.w, &g, tail.as_ref());
        // The same outcome as the CPU, a skip of pass 1 included.
        assert_eq!(gfo, s.outcome, "{what}: first step");
        if gfo == FirstOutcome::Perturbed {
            let g2 = self.up(s.g2.as_ref().unwrap_or(&s.g), self.repr);
            match (&mut self.w, &g2) {
                (Buf::Flat(w), Buf::Flat(g)) => self.opt.second_step(w, g).unwrap(),
                (Buf::List(w), Buf::List(g)) => self.opt.second_step(w, g).unwrap(),
                _ => unreachable!(),
            };
        }
    }

    fn weights(&self) -> Vec<f32> {
        self.w.download(&self.dev)
    }
}

#[track_caller]
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i}: {:e} vs {:e}", got[i], want[i]);
    }
}

/// Everything exact but the floating-point buffers, those within the parity tolerance (f32
/// elements 1e-6 relative; `‖g_v‖²`, a sum of squares of such elements, 1e-5).
#[track_caller]
fn assert_state_close(got: &PortableState, want: &PortableState, what: &str) {
    assert_eq!(got.layout, want.layout, "{what}: layout");
    assert_eq!(got.rule, want.rule, "{what}: rule");
    assert_eq!(got.base, want.base, "{what}: base");
    assert_eq!(got.lr.to_bits(), want.lr.to_bits(), "{what}: lr");
    let counters = |s: &PortableState| (s.step, s.skipped, s.base_steps, s.mask_updates);
    assert_eq!(counters(got), counters(want), "{what}: counters");
    assert!(got.mask == want.mask, "{what}: sparse masks differ");
    assert_eq!(got.base_bufs.len(), want.base_bufs.len(), "{what}");
    for (i, (a, b)) in got.base_bufs.iter().zip(&want.base_bufs).enumerate() {
        let name = want.base.state_buffers()[i];
        assert_close(a, b, 1e-6, &format!("{what}: {name}"));
    }
    assert_close(&got.fsam_m, &want.fsam_m, 1e-6, &format!("{what}: m"));
    assert_close(&got.look_gv, &want.look_gv, 1e-6, &format!("{what}: g_v"));
    assert_eq!(got.look_gv_sq.len(), want.look_gv_sq.len(), "{what}");
    for (a, b) in got.look_gv_sq.iter().zip(&want.look_gv_sq) {
        let rel = if a == b {
            0.0
        } else {
            (a - b).abs() / a.abs().max(b.abs())
        };
        assert!(rel <= 1e-5, "{what}: ‖g_v‖² {a:e} vs {b:e}");
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "samkit-cuda-state-{}-{name}.safetensors",
        std::process::id()
    ))
}

/// `(name, rule, base)`: every rule with SGD momentum, and every base optimizer with SAM,
/// FriendlySAM, LookSAM (global and per tensor), SSAM-D and GSAM.
fn cases() -> Vec<(String, Rule, BaseOptimizer)> {
    let mut v: Vec<(String, Rule, BaseOptimizer)> = rules()
        .into_iter()
        .map(|(n, r)| (n.to_string(), r, sgd_momentum()))
        .collect();
    let picks = [
        "sam",
        "friendlysam",
        "looksam",
        "looksam-per-tensor",
        "ssam-d",
        "gsam",
    ];
    for (bname, base) in bases().into_iter().skip(1) {
        for (name, rule) in rules().into_iter().filter(|(n, _)| picks.contains(n)) {
            v.push((format!("{name}/{bname}"), rule, base.clone()));
        }
    }
    v
}

/// Where case `i` stops (1 to 4 completed steps), whether it skips the step just before, and
/// the representations of the weights before and after the restart.
fn plan(i: usize) -> (usize, Poison, Repr, Repr) {
    let k = 1 + i % 4;
    let poison = match i % 3 {
        0 => None,
        1 => Some((k - 1, 1)),
        _ => Some((k - 1, 2)),
    };
    let (a, b) = if i % 2 == 0 {
        (Repr::Flat, Repr::List)
    } else {
        (Repr::List, Repr::Flat)
    };
    (k, poison, a, b)
}

const STEPS: usize = 7;

/// Save on the device after `k` steps, load into a fresh device optimizer (in a file, or from
/// the bytes), continue: every weight and every state byte as in an uninterrupted run.
pub fn resume_is_bit_identical(dev: &Arc<Device>) {
    for (i, (name, rule, base)) in cases().into_iter().enumerate() {
        let (k, poison, repr, repr2) = plan(i);
        let what = format!("{name} (saved after step {k}, poison {poison:?})");
        let r = reference(&rule, &base, STEPS, poison);
        let mut full = GpuRun::<f32>::new(dev, &rule, &base, &r.w[0], repr);
        let mut full_w = vec![full.weights()];
        let mut full_s = vec![full.opt.state_bytes().unwrap()];
        for (t, s) in r.inputs.iter().enumerate() {
            full.step(s, &format!("{what}: uninterrupted step {t}"));
            full_w.push(full.weights());
            full_s.push(full.opt.state_bytes().unwrap());
        }
        let mut a = GpuRun::<f32>::new(dev, &rule, &base, &r.w[0], repr);
        for (t, s) in r.inputs[..k].iter().enumerate() {
            a.step(s, &format!("{what}: step {t}"));
        }
        let bytes = a.opt.state_bytes().unwrap();
        assert!(bytes == full_s[k], "{what}: state at step {k}");
        let w = a.weights();
        let path = temp_path(&format!("resume-{i}"));
        if i % 2 == 0 {
            a.opt.save_state(&path).unwrap();
        }
        drop(a);
        let saved = PortableState::from_bytes(&bytes, Path::new("bytes")).unwrap();
        let mut b = GpuRun::<f32>::new(dev, &saved.rule, &base, &w, repr2);
        if i % 3 == 2 || name.starts_with("friendlysam") || name.starts_with("ssam-d") {
            // Load into an optimizer that has run 3 steps, not a fresh one: counters and g_v
            // set, FriendlySAM's m and (SSAM-D every 2 steps) the mask in their other slot.
            for s in &reference(&rule, &base, 3, None).inputs {
                b.step(s, &format!("{what}: warm-up"));
            }
            b.w = b.up(&w, repr2);
        }
        if i % 2 == 0 {
            b.opt.load_state(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
        } else {
            b.opt.load_state_bytes(&bytes, &path).unwrap();
        }
        assert_eq!(b.opt.steps().unwrap(), saved.step, "{what}");
        assert_eq!(b.opt.skipped_steps().unwrap(), saved.skipped, "{what}");
        assert_eq!(b.opt.lr().to_bits(), saved.lr.to_bits(), "{what}: lr");
        assert!(b.opt.state_bytes().unwrap() == bytes, "{what}: bytes back");
        for t in k..STEPS {
            let what = format!("{what}: resumed step {t}");
            b.step(&r.inputs[t], &what);
            assert_bits(&b.weights(), &full_w[t + 1], &what);
            assert!(
                b.opt.state_bytes().unwrap() == full_s[t + 1],
                "{what}: state"
            );
        }
        // And the whole trajectory is the CPU's, within the parity tolerance.
        assert_close(
            &full_w[STEPS],
            &r.w[STEPS],
            1e-6,
            &format!("{what}: vs CPU"),
        );
        let end = PortableState::from_bytes(&full_s[STEPS], Path::new("bytes")).unwrap();
        assert_state_close(&end, &r.states[STEPS], &format!("{what}: vs CPU"));
    }
    println!("{} rule/base pairs resume bit-identically", cases().len());
}

/// Device state into the CPU optimizer and CPU state into the device optimizer: the same bytes
/// back out, and either continuation as the CPU reference within the parity tolerances.
pub fn states_interchange_with_cpu(dev: &Arc<Device>) {
    let at = Path::new("state.safetensors");
    for (i, (name, rule, base)) in cases().into_iter().enumerate() {
        let (k, poison, repr, _) = plan(i + 1);
        let what = format!("{name} (after step {k}, poison {poison:?})");
        let r = reference(&rule, &base, STEPS, poison);
        let mut g = GpuRun::<f32>::new(dev, &rule, &base, &r.w[0], repr);
        for (t, s) in r.inputs[..k].iter().enumerate() {
            g.step(s, &format!("{what}: step {t}"));
        }
        let gbytes = g.opt.state_bytes().unwrap();
        let gstate = PortableState::from_bytes(&gbytes, at).unwrap();
        assert_state_close(&gstate, &r.states[k], &format!("{what}: device state"));

        // Device → CPU.
        let mut c = CpuRun::new(&gstate.rule, &base, &g.weights());
        c.opt.load_state_bytes(&gbytes, at).unwrap();
        assert!(
            c.opt.state_bytes().unwrap() == gbytes,
            "{what}: CPU bytes back"
        );
        assert_eq!(c.opt.looksam_gv(), &gstate.look_gv[..], "{what}: g_v");
        for t in k..STEPS {
            let what = format!("{what}: on the CPU, step {t}");
            c.step(&r.inputs[t], &what);
            assert_close(&c.w, &r.w[t + 1], 1e-6, &what);
            let s = c.opt.portable_state().unwrap();
            assert_state_close(&s, &r.states[t + 1], &what);
        }

        // CPU → device.
        let cbytes = r.states[k].to_bytes().unwrap();
        let mut d = GpuRun::<f32>::new(dev, &r.states[k].rule, &base, &r.w[k], repr);
        d.opt.load_state_bytes(&cbytes, at).unwrap();
        assert!(
            d.opt.state_bytes().unwrap() == cbytes,
            "{what}: device bytes back"
        );
        for t in k..STEPS {
            let what = format!("{what}: on the device, step {t}");
            d.step(&r.inputs[t], &what);
            assert_close(&d.weights(), &r.w[t + 1], 1e-6, &what);
            let s = d.opt.portable_state().unwrap();
            assert_state_close(&s, &r.states[t + 1], &what);
            assert_gv(&d.opt.look_gv().unwrap(), &r.states[t + 1].look_gv, &what);
        }
    }
    // Half-precision weights keep an f32 state: the same file format.
    let rule = Rule::FriendlySam(Default::default());
    let base = BaseOptimizer::AdamW(Adam {
        lr: 1e-2,
        weight_decay: 5e-2,
        ..Adam::default()
    });
    let r = reference(&rule, &base, 3, None);
    let mut h = GpuRun::<half::bf16>::new(dev, &rule, &base, &r.w[0], Repr::Flat);
    for s in &r.inputs {
        h.step(s, "bf16");
    }
    let hbytes = h.opt.state_bytes().unwrap();
    let mut c = Optimizer::new(mixed_layout(), rule.clone(), base.clone()).unwrap();
    c.load_state_bytes(&hbytes, at).unwrap();
    assert!(
        c.state_bytes().unwrap() == hbytes,
        "bf16 state into the CPU"
    );
    let mut f = GpuOptimizer::<f32>::new(dev, mixed_layout(), rule, base).unwrap();
    f.load_state_bytes(&hbytes, at).unwrap();
    assert!(f.state_bytes().unwrap() == hbytes, "bf16 state into f32");
    println!(
        "{} rule/base pairs: device and CPU states interchange",
        cases().len()
    );
}

#[track_caller]
fn state_error(r: Result<(), Error>, want: &str) {
    match r {
        Err(Error::Core(CoreError::State { detail, .. })) => {
            assert!(detail.contains(want), "`{detail}` does not say `{want}`")
        }
        Err(e) => panic!("expected a state-file error saying `{want}`, got {e}"),
        Ok(()) => panic!("expected a state-file error saying `{want}`"),
    }
}

#[track_caller]
fn protocol_error<T: std::fmt::Debug>(r: Result<T, Error>, want: &str) {
    match r {
        Err(Error::Core(CoreError::Protocol(m))) => {
            assert!(m.contains(want), "`{m}` does not say `{want}`")
        }
        other => panic!("expected a protocol error saying `{want}`, got {other:?}"),
    }
}

/// The error cases of the CPU optimizer's state files, on the device; a failed load changes
/// nothing.
pub fn state_errors(dev: &Arc<Device>) {
    let layout = mixed_layout();
    let sam = Rule::Sam(Sam::default());
    let r = reference(&sam, &sgd_momentum(), 2, None);
    let mut g = GpuRun::<f32>::new(dev, &sam, &sgd_momentum(), &r.w[0], Repr::Flat);
    for s in &r.inputs {
        g.step(s, "sam");
    }
    let bytes = g.opt.state_bytes().unwrap();
    let at = Path::new("state.safetensors");
    let fresh = |rule: &Rule, base: &BaseOptimizer| {
        GpuOptimizer::<f32>::new(dev, layout.clone(), rule.clone(), base.clone()).unwrap()
    };

    // Another layout, rule, base optimizer.
    let mut other = layout.clone();
    other.push("extra.bias", &[5]).unwrap();
    let mut o = GpuOptimizer::<f32>::new(dev, other, sam.clone(), sgd_momentum()).unwrap();
    state_error(o.load_state_bytes(&bytes, at), "another layout");
    let mut o = fresh(&Rule::Asam(Asam::default()), &sgd_momentum());
    state_error(o.load_state_bytes(&bytes, at), "rule");
    let mut o = fresh(
        &Rule::Sam(Sam {
            rho: 0.1,
            ..Sam::default()
        }),
        &sgd_momentum(),
    );
    state_error(o.load_state_bytes(&bytes, at), "rule");
    let adam = BaseOptimizer::Adam(Adam::default());
    let mut o = fresh(&sam, &adam);
    state_error(o.load_state_bytes(&bytes, at), "base optimizer");
    let mut o = fresh(&sam, &BaseOptimizer::sgd(0.05, 0.0, 0.0));
    state_error(o.load_state_bytes(&bytes, at), "base optimizer");
    // The CPU refuses the device's state of another rule the same way.
    let mut c =
        Optimizer::new(layout.clone(), Rule::Asam(Asam::default()), sgd_momentum()).unwrap();
    let e = c.load_state_bytes(&bytes, at).unwrap_err();
    assert!(
        matches!(&e, CoreError::State { detail, .. } if detail.contains("rule")),
        "{e}"
    );

    // Not a state file.
    let mut o = fresh(&sam, &sgd_momentum());
    let before = o.state_bytes().unwrap();
    state_error(o.load_state_bytes(b"not a safetensors file", at), "");
    state_error(o.load_state_bytes(&bytes[..bytes.len() / 2], at), "");
    let header = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut plain = (header.len() as u64).to_le_bytes().to_vec();
    plain.extend_from_slice(header);
    plain.extend_from_slice(&1f32.to_le_bytes());
    state_error(o.load_state_bytes(&plain, at), "not an optimizer state");
    // Tensors that do not fit: a short momentum buffer, LookSAM without g_v after its steps.
    let mut s = PortableState::from_bytes(&bytes, at).unwrap();
    s.base_bufs[0].pop();
    state_error(
        o.load_state_bytes(&s.to_bytes().unwrap(), at),
        "wrong type or size",
    );
    let look = Rule::LookSam(LookSam::default());
    let rl = reference(&look, &sgd_momentum(), 2, None);
    let mut s = rl.states[2].clone();
    s.look_gv.clear();
    s.look_gv_sq.clear();
    let mut ol = fresh(&look, &sgd_momentum());
    state_error(
        ol.load_state_bytes(&s.to_bytes().unwrap(), at),
        "looksam.gv",
    );
    let mut s = rl.states[2].clone();
    s.look_gv_sq.push(1.0);
    state_error(ol.load_state_bytes(&s.to_bytes().unwrap(), at), "‖g_v‖²");
    // A missing file.
    let e = o
        .load_state("/nonexistent/dir/state.safetensors")
        .unwrap_err();
    assert!(matches!(e, Error::Core(CoreError::Io { .. })), "{e}");
    assert!(
        o.state_bytes().unwrap() == before,
        "a failed load changed the state"
    );
    o.load_state_bytes(&bytes, at).unwrap();
    assert_eq!(o.steps().unwrap(), 2);

    // Saving or loading while the weights are perturbed.
    let p = Problem::new(layout.clone());
    let w0 = p.init();
    let mut dw = dev.stream().clone_htod(&w0).unwrap();
    let dg = dev.stream().clone_htod(&p.grad(&w0, 7, 0)).unwrap();
    assert_eq!(o.first_step(&mut dw, &dg).unwrap(), FirstOutcome::Perturbed);
    protocol_error(o.state_bytes(), "perturbed");
    let path = temp_path("perturbed");
    protocol_error(o.save_state(&path), "perturbed");
    assert!(!path.exists(), "a refused save wrote a file");
    protocol_error(o.load_state_bytes(&bytes, at), "perturbed");
    o.second_step(&mut dw, &dg).unwrap();
    assert_eq!(o.steps().unwrap(), 3);

    // Saving between set_fisher and the step that uses it; the pending mask survives a load.
    let ssam_f = Rule::Ssam(Ssam {
        interval: 2,
        ..Ssam::fisher()
    });
    let rf = reference(&ssam_f, &sgd_momentum(), 3, None);
    let mut f = GpuRun::<f32>::new(dev, &ssam_f, &sgd_momentum(), &rf.w[0], Repr::Flat);
    for s in &rf.inputs[..2] {
        f.step(s, "ssam-f");
    }
    let fbytes = f.opt.state_bytes().unwrap();
    let fisher = rf.inputs[2].fisher.as_ref().expect("a Fisher step");
    let df = dev.stream().clone_htod(fisher).unwrap();
    f.opt.set_fisher::<f32, _>(&df).unwrap();
    protocol_error(f.opt.state_bytes(), "set_fisher");
    let mut c = Optimizer::new(layout.clone(), ssam_f.clone(), sgd_momentum()).unwrap();
    c.load_state_bytes(&fbytes, at).unwrap();
    c.set_fisher(fisher).unwrap();
    assert!(matches!(
        c.state_bytes(),
        Err(CoreError::Protocol(m)) if m.contains("set_fisher")
    ));
    c.load_state_bytes(&fbytes, at).unwrap();
    assert_eq!(c.needs_fisher(), None, "the CPU lost its pending mask");
    f.opt.load_state_bytes(&fbytes, at).unwrap();
    assert_eq!(
        f.opt.needs_fisher().unwrap(),
        None,
        "the pending mask was lost"
    );
    let third = StepInput {
        fisher: None,
        ..clone_input(&rf.inputs[2])
    };
    f.step(&third, "ssam-f after a load");
    let mut u = GpuRun::<f32>::new(dev, &ssam_f, &sgd_momentum(), &rf.w[0], Repr::Flat);
    for s in &rf.inputs {
        u.step(s, "ssam-f uninterrupted");
    }
    assert_bits(&f.weights(), &u.weights(), "ssam-f after a load");
    assert!(f.opt.state_bytes().unwrap() == u.opt.state_bytes().unwrap());
    assert_eq!(f.opt.mask().unwrap().as_ref(), rf.states[3].mask.as_ref());

    // The save is atomic: the file replaced whole, no temporary left.
    let path = temp_path("atomic");
    std::fs::write(&path, b"old").unwrap();
    g.opt.save_state(&path).unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes);
    assert!(!path.with_extension("tmp").exists());
    let mut c = Optimizer::new(layout.clone(), sam.clone(), sgd_momentum()).unwrap();
    c.load_state(&path).unwrap();
    assert!(c.state_bytes().unwrap() == bytes);
    std::fs::remove_file(&path).unwrap();
}

fn clone_input(s: &StepInput) -> StepInput {
    StepInput {
        lr: s.lr,
        rho: s.rho,
        fisher: s.fisher.clone(),
        g: s.g.clone(),
        tail: s.tail.clone(),
        g2: s.g2.clone(),
        outcome: s.outcome,
    }
}
