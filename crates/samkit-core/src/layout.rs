//! The flat parameter arena: named segments of one contiguous `f32` buffer.
//!
//! Every optimizer buffer (weights, gradients, momenta, masks) shares one layout, so a pass of
//! an optimizer is one loop over one vector. Trainers that keep separate tensors describe them
//! with the same layout and hand over a list of slices (see [`crate::params`]).
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a segment holds; ASAM and adaptive rules treat the two kinds differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    /// Conv/linear weights and norm-layer scales: every tensor whose name ends in `weight`.
    Weight,
    /// Biases and norm-layer shifts.
    Bias,
}

/// Whether a tensor of this PyTorch-style name is a normalisation layer's affine parameter: its
/// module (the name without the last component) ends in a component that starts with `bn`, `ln`
/// or `gn`, or contains `norm` (`bn1`, `layer1.0.bn2`, `ln_f`, `layernorm`, `norm1`). Layers that
/// torch names by position (ResNet's `shortcut.1`) are not recognised: mark those with
/// [`Layout::set_norm`] ([`Layout::resnet18`] does).
pub fn is_norm_name(name: &str) -> bool {
    let module = match name.rsplit_once('.') {
        Some((m, _)) => m,
        None => return false,
    };
    let last = module
        .rsplit('.')
        .next()
        .unwrap_or(module)
        .to_ascii_lowercase();
    ["bn", "ln", "gn"].iter().any(|p| last.starts_with(p)) || last.contains("norm")
}

impl ParamKind {
    /// The kind ALGORITHMS.md assigns to a tensor by its name.
    pub fn from_name(name: &str) -> Self {
        if name.ends_with("weight") {
            ParamKind::Weight
        } else {
            ParamKind::Bias
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    /// Start of the segment in the flat buffer.
    pub offset: usize,
    pub len: usize,
    /// An affine parameter of a normalisation layer (BatchNorm/LayerNorm weight or bias): the
    /// segments SAM-ON perturbs. Not part of [`Layout::fingerprint`], so state files of layouts
    /// saved before the flag existed still load.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub norm: bool,
}

impl Segment {
    /// Elements per output filter: the product of all dimensions but the first
    /// (1 for a vector, so each element of a 1-D tensor is its own filter).
    pub fn filter_len(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>().max(1)
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Named segments of one flat buffer, in order, without gaps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    segments: Vec<Segment>,
    total: usize,
}

impl Layout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a segment whose kind follows from its name, and its norm-layer flag too
    /// ([`is_norm_name`]).
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize]) -> Result<&mut Self> {
        let name = name.into();
        let kind = ParamKind::from_name(&name);
        let norm = is_norm_name(&name);
        self.push_with_kind(name, shape, kind)?;
        if let Some(s) = self.segments.last_mut() {
            s.norm = norm;
        }
        Ok(self)
    }

