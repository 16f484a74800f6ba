//! A checkpoint folder as one unit.
//!
//! [`Trainer::save`](crate::Trainer::save) writes the model, the optimizer state and
//! `trainer.json` into a fresh folder beside the checkpoint, then `manifest.json` last (the
//! step, the epoch, and the length and FNV-1a 64 checksum of each file), and only then
//! switches it in for the old folder with renames: the old folder is renamed aside, the new
//! one into its place, and the old one removed. A crash at any point leaves either the
//! complete old checkpoint or the complete new one, which [`recover`] puts back in place before
//! it is read. On load, [`verify`] checks every file against the manifest, so a folder whose
//! files come from different saves is refused as bad input instead of resuming a mixed state.
//! Checkpoints written before the manifest existed still load (the trainer then checks the
//! step counts of the files against each other).
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use samkit_core::state::checksum::fnv1a64;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::files;

/// The manifest's file name; written last, so that its presence means the folder is complete.
pub const MANIFEST: &str = "manifest.json";
/// The files of a checkpoint, besides the manifest.
pub const FILES: [&str; 3] = ["model.safetensors", "optimizer.safetensors", "trainer.json"];
/// The manifest format this version writes and reads.
const FORMAT: u32 = 1;

/// One file's length and checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    /// FNV-1a 64 of the file's bytes, as 16 hex digits.
    pub fnv1a64: String,
}

impl FileSum {
    fn of(bytes: &[u8]) -> FileSum {
        FileSum {
            bytes: bytes.len() as u64,
            fnv1a64: format!("{:016x}", fnv1a64(bytes)),
        }
    }
}

/// What `manifest.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The trainer's step and completed epochs when the checkpoint was written.
    pub step: u64,
    pub epoch: u32,
    pub files: BTreeMap<String, FileSum>,
}

fn bad(dir: &Path, why: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: dir.to_path_buf(),
        why: why.to_string(),
    }
}

/// The names beside `dir` that a save stages into (`new`) and moves the old folder to
/// (`old`), left behind only by a crash.
fn leftovers(dir: &Path) -> Vec<(PathBuf, bool)> {
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let (new, old) = (format!(".{name}.new-"), format!(".{name}.old-"));
    let Ok(rd) = fs::read_dir(files::parent(dir)) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, bool)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&new) {
                Some((e.path(), true))
            } else if n.starts_with(&old) {
                Some((e.path(), false))
            } else {
                None
            }
        })
        .collect();
    v.sort();
    v
}

