//! The Vars an optimizer owns, in layout order, with the checks every backend relies on.
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Storage, Tensor, Var};
use candle_nn::VarMap;
use samkit_core::{GradRequest, Layout, ParamKind};

use crate::error::{Error, Result};

/// Suffixes of the Vars candle-nn keeps in a `VarMap` that are buffers, not parameters:
/// BatchNorm's running statistics (updated by the forward pass, never by an optimizer).
pub const BUFFER_SUFFIXES: [&str; 2] = ["running_mean", "running_var"];

/// One parameter: its name (which sets its kind unless given), the Var, and its kind.
#[derive(Clone, Debug)]
pub struct ParamVar {
    pub name: String,
    pub var: Var,
    /// ASAM and the adaptive rules treat weights and biases differently.
    pub kind: ParamKind,
}

impl ParamVar {
    /// A parameter whose kind follows from its name ([`ParamKind::from_name`]: names ending in
    /// `weight` are weights, everything else a bias).
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        let name = name.into();
        let kind = ParamKind::from_name(&name);
        ParamVar { name, var, kind }
    }

    pub fn with_kind(name: impl Into<String>, var: Var, kind: ParamKind) -> Self {
        ParamVar {
            name: name.into(),
            var,
            kind,
        }
    }
}

/// The parameters of a model, in the order of the optimizer's layout.
#[derive(Clone, Debug)]
pub struct ParamVars {
    params: Vec<ParamVar>,
    layout: Layout,
    /// Storage addresses of the Vars: a gradient that shares one is copied before the Vars are
    /// locked for writing (a read lock and a write lock on one storage would deadlock).
    keys: Vec<usize>,
}

impl ParamVars {
    /// Checks the Vars (f32, contiguous, one device, no two sharing storage) and builds the layout
    /// from their names, shapes and kinds, in the given order.
    pub fn new(params: Vec<ParamVar>) -> Result<Self> {
        if params.is_empty() {
            return Err(Error::Mismatch("no Vars to optimize".into()));
        }
        let device = params[0].var.device().clone();
        let mut layout = Layout::new();
        let mut storages: Vec<(usize, &str)> = Vec::with_capacity(params.len());
        for p in &params {
            let bad = |detail: String| Error::Var {
                name: p.name.clone(),
                detail,
            };
            if p.var.dtype() != DType::F32 {
                return Err(bad(format!(
                    "dtype {:?}: samkit-candle optimizes f32 Vars",
                    p.var.dtype()
                )));
            }
            if !p.var.device().same_device(&device) {
                return Err(bad(format!(
                    "on {:?}, the first Var `{}` is on {:?}: all Vars must share one device",
                    p.var.device().location(),
                    params[0].name,
                    device.location()
                )));
            }
            if !p.var.is_contiguous() {
                return Err(bad("not contiguous".into()));
            }
            let key = storage_key(&p.var);
            if let Some((_, other)) = storages.iter().find(|(k, _)| *k == key) {
                return Err(bad(format!(
                    "shares its storage with `{other}` (the same Var twice, or a view): each \
                     parameter must own its storage"
                )));
            }
            storages.push((key, &p.name));
            layout.push_with_kind(p.name.clone(), p.var.dims(), p.kind)?;
        }
        let keys = storages.iter().map(|(k, _)| *k).collect();
        Ok(ParamVars {
            params,
            layout,
            keys,
        })
    }

    /// Every Var of a `VarMap` but BatchNorm's running statistics ([`BUFFER_SUFFIXES`]), sorted
    /// by name (a `VarMap` has no order of its own), kinds from the names.
    pub fn from_varmap(varmap: &VarMap) -> Result<Self> {
        Self::from_varmap_filtered(varmap, |name| {
            !BUFFER_SUFFIXES.iter().any(|s| name.ends_with(s))
        })
    }

    /// The Vars of a `VarMap` whose names pass `keep`, sorted by name.
    pub fn from_varmap_filtered(varmap: &VarMap, keep: impl Fn(&str) -> bool) -> Result<Self> {
        let mut named: Vec<(String, Var)> = {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::Mismatch("the VarMap's lock is poisoned".into()))?;
            data.iter()
                .filter(|(name, _)| keep(name))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::new(
            named
                .into_iter()
                .map(|(n, v)| ParamVar::new(n, v))
                .collect(),
        )
    }

