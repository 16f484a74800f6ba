//! Finite-difference gradient checks for every layer of the CPU backend and for a small
//! ResNet-18 end to end (train and eval batch norm), and the per-sample squared gradients of
//! SSAM-F against one-sample-at-a-time gradients.
use samkit_nn::backend::{BnParams, BnState, LinearParams};
use samkit_nn::init::Rng;
use samkit_nn::{
    mean_weights, Activation, Backend, BnConfig, BnMode, Conv2d, Cpu, Dims, LossKind, Mlp, Model,
    ParamGrad, ResNet18, ResNetConfig, Tensor,
};

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; n];
    Rng::new(seed).fill_normal(&mut v, 1.0);
    v
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Central differences of `f` at `x` against `analytic`, on every `stride`-th coordinate:
/// `|fd − a| ≤ tol·max(max|a|, 1e-3)`.
fn check(
    name: &str,
    x: &[f32],
    analytic: &[f32],
    eps: f32,
    tol: f64,
    stride: usize,
    mut f: impl FnMut(&[f32]) -> f64,
) {
    assert_eq!(x.len(), analytic.len(), "{name}");
    let scale = analytic
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-3);
    let mut xp = x.to_vec();
    let mut worst = 0f64;
    for i in (0..x.len()).step_by(stride.max(1)) {
        xp[i] = x[i] + eps;
        let fp = f(&xp);
        xp[i] = x[i] - eps;
        let fm = f(&xp);
        xp[i] = x[i];
        let fd = (fp - fm) / (2.0 * (eps as f64));
        let err = (fd - analytic[i] as f64).abs() / scale;
        worst = worst.max(err);
        assert!(
            err <= tol,
            "{name}[{i}]: finite difference {fd}, analytic {} (scale {scale})",
            analytic[i]
        );
    }
    eprintln!("{name}: max error {worst:.2e} of scale {scale:.2e}");
}

fn conv_case(conv: Conv2d, d: Dims, seed: u64) {
    let mut be = Cpu::new().with_col_budget(conv.cin * conv.k * conv.k * conv.out_dims(d).hw()); // one image per chunk
    let od = conv.out_dims(d);
    let x = rand(d.len(), seed);
    let w = rand(conv.weight_len(), seed + 1);
    let r = rand(od.len(), seed + 2);
    let loss = |be: &mut Cpu, x: &[f32], w: &[f32]| {
        let mut y = vec![0.0; od.len()];
        be.conv2d_forward(&conv, d, &x.to_vec(), w, 0, &mut y)
            .unwrap();
        dot(&y, &r)
    };
    let mut dw = vec![0.0; w.len()];
    let mut dx = vec![7.0; x.len()];
    be.conv2d_backward(
        &conv,
        d,
        &x,
        &r,
        &w,
        0,
        ParamGrad::Sum,
        &mut dw,
        Some(&mut dx),
        false,
    )
    .unwrap();
    let name = format!("conv {conv:?}");
    check(&format!("{name} dW"), &w, &dw, 1e-2, 2e-3, 1, |wp| {
        loss(&mut be, &x, wp)
    });
    check(&format!("{name} dx"), &x, &dx, 1e-2, 2e-3, 1, |xp| {
        loss(&mut be, xp, &w)
    });
    // Accumulating into dx adds; one chunk for the whole batch gives the same result.
    let mut dx2 = dx.clone();
    let mut be_all = Cpu::new();
    be_all
        .conv2d_backward(
            &conv,
            d,
            &x,
            &r,
            &w,
            0,
            ParamGrad::Sum,
            &mut dw.clone(),
            Some(&mut dx2),
            true,
        )
        .unwrap();
    for (a, b) in dx2.iter().zip(&dx) {
        assert!(
            (a - 2.0 * b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{name}: accumulate"
        );
    }
    let mut y1 = vec![0.0; od.len()];
    let mut y2 = vec![0.0; od.len()];
    be.conv2d_forward(&conv, d, &x, &w, 0, &mut y1).unwrap();
    be_all.conv2d_forward(&conv, d, &x, &w, 0, &mut y2).unwrap();
    for (a, b) in y1.iter().zip(&y2) {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{name}: chunking changes the output"
        );
    }
}

