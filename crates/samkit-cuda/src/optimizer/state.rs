//! The GPU optimizer's state to and from the CPU optimizer's state files
//! ([`samkit_core::state`]): the same safetensors bytes, so that a state saved here loads into
//! [`samkit_core::Optimizer`] and the other way round, and a resumed run continues
//! bit-identically.
//!
//! What the device keeps in two slots (FriendlySAM's `m`, Sparse SAM's mask) is saved from the
//! current slot and loaded into it; LookSAM's `‖g_v‖²` lives in the step state (global) or in
//! the per-segment scratch (per tensor).
use std::path::Path;

use samkit_core::state::{read_state_file, write_state_file, PortableState};
use samkit_core::{Bitset, Error as CoreError, Rule};

use super::{protocol, GpuOptimizer};
use crate::abi::Ctl;
use crate::buffers::Elem;
use crate::error::{Error, Result};

impl<T: Elem> GpuOptimizer<T> {
    /// The committed sparse mask as of the step state `c` (see [`GpuOptimizer::mask`]).
    pub(super) fn committed_mask(&self, c: &Ctl) -> Result<Option<Bitset>> {
        let Some(masks) = &self.masks else {
            return Ok(None);
        };
        match &self.rule {
            Rule::Ssam(s) => {
                if s.fisher_samples().is_some() && c.mask_updates == 0 {
                    return Ok(None);
                }
            }
            // ESAM's and SAM-ON's per-step masks are not state.
            _ => return Ok(None),
        }
        let words = self.plan.words;
        let start = c.mask_cur as usize * words;
        let slot = self
            .dev
            .stream()
            .clone_dtoh(&masks.slice.slice(start..start + words))?;
        let bytes: Vec<u8> = slot.iter().flat_map(|w| w.to_le_bytes()).collect();
        Bitset::from_bytes(self.plan.n, &bytes)
            .ok_or_else(|| Error::Abi("mask size".into()))
            .map(Some)
    }

    /// The state between steps, downloaded: what [`Self::state_bytes`] serialises, in the
    /// format of [`samkit_core::Optimizer::portable_state`]. Waits for the device.
    pub fn portable_state(&self) -> Result<PortableState> {
        self.expect_idle("save")?;
        if self.fisher_ready {
            return Err(protocol(
                "save between set_fisher and the step that uses it is not supported",
            ));
        }
        let stream = self.dev.stream();
        let c = self.work.ctl(stream)?;
        let n = self.plan.n;
        let nbuf = self.base.state_buffers().len();
        let mut base_bufs = Vec::with_capacity(nbuf);
        for b in self.state.iter().take(nbuf) {
            let mut v = b.as_ref().expect("state buffer").download(stream)?;
            v.truncate(n);
            base_bufs.push(v);
        }
        let fsam_m = match &self.fsam {
            Some(m) if c.fsam_init != 0 => {
                let start = c.fsam_cur as usize * n;
                stream.clone_dtoh(&m.slice.slice(start..start + n))?
            }
            _ => Vec::new(),
        };
        let mask = self.committed_mask(&c)?;
        // g_v exists from LookSAM's first completed step on (step 0 is always a SAM step).
        let (look_gv, look_gv_sq) = match (&self.look_gv, &self.rule) {
            (Some(g), Rule::LookSam(l)) if c.step > 0 => {
                let mut v = g.download(stream)?;
                v.truncate(n);
                let sq = if l.per_tensor {
                    let mut s = self.work.seg_gv.download(stream)?;
                    s.truncate(self.plan.n_segs);
                    s
                } else {
                    vec![c.gv_sq]
                };
                (v, sq)
            }
            _ => (Vec::new(), Vec::new()),
        };
        Ok(PortableState {
            layout: self.plan.layout.fingerprint(),
            rule: self.rule.clone(),
            base: self.base.clone(),
            lr: self.lr,
            step: c.step,
            skipped: c.skipped,
            base_steps: c.base_steps,
            mask_updates: c.mask_updates,
            base_bufs,
            fsam_m,
            mask,
            look_gv,
            look_gv_sq,
            og_prev: self.og_prev()?,
        })
    }

