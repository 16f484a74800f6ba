//! Golden values from PyTorch (`tools/golden_nn/make_golden.py`): a width-4 CIFAR ResNet-18
//! with 10 classes, batch 4 of 16×16 images, label smoothing 0.1. The PyTorch `state_dict` is
//! loaded through `samkit_nn::checkpoint` (so a PyTorch checkpoint loads here), then the
//! train-mode logits, losses, every parameter gradient, the running statistics after the
//! step, eval-mode logits and SSAM-F's per-sample squared gradients must match to 1e-4
//! relative (`max|a − b| / max|b|` per tensor).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use samkit_nn::checkpoint;
use samkit_nn::{mean_weights, BnMode, Model, ResNet18, ResNetConfig, Tensor};

const TOL: f64 = 1e-4;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/nn")
}

struct Golden {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    i64s: HashMap<String, Vec<i64>>,
}

impl Golden {
    fn load(name: &str) -> Golden {
        let bytes = std::fs::read(dir().join(name))
            .expect("golden file (run tools/golden_nn/make_golden.py)");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut g = Golden {
            f32s: HashMap::new(),
            i64s: HashMap::new(),
        };
        for (k, v) in st.tensors() {
            match v.dtype() {
                Dtype::F32 => {
                    let d = v
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    g.f32s.insert(k, (v.shape().to_vec(), d));
                }
                Dtype::I64 => {
                    let d = v
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    g.i64s.insert(k, d);
                }
                other => panic!("{k}: {other:?}"),
            }
        }
        g
    }

    fn f(&self, k: &str) -> &[f32] {
        &self.f32s.get(k).unwrap_or_else(|| panic!("golden `{k}`")).1
    }
}

/// `max|a − b| / max|b|`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-30);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
        / scale
}

fn model() -> ResNet18 {
    let mut cfg = ResNetConfig::new(10, 4);
    cfg.label_smoothing = 0.1;
    ResNet18::cpu(cfg).unwrap()
}

/// The PyTorch weights and buffers, loaded through the checkpoint reader.
fn loaded() -> (ResNet18, Vec<f32>) {
    let mut m = model();
    let mut p = vec![0.0; m.layout().len()];
    checkpoint::load(
        dir().join("resnet_w4_state_dict.safetensors"),
        &mut m,
        &mut p,
    )
    .unwrap();
    (m, p)
}

fn inputs(g: &Golden) -> (Tensor, Vec<usize>) {
    let (shape, x) = &g.f32s["x"];
    let labels = g.i64s["labels"].iter().map(|&v| v as usize).collect();
    (Tensor::from_slice(x, shape).unwrap(), labels)
}

/// A training pass of `m` at `p` on the golden batch (mean loss): its losses, the gradient in
/// `grad`.
fn train_pass(
    m: &mut ResNet18,
    p: &[f32],
    (x, y): (&Tensor, &[usize]),
    grad: &mut [f32],
) -> samkit_nn::Losses {
    let wts = mean_weights(x.shape()[0]);
    m.forward_backward(p, x, y.into(), &wts, BnMode::Train, grad)
        .unwrap()
}