    pub fn params(&self) -> &[ParamVar] {
        &self.params
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|p| &p.var)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn device(&self) -> &Device {
        self.params[0].var.device()
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

impl ParamVars {
    /// The gradient of each Var in `store`, checked (a Var the loss does not reach gets zeros).
    /// A gradient is copied only when candle left it non-contiguous or sharing a Var's storage.
    pub fn grads(&self, store: &GradStore) -> Result<VarGrads> {
        let mut out = Vec::with_capacity(self.len());
        for (i, p) in self.params.iter().enumerate() {
            let g = match store.get(&p.var) {
                Some(g) => g.clone(),
                None => Tensor::zeros(p.var.shape(), DType::F32, p.var.device())?,
            };
            out.push(self.checked(i, g)?);
        }
        Ok(VarGrads { tensors: out })
    }

    /// Gradients (or a Fisher) given as one tensor per Var, in layout order, checked.
    pub fn grads_from(&self, tensors: Vec<Tensor>) -> Result<VarGrads> {
        if tensors.len() != self.len() {
            return Err(Error::Mismatch(format!(
                "{} tensors for {} Vars",
                tensors.len(),
                self.len()
            )));
        }
        let tensors = tensors
            .into_iter()
            .enumerate()
            .map(|(i, g)| self.checked(i, g))
            .collect::<Result<_>>()?;
        Ok(VarGrads { tensors })
    }

    /// SSAM-F's `F = Σ_i (∇ℓ_i)²` from a vector of per-sample losses: one backward pass per
    /// sample (each walks the graph of the whole vector), the squared gradients summed in sample
    /// order with candle's elementwise ops on the Vars' device.
    pub fn fisher_from_losses(&self, losses: &Tensor) -> Result<VarGrads> {
        if losses.rank() != 1 || losses.elem_count() == 0 {
            return Err(Error::LossShape {
                request: GradRequest::Fisher {
                    samples: losses.elem_count(),
                },
                detail: format!(
                    "must be a non-empty vector of per-sample losses, got shape {:?}",
                    losses.dims()
                ),
            });
        }
        let mut acc: Option<Vec<Tensor>> = None;
        for j in 0..losses.elem_count() {
            let g = self.grads(&losses.get(j)?.backward()?)?;
            acc = Some(match acc {
                None => g
                    .tensors
                    .iter()
                    .map(|g| g.sqr())
                    .collect::<candle_core::Result<_>>()?,
                Some(acc) => acc
                    .iter()
                    .zip(&g.tensors)
                    .map(|(a, g)| a.add(&g.sqr()?))
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        Ok(VarGrads {
            tensors: acc.unwrap_or_default(),
        })
    }

    /// Checks one gradient against its Var and makes it safe to read while the Vars are written.
    fn checked(&self, i: usize, g: Tensor) -> Result<Tensor> {
        let p = &self.params[i];
        let bad = |detail: String| Error::Var {
            name: p.name.clone(),
            detail,
        };
        if g.dims() != p.var.dims() {
            return Err(bad(format!(
                "gradient of shape {:?}, the Var has {:?}",
                g.dims(),
                p.var.dims()
            )));
        }
        if g.dtype() != DType::F32 {
            return Err(bad(format!(
                "gradient of dtype {:?}, expected f32",
                g.dtype()
            )));
        }
        if !g.device().same_device(p.var.device()) {
            return Err(bad(format!(
                "gradient on {:?}, the Var on {:?}",
                g.device().location(),
                p.var.device().location()
            )));
        }
        // `contiguous` returns the tensor itself (no copy) when it already is.
        let g = g.contiguous()?;
        if self.keys.contains(&storage_key(&g)) {
            return Ok(g.copy()?);
        }
        Ok(g)
    }

    /// Checks that `g` holds one tensor per Var (an empty `VarGrads` before any pass does not).
    pub(crate) fn check_grads(&self, what: &str, g: &VarGrads) -> Result<()> {
        if g.tensors.len() != self.len() {
            return Err(Error::Mismatch(format!(
                "{what}: {} tensors for {} Vars",
                g.tensors.len(),
                self.len()
            )));
        }
        Ok(())
    }
}

/// Gradients (or SSAM-F's Fisher) of [`ParamVars`]: one contiguous f32 tensor per Var, in layout
/// order, on the Vars' device. Made by [`ParamVars::grads`], [`ParamVars::grads_from`] and
/// [`ParamVars::fisher_from_losses`], which check them; `default()` is the empty buffer the
/// closure-form step fills.
#[derive(Clone, Debug, Default)]
pub struct VarGrads {
    tensors: Vec<Tensor>,
}

impl VarGrads {
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    pub fn into_tensors(self) -> Vec<Tensor> {
        self.tensors
    }
}

/// The address of a tensor's storage (inside its lock): equal for tensors that share memory.
pub(crate) fn storage_key(t: &candle_core::Tensor) -> usize {
    let (guard, _) = t.storage_and_layout();
    let s: &Storage = &guard;
    std::ptr::from_ref(s) as usize
}