#[test]
fn conv2d_gradients() {
    let d = Dims::new(2, 3, 5, 6);
    conv_case(Conv2d::new(3, 4, 3, 1, 1), d, 1);
    conv_case(Conv2d::new(3, 4, 3, 2, 1), d, 2);
    conv_case(Conv2d::new(3, 2, 1, 2, 0), d, 3);
    conv_case(Conv2d::new(3, 2, 1, 1, 0), d, 4);
    conv_case(Conv2d::new(3, 2, 3, 1, 0), d, 5);
    conv_case(Conv2d::new(3, 2, 5, 2, 2), Dims::new(2, 3, 7, 7), 6);
}

#[test]
fn conv2d_matches_a_direct_convolution() {
    let conv = Conv2d::new(2, 3, 3, 2, 1);
    let d = Dims::new(2, 2, 5, 4);
    let od = conv.out_dims(d);
    let x = rand(d.len(), 9);
    let w = rand(conv.weight_len(), 10);
    let mut y = vec![0.0; od.len()];
    Cpu::new()
        .conv2d_forward(&conv, d, &x, &w, 0, &mut y)
        .unwrap();
    // Channel-major activations: x[c][n][h][w].
    for n in 0..d.n {
        for o in 0..conv.cout {
            for oh in 0..od.h {
                for ow in 0..od.w {
                    let mut s = 0f64;
                    for c in 0..d.c {
                        for kh in 0..3 {
                            for kw in 0..3 {
                                let (ih, iw) =
                                    ((oh * 2 + kh) as isize - 1, (ow * 2 + kw) as isize - 1);
                                if ih < 0 || iw < 0 || ih >= d.h as isize || iw >= d.w as isize {
                                    continue;
                                }
                                let xv = x[((c * d.n + n) * d.h + ih as usize) * d.w + iw as usize];
                                s += xv as f64 * w[((o * d.c + c) * 3 + kh) * 3 + kw] as f64;
                            }
                        }
                    }
                    let got = y[((o * d.n + n) * od.h + oh) * od.w + ow];
                    assert!(
                        (got as f64 - s).abs() < 1e-4,
                        "({n},{o},{oh},{ow}): {got} vs {s}"
                    );
                }
            }
        }
    }
}

fn bn_case(mode: BnMode, residual: bool, relu: bool, seed: u64) {
    let d = Dims::new(3, 2, 2, 3);
    let mut be = Cpu::new();
    let x = rand(d.len(), seed);
    let mut params = rand(2 * d.c, seed + 1);
    params[..d.c].iter_mut().for_each(|g| *g += 1.5);
    let p = BnParams {
        gamma: 0,
        beta: d.c,
    };
    let res = rand(d.len(), seed + 2);
    let r = rand(d.len(), seed + 3);
    let cfg = BnConfig::default();
    let mut st = BnState::new(&mut be, d.c).unwrap();
    st.running_mean = rand(d.c, seed + 4);
    st.running_var = rand(d.c, seed + 5).iter().map(|v| 0.5 + v.abs()).collect();
    let fwd_mode = if mode == BnMode::Train {
        BnMode::TrainNoUpdate
    } else {
        mode
    };
    let (rm, rv) = (st.running_mean.clone(), st.running_var.clone());
    let loss = |be: &mut Cpu, x: &[f32], params: &[f32]| {
        let mut y = vec![0.0; d.len()];
        let mut st2 = BnState::new(be, d.c).unwrap();
        st2.running_mean = rm.clone();
        st2.running_var = rv.clone();
        be.batch_norm_forward(
            fwd_mode,
            cfg,
            d,
            &x.to_vec(),
            params,
            p,
            &mut st2,
            residual.then_some(&res),
            relu,
            &mut y,
        )
        .unwrap();
        dot(&y, &r)
    };
    let base = loss(&mut be, &x, &params);
    let mut y = vec![0.0; d.len()];
    be.batch_norm_forward(
        mode,
        cfg,
        d,
        &x,
        &params,
        p,
        &mut st,
        residual.then_some(&res),
        relu,
        &mut y,
    )
    .unwrap();
    assert!((dot(&y, &r) - base).abs() < 1e-5);
    let mut dy = r.clone();
    if relu {
        be.relu_backward(&y, &mut dy).unwrap();
    }
    let mut grad = vec![0.0; 2 * d.c];
    let mut dx = vec![0.0; d.len()];
    be.batch_norm_backward(
        mode,
        d,
        &x,
        &dy,
        &params,
        p,
        &st,
        ParamGrad::Sum,
        &mut grad,
        &mut dx,
    )
    .unwrap();
    let name = format!("bn {mode:?} residual={residual} relu={relu}");
    check(
        &format!("{name} dparams"),
        &params,
        &grad,
        1e-3,
        5e-3,
        1,
        |pp| loss(&mut be, &x, pp),
    );
    check(&format!("{name} dx"), &x, &dx, 1e-3, 5e-3, 1, |xp| {
        loss(&mut be, xp, &params)
    });
}

