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

/// Writes `path` atomically through a writer that needs a path of its own (an image encoder
/// choosing its format by the extension, a streaming encoder): `write` fills a uniquely named
/// temporary file beside `path` that keeps its extension (`.{stem}.tmp-{pid}-{n}.{ext}`),
/// which is then synced and renamed over `path`. On any failure, `write`'s included, the
/// temporary file is removed and `path` is unchanged. `write`'s own error type `E` only needs
/// to take samkit-train's I/O errors.
pub fn write_atomic_with<E: From<TrainError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let tmp = sibling_keeping_extension(path)?;
    let result = write(&tmp).and_then(|()| {
        let f = fs::File::open(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        f.sync_all().map_err(|e| TrainError::io(&tmp, e))?;
        drop(f);
        Ok(rename(&tmp, path)?)
    });
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

/// [`sibling`], with `path`'s extension kept last.
fn sibling_keeping_extension(path: &Path) -> Result<PathBuf> {
    let plain = sibling(path, "tmp")?;
    Ok(match path.extension() {
        Some(ext) => {
            let mut name = plain.into_os_string();
            name.push(".");
            name.push(ext);
            PathBuf::from(name)
        }
        None => plain,
    })
}

/// Checks before any work that files can be written in `dir` (created if missing): a bad
/// output folder fails at once, not after minutes of computing. The probe file is removed.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(TrainError::io(
            dir,
            std::io::Error::other("not a folder (a file is in the way of the output folder)"),
        ));
    }
    fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let probe = sibling(&dir.join("write-test"), "probe")?;
    fs::write(&probe, b"").map_err(|e| TrainError::io(&probe, e))?;
    fs::remove_file(&probe).map_err(|e| TrainError::io(&probe, e))
}

/// Checks that none of `names` in `dir` is taken by a folder (a write would fail at the end).
pub fn check_output_names(dir: &Path, names: &[&str]) -> Result<()> {
    for n in names {
        let p = dir.join(n);
        if p.is_dir() {
            return Err(TrainError::io(
                &p,
                std::io::Error::other("a folder is in the way of this output file"),
            ));
        }
    }
    Ok(())
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
                    // The folder is ours: what a killed writer left half-written goes.
                    remove_stale_temporaries(dir);
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

/// The process id in a temporary name of [`sibling`] (`.{name}.{tag}-{pid}-{n}`, an extension
/// possibly after it), if `name` is one.
fn temporary_owner(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let at = name.rfind(".tmp-").or_else(|| name.rfind(".probe-"))?;
    let rest = &name[at + 1..];
    let rest = &rest[rest.find('-')? + 1..];
    let (pid, n) = rest.split_once('-')?;
    let n = n.split('.').next()?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes from `dir` the temporary files of writers that no longer run: a SIGKILL between a
/// temporary file's creation and its rename leaves it behind, and nothing else would remove
/// it. Files of running processes (another writer's, this one's) are kept.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temporary_owner(&name) else {
            continue;
        };
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && pid != std::process::id() && !process_runs(pid) {
            let _ = fs::remove_file(e.path());
        }
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

    #[test]
    fn a_writer_with_a_path_gets_a_temporary_with_the_extension_and_leaves_none() {
        let d = tmp("with");
        let p = d.join("plot.png");
        let mut seen = PathBuf::new();
        write_atomic_with::<TrainError>(&p, |t| {
            seen = t.to_path_buf();
            fs::write(t, b"png").map_err(|e| TrainError::io(t, e))
        })
        .expect("written");
        assert_eq!(seen.extension().and_then(|e| e.to_str()), Some("png"));
        assert_ne!(seen, p);
        assert_eq!(fs::read(&p).expect("there"), b"png");
        // The writer fails after writing half: the old file stays, no temporary is left.
        let e = write_atomic_with::<TrainError>(&p, |t| {
            fs::write(t, b"half").map_err(|e| TrainError::io(t, e))?;
            Err(TrainError::io(t, std::io::Error::other("encoder failed")))
        })
        .expect_err("the writer's failure");
        assert!(e.to_string().contains("encoder failed"), "{e}");
        assert_eq!(fs::read(&p).expect("still there"), b"png");
        // The rename fails.
        fault::fail_rename_after(0);
        write_atomic_with::<TrainError>(&p, |t| {
            fs::write(t, b"new").map_err(|e| TrainError::io(t, e))
        })
        .expect_err("the injected failure");
        assert_eq!(entries(&d), vec!["plot.png".to_string()]);
        fs::remove_dir_all(&d).ok();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_killed_writers_temporaries_go_when_the_folder_is_locked_again() {
        let d = tmp("stale");
        // Above Linux's pid_max (2^22): no process has it.
        let dead = 4_000_000_000u32;
        for n in [
            format!(".summary.json.tmp-{dead}-3"),
            format!(".plot.png.tmp-{dead}-0.png"),
        ] {
            fs::write(d.join(n), b"half").expect("write");
        }
        // Process 1 runs; a file that only looks alike; a folder.
        let kept = [
            ".summary.json.tmp-1-0".to_string(),
            "notes.tmp-4000000000-1".to_string(),
            ".x.tmp-4000000000-z".to_string(),
        ];
        for n in &kept {
            fs::write(d.join(n), b"x").expect("write");
        }
        assert_eq!(
            temporary_owner(&format!(".a.tmp-{dead}-12.png")),
            Some(dead)
        );
        assert_eq!(temporary_owner(".a.json"), None);
        let lock = OutLock::acquire(&d).expect("the lock");
        drop(lock);
        let mut want = kept.to_vec();
        want.sort();
        assert_eq!(entries(&d), want);
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn an_output_folder_is_checked_before_the_work() {
        let d = tmp("check");
        check_writable_dir(&d.join("new/deeper")).expect("created and writable");
        assert!(d.join("new/deeper").is_dir());
        assert!(
            fs::read_dir(d.join("new/deeper"))
                .expect("there")
                .next()
                .is_none(),
            "probe removed"
        );
        fs::write(d.join("file"), b"x").expect("write");
        let e = check_writable_dir(&d.join("file")).expect_err("a file");
        assert!(e.to_string().contains("file"), "{e}");
        fs::create_dir_all(d.join("out/a.csv")).expect("mkdir");
        let e = check_output_names(&d.join("out"), &["a.png", "a.csv"]).expect_err("taken");
        assert!(e.to_string().contains("a.csv"), "{e}");
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
