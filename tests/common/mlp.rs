//! A hand-written float32 MLP with tanh hidden layers and a mean softmax cross-entropy loss: the
//! model of the PyTorch golden trajectories (`tools/golden/make_golden.py`).
//!
//! Parameters live in one flat vector laid out as [`samkit::Layout::mlp`]: for each layer `i`,
//! `fc{i}.weight` of shape `[out, in]` (row-major, as `torch.nn.Linear`) then `fc{i}.bias`.
//! Activations, deltas and gradients are stored as `f32`; the dot products and the batch sums
//! are accumulated in `f64` and rounded once, so the result is the float32 value of the exact
//! computation up to one rounding per stored number.
#![allow(dead_code)]

use samkit::Layout;

#[derive(Clone, Debug)]
pub struct Mlp {
    dims: Vec<usize>,
}

impl Mlp {
    /// `dims = [in, h1, ..., out]`.
    pub fn new(dims: &[usize]) -> Self {
        assert!(dims.len() >= 2, "an MLP needs at least two sizes");
        assert!(dims.iter().all(|&d| d > 0), "sizes must be positive");
        Mlp {
            dims: dims.to_vec(),
        }
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn layout(&self) -> Layout {
        Layout::mlp(&self.dims).expect("a valid MLP layout")
    }

    pub fn num_inputs(&self) -> usize {
        self.dims[0]
    }

    pub fn num_classes(&self) -> usize {
        *self.dims.last().unwrap()
    }

    pub fn num_params(&self) -> usize {
        self.dims.windows(2).map(|d| d[1] * d[0] + d[1]).sum()
    }

    fn layers(&self) -> usize {
        self.dims.len() - 1
    }

    /// Offsets of `fc{i}.weight` and `fc{i}.bias` in the flat vector.
    fn offsets(&self, layer: usize) -> (usize, usize) {
        let mut off = 0;
        for d in self.dims.windows(2).take(layer) {
            off += d[1] * d[0] + d[1];
        }
        let (n_in, n_out) = (self.dims[layer], self.dims[layer + 1]);
        (off, off + n_out * n_in)
    }

    /// Activations of every layer for one sample: `acts[0] = x`, `acts[i + 1] = tanh(W_i acts[i]
    /// + b_i)` for hidden layers and the logits for the last one.
    fn forward_one(&self, w: &[f32], x: &[f32]) -> Vec<Vec<f32>> {
        let mut acts = vec![x.to_vec()];
        for l in 0..self.layers() {
            let (n_in, n_out) = (self.dims[l], self.dims[l + 1]);
            let (wo, bo) = self.offsets(l);
            let a = &acts[l];
            let last = l + 1 == self.layers();
            let z: Vec<f32> = (0..n_out)
                .map(|o| {
                    let row = &w[wo + o * n_in..wo + (o + 1) * n_in];
                    let mut s = 0f64;
                    for (wi, ai) in row.iter().zip(a) {
                        s += *wi as f64 * *ai as f64;
                    }
                    let z = (s + w[bo + o] as f64) as f32;
                    if last {
                        z
                    } else {
                        z.tanh()
                    }
                })
                .collect();
            acts.push(z);
        }
        acts
    }

    /// Logits for every row of `x` (row-major, `num_inputs` columns).
    pub fn forward(&self, w: &[f32], x: &[f32]) -> Vec<Vec<f32>> {
        x.chunks_exact(self.num_inputs())
            .map(|xi| self.forward_one(w, xi).pop().unwrap())
            .collect()
    }

    /// Mean cross-entropy of the batch (`x` row-major, labels `y`).
    pub fn loss(&self, w: &[f32], x: &[f32], y: &[usize]) -> f64 {
        let logits = self.forward(w, x);
        assert_eq!(logits.len(), y.len());
        let sum: f64 = logits
            .iter()
            .zip(y)
            .map(|(z, &c)| {
                let (lse, _) = log_softmax(z);
                lse - z[c] as f64
            })
            .sum();
        sum / y.len() as f64
    }

    /// Mean cross-entropy of the batch and its gradient, written (overwritten) into `grad` in
    /// layout order.
    pub fn loss_grad(&self, w: &[f32], x: &[f32], y: &[usize], grad: &mut [f32]) -> f64 {
        let n = self.num_params();
        assert_eq!(w.len(), n, "weights");
        assert_eq!(grad.len(), n, "gradient");
        let b = y.len();
        assert!(b > 0, "empty batch");
        assert_eq!(x.len(), b * self.num_inputs(), "inputs");
        let mut acc = vec![0f64; n];
        let mut loss = 0f64;
        for (xi, &c) in x.chunks_exact(self.num_inputs()).zip(y) {
            assert!(c < self.num_classes(), "label {c} out of range");
            let acts = self.forward_one(w, xi);
            let z = acts.last().unwrap();
            let (lse, max) = log_softmax(z);
            loss += lse - z[c] as f64;
            // d loss / d logits = (softmax − onehot) / B
            let sum_e: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
            let mut delta: Vec<f32> = z
                .iter()
                .enumerate()
                .map(|(k, &v)| {
                    let p = (v as f64 - max).exp() / sum_e;
                    let t = if k == c { 1.0 } else { 0.0 };
                    ((p - t) / b as f64) as f32
                })
                .collect();
            for l in (0..self.layers()).rev() {
                let (n_in, n_out) = (self.dims[l], self.dims[l + 1]);
                let (wo, bo) = self.offsets(l);
                let a = &acts[l];
                for o in 0..n_out {
                    let d = delta[o] as f64;
                    for i in 0..n_in {
                        acc[wo + o * n_in + i] += d * a[i] as f64;
                    }
                    acc[bo + o] += d;
                }
                if l > 0 {
                    // through W^T, then tanh' = 1 − a² of the previous layer's output
                    delta = (0..n_in)
                        .map(|i| {
                            let mut s = 0f64;
                            for o in 0..n_out {
                                s += w[wo + o * n_in + i] as f64 * delta[o] as f64;
                            }
                            let s = s as f32;
                            let ai = a[i];
                            s * (1.0 - ai * ai)
                        })
                        .collect();
                }
            }
        }
        for (g, a) in grad.iter_mut().zip(&acc) {
            *g = *a as f32;
        }
        loss / b as f64
    }
}

/// `(log Σ exp z, max z)`, computed stably in f64.
fn log_softmax(z: &[f32]) -> (f64, f64) {
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let s: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
    (max + s.ln(), max)
}