/// Writes a checkpoint into `dir` as one unit: `write` fills a fresh staging folder (the
/// model, optimizer and `trainer.json` files), the manifest is added, and the staging folder
/// replaces `dir`. On failure `dir` is what it was before.
pub fn save(
    dir: &Path,
    step: u64,
    epoch: u32,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = files::parent(dir);
    fs::create_dir_all(&parent).map_err(|e| TrainError::io(&parent, e))?;
    // A previous crash may have left the checkpoint aside: put it back first, so that the
    // switch below keeps the newest complete one until the new one is in place.
    recover(dir)?;
    let stage = files::sibling(dir, "new")?;
    let result = (|| {
        fs::create_dir(&stage).map_err(|e| TrainError::io(&stage, e))?;
        write(&stage)?;
        // Every file the save wrote (the three of every checkpoint, and what a rule adds:
        // MESA's teacher, SAF's buffer).
        let mut sums = BTreeMap::new();
        let rd = fs::read_dir(&stage).map_err(|e| TrainError::io(&stage, e))?;
        for e in rd {
            let e = e.map_err(|e| TrainError::io(&stage, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == MANIFEST || !e.path().is_file() {
                continue;
            }
            let bytes = fs::read(e.path()).map_err(|err| TrainError::io(&e.path(), err))?;
            sums.insert(name, FileSum::of(&bytes));
        }
        let m = Manifest {
            format: FORMAT,
            step,
            epoch,
            files: sums,
        };
        let text = serde_json::to_string_pretty(&m).map_err(|source| TrainError::Json {
            path: stage.join(MANIFEST),
            source,
        })?;
        files::write_atomic(&stage.join(MANIFEST), text.as_bytes())?;
        files::sync_dir(&stage);
        switch(&stage, dir)?;
        // What an earlier crash left beside the folder (an unfinished staging folder) goes
        // now that a complete checkpoint is in place.
        recover(dir)
    })();
    if result.is_err() && stage.exists() {
        let _ = fs::remove_dir_all(&stage);
    }
    result
}

/// Puts the complete `stage` in place of `dir`.
fn switch(stage: &Path, dir: &Path) -> Result<()> {
    let parent = files::parent(dir);
    if !dir.exists() {
        files::rename(stage, dir)?;
        files::sync_dir(&parent);
        return Ok(());
    }
    let old = files::sibling(dir, "old")?;
    files::rename(dir, &old)?;
    if let Err(e) = files::rename(stage, dir) {
        // Put the old checkpoint back; if even that fails, `recover` finds it aside.
        let _ = fs::rename(&old, dir);
        return Err(e);
    }
    files::sync_dir(&parent);
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// Whether `dir` holds a complete checkpoint: every file its manifest names, with the
/// recorded lengths and checksums.
fn complete(dir: &Path) -> bool {
    read_manifest(dir).is_ok_and(|m| m.is_some_and(|m| check_files(dir, &m).is_ok()))
}

/// After a crash during a save: when `dir` is missing, the newest complete folder beside it
/// (a finished staging folder, else the previous checkpoint moved aside) is renamed into
/// place. Leftover staging and aside folders are removed once `dir` is complete.
pub fn recover(dir: &Path) -> Result<()> {
    let left = leftovers(dir);
    if left.is_empty() {
        return Ok(());
    }
    if !dir.exists() {
        // A staging folder is complete only once its manifest verifies; it is newer than
        // anything moved aside.
        let pick = left
            .iter()
            .filter(|(p, _)| complete(p))
            .max_by_key(|(p, new)| (*new, read_manifest(p).ok().flatten().map(|m| m.step)));
        let pick = pick.or_else(|| left.iter().find(|(_, new)| !new));
        if let Some((p, _)) = pick {
            files::rename(p, dir)?;
            files::sync_dir(&files::parent(dir));
        }
    }
    if dir.exists() {
        for (p, _) in leftovers(dir) {
            let _ = fs::remove_dir_all(&p);
        }
    }
    Ok(())
}

/// Reads `dir`'s manifest; `None` for a checkpoint written before manifests existed.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let p = dir.join(MANIFEST);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::read(&p, e)),
    };
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| bad(&p, format!("not a manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(
            &p,
            format!("manifest format {} (this samkit reads {FORMAT})", m.format),
        ));
    }
    Ok(Some(m))
}

fn check_files(dir: &Path, m: &Manifest) -> Result<()> {
    if let Some(f) = FILES.iter().find(|f| !m.files.contains_key(**f)) {
        return Err(bad(dir, format!("the manifest does not name {f}")));
    }
    for (f, want) in &m.files {
        // Only files of the folder itself.
        if f.is_empty() || f.contains(['/', '\\']) || f == ".." || f == "." {
            return Err(bad(
                dir,
                format!("the manifest names `{f}`, not a file of the folder"),
            ));
        }
        let p = dir.join(f);
        let bytes = fs::read(&p).map_err(|e| TrainError::read(&p, e))?;
        let got = FileSum::of(&bytes);
        if &got != want {
            return Err(bad(
                dir,
                format!(
                    "{f} is not the file this checkpoint was saved with ({} bytes, checksum {}; \
                     the manifest of step {} names {} bytes, checksum {}): the folder mixes \
                     files of different saves",
                    got.bytes, got.fnv1a64, m.step, want.bytes, want.fnv1a64
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a checkpoint folder before it is loaded: with a manifest, every file against it and
/// the manifest's step and epoch against `trainer.json`'s (`step`, `epoch`).
pub fn verify(dir: &Path, step: u64, epoch: u32) -> Result<Option<Manifest>> {
    let Some(m) = read_manifest(dir)? else {
        return Ok(None);
    };
    check_files(dir, &m)?;
    if (m.step, m.epoch) != (step, epoch) {
        return Err(bad(
            dir,
            format!(
                "trainer.json is at step {step} (epoch {epoch}), the manifest at step {} \
                 (epoch {})",
                m.step, m.epoch
            ),
        ));
    }
    Ok(Some(m))
}