#[test]
fn batch_norm_gradients() {
    for (i, mode) in [BnMode::Train, BnMode::TrainNoUpdate, BnMode::Eval]
        .into_iter()
        .enumerate()
    {
        bn_case(mode, false, false, 10 * i as u64);
        bn_case(mode, true, true, 10 * i as u64 + 5);
    }
}

#[test]
fn batch_norm_running_statistics_follow_pytorch() {
    let d = Dims::new(2, 1, 1, 3);
    let mut be = Cpu::new();
    let x = vec![1.0, 2.0, 3.0, 4.0, 5.0, 9.0];
    let params = vec![1.0, 0.0];
    let p = BnParams { gamma: 0, beta: 1 };
    let mut st = BnState::new(&mut be, 1).unwrap();
    let mut y = vec![0.0; 6];
    // The two modes that leave the statistics alone, then the one that updates them.
    for mode in [BnMode::TrainNoUpdate, BnMode::Eval, BnMode::Train] {
        be.batch_norm_forward(
            mode,
            BnConfig::default(),
            d,
            &x,
            &params,
            p,
            &mut st,
            None,
            false,
            &mut y,
        )
        .unwrap();
        if mode != BnMode::Train {
            assert_eq!(
                (
                    st.running_mean[0],
                    st.running_var[0],
                    st.num_batches_tracked
                ),
                (0.0, 1.0, 0)
            );
        }
    }
    // mean 4, unbiased variance 40/5 = 8.
    assert!((st.running_mean[0] - 0.4).abs() < 1e-6);
    assert!((st.running_var[0] - (0.9 + 0.8)).abs() < 1e-6);
    assert_eq!(st.num_batches_tracked, 1);
    let mean_y: f32 = y.iter().sum::<f32>() / 6.0;
    assert!(mean_y.abs() < 1e-6);
}

#[test]
fn linear_pool_and_activation_gradients() {
    let mut be = Cpu::new();
    let (n, fin, fout) = (3, 5, 4);
    let l = LinearParams {
        inp: fin,
        out: fout,
        weight: 0,
        bias: Some(fin * fout),
    };
    let params = rand(fin * fout + fout, 1);
    let x = rand(n * fin, 2);
    let r = rand(n * fout, 3);
    let loss = |be: &mut Cpu, x: &[f32], p: &[f32]| {
        let mut y = vec![0.0; n * fout];
        be.linear_forward(n, l, &x.to_vec(), p, &mut y).unwrap();
        dot(&y, &r)
    };
    let mut grad = vec![0.0; params.len()];
    let mut dx = vec![0.0; x.len()];
    be.linear_backward(
        n,
        l,
        &x,
        &r,
        &params,
        ParamGrad::Sum,
        &mut grad,
        Some(&mut dx),
    )
    .unwrap();
    check("linear dparams", &params, &grad, 1e-2, 1e-3, 1, |p| {
        loss(&mut be, &x, p)
    });
    check("linear dx", &x, &dx, 1e-2, 1e-3, 1, |xp| {
        loss(&mut be, xp, &params)
    });

    let d = Dims::new(2, 3, 2, 2);
    let x = rand(d.len(), 4);
    let r = rand(d.n * d.c, 5);
    let mut dx = vec![0.0; d.len()];
    be.avg_pool_backward(d, &r, &mut dx).unwrap();
    check("avg_pool dx", &x, &dx, 1e-2, 1e-3, 1, |xp| {
        let mut y = vec![0.0; d.n * d.c];
        Cpu::new()
            .avg_pool_forward(d, &xp.to_vec(), &mut y)
            .unwrap();
        dot(&y, &r)
    });

    for act in [Activation::Relu, Activation::Tanh] {
        let x: Vec<f32> = rand(20, 6)
            .iter()
            .map(|v| v + 0.05f32.copysign(*v))
            .collect();
        let r = rand(20, 7);
        let mut y = x.clone();
        be.activation_forward(act, &mut y).unwrap();
        let mut dy = r.clone();
        be.activation_backward(act, &y, &mut dy).unwrap();
        check(&format!("{act:?}"), &x, &dy, 1e-3, 1e-3, 1, |xp| {
            let mut y = xp.to_vec();
            Cpu::new().activation_forward(act, &mut y).unwrap();
            dot(&y, &r)
        });
    }
}

