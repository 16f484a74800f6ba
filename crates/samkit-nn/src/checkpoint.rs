//! Checkpoints as safetensors files with PyTorch `state_dict` names and layouts: parameters
//! (OIHW convolution weights, `[out, in]` linear weights) under the names of the model's
//! `Layout`, and buffers (`running_mean`, `running_var` as `f32`, `num_batches_tracked` as a
//! 0-d `i64`). A file written here loads into the PyTorch model with `load_state_dict` (after
//! `safetensors.torch.load_file`), and a PyTorch `state_dict` saved with
//! `safetensors.torch.save_file` loads here.
//!
//! Every file written here also holds a checksum of each tensor's bytes in its metadata
//! (`samkit.checksums`, see [`samkit_core::state::checksum`]); loading verifies them and
//! refuses a file whose data changed (a flipped bit, an overwritten block), naming the file and
//! the tensor. Files without checksums (written before they existed, or by PyTorch) load
//! unverified.
//!
//! Loading checks every name, dtype and shape before touching the model and reports the first
//! mismatch in `state_dict` order. Saving is atomic: the file is written under a temporary
//! name in the same directory, synced, then renamed over the destination, so an interrupted
//! save leaves the previous checkpoint intact.
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use samkit_core::state::checksum;
use samkit_core::Layout;

use crate::error::{Error, Result};
use crate::model::{BufferData, BufferKind, Model, NamedBuffer};

/// One entry the model expects in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: BufferKind,
    /// Index of the parameter segment, or of the buffer.
    source: Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Param(usize),
    Buffer(usize),
}

/// The entries of a model's `state_dict`, in PyTorch's order: each module's parameters, then
/// its buffers (`bn1.weight`, `bn1.bias`, `bn1.running_mean`, ...).
pub fn state_dict_entries(
    layout: &Layout,
    buffers: &[(String, Vec<usize>, BufferKind)],
) -> Vec<Entry> {
    let mut out: Vec<Entry> = layout
        .segments()
        .iter()
        .enumerate()
        .map(|(i, s)| Entry {
            name: s.name.clone(),
            shape: s.shape.clone(),
            kind: BufferKind::F32,
            source: Source::Param(i),
        })
        .collect();
    for (j, (name, shape, kind)) in buffers.iter().enumerate() {
        let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
        let prefix = format!("{module}.");
        // After the module's last parameter or earlier buffer, else at the end.
        let at = out
            .iter()
            .rposition(|e| e.name.starts_with(&prefix))
            .map(|p| p + 1)
            .unwrap_or(out.len());
        out.insert(
            at,
            Entry {
                name: name.clone(),
                shape: shape.clone(),
                kind: *kind,
                source: Source::Buffer(j),
            },
        );
    }
    out
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn ck_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `params` (host copy, laid out as the model's layout) and the model's buffers.
pub fn save<M: Model + ?Sized>(
    path: impl AsRef<Path>,
    model: &mut M,
    params: &[f32],
) -> Result<()> {
    let path = path.as_ref();
    let layout = model.layout().clone();
    if params.len() != layout.len() {
        return Err(Error::shape(
            "parameters",
            format!("{} values, the layout has {}", params.len(), layout.len()),
        ));
    }
    let buffers = model.buffers()?;
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for s in layout.segments() {
        owned.push((
            s.name.clone(),
            Dtype::F32,
            s.shape.clone(),
            f32_bytes(&params[s.range()]),
        ));
    }
    for b in &buffers {
        let (dtype, bytes) = match &b.data {
            BufferData::F32(v) => (Dtype::F32, f32_bytes(v)),
            BufferData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        owned.push((b.name.clone(), dtype, b.shape.clone(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| ck_err(path, e.to_string()))?;
    // `format: pt` is what PyTorch tooling (transformers' loaders) expects in the metadata.
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = checksum::serialize(views, meta).map_err(|e| ck_err(path, e))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| ck_err(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    result
}

fn dtype_of(kind: BufferKind) -> Dtype {
    match kind {
        BufferKind::F32 => Dtype::F32,
        BufferKind::I64 => Dtype::I64,
    }
}

/// Reads a checkpoint into `params` (host, laid out as the model's layout) and the model's
/// buffers. Nothing is changed unless every entry matches.
pub fn load<M: Model + ?Sized>(
    path: impl AsRef<Path>,
    model: &mut M,
    params: &mut [f32],
) -> Result<()> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ck_err(path, format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| ck_err(path, format!("not a safetensors file: {e}")))?;
    if let Some(sums) = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(checksum::KEY))
    {
        checksum::verify(&st, sums).map_err(|e| ck_err(path, e))?;
    }
    let layout = model.layout().clone();
    if params.len() != layout.len() {
        return Err(Error::shape(
            "parameters",
            format!("{} values, the layout has {}", params.len(), layout.len()),
        ));
    }
    let specs = model.buffer_specs();
    let entries = state_dict_entries(&layout, &specs);
    let mut views = Vec::with_capacity(entries.len());
    for e in &entries {
        let v = st.tensor(&e.name).map_err(|_| {
            ck_err(
                path,
                format!(
                    "missing tensor `{}` (the model expects shape {:?})",
                    e.name, e.shape
                ),
            )
        })?;
        if v.dtype() != dtype_of(e.kind) {
            return Err(ck_err(
                path,
                format!(
                    "tensor `{}` has dtype {:?}, the model expects {:?}",
                    e.name,
                    v.dtype(),
                    dtype_of(e.kind)
                ),
            ));
        }
        if v.shape() != e.shape.as_slice() {
            return Err(ck_err(
                path,
                format!(
                    "tensor `{}` has shape {:?}, the model expects {:?}",
                    e.name,
                    v.shape(),
                    e.shape
                ),
            ));
        }
        views.push(v);
    }
    let known: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut extra: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|n| !known.contains(n))
        .collect();
    extra.sort_unstable();
    if let Some(n) = extra.first() {
        return Err(ck_err(
            path,
            format!("unexpected tensor `{n}`, the model has no such entry"),
        ));
    }
    let mut buffers: Vec<Option<NamedBuffer>> = vec![None; specs.len()];
    for (e, v) in entries.iter().zip(&views) {
        match e.source {
            Source::Param(i) => {
                let seg = &layout.segments()[i];
                for (dst, b) in params[seg.range()].iter_mut().zip(v.data().chunks_exact(4)) {
                    *dst = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Source::Buffer(j) => {
                let data = match e.kind {
                    BufferKind::F32 => BufferData::F32(
                        v.data()
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                    ),
                    BufferKind::I64 => BufferData::I64(
                        v.data()
                            .chunks_exact(8)
                            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                            .collect(),
                    ),
                };
                buffers[j] = Some(NamedBuffer {
                    name: e.name.clone(),
                    shape: e.shape.clone(),
                    data,
                });
            }
        }
    }
    let buffers: Vec<NamedBuffer> = buffers
        .into_iter()
        .map(|b| b.expect("every buffer read"))
        .collect();
    model.set_buffers(&buffers)
}