    /// Marks (or unmarks) the segment `name` as a normalisation layer's affine parameter.
    pub fn set_norm(&mut self, name: &str, norm: bool) -> Result<&mut Self> {
        let s = self
            .segments
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::InvalidLayout(format!("no segment `{name}`")))?;
        s.norm = norm;
        Ok(self)
    }

    /// Whether any segment is a normalisation layer's affine parameter.
    pub fn has_norm_segments(&self) -> bool {
        self.segments.iter().any(|s| s.norm)
    }

    pub fn push_with_kind(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        kind: ParamKind,
    ) -> Result<&mut Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::InvalidLayout("empty segment name".into()));
        }
        if self.segments.iter().any(|s| s.name == name) {
            return Err(Error::InvalidLayout(format!("duplicate segment `{name}`")));
        }
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::InvalidLayout(format!("segment `{name}` overflows usize")))?;
        if len == 0 {
            return Err(Error::InvalidLayout(format!(
                "segment `{name}` has no elements (shape {shape:?})"
            )));
        }
        self.segments.push(Segment {
            name,
            shape: shape.to_vec(),
            kind,
            offset: self.total,
            len,
            norm: false,
        });
        self.total += len;
        Ok(self)
    }

    /// A layout from a trainer's list of tensors: `(name, shape)` in order, each tensor's kind
    /// inferred from its PyTorch-style name by [`ParamKind::from_name`] (`….weight` is a weight,
    /// everything else, `….bias` included, a bias). Use this (or [`Layout::from_kinds`]) for any
    /// model whose rules treat the kinds differently (ASAM, ImbSAM's and the norm-layer rules).
    pub fn from_named<S: AsRef<str>>(tensors: &[(S, &[usize])]) -> Result<Self> {
        let mut l = Layout::new();
        for (name, shape) in tensors {
            l.push(name.as_ref(), shape)?;
        }
        Ok(l)
    }

    /// A layout from `(name, shape, kind)` with explicit kinds, for names that do not follow the
    /// PyTorch convention.
    pub fn from_kinds<S: AsRef<str>>(tensors: &[(S, &[usize], ParamKind)]) -> Result<Self> {
        let mut l = Layout::new();
        for (name, shape, kind) in tensors {
            l.push_with_kind(name.as_ref(), shape, *kind)?;
        }
        Ok(l)
    }

    /// A layout with one unnamed-weight segment per slice length: the shape of a list of
    /// tensors handed over by a trainer that has no arena of its own.
    ///
    /// Every slice is marked a [`ParamKind::Weight`] of shape `[len]`: right for SAM, GSAM,
    /// FriendlySAM, Sparse SAM and LookSAM, which ignore kinds and shapes, but ASAM would scale
    /// biases as weights (and filter-wise ASAM needs shapes). Give names or kinds with
    /// [`Layout::from_named`] / [`Layout::from_kinds`] for those.
    pub fn from_lengths(lengths: &[usize]) -> Result<Self> {
        let mut l = Layout::new();
        for (i, &n) in lengths.iter().enumerate() {
            l.push(format!("param{i}.weight"), &[n])?;
        }
        Ok(l)
    }

    /// A single weight segment of `n` elements.
    pub fn flat(n: usize) -> Result<Self> {
        let mut l = Layout::new();
        l.push("params.weight", &[n])?;
        Ok(l)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Per-segment views of a flat buffer.
    pub fn split<'a>(&self, flat: &'a [f32]) -> Result<Vec<&'a [f32]>> {
        self.check_len("flat buffer", flat.len())?;
        let mut rest = flat;
        Ok(self
            .segments
            .iter()
            .map(|s| {
                let (head, tail) = rest.split_at(s.len);
                rest = tail;
                head
            })
            .collect())
    }

    /// Per-segment mutable views of a flat buffer.
    pub fn split_mut<'a>(&self, flat: &'a mut [f32]) -> Result<Vec<&'a mut [f32]>> {
        self.check_len("flat buffer", flat.len())?;
        let mut rest = flat;
        Ok(self
            .segments
            .iter()
            .map(|s| {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(s.len);
                rest = tail;
                head
            })
            .collect())
    }

    pub(crate) fn check_len(&self, what: &'static str, n: usize) -> Result<()> {
        if n != self.total {
            return Err(Error::LayoutMismatch {
                what,
                detail: format!("{n} elements, the layout has {}", self.total),
            });
        }
        Ok(())
    }

    /// The ResNet-18 of CIFAR training (3×3 stem, no max-pool, `[2, 2, 2, 2]` basic blocks, 1×1
    /// conv + BN shortcuts), with PyTorch `state_dict` names in `model.parameters()` order.
    /// `width` is the stem width (64 for the standard model, 11,173,962 parameters with 10
    /// classes); smaller widths give narrow variants for CPU runs.
    pub fn resnet18(num_classes: usize, width: usize) -> Result<Self> {
        if num_classes == 0 || width == 0 {
            return Err(Error::InvalidLayout(format!(
                "resnet18 needs classes > 0 and width > 0 (got {num_classes}, {width})"
            )));
        }
        let mut l = Layout::new();
        l.push("conv1.weight", &[width, 3, 3, 3])?;
        l.push("bn1.weight", &[width])?;
        l.push("bn1.bias", &[width])?;
        let mut inp = width;
        for (li, (mult, stride)) in [(1, 1), (2, 2), (4, 2), (8, 2)].into_iter().enumerate() {
            let out = width * mult;
            for b in 0..2 {
                let p = format!("layer{}.{b}", li + 1);
                let (i, s) = if b == 0 { (inp, stride) } else { (out, 1) };
                l.push(format!("{p}.conv1.weight"), &[out, i, 3, 3])?;
                l.push(format!("{p}.bn1.weight"), &[out])?;
                l.push(format!("{p}.bn1.bias"), &[out])?;
                l.push(format!("{p}.conv2.weight"), &[out, out, 3, 3])?;
                l.push(format!("{p}.bn2.weight"), &[out])?;
                l.push(format!("{p}.bn2.bias"), &[out])?;
                if s != 1 || i != out {
                    l.push(format!("{p}.shortcut.0.weight"), &[out, i, 1, 1])?;
                    // The shortcut's BatchNorm, named by position.
                    for t in ["weight", "bias"] {
                        let name = format!("{p}.shortcut.1.{t}");
                        l.push(name.as_str(), &[out])?;
                        l.set_norm(&name, true)?;
                    }
                }
            }
            inp = out;
        }
        l.push("linear.weight", &[num_classes, inp])?;
        l.push("linear.bias", &[num_classes])?;
        Ok(l)
    }

    /// A fully connected network: `dims = [in, h1, ..., out]`, segments `fc{i}.weight` of
    /// shape `[out_i, in_i]` and `fc{i}.bias`.
    pub fn mlp(dims: &[usize]) -> Result<Self> {
        if dims.len() < 2 {
            return Err(Error::InvalidLayout(
                "an MLP needs at least two sizes".into(),
            ));
        }
        let mut l = Layout::new();
        for (i, w) in dims.windows(2).enumerate() {
            l.push(format!("fc{i}.weight"), &[w[1], w[0]])?;
            l.push(format!("fc{i}.bias"), &[w[1]])?;
        }
        Ok(l)
    }

    /// A short text that identifies the layout: names, shapes and kinds, in order.
    pub fn fingerprint(&self) -> String {
        self.segments
            .iter()
            .map(|s| format!("{}:{:?}:{:?}", s.name, s.shape, s.kind))
            .collect::<Vec<_>>()
            .join(";")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_has_the_pytorch_parameter_count_and_segment_count() {
        let l = Layout::resnet18(10, 64).unwrap();
        assert_eq!(l.len(), 11_173_962);
        assert_eq!(l.segments().len(), 62);
        assert_eq!(l.segments()[0].name, "conv1.weight");
        assert_eq!(
            l.segment("layer2.0.shortcut.0.weight").unwrap().shape,
            vec![128, 64, 1, 1]
        );
        assert_eq!(l.segment("bn1.bias").unwrap().kind, ParamKind::Bias);
        assert_eq!(l.segment("bn1.weight").unwrap().kind, ParamKind::Weight);
        // Every BatchNorm affine tensor, the shortcuts' included, is a norm segment: 20 BN
        // layers, weight and bias each.
        let norms: Vec<&str> = l
            .segments()
            .iter()
            .filter(|s| s.norm)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(norms.len(), 40);
        assert!(norms.contains(&"layer3.0.shortcut.1.bias"));
        assert!(!l.segment("conv1.weight").unwrap().norm);
        assert!(!l.segment("linear.bias").unwrap().norm);
    }

    #[test]
    fn norm_names_and_old_layouts() {
        for n in [
            "bn1.weight",
            "a.ln_f.bias",
            "enc.layernorm.weight",
            "x.norm1.bias",
            "gn.weight",
        ] {
            assert!(is_norm_name(n), "{n}");
        }
        for n in [
            "conv1.weight",
            "linear.bias",
            "bn",
            "fc0.weight",
            "shortcut.1.weight",
        ] {
            assert!(!is_norm_name(n), "{n}");
        }
        // A layout serialized before the flag existed deserializes with no norm segments, and
        // the fingerprint (what state files record) ignores the flag.
        let l = Layout::from_named(&[("bn.weight", &[2usize][..])]).unwrap();
        let mut json = serde_json::to_value(&l).unwrap();
        json["segments"][0].as_object_mut().unwrap().remove("norm");
        let old: Layout = serde_json::from_value(json).unwrap();
        assert!(!old.has_norm_segments() && l.has_norm_segments());
        assert_eq!(old.fingerprint(), l.fingerprint());
        let mut m = Layout::flat(3).unwrap();
        assert!(m.set_norm("nope", true).is_err());
    }

    #[test]
    fn bad_layouts_are_errors() {
        let mut l = Layout::new();
        assert!(l.push("a", &[0]).is_err());
        l.push("a", &[2]).unwrap();
        assert!(l.push("a", &[3]).is_err());
        assert!(l.split(&[1.0; 3]).is_err());
        assert!(Layout::mlp(&[3]).is_err());
    }

    #[test]
    fn named_layouts_classify_biases() {
        let w: &[usize] = &[4, 3];
        let b: &[usize] = &[4];
        let l = Layout::from_named(&[("fc.weight", w), ("fc.bias", b), ("bn.weight", b)]).unwrap();
        let kinds: Vec<_> = l.segments().iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [ParamKind::Weight, ParamKind::Bias, ParamKind::Weight]
        );
        assert_eq!(l.segment("fc.weight").unwrap().filter_len(), 3);
        assert_eq!(l.len(), 20);
        // The same model through explicit kinds, and the old constructor's all-weight view.
        let k = Layout::from_kinds(&[
            ("a", w, ParamKind::Weight),
            ("b", b, ParamKind::Bias),
            ("c", b, ParamKind::Weight),
        ])
        .unwrap();
        assert_eq!(
            k.segments().iter().map(|s| s.kind).collect::<Vec<_>>(),
            kinds
        );
        let flat = Layout::from_lengths(&[12, 4, 4]).unwrap();
        assert!(flat.segments().iter().all(|s| s.kind == ParamKind::Weight));
        assert!(Layout::from_named(&[("x.bias", &[0usize][..])]).is_err());
    }
}
