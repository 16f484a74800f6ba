//! Optimizer state to and from safetensors: momenta, FriendlySAM's `m`, the sparse mask,
//! LookSAM's `g_v`, step counters. A resumed run continues bit-identically.
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::base::BaseOptimizer;
use crate::bitset::Bitset;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::rules::Rule;

const FORMAT: &str = "samkit-optimizer-state";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Meta {
    format: String,
    version: u32,
    layout: String,
    rule: Rule,
    base: BaseOptimizer,
    lr: f32,
    step: u64,
    skipped: u64,
    base_steps: u64,
    mask_updates: u64,
    mask_len: Option<usize>,
    look_gv_sq: Vec<f64>,
}

fn state_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::State {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl Optimizer {
    /// Serialises the state between steps into safetensors bytes.
    pub fn state_bytes(&self) -> Result<Vec<u8>> {
        self.check_idle_for_save()?;
        if self.fisher_pending() {
            return Err(Error::Protocol(
                "save between set_fisher and the step that uses it is not supported".into(),
            ));
        }
        let st = &self.st;
        let meta = Meta {
            format: FORMAT.into(),
            version: VERSION,
            layout: self.layout().fingerprint(),
            rule: self.rule().clone(),
            base: self.base().clone(),
            lr: self.lr(),
            step: st.step,
            skipped: st.skipped,
            base_steps: st.base_steps,
            mask_updates: st.mask_updates,
            mask_len: st.mask.as_ref().map(Bitset::len),
            look_gv_sq: st.look_gv_sq.clone(),
        };
        let mask_bytes = st.mask.as_ref().map(Bitset::to_bytes);
        let mut views: Vec<(String, TensorView)> = Vec::new();
        let view = |dtype, shape: Vec<usize>, data| {
            TensorView::new(dtype, shape, data).map_err(|e| Error::Protocol(e.to_string()))
        };
        for (i, name) in self.base().state_buffers().iter().enumerate() {
            let b = &st.base_bufs[i];
            views.push((
                format!("base.{name}"),
                view(Dtype::F32, vec![b.len()], f32_bytes(b))?,
            ));
        }
        if !st.fsam_m.is_empty() {
            let m = &st.fsam_m;
            views.push((
                "friendlysam.m".into(),
                view(Dtype::F32, vec![m.len()], f32_bytes(m))?,
            ));
        }
        if let Some(b) = &mask_bytes {
            views.push(("ssam.mask".into(), view(Dtype::U8, vec![b.len()], b)?));
        }
        if !st.look_gv.is_empty() {
            let g = &st.look_gv;
            views.push((
                "looksam.gv".into(),
                view(Dtype::F32, vec![g.len()], f32_bytes(g))?,
            ));
        }
        let json = serde_json::to_string(&meta).expect("metadata serialises");
        let info = HashMap::from([("samkit".to_string(), json)]);
        safetensors::serialize(views, Some(info)).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Writes the state atomically: a temporary file beside `path`, then a rename.
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.state_bytes()?;
        let tmp = path.with_extension("tmp");
        let io = |e| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        self.load_state_bytes(&bytes, path)
    }

    /// Restores a state saved by an optimizer with the same layout, rule and base optimizer.
    pub fn load_state_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        if self.is_perturbed() {
            return Err(Error::Protocol(
                "load while the weights are perturbed".into(),
            ));
        }
        let (_, md) = SafeTensors::read_metadata(bytes)
            .map_err(|e| state_err(path, format!("not a safetensors file: {e}")))?;
        let json = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get("samkit"))
            .ok_or_else(|| state_err(path, "no samkit metadata: not an optimizer state"))?;
        let meta: Meta = serde_json::from_str(json)
            .map_err(|e| state_err(path, format!("bad metadata: {e}")))?;
        if meta.format != FORMAT || meta.version != VERSION {
            return Err(state_err(
                path,
                format!(
                    "format {} v{}, expected {FORMAT} v{VERSION}",
                    meta.format, meta.version
                ),
            ));
        }
        if meta.layout != self.layout().fingerprint() {
            return Err(state_err(path, "state file for another layout"));
        }
        if &meta.rule != self.rule() {
            return Err(state_err(
                path,
                format!(
                    "state of rule {:?}, this optimizer runs {:?}",
                    meta.rule,
                    self.rule()
                ),
            ));
        }
        if std::mem::discriminant(&meta.base) != std::mem::discriminant(self.base())
            || meta.base.state_buffers() != self.base().state_buffers()
        {
            return Err(state_err(
                path,
                format!(
                    "state of base optimizer {}, this optimizer uses {}",
                    meta.base.name(),
                    self.base().name()
                ),
            ));
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| state_err(path, e.to_string()))?;
        let n = self.layout().len();
        let read_f32 = |name: &str| -> Result<Option<Vec<f32>>> {
            let t = match st.tensor(name) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            };
            if t.dtype() != Dtype::F32 || t.data().len() != n * 4 {
                return Err(state_err(
                    path,
                    format!("tensor {name} has the wrong type or size"),
                ));
            }
            Ok(Some(
                t.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ))
        };
        let mut new = self.st.clone();
        for (i, name) in self.base().state_buffers().iter().enumerate() {
            new.base_bufs[i] = read_f32(&format!("base.{name}"))?
                .ok_or_else(|| state_err(path, format!("missing tensor base.{name}")))?;
        }
        new.fsam_m = read_f32("friendlysam.m")?.unwrap_or_default();
        new.look_gv = read_f32("looksam.gv")?.unwrap_or_default();
        new.mask = match meta.mask_len {
            Some(len) => {
                let t = st
                    .tensor("ssam.mask")
                    .map_err(|_| state_err(path, "missing tensor ssam.mask"))?;
                Some(
                    Bitset::from_bytes(len, t.data())
                        .filter(|_| len == n)
                        .ok_or_else(|| state_err(path, "ssam.mask has the wrong size"))?,
                )
            }
            None => None,
        };
        new.step = meta.step;
        new.skipped = meta.skipped;
        new.base_steps = meta.base_steps;
        new.mask_updates = meta.mask_updates;
        new.look_gv_sq = meta.look_gv_sq;
        self.set_lr(meta.lr)?;
        self.st = new;
        Ok(())
    }
}
