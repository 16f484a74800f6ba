//! Optimizer state to and from safetensors: momenta, FriendlySAM's `m`, the sparse mask,
//! LookSAM's `g_v`, step counters. A resumed run continues bit-identically.
//!
//! The file holds one [`PortableState`]: the state in host memory, independent of where the
//! optimizer keeps it, so that a state saved by [`Optimizer`] loads into the GPU optimizer of
//! samkit-cuda and the other way round.
//!
//! Format: safetensors; the metadata key `samkit` holds a JSON object (format, version, layout
//! fingerprint, rule, base optimizer, lr, counters, the mask's length, LookSAM's `‖g_v‖²`);
//! the tensors are `base.<torch name>` (f32, one per buffer of the base optimizer),
//! `friendlysam.m` (f32), `ssam.mask` (u8: the bitset's u64 words, little-endian) and
//! `looksam.gv` (f32) and `ogsam.g2_prev` (f32), each present only when the optimizer has it. The metadata key
//! [`checksum::KEY`] holds a checksum of every tensor, verified on load (files written before
//! checksums existed have no such key and load unverified).
use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::base::BaseOptimizer;
use crate::bitset::Bitset;
use crate::error::{Error, Result};
use crate::layout::Layout;
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

/// The state of an optimizer between steps, in host memory: what a state file holds.
///
/// Empty vectors stand for what the optimizer does not have (yet): `fsam_m` before
/// FriendlySAM's first completed step, `look_gv` and `look_gv_sq` before LookSAM's first.
#[derive(Clone, Debug, PartialEq)]
pub struct PortableState {
    /// [`Layout::fingerprint`] of the layout the state belongs to.
    pub layout: String,
    /// The rule, with its hyperparameters as they are now (a ρ schedule changes them).
    pub rule: Rule,
    pub base: BaseOptimizer,
    /// The learning rate of the next step.
    pub lr: f32,
    /// Completed steps.
    pub step: u64,
    pub skipped: u64,
    /// Base-optimizer updates applied (torch's `state['step']`).
    pub base_steps: u64,
    pub mask_updates: u64,
    /// The base optimizer's buffers, in the order of [`BaseOptimizer::state_buffers`].
    pub base_bufs: Vec<Vec<f32>>,
    /// FriendlySAM's `m`.
    pub fsam_m: Vec<f32>,
    /// Sparse SAM's committed mask (SSAM-F: none before its first completed step).
    pub mask: Option<Bitset>,
    /// LookSAM's `g_v`.
    pub look_gv: Vec<f32>,
    /// LookSAM's `‖g_v‖²`: one entry, or one per segment (per-tensor LookSAM).
    pub look_gv_sq: Vec<f64>,
    /// OG-SAM's `g2_prev` (empty before its first completed step).
    pub og_prev: Vec<f32>,
}

/// The decoded metadata of a state file, before the tensors are read.
struct Header {
    meta: Meta,
    /// The value under [`checksum::KEY`], when the file has one.
    checksums: Option<String>,
}