#[test]
fn train_step_matches_pytorch() {
    let g = Golden::load("resnet_w4_golden.safetensors");
    let (mut m, p) = loaded();
    assert_eq!(p.len(), 44_622);
    let (x, y) = inputs(&g);
    let mut grad = vec![f32::NAN; p.len()];
    let l = train_pass(&mut m, &p, (&x, &y), &mut grad);
    let mut worst = ("", 0f64);
    let mut note = |name: &'static str, e: f64| {
        assert!(e <= TOL, "{name}: relative error {e:.2e}");
        if e > worst.1 {
            worst = (name, e);
        }
    };
    let logits = m.forward(&p, &x, BnMode::TrainNoUpdate).unwrap();
    note("logits", rel_err(logits.as_slice().unwrap(), g.f("logits")));
    note("losses", rel_err(&l.per_sample, g.f("losses")));
    note(
        "loss",
        (l.loss - g.f("loss")[0] as f64).abs() / g.f("loss")[0] as f64,
    );
    let mut grad_worst = (String::new(), 0f64);
    for s in m.layout().segments() {
        let e = rel_err(&grad[s.range()], g.f(&format!("grad.{}", s.name)));
        assert!(e <= TOL, "grad.{}: relative error {e:.2e}", s.name);
        if e > grad_worst.1 {
            grad_worst = (s.name.clone(), e);
        }
    }
    let bufs = m.buffers().unwrap();
    let mut stat_worst = 0f64;
    for b in &bufs {
        match &b.data {
            samkit_nn::BufferData::F32(v) => {
                let e = rel_err(v, g.f(&format!("after.{}", b.name)));
                assert!(e <= TOL, "after.{}: relative error {e:.2e}", b.name);
                stat_worst = stat_worst.max(e);
            }
            samkit_nn::BufferData::I64(v) => {
                assert_eq!(v, &g.i64s[&format!("after.{}", b.name)], "{}", b.name)
            }
        }
    }
    let eval = m.forward(&p, &x, BnMode::Eval).unwrap();
    let eval_err = rel_err(eval.as_slice().unwrap(), g.f("eval_logits"));
    assert!(eval_err <= TOL, "eval logits: {eval_err:.2e}");
    eprintln!(
        "golden: worst of logits/losses/loss {} {:.2e}; worst gradient {} {:.2e}; running stats {:.2e}; eval logits {:.2e}",
        worst.0, worst.1, grad_worst.0, grad_worst.1, stat_worst, eval_err
    );
}

#[test]
fn per_sample_squared_gradients_match_pytorch() {
    let g = Golden::load("resnet_w4_golden.safetensors");
    let (mut m, p) = loaded();
    let (x, y) = inputs(&g);
    let mut fisher = vec![0.0; p.len()];
    // Two sub-batches accumulate into one Fisher.
    m.per_sample_grad_sq(
        &p,
        &x.narrow_batch(0, 3).unwrap(),
        (&y[..3]).into(),
        &mut fisher,
    )
    .unwrap();
    m.per_sample_grad_sq(
        &p,
        &x.narrow_batch(3, 4).unwrap(),
        (&y[3..]).into(),
        &mut fisher,
    )
    .unwrap();
    let mut worst = (String::new(), 0f64);
    for s in m.layout().segments() {
        let e = rel_err(&fisher[s.range()], g.f(&format!("fisher.{}", s.name)));
        assert!(e <= TOL, "fisher.{}: relative error {e:.2e}", s.name);
        if e > worst.1 {
            worst = (s.name.clone(), e);
        }
    }
    // Eval mode leaves the running statistics alone.
    let before = checkpoint_buffers();
    assert_eq!(m.buffers().unwrap(), before);
    eprintln!("golden fisher: worst {} {:.2e}", worst.0, worst.1);
}

fn checkpoint_buffers() -> Vec<samkit_nn::NamedBuffer> {
    loaded().0.buffers().unwrap()
}

#[test]
fn checkpoints_round_trip_and_write_a_file_pytorch_loads() {
    let g = Golden::load("resnet_w4_golden.safetensors");
    let (mut m, mut p) = loaded();
    let (x, y) = inputs(&g);
    // A few SGD steps so that weights and running statistics are our own.
    let mut grad = vec![0.0; p.len()];
    for _ in 0..3 {
        train_pass(&mut m, &p, (&x, &y), &mut grad);
        p.iter_mut().zip(&grad).for_each(|(w, g)| *w -= 0.05 * g);
    }
    let want = m.forward(&p, &x, BnMode::Eval).unwrap();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nn_golden");
    std::fs::create_dir_all(&tmp).unwrap();
    let path = tmp.join("resnet_w4_trained.safetensors");
    checkpoint::save(&path, &mut m, &p).unwrap();
    let (mut m2, mut p2) = (model(), vec![0.0; p.len()]);
    checkpoint::load(&path, &mut m2, &mut p2).unwrap();
    assert_eq!(p2, p);
    assert_eq!(m2.buffers().unwrap(), m.buffers().unwrap());
    let got = m2.forward(&p2, &x, BnMode::Eval).unwrap();
    assert_eq!(got, want);
    // The logits PyTorch must reproduce: `make_golden.py --verify <path>`.
    let logits_path = tmp.join("resnet_w4_trained.safetensors.logits.safetensors");
    let to_bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (xb, lb) = (
        to_bytes(x.as_slice().unwrap()),
        to_bytes(want.as_slice().unwrap()),
    );
    let views = vec![
        (
            "x",
            safetensors::tensor::TensorView::new(Dtype::F32, x.shape().to_vec(), &xb).unwrap(),
        ),
        (
            "eval_logits",
            safetensors::tensor::TensorView::new(Dtype::F32, want.shape().to_vec(), &lb).unwrap(),
        ),
    ];
    std::fs::write(&logits_path, safetensors::serialize(views, None).unwrap()).unwrap();
    eprintln!(
        "wrote {} (verify with tools/golden_nn/make_golden.py --verify)",
        path.display()
    );
}