fn small_resnet(smoothing: f32) -> (ResNet18, Vec<f32>, Tensor, Vec<usize>) {
    let mut cfg = ResNetConfig::new(5, 2);
    cfg.label_smoothing = smoothing;
    let model = ResNet18::cpu(cfg).unwrap();
    let mut p = model.init_params(3);
    // Non-trivial BN affine parameters.
    let mut rng = Rng::new(4);
    for s in model.layout().segments() {
        if s.name.contains("bn") || s.name.contains("shortcut.1") {
            for v in &mut p[s.range()] {
                *v += 0.3 * (2.0 * rng.uniform() - 1.0);
            }
        }
    }
    let x = Tensor::from_vec(rand(3 * 3 * 8 * 8, 5), &[3, 3, 8, 8]).unwrap();
    (model, p, x, vec![0, 4, 2])
}

/// A subset of coordinates covering every segment.
fn sample_coords(model: &ResNet18) -> Vec<usize> {
    let mut idx = Vec::new();
    for s in model.layout().segments() {
        let step = (s.len / 3).max(1);
        idx.extend((s.offset..s.offset + s.len).step_by(step).take(3));
    }
    idx
}

#[test]
fn resnet_end_to_end_gradients() {
    for mode in [BnMode::TrainNoUpdate, BnMode::Eval] {
        let (mut model, p, x, y) = small_resnet(0.1);
        let wts = [0.5, 0.2, 0.3];
        let mut g = vec![f32::NAN; p.len()];
        let l = model
            .forward_backward(&p, &x, (&y).into(), &wts, mode, &mut g)
            .unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "every segment written");
        let idx = sample_coords(&model);
        let mut loss_at = |pp: &[f32]| {
            let mut gg = vec![0.0; pp.len()];
            model
                .forward_backward(pp, &x, (&y).into(), &wts, mode, &mut gg)
                .unwrap()
                .loss
        };
        assert!((loss_at(&p) - l.loss).abs() < 1e-6);
        let scale = g.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
        let mut worst = 0f64;
        let mut pp = p.clone();
        for &i in &idx {
            // Train-mode batch norm over a few values per channel is strongly curved.
            let eps = if mode == BnMode::Eval { 1e-3f32 } else { 3e-4 };
            pp[i] = p[i] + eps;
            let fp = loss_at(&pp);
            pp[i] = p[i] - eps;
            let fm = loss_at(&pp);
            pp[i] = p[i];
            let fd = (fp - fm) / (2.0 * eps as f64);
            let err = (fd - g[i] as f64).abs() / scale;
            worst = worst.max(err);
            assert!(err < 1e-2, "{mode:?} param {i}: fd {fd} vs {}", g[i]);
        }
        eprintln!(
            "resnet {mode:?}: {} coordinates, max error {worst:.2e} of scale {scale:.2e}",
            idx.len()
        );
    }
}