impl Header {
    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
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
        let checksums = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get(checksum::KEY))
            .cloned();
        Ok(Header { meta, checksums })
    }

    /// The layout, rule and base optimizer of the file against those of an optimizer.
    fn check(&self, layout: &Layout, rule: &Rule, base: &BaseOptimizer, path: &Path) -> Result<()> {
        check_owner(
            &self.meta.layout,
            &self.meta.rule,
            &self.meta.base,
            layout,
            rule,
            base,
            path,
        )
    }

    fn into_state(self, bytes: &[u8], path: &Path) -> Result<PortableState> {
        let meta = self.meta;
        let st = SafeTensors::deserialize(bytes).map_err(|e| state_err(path, e.to_string()))?;
        if let Some(sums) = &self.checksums {
            checksum::verify(&st, sums).map_err(|e| state_err(path, e))?;
        }
        let read_f32 = |name: &str| -> Result<Option<Vec<f32>>> {
            let t = match st.tensor(name) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            };
            if t.dtype() != Dtype::F32 || t.data().len() % 4 != 0 {
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
        let mut base_bufs = Vec::new();
        for name in meta.base.state_buffers() {
            base_bufs.push(
                read_f32(&format!("base.{name}"))?
                    .ok_or_else(|| state_err(path, format!("missing tensor base.{name}")))?,
            );
        }
        let fsam_m = read_f32("friendlysam.m")?.unwrap_or_default();
        let look_gv = read_f32("looksam.gv")?.unwrap_or_default();
        let og_prev = read_f32("ogsam.g2_prev")?.unwrap_or_default();
        let mask = match meta.mask_len {
            Some(len) => {
                let t = st
                    .tensor("ssam.mask")
                    .map_err(|_| state_err(path, "missing tensor ssam.mask"))?;
                Some(
                    Bitset::from_bytes(len, t.data())
                        .filter(|_| t.dtype() == Dtype::U8)
                        .ok_or_else(|| state_err(path, "ssam.mask has the wrong size"))?,
                )
            }
            None => None,
        };
        Ok(PortableState {
            layout: meta.layout,
            rule: meta.rule,
            base: meta.base,
            lr: meta.lr,
            step: meta.step,
            skipped: meta.skipped,
            base_steps: meta.base_steps,
            mask_updates: meta.mask_updates,
            base_bufs,
            fsam_m,
            mask,
            look_gv,
            look_gv_sq: meta.look_gv_sq,
            og_prev,
        })
    }
}

fn check_owner(
    s_layout: &str,
    s_rule: &Rule,
    s_base: &BaseOptimizer,
    layout: &Layout,
    rule: &Rule,
    base: &BaseOptimizer,
    path: &Path,
) -> Result<()> {
    if s_layout != layout.fingerprint() {
        return Err(state_err(path, "state file for another layout"));
    }
    if s_rule != rule {
        return Err(state_err(
            path,
            format!("state of rule {s_rule:?}, this optimizer runs {rule:?}"),
        ));
    }
    if std::mem::discriminant(s_base) != std::mem::discriminant(base)
        || s_base.state_buffers() != base.state_buffers()
    {
        return Err(state_err(
            path,
            format!(
                "state of base optimizer {}, this optimizer uses {}",
                s_base.name(),
                base.name()
            ),
        ));
    }
    Ok(())
}