#[test]
fn mismatched_checkpoints_name_the_first_mismatch() {
    let src = dir().join("resnet_w4_state_dict.safetensors");
    // Width 2: the first tensor in state_dict order already differs.
    let mut narrow = ResNet18::cpu(ResNetConfig::new(10, 2)).unwrap();
    let mut p = vec![0.0; narrow.layout().len()];
    let e = checkpoint::load(&src, &mut narrow, &mut p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`conv1.weight`") && e.contains("[4, 3, 3, 3]") && e.contains("[2, 3, 3, 3]"),
        "{e}"
    );
    // 100 classes: only the classifier differs.
    let mut wide = ResNet18::cpu(ResNetConfig::new(100, 4)).unwrap();
    let mut p = vec![0.0; wide.layout().len()];
    let e = checkpoint::load(&src, &mut wide, &mut p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`linear.weight`"), "{e}");
    assert!(
        p.iter().all(|&v| v == 0.0),
        "nothing is written on a mismatch"
    );

    // A file without one buffer, and a file with an extra tensor.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nn_mismatch");
    std::fs::create_dir_all(&tmp).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let all = st.tensors();
    let rewrite = |path: &Path, skip: &str, extra: bool| {
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            all.iter().filter(|(k, _)| k != skip).cloned().collect();
        if extra {
            views.push(("layer5.weight".into(), all[0].1.clone()));
        }
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    };
    let missing = tmp.join("missing.safetensors");
    rewrite(&missing, "layer2.0.shortcut.1.running_var", false);
    let mut m = model();
    let mut p = vec![0.0; m.layout().len()];
    let e = checkpoint::load(&missing, &mut m, &mut p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing tensor `layer2.0.shortcut.1.running_var`"),
        "{e}"
    );
    let extra = tmp.join("extra.safetensors");
    rewrite(&extra, "", true);
    let e = checkpoint::load(&extra, &mut m, &mut p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected tensor `layer5.weight`"), "{e}");
    let e = checkpoint::load(tmp.join("absent.safetensors"), &mut m, &mut p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
}

#[test]
fn a_failed_save_leaves_the_previous_checkpoint() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nn_atomic");
    std::fs::create_dir_all(&tmp).unwrap();
    let path = tmp.join("ckpt.safetensors");
    let (mut m, p) = loaded();
    checkpoint::save(&path, &mut m, &p).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(checkpoint::save(&path, &mut m, &p[1..]).is_err());
    // A write that fails half-way (the destination is a directory): the old file is intact
    // and no temporary file is left behind.
    let dir_target = tmp.join("is_a_dir");
    std::fs::create_dir_all(&dir_target).unwrap();
    assert!(checkpoint::save(&dir_target, &mut m, &p).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Saving again replaces the file whole.
    let mut p2 = p.clone();
    p2[0] += 1.0;
    checkpoint::save(&path, &mut m, &p2).unwrap();
    let mut p3 = vec![0.0; p.len()];
    checkpoint::load(&path, &mut model(), &mut p3).unwrap();
    assert_eq!(p3, p2);
}