#[test]
fn resnet_per_sample_squared_gradients_match_one_sample_at_a_time() {
    let (mut model, p, x, y) = small_resnet(0.0);
    // Running statistics away from their initial values, as after some training.
    let mut g = vec![0.0; p.len()];
    for _ in 0..3 {
        model
            .forward_backward(&p, &x, (&y).into(), &mean_weights(3), BnMode::Train, &mut g)
            .unwrap();
    }
    let mut fisher = vec![1.0; p.len()];
    let l = model
        .per_sample_grad_sq(&p, &x, (&y).into(), &mut fisher)
        .unwrap();
    let mut want = vec![1.0f64; p.len()];
    for i in 0..3 {
        let xi = x.narrow_batch(i, i + 1).unwrap();
        let li = model
            .forward_backward(&p, &xi, (&y[i..i + 1]).into(), &[1.0], BnMode::Eval, &mut g)
            .unwrap();
        assert!((li.per_sample[0] - l.per_sample[i]).abs() < 1e-5);
        for (w, &v) in want.iter_mut().zip(&g) {
            *w += (v as f64).powi(2);
        }
    }
    let scale = want.iter().fold(0f64, |m, &v| m.max(v - 1.0));
    for (i, (&f, &w)) in fisher.iter().zip(&want).enumerate() {
        assert!(
            (f as f64 - w).abs() <= 1e-4 * scale + 1e-6 * w,
            "{i}: {f} vs {w}"
        );
    }
}

#[test]
fn mlp_gradients_and_per_sample_squares() {
    for (act, loss) in [
        (Activation::Tanh, LossKind::CrossEntropy { smoothing: 0.1 }),
        (Activation::Relu, LossKind::CrossEntropy { smoothing: 0.0 }),
    ] {
        let mut m = Mlp::cpu(&[4, 6, 5, 3], act, loss).unwrap();
        let p = m.init_params(1);
        let x = Tensor::from_vec(rand(8, 2), &[2, 4]).unwrap();
        let y = vec![2usize, 0];
        let wts = mean_weights(2);
        let mut g = vec![0.0; p.len()];
        m.forward_backward(&p, &x, (&y).into(), &wts, BnMode::Train, &mut g)
            .unwrap();
        check(&format!("mlp {act:?}"), &p, &g, 1e-3, 5e-3, 1, |pp| {
            let mut gg = vec![0.0; pp.len()];
            m.forward_backward(pp, &x, (&y).into(), &wts, BnMode::Train, &mut gg)
                .unwrap()
                .loss
        });
        let mut fisher = vec![0.0; p.len()];
        m.per_sample_grad_sq(&p, &x, (&y).into(), &mut fisher)
            .unwrap();
        let mut want = vec![0.0f64; p.len()];
        for i in 0..2 {
            let xi = x.narrow_batch(i, i + 1).unwrap();
            m.forward_backward(&p, &xi, (&y[i..i + 1]).into(), &[1.0], BnMode::Eval, &mut g)
                .unwrap();
            want.iter_mut()
                .zip(&g)
                .for_each(|(w, &v)| *w += (v as f64).powi(2));
        }
        for (f, w) in fisher.iter().zip(&want) {
            assert!((*f as f64 - w).abs() <= 1e-5 * (1.0 + w), "{f} vs {w}");
        }
    }
}

