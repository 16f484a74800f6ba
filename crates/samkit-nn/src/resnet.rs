//! ResNet-18, CIFAR variant: 3×3 stem without max-pool, [2, 2, 2, 2] basic blocks with 1×1
//! conv + BN shortcuts where the shape changes, global average pooling and a linear layer.
//! Parameter names and order are those of `samkit_core::Layout::resnet18` (PyTorch's
//! `state_dict` of the common CIFAR ResNet-18); `width = 64` is the standard model.
use samkit_core::Layout;

use crate::backend::{
    Backend, BnConfig, BnMode, BnParams, BnState, Conv2d, Dims, LinearParams, ParamGrad,
};
use crate::cpu::Cpu;
use crate::error::{Error, Result};
use crate::model::{
    begin_pass_from, check_arena_len, units_from_layout, BackwardExtent, BufferData, BufferKind,
    Kept, LossKind, Losses, Model, NamedBuffer, PassFrom, Targets, Unit,
};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResNetConfig {
    pub num_classes: usize,
    /// Stem width: 64 for the standard model (11,173,962 parameters with 10 classes).
    pub width: usize,
    pub label_smoothing: f32,
    pub bn: BnConfig,
}

impl ResNetConfig {
    pub fn new(num_classes: usize, width: usize) -> Self {
        ResNetConfig {
            num_classes,
            width,
            label_smoothing: 0.0,
            bn: BnConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct ConvBn {
    conv: Conv2d,
    w: usize,
    bn: BnParams,
    bn_idx: usize,
}

#[derive(Clone, Copy, Debug)]
struct Block {
    c1: ConvBn,
    c2: ConvBn,
    shortcut: Option<ConvBn>,
}

struct BlockActs<B: Backend> {
    c1: B::Buf,
    r1: B::Buf,
    c2: B::Buf,
    cs: Option<B::Buf>,
    bs: Option<B::Buf>,
    out: B::Buf,
}

/// Activations of one batch shape, reused from step to step.
struct Acts<B: Backend> {
    n: usize,
    h: usize,
    w: usize,
    x: B::Buf,
    c0: B::Buf,
    a0: B::Buf,
    blocks: Vec<BlockActs<B>>,
    pooled: B::Buf,
    logits: B::Buf,
    dlogits: B::Buf,
    dpooled: B::Buf,
    g: [B::Buf; 3],
    host_logits: Vec<f32>,
    host_dlogits: Vec<f32>,
}

/// The workspace of a forward without gradient: the block input and output ping-pong, the
/// intermediates of one block at a time, and batch-norm "saved" statistics of its own (swapped
/// in for the pass) so that the training workspace's are left as the last pass kept them.
struct Lean<B: Backend> {
    n: usize,
    h: usize,
    w: usize,
    x: B::Buf,
    io: [B::Buf; 2],
    /// `conv1`'s output, then `conv2`'s.
    c1: B::Buf,
    /// The first ReLU's output, then the shortcut convolution's.
    r1: B::Buf,
    bs: B::Buf,
    pooled: B::Buf,
    logits: B::Buf,
    host_logits: Vec<f32>,
    saved: Vec<(B::Buf, B::Buf)>,
}

/// The buffers one basic block writes in a forward pass. A forward without gradient keeps
/// nothing, so it lets `conv2`'s output overwrite `conv1`'s (`c2: None`) and the shortcut
/// convolution's overwrite the first ReLU's (`cs: None`), both dead by then.
struct BlockOut<'a, B: Backend> {
    c1: &'a mut B::Buf,
    r1: &'a mut B::Buf,
    c2: Option<&'a mut B::Buf>,
    /// The shortcut's convolution output (`cs`) and batch-norm output (`bs`).
    shortcut: Option<(Option<&'a mut B::Buf>, &'a mut B::Buf)>,
    out: &'a mut B::Buf,
}

/// What the head of a forward pass writes: the pooled features, the logits, and their host
/// copy.
type HeadOut<'a, B> = (
    &'a mut <B as Backend>::Buf,
    &'a mut <B as Backend>::Buf,
    &'a mut [f32],
);

/// Where a forward pass writes: [`Acts`] keeps every unit's activations for a backward pass,
/// [`Lean`] only what the next unit reads.
trait ForwardBufs<B: Backend> {
    /// The images, and the stem's outputs (see [`stem_forward`]).
    fn stem(&mut self) -> (&B::Buf, (&mut B::Buf, &mut B::Buf));
    /// The input and the outputs of block `i` (`shortcut`: whether it has a projection).
    fn block(&mut self, i: usize, shortcut: bool) -> (&B::Buf, BlockOut<'_, B>);
    /// The output of the last of `blocks` blocks, and the head's outputs (see
    /// [`head_forward`]).
    fn head(&mut self, blocks: usize) -> (&B::Buf, HeadOut<'_, B>);
}

impl<B: Backend> ForwardBufs<B> for Acts<B> {
    fn stem(&mut self) -> (&B::Buf, (&mut B::Buf, &mut B::Buf)) {
        (&self.x, (&mut self.c0, &mut self.a0))
    }

    fn block(&mut self, i: usize, _shortcut: bool) -> (&B::Buf, BlockOut<'_, B>) {
        let (prev, cur) = self.blocks.split_at_mut(i);
        let input = if i == 0 { &self.a0 } else { &prev[i - 1].out };
        let ba = &mut cur[0];
        let shortcut = match (&mut ba.cs, &mut ba.bs) {
            (Some(cs), Some(bs)) => Some((Some(cs), bs)),
            _ => None,
        };
        let o = BlockOut {
            c1: &mut ba.c1,
            r1: &mut ba.r1,
            c2: Some(&mut ba.c2),
            shortcut,
            out: &mut ba.out,
        };
        (input, o)
    }

    fn head(&mut self, _blocks: usize) -> (&B::Buf, HeadOut<'_, B>) {
        let last = &self.blocks.last().expect("eight blocks").out;
        (
            last,
            (
                &mut self.pooled,
                &mut self.logits,
                &mut self.host_logits[..],
            ),
        )
    }
}

impl<B: Backend> ForwardBufs<B> for Lean<B> {
    fn stem(&mut self) -> (&B::Buf, (&mut B::Buf, &mut B::Buf)) {
        (&self.x, (&mut self.c1, &mut self.io[0]))
    }

    fn block(&mut self, i: usize, shortcut: bool) -> (&B::Buf, BlockOut<'_, B>) {
        // The block input alternates between io[0] and io[1].
        let [i0, i1] = &mut self.io;
        let (input, out) = if i % 2 == 0 { (&*i0, i1) } else { (&*i1, i0) };
        let shortcut = shortcut.then_some((None, &mut self.bs));
        let o = BlockOut {
            c1: &mut self.c1,
            r1: &mut self.r1,
            c2: None,
            shortcut,
            out,
        };
        (input, o)
    }

    fn head(&mut self, blocks: usize) -> (&B::Buf, HeadOut<'_, B>) {
        (
            &self.io[blocks % 2],
            (
                &mut self.pooled,
                &mut self.logits,
                &mut self.host_logits[..],
            ),
        )
    }
}

/// Units: the stem (0), the eight basic blocks (1..=8), the head (9: pooling and linear).
const HEAD: usize = 9;

pub struct ResNet18<B: Backend = Cpu> {
    backend: B,
    cfg: ResNetConfig,
    layout: Layout,
    stem: ConvBn,
    blocks: Vec<Block>,
    linear: LinearParams,
    bn_names: Vec<String>,
    bns: Vec<BnState<B>>,
    units: Vec<Unit>,
    acts: Option<Acts<B>>,
    kept: Option<Kept>,
    lean: Option<Lean<B>>,
}

/// The unit of a ResNet-18 parameter: `stem` (`conv1`, `bn1`), `layerL.B`, or `head`.
fn resnet_unit(name: &str) -> Option<String> {
    if name.starts_with("conv1.") || name.starts_with("bn1.") {
        Some("stem".into())
    } else if name.starts_with("linear.") {
        Some("head".into())
    } else if name.starts_with("layer") {
        let mut parts = name.splitn(3, '.');
        let (l, b) = (parts.next()?, parts.next()?);
        Some(format!("{l}.{b}"))
    } else {
        None
    }
}

/// One basic block: `out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
/// The stem of a forward pass: the convolution of the images `x` into `out.0`, then batch
/// norm and ReLU into `out.1` (the first block's input).
#[allow(clippy::too_many_arguments)]
fn stem_forward<B: Backend>(
    be: &mut B,
    bn: BnConfig,
    mode: BnMode,
    stem: &ConvBn,
    dims: &[Dims],
    x: &B::Buf,
    params: &B::Arena,
    bns: &mut [BnState<B>],
    (conv, out): (&mut B::Buf, &mut B::Buf),
) -> Result<()> {
    be.conv2d_forward(&stem.conv, dims[0], x, params, stem.w, conv)?;
    be.batch_norm_forward(
        mode,
        bn,
        dims[1],
        conv,
        params,
        stem.bn,
        &mut bns[stem.bn_idx],
        None,
        true,
        out,
    )
}

/// The head of a forward pass: global average pooling of the last block's output `last`
/// (dimensions `d`) into `out.0`, the linear layer into `out.1`, and the logits downloaded
/// into the first `N·classes` values of `out.2`.
fn head_forward<B: Backend>(
    be: &mut B,
    linear: LinearParams,
    d: Dims,
    last: &B::Buf,
    params: &B::Arena,
    (pooled, logits, host): HeadOut<'_, B>,
) -> Result<()> {
    be.avg_pool_forward(d, last, pooled)?;
    be.linear_forward(d.n, linear, pooled, params, logits)?;
    be.download(logits, &mut host[..d.n * linear.out])
}

#[allow(clippy::too_many_arguments)]
fn block_forward<B: Backend>(
    be: &mut B,
    bn: BnConfig,
    mode: BnMode,
    blk: &Block,
    d: Dims,
    input: &B::Buf,
    params: &B::Arena,
    bns: &mut [BnState<B>],
    o: BlockOut<'_, B>,
) -> Result<Dims> {
    let dm = blk.c1.conv.out_dims(d);
    be.conv2d_forward(&blk.c1.conv, d, input, params, blk.c1.w, o.c1)?;
    be.batch_norm_forward(
        mode,
        bn,
        dm,
        o.c1,
        params,
        blk.c1.bn,
        &mut bns[blk.c1.bn_idx],
        None,
        true,
        o.r1,
    )?;
    let c2 = match o.c2 {
        Some(c2) => c2,
        None => o.c1,
    };
    be.conv2d_forward(&blk.c2.conv, dm, o.r1, params, blk.c2.w, c2)?;
    let dout = blk.c2.conv.out_dims(dm);
    let residual = match (&blk.shortcut, o.shortcut) {
        (Some(sc), Some((cs, bs))) => {
            let cs = match cs {
                Some(cs) => cs,
                None => o.r1,
            };
            be.conv2d_forward(&sc.conv, d, input, params, sc.w, cs)?;
            be.batch_norm_forward(
                mode,
                bn,
                dout,
                cs,
                params,
                sc.bn,
                &mut bns[sc.bn_idx],
                None,
                false,
                bs,
            )?;
            &*bs
        }
        _ => input,
    };
    be.batch_norm_forward(
        mode,
        bn,
        dout,
        c2,
        params,
        blk.c2.bn,
        &mut bns[blk.c2.bn_idx],
        Some(residual),
        true,
        o.out,
    )?;
    Ok(dout)
}

/// The units `start..` of a forward pass (`dims`: every unit's input dimensions), writing
/// where `bufs` says; unit `start` reads its input from there.
#[allow(clippy::too_many_arguments)]
fn forward_units<B: Backend>(
    be: &mut B,
    bn: BnConfig,
    mode: BnMode,
    (stem, blocks, linear): (&ConvBn, &[Block], LinearParams),
    dims: &[Dims],
    params: &B::Arena,
    bns: &mut [BnState<B>],
    bufs: &mut impl ForwardBufs<B>,
    start: usize,
) -> Result<()> {
    if start == 0 {
        let (x, o) = bufs.stem();
        stem_forward(be, bn, mode, stem, dims, x, params, bns, o)?;
    }
    for (i, blk) in blocks.iter().enumerate() {
        if i + 1 < start {
            continue;
        }
        let (input, o) = bufs.block(i, blk.shortcut.is_some());
        block_forward(be, bn, mode, blk, dims[i + 1], input, params, bns, o)?;
    }
    let (last, o) = bufs.head(blocks.len());
    head_forward(be, linear, dims[HEAD], last, params, o)
}

fn offset(l: &Layout, name: &str) -> Result<usize> {
    l.segment(name)
        .map(|s| s.offset)
        .ok_or_else(|| Error::invalid("layout", format!("no segment `{name}`")))
}

impl ResNet18<Cpu> {
    /// The model on the CPU backend.
    pub fn cpu(cfg: ResNetConfig) -> Result<Self> {
        Self::new(Cpu::new(), cfg)
    }
}

impl<B: Backend> ResNet18<B> {
    pub fn new(mut backend: B, cfg: ResNetConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.label_smoothing) {
            return Err(Error::invalid(
                "label_smoothing",
                format!("{} must lie in [0, 1)", cfg.label_smoothing),
            ));
        }
        let layout = Layout::resnet18(cfg.num_classes, cfg.width)?;
        let mut bn_names = Vec::new();
        let mut bns = Vec::new();
        let mut conv_bn = |backend: &mut B, conv: Conv2d, w: &str, bn: &str| -> Result<ConvBn> {
            let bn_idx = bn_names.len();
            bn_names.push(bn.to_string());
            bns.push(BnState::new(backend, conv.cout)?);
            Ok(ConvBn {
                conv,
                w: offset(&layout, &format!("{w}.weight"))?,
                bn: BnParams {
                    gamma: offset(&layout, &format!("{bn}.weight"))?,
                    beta: offset(&layout, &format!("{bn}.bias"))?,
                },
                bn_idx,
            })
        };
        let width = cfg.width;
        let stem = conv_bn(&mut backend, Conv2d::new(3, width, 3, 1, 1), "conv1", "bn1")?;
        let mut blocks = Vec::new();
        let mut cin = width;
        for (li, (mult, stride)) in [(1, 1), (2, 2), (4, 2), (8, 2)].into_iter().enumerate() {
            let out = width * mult;
            for b in 0..2 {
                let p = format!("layer{}.{b}", li + 1);
                let (i, s) = if b == 0 { (cin, stride) } else { (out, 1) };
                let c1 = conv_bn(
                    &mut backend,
                    Conv2d::new(i, out, 3, s, 1),
                    &format!("{p}.conv1"),
                    &format!("{p}.bn1"),
                )?;
                let c2 = conv_bn(
                    &mut backend,
                    Conv2d::new(out, out, 3, 1, 1),
                    &format!("{p}.conv2"),
                    &format!("{p}.bn2"),
                )?;
                let shortcut = if s != 1 || i != out {
                    Some(conv_bn(
                        &mut backend,
                        Conv2d::new(i, out, 1, s, 0),
                        &format!("{p}.shortcut.0"),
                        &format!("{p}.shortcut.1"),
                    )?)
                } else {
                    None
                };
                blocks.push(Block { c1, c2, shortcut });
            }
            cin = out;
        }
        let linear = LinearParams {
            inp: cin,
            out: cfg.num_classes,
            weight: offset(&layout, "linear.weight")?,
            bias: Some(offset(&layout, "linear.bias")?),
        };
        Ok(ResNet18 {
            backend,
            cfg,
            stem,
            blocks,
            linear,
            bn_names,
            bns,
            units: units_from_layout(&layout, resnet_unit)?,
            layout,
            acts: None,
            kept: None,
            lean: None,
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn set_label_smoothing(&mut self, s: f32) -> Result<()> {
        if !(0.0..1.0).contains(&s) {
            return Err(Error::invalid(
                "label_smoothing",
                format!("{s} must lie in [0, 1)"),
            ));
        }
        self.cfg.label_smoothing = s;
        Ok(())
    }

    /// Names of the batch-norm layers, in `state_dict` order (`bn1`, `layer1.0.bn1`, ...).
    pub fn bn_names(&self) -> &[String] {
        &self.bn_names
    }

    /// Running mean and variance of every batch-norm layer (host copies), in order.
    pub fn running_stats(&mut self) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let mut out = Vec::with_capacity(self.bns.len());
        for st in &self.bns {
            let mut m = vec![0.0; st.channels];
            let mut v = vec![0.0; st.channels];
            self.backend.download(&st.running_mean, &mut m)?;
            self.backend.download(&st.running_var, &mut v)?;
            out.push((m, v));
        }
        Ok(out)
    }

    /// PyTorch's default initialisation, from a seed: Kaiming-uniform convolutions and
    /// linear weights (`a = √5`), uniform linear bias, BN weight 1 and bias 0.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut p = vec![0.0; self.layout.len()];
        let mut rng = crate::init::Rng::new(seed);
        for s in self.layout.segments() {
            let dst = &mut p[s.range()];
            if s.name.contains("bn") || s.name.contains("shortcut.1") {
                dst.fill(if s.name.ends_with("weight") { 1.0 } else { 0.0 });
            } else if s.name == "linear.bias" {
                let fan_in = self.linear.inp as f32;
                rng.fill_uniform(dst, 1.0 / fan_in.sqrt());
            } else {
                let fan_in = s.filter_len() as f32;
                rng.fill_uniform(dst, 1.0 / fan_in.sqrt());
            }
        }
        p
    }

    /// Values held by the two activation workspaces, as allocated so far: the one of passes
    /// with gradient (every activation kept for the backward pass) and the one of
    /// [`Model::forward`] (a block at a time), 0 before their first use.
    pub fn workspace_values(&self) -> (usize, usize) {
        let train = self.acts.as_ref().map_or(0, |a| {
            let blocks: usize = a
                .blocks
                .iter()
                .map(|b| {
                    [&b.c1, &b.r1, &b.c2, &b.out]
                        .into_iter()
                        .chain(b.cs.as_ref())
                        .chain(b.bs.as_ref())
                        .map(B::buf_len)
                        .sum::<usize>()
                })
                .sum();
            [
                &a.x, &a.c0, &a.a0, &a.pooled, &a.logits, &a.dlogits, &a.dpooled,
            ]
            .into_iter()
            .chain(&a.g)
            .map(B::buf_len)
            .sum::<usize>()
                + blocks
        });
        let lean = self.lean.as_ref().map_or(0, |l| {
            [&l.x, &l.c1, &l.r1, &l.bs, &l.pooled, &l.logits]
                .into_iter()
                .chain(&l.io)
                .map(B::buf_len)
                .sum::<usize>()
                + l.saved
                    .iter()
                    .map(|(m, s)| B::buf_len(m) + B::buf_len(s))
                    .sum::<usize>()
        });
        (train, lean)
    }

    fn ensure_acts(&mut self, n: usize, h: usize, w: usize) -> Result<()> {
        if let Some(a) = &self.acts {
            if a.n >= n && a.h == h && a.w == w {
                return Ok(());
            }
        }
        self.acts = None;
        self.kept = None;
        let b = &mut self.backend;
        let mut d = Dims::new(n, 3, h, w);
        let x = b.alloc(d.len())?;
        d = self.stem.conv.out_dims(d);
        let c0 = b.alloc(d.len())?;
        let a0 = b.alloc(d.len())?;
        let mut max_len = d.len();
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for blk in &self.blocks {
            let m = blk.c1.conv.out_dims(d);
            let o = blk.c2.conv.out_dims(m);
            max_len = max_len.max(m.len()).max(d.len());
            let (cs, bs) = match blk.shortcut {
                Some(_) => (Some(b.alloc(o.len())?), Some(b.alloc(o.len())?)),
                None => (None, None),
            };
            blocks.push(BlockActs {
                c1: b.alloc(m.len())?,
                r1: b.alloc(m.len())?,
                c2: b.alloc(o.len())?,
                cs,
                bs,
                out: b.alloc(o.len())?,
            });
            d = o;
        }
        let k = self.cfg.num_classes;
        self.acts = Some(Acts {
            n,
            h,
            w,
            x,
            c0,
            a0,
            blocks,
            pooled: b.alloc(n * d.c)?,
            logits: b.alloc(n * k)?,
            dlogits: b.alloc(n * k)?,
            dpooled: b.alloc(n * d.c)?,
            g: [b.alloc(max_len)?, b.alloc(max_len)?, b.alloc(max_len)?],
            host_logits: vec![0.0; n * k],
            host_dlogits: vec![0.0; n * k],
        });
        Ok(())
    }

    /// The workspace of [`Model::forward`], every buffer as large as the largest activation.
    fn ensure_lean(&mut self, n: usize, h: usize, w: usize) -> Result<()> {
        if let Some(l) = &self.lean {
            if l.n >= n && l.h == h && l.w == w {
                return Ok(());
            }
        }
        self.lean = None;
        let b = &mut self.backend;
        let mut d = self.stem.conv.out_dims(Dims::new(n, 3, h, w));
        let mut max_len = d.len();
        for blk in &self.blocks {
            let m = blk.c1.conv.out_dims(d);
            d = blk.c2.conv.out_dims(m);
            max_len = max_len.max(m.len()).max(d.len());
        }
        let k = self.cfg.num_classes;
        let saved = self
            .bns
            .iter()
            .map(|st| Ok((b.alloc(st.channels)?, b.alloc(st.channels)?)))
            .collect::<Result<Vec<_>>>()?;
        self.lean = Some(Lean {
            n,
            h,
            w,
            x: b.alloc(n * 3 * h * w)?,
            io: [b.alloc(max_len)?, b.alloc(max_len)?],
            c1: b.alloc(max_len)?,
            r1: b.alloc(max_len)?,
            bs: b.alloc(max_len)?,
            pooled: b.alloc(n * d.c)?,
            logits: b.alloc(n * k)?,
            host_logits: vec![0.0; n * k],
            saved,
        });
        Ok(())
    }

    fn check_input(&self, params: &B::Arena, x: &Tensor) -> Result<(usize, usize, usize)> {
        check_arena_len::<B>("parameters", params, &self.layout)?;
        let (n, c, h, w) = x.dims4()?;
        if c != 3 || n == 0 {
            return Err(Error::shape(
                "input",
                format!("expected [N, 3, H, W], got {:?}", x.shape()),
            ));
        }
        Ok((n, h, w))
    }

    /// Input dimensions of every unit (the head's: the last block's output).
    fn unit_dims(&self, n: usize, h: usize, w: usize) -> Vec<Dims> {
        let d0 = Dims::new(n, 3, h, w);
        let mut dims = Vec::with_capacity(HEAD + 1);
        dims.push(d0);
        let mut d = self.stem.conv.out_dims(d0);
        dims.push(d);
        for blk in &self.blocks {
            d = blk.c2.conv.out_dims(blk.c1.conv.out_dims(d));
            dims.push(d);
        }
        dims
    }

    /// A full forward pass over `x` that keeps its activations for a backward pass (and for
    /// passes from a later unit); logits are left in the workspace and on the host.
    fn run_forward(&mut self, params: &B::Arena, x: &Tensor, mode: BnMode) -> Result<usize> {
        let (n, h, w) = self.check_input(params, x)?;
        self.ensure_acts(n, h, w)?;
        // Until it succeeds, the workspace holds a partial pass.
        self.kept = None;
        let a = self.acts.as_mut().expect("workspace allocated");
        self.backend.load_images(x, &mut a.x)?;
        self.run_forward_from(params, n, 0, mode)?;
        self.kept = Some(Kept {
            n,
            mode,
            clean: HEAD,
        });
        Ok(n)
    }

    /// The units `start..` of a forward pass over the batch of `n` samples in the workspace,
    /// from the input that unit `start` has there.
    fn run_forward_from(
        &mut self,
        params: &B::Arena,
        n: usize,
        start: usize,
        mode: BnMode,
    ) -> Result<()> {
        let a = self.acts.as_ref().expect("workspace allocated");
        let dims = self.unit_dims(n, a.h, a.w);
        let Self {
            backend: be,
            cfg,
            stem,
            blocks,
            linear,
            bns,
            acts,
            ..
        } = self;
        let a = acts.as_mut().expect("workspace allocated");
        let net = (&*stem, &blocks[..], *linear);
        forward_units(be, cfg.bn, mode, net, &dims, params, bns, a, start)
    }

    /// A forward pass in the workspace of [`Model::forward`]; the logits are left in its
    /// `host_logits`. The batch-norm layers' saved statistics are swapped with the lean
    /// workspace's for the pass (and back, also on an error).
    fn run_forward_lean(&mut self, params: &B::Arena, x: &Tensor, mode: BnMode) -> Result<usize> {
        let (n, h, w) = self.check_input(params, x)?;
        self.ensure_lean(n, h, w)?;
        let l = self.lean.as_mut().expect("workspace allocated");
        for (st, (m, s)) in self.bns.iter_mut().zip(&mut l.saved) {
            std::mem::swap(&mut st.saved_mean, m);
            std::mem::swap(&mut st.saved_invstd, s);
        }
        let r = self.lean_pass(params, x, n, mode);
        let l = self.lean.as_mut().expect("workspace allocated");
        for (st, (m, s)) in self.bns.iter_mut().zip(&mut l.saved) {
            std::mem::swap(&mut st.saved_mean, m);
            std::mem::swap(&mut st.saved_invstd, s);
        }
        r.map(|()| n)
    }

    fn lean_pass(&mut self, params: &B::Arena, x: &Tensor, n: usize, mode: BnMode) -> Result<()> {
        let l = self.lean.as_ref().expect("workspace allocated");
        let dims = self.unit_dims(n, l.h, l.w);
        let Self {
            backend: be,
            cfg,
            stem,
            blocks,
            linear,
            bns,
            lean,
            ..
        } = self;
        let l = lean.as_mut().expect("workspace allocated");
        be.load_images(x, &mut l.x)?;
        let net = (&*stem, &blocks[..], *linear);
        forward_units(be, cfg.bn, mode, net, &dims, params, bns, l, 0)
    }

    /// Backward pass from `host_dlogits` (first `n·k` values) of the last forward pass, through
    /// the units `stop..` (the input gradient of unit `stop` is not computed).
    #[allow(clippy::too_many_arguments)]
    fn run_backward(
        &mut self,
        params: &B::Arena,
        n: usize,
        mode: BnMode,
        pg: ParamGrad,
        grad: &mut B::Arena,
        stop: usize,
    ) -> Result<()> {
        let a = self.acts.as_ref().expect("workspace allocated");
        // Dimensions of every unit's input.
        let dims = self.unit_dims(n, a.h, a.w);
        let Self {
            backend: be,
            cfg,
            stem,
            blocks,
            linear,
            bns,
            acts,
            ..
        } = self;
        let a = acts.as_mut().expect("workspace allocated");
        let k = cfg.num_classes;
        be.upload(&a.host_dlogits[..n * k], &mut a.dlogits)?;
        let dpooled = if stop < HEAD {
            Some(&mut a.dpooled)
        } else {
            None
        };
        be.linear_backward(n, *linear, &a.pooled, &a.dlogits, params, pg, grad, dpooled)?;
        if stop == HEAD {
            return Ok(());
        }
        let [ga, gb, gc] = &mut a.g;
        be.avg_pool_backward(dims[HEAD], &a.dpooled, ga)?;
        for i in (0..blocks.len()).rev() {
            let unit = i + 1;
            if unit < stop {
                break;
            }
            // The last unit of a truncated backward needs no input gradient.
            let want_dx = unit > stop;
            let blk = &blocks[i];
            let (prev, cur) = a.blocks.split_at(i);
            let input = if i == 0 { &a.a0 } else { &prev[i - 1].out };
            let ba = &cur[0];
            let d = dims[unit];
            let dm = blk.c1.conv.out_dims(d);
            let dout = dims[unit + 1];
            // ga: gradient of the block's output → of the sum before the ReLU.
            be.relu_backward(&ba.out, ga)?;
            be.batch_norm_backward(
                mode,
                dout,
                &ba.c2,
                ga,
                params,
                blk.c2.bn,
                &bns[blk.c2.bn_idx],
                pg,
                grad,
                gb,
            )?;
            be.conv2d_backward(
                &blk.c2.conv,
                dm,
                &ba.r1,
                gb,
                params,
                blk.c2.w,
                pg,
                grad,
                Some(gc),
                false,
            )?;
            be.relu_backward(&ba.r1, gc)?;
            be.batch_norm_backward(
                mode,
                dm,
                &ba.c1,
                gc,
                params,
                blk.c1.bn,
                &bns[blk.c1.bn_idx],
                pg,
                grad,
                gb,
            )?;
            be.conv2d_backward(
                &blk.c1.conv,
                d,
                input,
                gb,
                params,
                blk.c1.w,
                pg,
                grad,
                if want_dx { Some(&mut *gc) } else { None },
                false,
            )?;
            match (&blk.shortcut, &ba.cs) {
                (Some(sc), Some(cs)) => {
                    be.batch_norm_backward(
                        mode,
                        dout,
                        cs,
                        ga,
                        params,
                        sc.bn,
                        &bns[sc.bn_idx],
                        pg,
                        grad,
                        gb,
                    )?;
                    be.conv2d_backward(
                        &sc.conv,
                        d,
                        input,
                        gb,
                        params,
                        sc.w,
                        pg,
                        grad,
                        if want_dx { Some(&mut *gc) } else { None },
                        true,
                    )?;
                }
                _ if want_dx => be.add_assign(gc, ga)?,
                _ => {}
            }
            if !want_dx {
                return Ok(());
            }
            std::mem::swap(ga, gc);
        }
        be.relu_backward(&a.a0, ga)?;
        be.batch_norm_backward(
            mode,
            dims[1],
            &a.c0,
            ga,
            params,
            stem.bn,
            &bns[stem.bn_idx],
            pg,
            grad,
            gb,
        )?;
        be.conv2d_backward(
            &stem.conv, dims[0], &a.x, gb, params, stem.w, pg, grad, None, false,
        )?;
        Ok(())
    }

    fn loss_kind(&self) -> LossKind {
        LossKind::CrossEntropy {
            smoothing: self.cfg.label_smoothing,
        }
    }

    /// The losses of the logits the last pass with gradient left on the host, and their
    /// gradient in `host_dlogits` for [`ResNet18::run_backward`].
    fn loss_of_kept(&mut self, n: usize, targets: Targets<'_>, weights: &[f32]) -> Result<Losses> {
        let (k, loss) = (self.cfg.num_classes, self.loss_kind());
        let a = self.acts.as_mut().expect("workspace allocated");
        loss.eval_into(&a.host_logits, &mut a.host_dlogits, n, k, targets, weights)
    }
}

impl<B: Backend> Model for ResNet18<B> {
    type Backend = B;

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn forward(&mut self, params: &B::Arena, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let n = self.run_forward_lean(params, x, mode)?;
        let k = self.cfg.num_classes;
        let l = self.lean.as_ref().expect("workspace allocated");
        Tensor::from_slice(&l.host_logits[..n * k], &[n, k])
    }

    fn forward_losses(
        &mut self,
        params: &B::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        mode: BnMode,
    ) -> Result<Losses> {
        let n = self.run_forward_lean(params, x, mode)?;
        let k = self.cfg.num_classes;
        let l = self.lean.as_ref().expect("workspace allocated");
        self.loss_kind().eval_mean(&l.host_logits, n, k, targets)
    }

    fn units(&self) -> &[Unit] {
        &self.units
    }

    fn forward_backward_from(
        &mut self,
        params: &B::Arena,
        start: usize,
        targets: Targets<'_>,
        weights: &[f32],
        backward: BackwardExtent,
        grad: &mut B::Arena,
    ) -> Result<Losses> {
        let PassFrom { n, mode, stop } = begin_pass_from::<B>(
            &mut self.kept,
            &self.layout,
            self.units.len(),
            params,
            grad,
            start,
            backward,
        )?;
        self.run_forward_from(params, n, start, mode)?;
        let losses = self.loss_of_kept(n, targets, weights)?;
        self.run_backward(params, n, mode, ParamGrad::Sum, grad, stop)?;
        Ok(losses)
    }

    fn forward_backward(
        &mut self,
        params: &B::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        weights: &[f32],
        mode: BnMode,
        grad: &mut B::Arena,
    ) -> Result<Losses> {
        check_arena_len::<B>("gradient", grad, &self.layout)?;
        let n = self.run_forward(params, x, mode)?;
        let losses = self.loss_of_kept(n, targets, weights)?;
        self.run_backward(params, n, mode, ParamGrad::Sum, grad, 0)?;
        Ok(losses)
    }

    fn per_sample_grad_sq(
        &mut self,
        params: &B::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        out: &mut B::Arena,
    ) -> Result<Losses> {
        check_arena_len::<B>("fisher", out, &self.layout)?;
        let n = self.run_forward(params, x, BnMode::Eval)?;
        // Unit weights: each sample's own gradient, not the mean's.
        let losses = self.loss_of_kept(n, targets, &vec![1.0; n])?;
        self.run_backward(params, n, BnMode::Eval, ParamGrad::PerSampleSq, out, 0)?;
        Ok(losses)
    }

    fn buffers(&mut self) -> Result<Vec<NamedBuffer>> {
        let stats = self.running_stats()?;
        let mut out = Vec::with_capacity(3 * stats.len());
        for ((name, (m, v)), st) in self.bn_names.iter().zip(stats).zip(&self.bns) {
            let c = m.len();
            out.push(NamedBuffer {
                name: format!("{name}.running_mean"),
                shape: vec![c],
                data: BufferData::F32(m),
            });
            out.push(NamedBuffer {
                name: format!("{name}.running_var"),
                shape: vec![c],
                data: BufferData::F32(v),
            });
            out.push(NamedBuffer {
                name: format!("{name}.num_batches_tracked"),
                shape: vec![],
                data: BufferData::I64(vec![st.num_batches_tracked]),
            });
        }
        Ok(out)
    }

    fn buffer_specs(&self) -> Vec<(String, Vec<usize>, BufferKind)> {
        let mut out = Vec::with_capacity(3 * self.bns.len());
        for (name, st) in self.bn_names.iter().zip(&self.bns) {
            out.push((
                format!("{name}.running_mean"),
                vec![st.channels],
                BufferKind::F32,
            ));
            out.push((
                format!("{name}.running_var"),
                vec![st.channels],
                BufferKind::F32,
            ));
            out.push((
                format!("{name}.num_batches_tracked"),
                vec![],
                BufferKind::I64,
            ));
        }
        out
    }

    fn set_buffers(&mut self, buffers: &[NamedBuffer]) -> Result<()> {
        let specs = self.buffer_specs();
        if buffers.len() != specs.len() {
            return Err(Error::shape(
                "buffers",
                format!("{} buffers, the model has {}", buffers.len(), specs.len()),
            ));
        }
        for ((name, shape, _), b) in specs.iter().zip(buffers) {
            if &b.name != name || &b.shape != shape {
                return Err(Error::shape(
                    "buffers",
                    format!(
                        "got `{}` {:?} where the model has `{name}` {shape:?}",
                        b.name, b.shape
                    ),
                ));
            }
        }
        for (i, st) in self.bns.iter_mut().enumerate() {
            for (j, b) in buffers[3 * i..3 * i + 3].iter().enumerate() {
                match (j, &b.data) {
                    (0, BufferData::F32(v)) => self.backend.upload(v, &mut st.running_mean)?,
                    (1, BufferData::F32(v)) => self.backend.upload(v, &mut st.running_var)?,
                    (2, BufferData::I64(v)) if v.len() == 1 => st.num_batches_tracked = v[0],
                    _ => {
                        return Err(Error::shape(
                            "buffers",
                            format!("`{}` has the wrong element type", b.name),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}