impl PortableState {
    /// Serialises the state into safetensors bytes (the format of [`Optimizer::state_bytes`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = Meta {
            format: FORMAT.into(),
            version: VERSION,
            layout: self.layout.clone(),
            rule: self.rule.clone(),
            base: self.base.clone(),
            lr: self.lr,
            step: self.step,
            skipped: self.skipped,
            base_steps: self.base_steps,
            mask_updates: self.mask_updates,
            mask_len: self.mask.as_ref().map(Bitset::len),
            look_gv_sq: self.look_gv_sq.clone(),
        };
        let names = self.base.state_buffers();
        if names.len() != self.base_bufs.len() {
            return Err(Error::Protocol(format!(
                "{} base-optimizer buffers for the {} of {}",
                self.base_bufs.len(),
                names.len(),
                self.base.name()
            )));
        }
        let mask_bytes = self.mask.as_ref().map(Bitset::to_bytes);
        let mut views: Vec<(String, TensorView)> = Vec::new();
        let view = |dtype, shape: Vec<usize>, data| {
            TensorView::new(dtype, shape, data).map_err(|e| Error::Protocol(e.to_string()))
        };
        for (name, b) in names.iter().zip(&self.base_bufs) {
            views.push((
                format!("base.{name}"),
                view(Dtype::F32, vec![b.len()], f32_bytes(b))?,
            ));
        }
        if !self.fsam_m.is_empty() {
            let m = &self.fsam_m;
            views.push((
                "friendlysam.m".into(),
                view(Dtype::F32, vec![m.len()], f32_bytes(m))?,
            ));
        }
        if let Some(b) = &mask_bytes {
            views.push(("ssam.mask".into(), view(Dtype::U8, vec![b.len()], b)?));
        }
        if !self.look_gv.is_empty() {
            let g = &self.look_gv;
            views.push((
                "looksam.gv".into(),
                view(Dtype::F32, vec![g.len()], f32_bytes(g))?,
            ));
        }
        if !self.og_prev.is_empty() {
            let g = &self.og_prev;
            views.push((
                "ogsam.g2_prev".into(),
                view(Dtype::F32, vec![g.len()], f32_bytes(g))?,
            ));
        }
        let json = serde_json::to_string(&meta).expect("metadata serialises");
        let info = BTreeMap::from([("samkit".to_string(), json)]);
        checksum::serialize(views, info).map_err(Error::Protocol)
    }

    /// Decodes a state file without checking it against an optimizer (see [`Self::check`]);
    /// `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        Header::parse(bytes, path)?.into_state(bytes, path)
    }

    /// Decodes a state file for an optimizer of this layout, rule and base optimizer: the
    /// errors of [`Self::from_bytes`] and of [`Self::check`], layout, rule and base optimizer
    /// checked before the tensors are read.
    pub fn read_for(
        bytes: &[u8],
        path: &Path,
        layout: &Layout,
        rule: &Rule,
        base: &BaseOptimizer,
    ) -> Result<Self> {
        let h = Header::parse(bytes, path)?;
        h.check(layout, rule, base, path)?;
        let s = h.into_state(bytes, path)?;
        s.check(layout, rule, base, path)?;
        Ok(s)
    }

    /// Whether an optimizer of this layout, rule and base optimizer can take the state: same
    /// layout (by fingerprint), same rule and hyperparameters, a base optimizer of the same kind
    /// with the same buffers, and every tensor of the layout's length and expected by the rule.
    pub fn check(
        &self,
        layout: &Layout,
        rule: &Rule,
        base: &BaseOptimizer,
        path: &Path,
    ) -> Result<()> {
        check_owner(
            &self.layout,
            &self.rule,
            &self.base,
            layout,
            rule,
            base,
            path,
        )?;
        let n = layout.len();
        let names = base.state_buffers();
        if self.base_bufs.len() != names.len() {
            return Err(state_err(
                path,
                format!(
                    "{} base-optimizer buffers, {} has {}",
                    self.base_bufs.len(),
                    base.name(),
                    names.len()
                ),
            ));
        }
        let size = |name: &str, len: usize| -> Result<()> {
            if len != n {
                return Err(state_err(
                    path,
                    format!("tensor {name} has the wrong type or size"),
                ));
            }
            Ok(())
        };
        for (name, b) in names.iter().zip(&self.base_bufs) {
            size(&format!("base.{name}"), b.len())?;
        }
        let unexpected = |what: &str| {
            state_err(
                path,
                format!("{what} in a state of rule {}", self.rule.name()),
            )
        };
        if !self.fsam_m.is_empty() {
            if !matches!(rule, Rule::FriendlySam(_)) {
                return Err(unexpected("friendlysam.m"));
            }
            size("friendlysam.m", self.fsam_m.len())?;
        }
        if !self.og_prev.is_empty() {
            if !matches!(rule, Rule::EgSam(c) if c.optimistic) {
                return Err(unexpected("ogsam.g2_prev"));
            }
            size("ogsam.g2_prev", self.og_prev.len())?;
        }
        if matches!(rule, Rule::EgSam(c) if c.optimistic)
            && self.og_prev.is_empty() != (self.step == 0)
        {
            return Err(state_err(
                path,
                format!(
                    "inconsistent state: ogsam.g2_prev {} after {} steps",
                    if self.og_prev.is_empty() {
                        "absent"
                    } else {
                        "present"
                    },
                    self.step
                ),
            ));
        }
        match (&self.mask, rule) {
            (Some(m), Rule::Ssam(_)) => {
                if m.len() != n {
                    return Err(state_err(path, "ssam.mask has the wrong size"));
                }
            }
            (Some(_), _) => return Err(unexpected("ssam.mask")),
            (None, Rule::Ssam(c)) if c.mask_from_start() => {
                return Err(state_err(path, "missing tensor ssam.mask"));
            }
            (None, _) => {}
        }
        // SSAM-F has a mask from its first mask update on, and only then.
        if let Rule::Ssam(c) = rule {
            if c.fisher_samples().is_some() && self.mask.is_some() != (self.mask_updates > 0) {
                return Err(state_err(
                    path,
                    format!(
                        "inconsistent state: SSAM-F mask {} after {} mask updates",
                        if self.mask.is_some() {
                            "present"
                        } else {
                            "absent"
                        },
                        self.mask_updates
                    ),
                ));
            }
        }
        match rule {
            Rule::LookSam(c) => {
                if !self.look_gv.is_empty() {
                    size("looksam.gv", self.look_gv.len())?;
                }
                // Step 0 is always a SAM step: g_v exists from the first completed step on.
                if self.look_gv.is_empty() != (self.step == 0) {
                    return Err(state_err(
                        path,
                        format!(
                            "inconsistent state: looksam.gv {} after {} steps",
                            if self.look_gv.is_empty() {
                                "absent"
                            } else {
                                "present"
                            },
                            self.step
                        ),
                    ));
                }
                let want = match (self.look_gv.is_empty(), c.per_tensor) {
                    (true, _) => 0,
                    (false, true) => layout.segments().len(),
                    (false, false) => 1,
                };
                if self.look_gv_sq.len() != want {
                    return Err(state_err(
                        path,
                        format!(
                            "{} values of ‖g_v‖², expected {want}",
                            self.look_gv_sq.len()
                        ),
                    ));
                }
            }
            _ => {
                if !self.look_gv.is_empty() {
                    return Err(unexpected("looksam.gv"));
                }
            }
        }
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Err(state_err(path, format!("learning rate {}", self.lr)));
        }
        Ok(())
    }
}