#[test]
fn linear_regression_matches_the_linreg_formulas() {
    let d = 3;
    let mut m = Mlp::linear_regression_cpu(d).unwrap();
    assert_eq!(m.layout().segments()[0].name, "linear.weight");
    let p = vec![0.5, -1.0, 2.0, 0.25];
    let xs = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0];
    let ys = [4.0f32, -2.0];
    let x = Tensor::from_slice(&xs, &[2, d]).unwrap();
    let mut g = vec![0.0; 4];
    let l = m
        .forward_backward(
            &p,
            &x,
            (&ys[..]).into(),
            &mean_weights(2),
            BnMode::Train,
            &mut g,
        )
        .unwrap();
    // (1/B) Σ r², gradient (2/B) Σ r·[x, 1].
    let r: Vec<f64> = (0..2)
        .map(|i| {
            (0..d)
                .map(|j| xs[i * d + j] as f64 * p[j] as f64)
                .sum::<f64>()
                + p[d] as f64
                - ys[i] as f64
        })
        .collect();
    assert!((l.loss - (r[0] * r[0] + r[1] * r[1]) / 2.0).abs() < 1e-5);
    for j in 0..=d {
        let xj = |i: usize| if j < d { xs[i * d + j] as f64 } else { 1.0 };
        let want = (2.0 * r[0] * xj(0) + 2.0 * r[1] * xj(1)) / 2.0;
        assert!((g[j] as f64 - want).abs() < 1e-5, "{j}: {} vs {want}", g[j]);
    }
    let mut fisher = vec![0.0; 4];
    m.per_sample_grad_sq(&p, &x, (&ys[..]).into(), &mut fisher)
        .unwrap();
    for j in 0..=d {
        let xj = |i: usize| if j < d { xs[i * d + j] as f64 } else { 1.0 };
        let want = (2.0 * r[0] * xj(0)).powi(2) + (2.0 * r[1] * xj(1)).powi(2);
        assert!((fisher[j] as f64 - want).abs() < 1e-4 * (1.0 + want), "{j}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let (mut model, p, x, y) = small_resnet(0.0);
    let mut g = vec![0.0; p.len()];
    assert!(model
        .forward_backward(
            &p[1..],
            &x,
            (&y).into(),
            &mean_weights(3),
            BnMode::Train,
            &mut g
        )
        .is_err());
    assert!(model
        .forward_backward(
            &p,
            &x,
            (&y[..2]).into(),
            &mean_weights(3),
            BnMode::Train,
            &mut g
        )
        .is_err());
    assert!(model
        .forward_backward(
            &p,
            &x,
            (&vec![0, 1, 5]).into(),
            &mean_weights(3),
            BnMode::Train,
            &mut g
        )
        .is_err());
    let gray = Tensor::zeros(&[3, 1, 8, 8]).unwrap();
    assert!(model.forward(&p, &gray, BnMode::Eval).is_err());
    // One value per channel cannot be batch-normalised in training mode.
    let one = x.narrow_batch(0, 1).unwrap();
    assert!(model.forward(&p, &one, BnMode::Train).is_err());
    assert!(model.forward(&p, &one, BnMode::Eval).is_ok());
}

#[test]
fn conv2d_per_sample_squares_match_per_image_gradients() {
    // Wide enough that the per-sample weight gradient is processed in several row blocks.
    let conv = Conv2d::new(64, 130, 3, 1, 1);
    let d = Dims::new(3, 64, 3, 3);
    let od = conv.out_dims(d);
    let x = rand(d.len(), 21);
    let w = rand(conv.weight_len(), 22);
    let dy = rand(od.len(), 23);
    for threads in [1, 2] {
        let mut be = Cpu::new().with_threads(threads);
        let mut sq = vec![0.5; w.len()];
        be.conv2d_backward(
            &conv,
            d,
            &x,
            &dy,
            &w,
            0,
            ParamGrad::PerSampleSq,
            &mut sq,
            None,
            false,
        )
        .unwrap();
        let mut want = vec![0.5f64; w.len()];
        for i in 0..d.n {
            // Sample i alone: its channel-major slices.
            let di = Dims { n: 1, ..d };
            let xi: Vec<f32> = (0..d.c)
                .flat_map(|c| x[(c * d.n + i) * 9..(c * d.n + i + 1) * 9].to_vec())
                .collect();
            let dyi: Vec<f32> = (0..od.c)
                .flat_map(|c| dy[(c * d.n + i) * 9..(c * d.n + i + 1) * 9].to_vec())
                .collect();
            let mut gi = vec![0.0; w.len()];
            be.conv2d_backward(
                &conv,
                di,
                &xi,
                &dyi,
                &w,
                0,
                ParamGrad::Sum,
                &mut gi,
                None,
                false,
            )
            .unwrap();
            want.iter_mut()
                .zip(&gi)
                .for_each(|(a, &g)| *a += (g as f64).powi(2));
        }
        for (k, (&a, &b)) in sq.iter().zip(&want).enumerate() {
            assert!(
                (a as f64 - b).abs() <= 1e-4 * b,
                "threads {threads}, {k}: {a} vs {b}"
            );
        }
    }
}
