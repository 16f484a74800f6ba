//! Writing files so that a reader never sees half of one, and one writer per output folder.
//!
//! [`write_atomic`] is the one way samkit's trainer and CLI write a file: the bytes go to a
//! temporary file beside the destination under a name no other writer uses (process id and a
//! per-process counter), are synced to disk, and the temporary file is renamed over the
//! destination; on any failure the temporary file is removed. [`OutLock`] refuses a second
//! writer on the same output folder.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, TrainError};

/// Distinguishes the temporary names of one process's concurrent writes.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name beside `path` that no other write (of this or another process) uses:
/// `.{name}.{tag}-{pid}-{n}`.
pub fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        TrainError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent(path).join(format!(
        ".{}.{tag}-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// The folder holding `path` (`.` for a bare name).
pub fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Syncs a folder so that the renames inside it survive a power loss (best effort: some
/// file systems refuse to open or sync a folder, which loses nothing a crash would keep).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: a uniquely named temporary file beside it, synced,
/// then renamed over it. On failure the temporary file is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp")?;
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| TrainError::io(&tmp, e))?;
        f.sync_all().map_err(|e| TrainError::io(&tmp, e))?;
        drop(f);
        rename(&tmp, path)
    })();
    match result {
        Ok(()) => {
            sync_dir(&parent(path));
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `fs::rename`, failing where a test injected a failure ([`fault`]).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    if fault::take() {
        return Err(TrainError::io(
            to,
            std::io::Error::other("injected rename failure"),
        ));
    }
    fs::rename(from, to).map_err(|e| TrainError::io(to, e))
}

/// Fault injection for tests of what a failed rename leaves behind. It is per thread, so a
/// test that arms it affects only the saves it runs itself.
#[doc(hidden)]
pub mod fault {
    use std::cell::Cell;

    thread_local! {
        /// Renames to let through before one fails (`None`: never fail).
        static FAIL_AFTER: Cell<Option<u32>> = const { Cell::new(None) };
    }

    /// Makes the rename after the next `n` renames of this thread fail (once).
    pub fn fail_rename_after(n: u32) {
        FAIL_AFTER.with(|c| c.set(Some(n)));
    }

    /// Disarms an injected failure that has not fired.
    pub fn clear() {
        FAIL_AFTER.with(|c| c.set(None));
    }

    /// Whether this rename fails.
    pub(super) fn take() -> bool {
        FAIL_AFTER.with(|c| match c.get() {
            Some(0) => {
                c.set(None);
                true
            }
            Some(n) => {
                c.set(Some(n - 1));
                false
            }
            None => false,
        })
    }
}

/// The lock file of an output folder.
pub const LOCK_FILE: &str = ".samkit.lock";

/// An output folder held by this process: `.samkit.lock` created exclusively, holding the
/// process id, removed when dropped. A lock left by a process that no longer runs (killed)
/// is taken over; one held by a running process is refused as bad input.
#[derive(Debug)]
pub struct OutLock {
    path: PathBuf,
}

impl OutLock {
    /// Takes the lock of `dir` (which must exist).
    pub fn acquire(dir: &Path) -> Result<OutLock> {
        let path = dir.join(LOCK_FILE);
        // Two attempts: the second after removing a stale lock.
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(std::process::id().to_string().as_bytes())
                        .map_err(|e| TrainError::io(&path, e))?;
                    return Ok(OutLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match holder {
                        Some(pid) if pid != std::process::id() && process_runs(pid) => {
                            return Err(TrainError::invalid(
                                "out",
                                format!(
                                    "{} is in use by another samkit run (process {pid}, lock {}); \
                                     use another --out",
                                    dir.display(),
                                    path.display()
                                ),
                            ));
                        }
                        // Stale (its process is gone) or unreadable: take it over.
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(TrainError::io(&path, e)),
            }
        }
        Err(TrainError::invalid(
            "out",
            format!("cannot take the lock {}", path.display()),
        ))
    }
}

impl Drop for OutLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether process `pid` runs. Where `/proc` is not there to ask, every lock counts as held.
fn process_runs(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if proc.join("self").exists() {
        proc.join(pid.to_string()).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("samkit-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("a temp folder");
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .expect("readable")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_rename_leaves_the_old_file_and_no_temporary() {
        let d = tmp("atomic");
        let p = d.join("a.json");
        write_atomic(&p, b"old").expect("first write");
        fault::fail_rename_after(0);
        let e = write_atomic(&p, b"new").expect_err("the injected failure");
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(fs::read(&p).expect("still there"), b"old");
        assert_eq!(entries(&d), vec!["a.json".to_string()]);
        write_atomic(&p, b"new").expect("a later write");
        assert_eq!(fs::read(&p).expect("written"), b"new");
        fs::remove_dir_all(&d).ok();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_second_writer_is_refused_and_a_stale_lock_taken_over() {
        let d = tmp("lock");
        let lock = OutLock::acquire(&d).expect("first");
        // Another running process holds it: pid 1 always runs where /proc exists.
        fs::write(d.join(LOCK_FILE), "1").expect("write");
        let e = OutLock::acquire(&d).expect_err("held by a running process");
        assert!(e.is_bad_input() && e.to_string().contains("--out"), "{e}");
        drop(lock);
        assert!(!d.join(LOCK_FILE).exists());
        // A process id no process has (above Linux's pid_max limit of 2^22).
        fs::write(d.join(LOCK_FILE), "4294967295").expect("write");
        let again = OutLock::acquire(&d).expect("a stale lock is taken over");
        drop(again);
        fs::remove_dir_all(&d).ok();
    }
}