/// Per-tensor checksums in the metadata of the safetensors files samkit writes (model
/// checkpoints and optimizer states): safetensors itself checks the header's offsets and
/// sizes but not the data, so a flipped bit in a tensor would load silently.
///
/// The metadata key [`KEY`] holds a JSON object `{"algorithm": "fnv1a64", "tensors":
/// {"<name>": "<16 hex digits>", ...}}`: the 64-bit FNV-1a hash ([`fnv1a64`]) of each tensor's
/// little-endian bytes as stored. FNV-1a is a non-cryptographic hash that catches bit flips,
/// truncated or overwritten data; it does not defend against deliberate tampering. A file
/// without the key (written before checksums existed, or by another tool such as
/// `safetensors.torch.save_file`) loads unverified.
pub mod checksum {
    use std::collections::BTreeMap;

    use safetensors::tensor::TensorView;
    use safetensors::SafeTensors;
    use serde::{Deserialize, Serialize};

    /// The metadata key of the checksums.
    pub const KEY: &str = "samkit.checksums";
    /// The only algorithm written and read.
    pub const ALGORITHM: &str = "fnv1a64";

    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The 64-bit FNV-1a hash of `bytes` (Fowler, Noll, Vo; offset basis and prime of the
    /// reference).
    pub fn fnv1a64(bytes: &[u8]) -> u64 {
        bytes.iter().fold(FNV_OFFSET, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        })
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sums {
        algorithm: String,
        tensors: BTreeMap<String, String>,
    }

    /// The metadata value for tensors given as (name, stored bytes).
    pub fn encode<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
        let sums = Sums {
            algorithm: ALGORITHM.into(),
            tensors: tensors
                .into_iter()
                .map(|(n, b)| (n.to_string(), format!("{:016x}", fnv1a64(b))))
                .collect(),
        };
        serde_json::to_string(&sums).expect("checksums serialise")
    }

    /// Bytes of the 8-byte little-endian header length that starts a safetensors file.
    const LEN_BYTES: usize = 8;