    /// Serialises the state between steps into safetensors bytes, exactly as
    /// [`samkit_core::Optimizer::state_bytes`] does. Waits for the device.
    pub fn state_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.portable_state()?.to_bytes()?)
    }

    /// Writes the state atomically: a temporary file beside `path`, then a rename.
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.state_bytes()?;
        Ok(write_state_file(path, &bytes)?)
    }

    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = read_state_file(path)?;
        self.load_state_bytes(&bytes, path)
    }

    /// Restores a state saved by an optimizer (on the CPU or a device) with the same layout,
    /// rule and base optimizer; `path` names it in errors.
    pub fn load_state_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        self.check_idle_for_load()?;
        let s = PortableState::read_for(bytes, path, &self.plan.layout, &self.rule, &self.base)?;
        self.apply_state(s)
    }

    /// Restores a state in host memory (checked as a file's; `path` names it in errors).
    pub fn load_portable_state(&mut self, s: PortableState, path: &Path) -> Result<()> {
        self.check_idle_for_load()?;
        s.check(&self.plan.layout, &self.rule, &self.base, path)?;
        self.apply_state(s)
    }

    fn check_idle_for_load(&self) -> Result<()> {
        if self.is_perturbed() {
            return Err(protocol("load while the weights are perturbed"));
        }
        Ok(())
    }

    /// Uploads a checked state. The slots that are current stay current, so that an SSAM-F mask
    /// handed over by `set_fisher` (in the other slot) survives, as it does on the CPU.
    fn apply_state(&mut self, s: PortableState) -> Result<()> {
        self.set_lr(s.lr)?;
        let stream = self.dev.stream().clone();
        let n = self.plan.n;
        let mut c = self.work.ctl(&stream)?;
        c.step = s.step;
        c.skipped = s.skipped;
        c.base_steps = s.base_steps;
        c.mask_updates = s.mask_updates;
        c.skip = 0;
        for (i, b) in s.base_bufs.iter().enumerate() {
            let buf = self.state[i].as_mut().ok_or_else(|| {
                Error::Core(CoreError::Protocol("base-optimizer buffer count".into()))
            })?;
            stream.memcpy_htod(b.as_slice(), &mut buf.slice)?;
        }
        if let Some(m) = &mut self.fsam {
            if s.fsam_m.is_empty() {
                c.fsam_init = 0;
            } else {
                let start = c.fsam_cur as usize * n;
                stream.memcpy_htod(
                    s.fsam_m.as_slice(),
                    &mut m.slice.slice_mut(start..start + n),
                )?;
                c.fsam_init = 1;
            }
        }
        self.seg_pick = None;
        if let Some(masks) = &mut self.masks {
            let words = self.plan.words;
            let start = c.mask_cur as usize * words;
            let mut slot = masks.slice.slice_mut(start..start + words);
            match &s.mask {
                Some(m) => stream.memcpy_htod(m.words(), &mut slot)?,
                None => stream.memset_zeros(&mut slot)?,
            }
        }
        if let (Some(g), Rule::LookSam(l)) = (&mut self.look_gv, &self.rule) {
            if s.look_gv.is_empty() {
                stream.memset_zeros(&mut g.slice)?;
            } else {
                stream.memcpy_htod(s.look_gv.as_slice(), &mut g.slice)?;
            }
            if l.per_tensor {
                let seg_gv = &mut self.work.seg_gv.slice;
                if s.look_gv_sq.is_empty() {
                    stream.memset_zeros(seg_gv)?;
                } else {
                    stream.memcpy_htod(s.look_gv_sq.as_slice(), seg_gv)?;
                }
                c.gv_sq = 0.0;
            } else {
                c.gv_sq = s.look_gv_sq.first().copied().unwrap_or(0.0);
            }
        }
        if let Some(g) = &mut self.og_prev {
            // OG-SAM's g2_prev: present from its first completed step on.
            if s.og_prev.is_empty() {
                stream.memset_zeros(&mut g.slice)?;
            } else {
                stream.memcpy_htod(s.og_prev.as_slice(), &mut g.slice)?;
            }
            self.og_kept = !s.og_prev.is_empty();
        }
        stream.memcpy_htod(std::slice::from_ref(&c), &mut self.work.ctl.slice)?;
        // The host copies are dropped on return.
        stream.synchronize()?;
        self.known = c;
        self.status_fresh = false;
        Ok(())
    }
}
