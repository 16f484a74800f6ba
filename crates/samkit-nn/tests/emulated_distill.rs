//! MESA/SAF's device kernels against the CPU on the CPU emulation of a device (samkit-testkit's
//! fake driver with samkit-kernels' `nn.cu` built by g++, as `tests/emulated.rs`): the
//! distillation term `sk_nn_kd` (`Cuda::distill_kd`) against `samkit_nn::distill::kd_term`, and
//! the EMA update `sk_nn_ema` (`Cuda::ema_update`) against the same f32 expression on the host,
//! bit for bit. Skipped with one line where a real driver is installed or g++/NVRTC is missing
//! (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
mod common;

use common::parity::Env;
use samkit_nn::cuda::CudaOptions;
use samkit_nn::distill::kd_term;

/// The device evaluates the same f64 expressions as the CPU; exp/log of another math library
/// may differ in the last f64 bit, far below one f32 ulp of the results.
const TOL: f64 = 1e-6;

fn env() -> Option<Env> {
    let dev = samkit_testkit::or_skip(samkit_testkit::device_with_dnn())?;
    Some(Env {
        dev,
        width: 8,
        batch: 8,
        required: true,
        turn: None,
        opts: CudaOptions {
            workspace_limit: 4 << 20,
            ..CudaOptions::default()
        },
    })
}

/// Deterministic values in `[-scale, scale)` (a 64-bit LCG; no randomness needed beyond
/// "not special").
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn rel_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1e-6f64, |a, &b| a.max(b.abs() as f64));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w as f64).abs() <= TOL * scale,
            "{what}[{i}]: device {g} vs CPU {w}"
        );
    }
}

#[test]
fn device_distillation_term_matches_the_cpu() {
    let Some(env) = env() else { return };
    let Some(mut gpu) = env.cuda() else { return };
    let st = gpu.stream().clone();
    for (n, k, tau, lambda) in [(9usize, 10usize, 5.0f32, 0.8f32), (5, 100, 1.0, 0.3)] {
        let z = values(n * k, 1 + k as u64, 6.0);
        let t = values(n * k, 2 + k as u64, 6.0);
        let w: Vec<f32> = (0..n).map(|i| 0.05 + 0.01 * i as f32).collect();
        let present: Vec<bool> = (0..n).map(|i| i % 3 != 1).collect();
        let g0 = values(n * k, 3, 0.1);
        for flags in [None, Some(&present[..])] {
            let mut gc = g0.clone();
            let kc = kd_term(&z, &t, k, tau, lambda, &w, flags, Some(&mut gc)).unwrap();
            let (zg, tg) = (st.clone_htod(&z).unwrap(), st.clone_htod(&t).unwrap());
            let mut gg = st.clone_htod(&g0).unwrap();
            let kg = gpu
                .distill_kd(&zg, &tg, k, tau, lambda, &w, flags, Some(&mut gg))
                .unwrap();
            rel_close("τ²·KL per sample", &kg, &kc);
            rel_close("logit gradient (added)", &st.clone_dtoh(&gg).unwrap(), &gc);
            // Without a gradient: the same terms.
            let kg2 = gpu
                .distill_kd(&zg, &tg, k, tau, lambda, &w, flags, None)
                .unwrap();
            assert_eq!(kg2, kg);
        }
    }
    // Bad input is an error, not a launch.
    let z = st.clone_htod(&values(20, 9, 1.0)).unwrap();
    let w = [0.5f32; 2];
    assert!(gpu
        .distill_kd(&z, &z, 10, 0.0, 0.8, &w, None, None)
        .is_err());
    assert!(gpu
        .distill_kd(&z, &z, 10, 5.0, -1.0, &w, None, None)
        .is_err());
    assert!(gpu
        .distill_kd(&z, &z, 20, 5.0, 0.8, &w, None, None)
        .is_err());
    assert!(gpu
        .distill_kd(&z, &z, 10, 5.0, 0.8, &w, Some(&[true]), None)
        .is_err());
}

#[test]
fn device_ema_update_is_the_cpu_update_bit_for_bit() {
    let Some(env) = env() else { return };
    let Some(mut gpu) = env.cuda() else { return };
    let st = gpu.stream().clone();
    let n = 1000;
    let mut ema = values(n, 11, 1.0);
    let w = values(n, 12, 1.0);
    let mut eg = st.clone_htod(&ema).unwrap();
    let wg = st.clone_htod(&w).unwrap();
    let d = 0.9998f32;
    let c = 1.0 - d;
    for _ in 0..3 {
        for (e, &x) in ema.iter_mut().zip(&w) {
            *e = d * *e + c * x;
        }
        gpu.ema_update(&mut eg, &wg, d).unwrap();
    }
    let got = st.clone_dtoh(&eg).unwrap();
    for (i, (g, e)) in got.iter().zip(&ema).enumerate() {
        assert_eq!(g.to_bits(), e.to_bits(), "value {i}: {g} vs {e}");
    }
    let short = st.clone_htod(&w[..10]).unwrap();
    assert!(gpu.ema_update(&mut eg, &short, d).is_err());
}