    /// `safetensors::serialize` with `metadata` and the checksums of `tensors` under [`KEY`],
    /// the metadata keys in sorted order: safetensors writes its metadata from a `HashMap`,
    /// whose order changes from run to run, and a resumed run must write the same bytes as an
    /// uninterrupted one. The tensors' part of the header is safetensors' own (sorted by
    /// dtype, then name); the metadata is spliced in front of it and the header re-padded
    /// with spaces to a multiple of 8 bytes, as safetensors pads it.
    pub fn serialize(
        tensors: Vec<(String, TensorView<'_>)>,
        mut metadata: BTreeMap<String, String>,
    ) -> Result<Vec<u8>, String> {
        metadata.insert(
            KEY.to_string(),
            encode(tensors.iter().map(|(n, v)| (n.as_str(), v.data()))),
        );
        let plain = safetensors::serialize(tensors, None).map_err(|e| e.to_string())?;
        let n = plain
            .get(..LEN_BYTES)
            .and_then(|b| <[u8; LEN_BYTES]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or("safetensors wrote no header length")?;
        let header = plain
            .get(LEN_BYTES..LEN_BYTES + n)
            .and_then(|h| std::str::from_utf8(h).ok())
            .map(str::trim_end)
            .and_then(|h| h.strip_prefix('{'))
            .ok_or("safetensors wrote a header that is not a JSON object")?;
        let meta = serde_json::to_string(&metadata).map_err(|e| e.to_string())?;
        let sep = if header.trim_start().starts_with('}') {
            ""
        } else {
            ","
        };
        let mut head = format!("{{\"__metadata__\":{meta}{sep}{header}").into_bytes();
        head.resize(head.len().next_multiple_of(LEN_BYTES), b' ');
        let data = &plain[LEN_BYTES + n..];
        let mut out = Vec::with_capacity(LEN_BYTES + head.len() + data.len());
        out.extend((head.len() as u64).to_le_bytes());
        out.extend(head);
        out.extend_from_slice(data);
        Ok(out)
    }

    /// Checks every tensor of `st` against the metadata value `sums`: each tensor must have a
    /// checksum, each checksum a tensor, and the data must hash to it. The error names the
    /// tensor (the caller adds the file).
    pub fn verify(st: &SafeTensors, sums: &str) -> Result<(), String> {
        let sums: Sums = serde_json::from_str(sums).map_err(|e| {
            format!("unreadable checksums in the metadata ({e}): the file is corrupt")
        })?;
        if sums.algorithm != ALGORITHM {
            return Err(format!(
                "checksum algorithm `{}`, this version reads `{ALGORITHM}`",
                sums.algorithm
            ));
        }
        let mut names = st.names();
        names.sort_unstable();
        for name in &names {
            let stored = sums
                .tensors
                .get(*name)
                .ok_or_else(|| format!("tensor `{name}` has no checksum: the file is corrupt"))?;
            let data = st
                .tensor(name)
                .map_err(|e| format!("tensor `{name}`: {e}"))?
                .data();
            let actual = format!("{:016x}", fnv1a64(data));
            if *stored != actual {
                return Err(format!(
                    "tensor `{name}` fails its checksum ({ALGORITHM} {actual}, stored {stored}): \
                     the file is corrupt"
                ));
            }
        }
        if let Some(orphan) = sums.tensors.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(format!(
                "checksum for tensor `{orphan}`, which the file does not hold: the file is corrupt"
            ));
        }
        Ok(())
    }
}

/// Writes state bytes atomically: a temporary file beside `path` under a name no other write
/// uses (`.{name}.tmp-{pid}-{n}`: two runs or two saves never share it), synced, then renamed
/// over `path`; on failure the temporary file is removed and `path` is unchanged.
pub fn write_state_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Tells apart one process's concurrent state writes.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Reads a state file's bytes.
pub fn read_state_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })
}

impl Optimizer {
    /// The state between steps, in host memory (what [`Self::state_bytes`] serialises).
    pub fn portable_state(&self) -> Result<PortableState> {
        self.check_idle_for_save()?;
        if self.fisher_pending() {
            return Err(Error::Protocol(
                "save between set_fisher and the step that uses it is not supported".into(),
            ));
        }
        let st = &self.st;
        let nbuf = self.base().state_buffers().len();
        Ok(PortableState {
            layout: self.layout().fingerprint(),
            rule: self.rule().clone(),
            base: self.base().clone(),
            lr: self.lr(),
            step: st.step,
            skipped: st.skipped,
            base_steps: st.base_steps,
            mask_updates: st.mask_updates,
            base_bufs: st.base_bufs[..nbuf].to_vec(),
            fsam_m: st.fsam_m.clone(),
            mask: st.mask.clone(),
            look_gv: st.look_gv.clone(),
            look_gv_sq: st.look_gv_sq.clone(),
            og_prev: st.og_prev.clone(),
        })
    }

    /// Serialises the state between steps into safetensors bytes.
    pub fn state_bytes(&self) -> Result<Vec<u8>> {
        self.portable_state()?.to_bytes()
    }

    /// Writes the state atomically: a temporary file beside `path`, then a rename.
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.state_bytes()?;
        write_state_file(path, &bytes)
    }

    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = read_state_file(path)?;
        self.load_state_bytes(&bytes, path)
    }

    /// Restores a state saved by an optimizer with the same layout, rule and base optimizer.
    pub fn load_state_bytes(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        self.check_idle_for_load()?;
        let s = PortableState::read_for(bytes, path, self.layout(), self.rule(), self.base())?;
        self.apply_state(s)
    }

    /// Restores a state in host memory (checked as a file's; `path` names it in errors).
    pub fn load_portable_state(&mut self, s: PortableState, path: &Path) -> Result<()> {
        self.check_idle_for_load()?;
        s.check(self.layout(), self.rule(), self.base(), path)?;
        self.apply_state(s)
    }

    /// Takes a checked state.
    fn apply_state(&mut self, s: PortableState) -> Result<()> {
        let mut new = self.st.clone();
        for (i, b) in s.base_bufs.into_iter().enumerate() {
            new.base_bufs[i] = b;
        }
        new.fsam_m = s.fsam_m;
        new.look_gv = s.look_gv;
        new.mask = s.mask;
        new.step = s.step;
        new.skipped = s.skipped;
        new.base_steps = s.base_steps;
        new.mask_updates = s.mask_updates;
        new.look_gv_sq = s.look_gv_sq;
        new.og_prev = s.og_prev;
        self.set_lr(s.lr)?;
        self.st = new;
        Ok(())
    }

    fn check_idle_for_load(&self) -> Result<()> {
        if self.is_perturbed() {
            return Err(Error::Protocol(
                "load while the weights are perturbed".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{FriendlySam, LookSam, Sam, Ssam};

    fn layout() -> Layout {
        let mut l = Layout::new();
        l.push("a.weight", &[3, 5]).unwrap();
        l.push("a.bias", &[3]).unwrap();
        l.push("b.weight", &[70]).unwrap();
        l
    }

    fn grad(w: &[f32], t: usize) -> Vec<f32> {
        w.iter()
            .enumerate()
            .map(|(i, &x)| 0.7 * x - ((i * 7 + t * 3) % 11) as f32 * 0.05 + 0.2)
            .collect()
    }

    /// `steps` steps of the explicit form; SSAM-F gets its Fisher when it asks.
    fn run(rule: Rule, steps: usize) -> (Vec<f32>, Optimizer) {
        let l = layout();
        let mut w: Vec<f32> = (0..l.len()).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let mut opt = Optimizer::new(l, rule, BaseOptimizer::sgd(0.05, 0.9, 1e-3)).unwrap();
        for t in 0..steps {
            if opt.needs_fisher().is_some() {
                let f: Vec<f32> = grad(&w, t + 100).iter().map(|g| g * g).collect();
                opt.set_fisher(&f).unwrap();
            }
            let g = grad(&w, t);
            if opt.first_step(&mut w, &g).unwrap() == crate::FirstOutcome::Perturbed {
                let g2 = grad(&w, t + 50);
                opt.second_step(&mut w, &g2).unwrap();
            }
        }
        (w, opt)
    }

    fn rules() -> Vec<Rule> {
        vec![
            Rule::Sam(Sam::default()),
            Rule::FriendlySam(FriendlySam::default()),
            Rule::Ssam(Ssam {
                interval: 2,
                ..Ssam::fisher()
            }),
            Rule::Ssam(Ssam {
                interval: 2,
                ..Ssam::dynamic(3)
            }),
            Rule::LookSam(LookSam {
                k: 2,
                ..LookSam::default()
            }),
            Rule::LookSam(LookSam {
                k: 2,
                per_tensor: true,
                ..LookSam::default()
            }),
        ]
    }

    #[test]
    fn portable_state_round_trips_through_bytes() {
        let p = Path::new("s");
        for rule in rules() {
            for steps in [0, 3] {
                let (_, opt) = run(rule.clone(), steps);
                let s = opt.portable_state().unwrap();
                let bytes = s.to_bytes().unwrap();
                assert_eq!(bytes, opt.state_bytes().unwrap());
                let back = PortableState::from_bytes(&bytes, p).unwrap();
                assert_eq!(back, s);
                s.check(opt.layout(), opt.rule(), opt.base(), p).unwrap();
                let mut o = Optimizer::new(layout(), rule.clone(), opt.base().clone()).unwrap();
                o.load_portable_state(back, p).unwrap();
                assert_eq!(o.state_bytes().unwrap(), bytes);
                assert_eq!(o.looksam_gv(), opt.looksam_gv());
            }
        }
    }

    /// `bytes` re-serialised with the metadata `edit` makes.
    fn with_metadata(
        bytes: &[u8],
        edit: impl FnOnce(&mut std::collections::HashMap<String, String>),
    ) -> Vec<u8> {
        let (_, md) = SafeTensors::read_metadata(bytes).unwrap();
        let mut meta = md.metadata().clone().unwrap();
        edit(&mut meta);
        let st = SafeTensors::deserialize(bytes).unwrap();
        let mut tensors = st.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        safetensors::serialize(tensors, Some(meta)).unwrap()
    }

    #[test]
    fn a_flipped_bit_in_any_tensor_is_refused_by_name() {
        let p = Path::new("opt.safetensors");
        let (_, opt) = run(rules()[5].clone(), 3);
        let bytes = opt.state_bytes().unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let data_start = bytes.len() - st.tensors().iter().map(|t| t.1.data().len()).sum::<usize>();
        let (n, _) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(data_start, 8 + n);
        for (name, t) in st.tensors() {
            // The first byte of this tensor's data, by its offset in the buffer.
            let at = t.data().as_ptr() as usize - bytes.as_ptr() as usize;
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let mut o = Optimizer::new(layout(), opt.rule().clone(), opt.base().clone()).unwrap();
            match o.load_state_bytes(&bad, p) {
                Err(Error::State { path, detail }) => {
                    assert_eq!(path, "opt.safetensors");
                    assert!(
                        detail.contains(&format!("tensor `{name}` fails its checksum")),
                        "{detail}"
                    );
                }
                other => panic!("{name}: expected a checksum error, got {other:?}"),
            }
        }
        // A checksum for a tensor that is not there, or none for one that is.
        let extra = with_metadata(&bytes, |m| {
            let v = m[checksum::KEY].replace("\"base.", "\"gone.");
            m.insert(checksum::KEY.into(), v);
        });
        let e = PortableState::from_bytes(&extra, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no checksum"), "{e}");
        let garbled = with_metadata(&bytes, |m| {
            m.insert(checksum::KEY.into(), "{".into());
        });
        let e = PortableState::from_bytes(&garbled, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unreadable checksums"), "{e}");
    }

    #[test]
    fn states_written_before_checksums_still_load() {
        let p = Path::new("s");
        let (_, opt) = run(rules()[1].clone(), 3);
        let bytes = opt.state_bytes().unwrap();
        let old = with_metadata(&bytes, |m| {
            m.remove(checksum::KEY);
        });
        let back = PortableState::from_bytes(&old, p).unwrap();
        assert_eq!(back, opt.portable_state().unwrap());
    }

    #[test]
    fn checksummed_files_are_safetensors_with_sorted_metadata() {
        let data = [1f32, 2.0, 3.0];
        for tensors in [vec![], vec![("x".to_string(), 3usize)]] {
            let views: Vec<(String, TensorView)> = tensors
                .iter()
                .map(|(n, len)| {
                    let v = TensorView::new(Dtype::F32, vec![*len], f32_bytes(&data[..*len]));
                    (n.clone(), v.unwrap())
                })
                .collect();
            let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
            let bytes = checksum::serialize(views, meta).unwrap();
            let (n, md) = SafeTensors::read_metadata(&bytes).unwrap();
            assert_eq!(n % 8, 0);
            let md = md.metadata().clone().unwrap();
            assert_eq!(md["format"], "pt");
            let st = SafeTensors::deserialize(&bytes).unwrap();
            checksum::verify(&st, &md[checksum::KEY]).unwrap();
            assert_eq!(st.len(), tensors.len());
            let head = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
            assert!(head.find("\"format\"") < head.find(checksum::KEY), "{head}");
        }
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite (Landon Curt Noll).
        assert_eq!(checksum::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(checksum::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(checksum::fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn looksam_gv_is_orthogonal_to_the_clean_gradient() {
        let rule = Rule::LookSam(LookSam {
            k: 5,
            ..LookSam::default()
        });
        let (_, fresh) = run(rule.clone(), 0);
        assert!(fresh.looksam_gv().is_empty());
        // One SAM step: g_v = g_s − (⟨g_s, g⟩ / ‖g‖²)·g.
        let l = layout();
        let mut w: Vec<f32> = (0..l.len()).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let mut opt = Optimizer::new(l, rule, BaseOptimizer::sgd(0.05, 0.0, 0.0)).unwrap();
        let g = grad(&w, 0);
        opt.first_step(&mut w, &g).unwrap();
        let g2 = grad(&w, 50);
        opt.second_step(&mut w, &g2).unwrap();
        let gv = opt.looksam_gv();
        assert_eq!(gv.len(), g.len());
        let dot: f64 = gv.iter().zip(&g).map(|(&a, &b)| a as f64 * b as f64).sum();
        let norm: f64 = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let gv_norm: f64 = gv.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(gv_norm > 0.0);
        assert!(
            dot.abs() / (norm * gv_norm) < 1e-5,
            "cos {}",
            dot / (norm * gv_norm)
        );
    }

    #[track_caller]
    fn refused(s: &PortableState, opt: &Optimizer, want: &str) {
        let p = Path::new("s");
        match s.check(opt.layout(), opt.rule(), opt.base(), p) {
            Err(Error::State { detail, .. }) => {
                assert!(detail.contains(want), "`{detail}` does not say `{want}`")
            }
            other => panic!("expected a state error saying `{want}`, got {other:?}"),
        }
        // Through the bytes too, and the optimizer keeps its state.
        let mut o =
            Optimizer::new(opt.layout().clone(), opt.rule().clone(), opt.base().clone()).unwrap();
        let before = o.state_bytes().unwrap();
        let bytes = s.to_bytes().unwrap();
        assert!(o.load_state_bytes(&bytes, p).is_err());
        assert_eq!(o.state_bytes().unwrap(), before);
    }

    #[test]
    fn inconsistent_states_are_refused() {
        let (_, look) = run(rules()[5].clone(), 3);
        let good = look.portable_state().unwrap();
        let mut s = good.clone();
        s.look_gv.clear();
        s.look_gv_sq.clear();
        refused(&s, &look, "looksam.gv absent after 3 steps");
        let mut s = good.clone();
        s.look_gv_sq.pop();
        refused(&s, &look, "‖g_v‖²");
        let mut s = good.clone();
        s.look_gv.push(0.0);
        refused(&s, &look, "wrong type or size");
        let mut s = good.clone();
        s.base_bufs[0].truncate(5);
        refused(&s, &look, "wrong type or size");
        let mut s = good.clone();
        s.fsam_m = vec![0.0; look.layout().len()];
        refused(&s, &look, "friendlysam.m in a state of rule");

        let (_, f) = run(rules()[2].clone(), 3);
        let good = f.portable_state().unwrap();
        assert!(good.mask.is_some());
        let mut s = good.clone();
        s.mask = None;
        refused(&s, &f, "inconsistent state: SSAM-F mask absent");
        let mut s = good.clone();
        s.mask_updates = 0;
        refused(&s, &f, "inconsistent state: SSAM-F mask present");
        let mut s = good.clone();
        s.mask = Some(Bitset::zeros(7));
        refused(&s, &f, "ssam.mask has the wrong size");

        let (_, d) = run(rules()[3].clone(), 1);
        let mut s = d.portable_state().unwrap();
        s.mask = None;
        refused(&s, &d, "missing tensor ssam.mask");
        let (_, sam) = run(rules()[0].clone(), 1);
        let mut s = sam.portable_state().unwrap();
        s.mask = Some(Bitset::zeros(sam.layout().len()));
        refused(&s, &sam, "ssam.mask in a state of rule");
        let mut s = sam.portable_state().unwrap();
        s.look_gv = vec![0.0; sam.layout().len()];
        refused(&s, &sam, "looksam.gv in a state of rule");
    }
}
