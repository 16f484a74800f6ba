//! Where the CUDA pieces come from: NVRTC (`libnvrtc.so*` and its builtins) and the CUDA headers
//! the kernels include (`cuda_fp16.h`, `cuda_bf16.h`).
//!
//! Nothing here needs a GPU. The search order, first hit wins:
//!
//! 1. `SAMKIT_NVRTC_LIB` (a `libnvrtc.so*` file) and `SAMKIT_CUDA_INCLUDE` (a directory), each on
//!    its own;
//! 2. `SAMKIT_CUDA_ROOT`: a directory with `lib/` (or `lib64/`) and `include/`, such as the
//!    `site-packages/nvidia/cu13` folder of the pip wheels `nvidia-cuda-nvrtc` and
//!    `nvidia-cuda-runtime`, or a CUDA toolkit;
//! 3. `CUDA_PATH`, `CUDA_HOME`, `/usr/local/cuda`;
//! 4. the Python `nvidia` packages: the active virtual environment (`VIRTUAL_ENV`), the venv
//!    that `scripts/install-nvrtc.sh` creates (`$SAMKIT_NVRTC_VENV`, default
//!    `~/.cache/samkit/nvrtc-venv`), then the `sys.path` of `python3`.
//!
//! cudarc opens NVRTC by its file name (`libnvrtc.so.13`, ...) through the dynamic loader, which
//! reads `LD_LIBRARY_PATH` only when the process starts. [`ensure_nvrtc`] therefore loads the
//! library it found by its full path first (and the `libnvrtc-builtins` beside it, which NVRTC
//! itself opens by name): the loader then resolves cudarc's request by the library's soname to
//! the copy already in the process, and no library path has to be set at all.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The locations found by the search (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CudaPaths {
    /// `libnvrtc.so*` to load.
    pub nvrtc: Option<PathBuf>,
    /// The directory with `cuda_fp16.h` and `cuda_bf16.h`.
    pub include: Option<PathBuf>,
    /// Where each was found, for messages.
    pub origin: String,
}

const NVRTC_NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn nvrtc_in(dir: &Path) -> Option<PathBuf> {
    NVRTC_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn has_headers(dir: &Path) -> bool {
    dir.join("cuda_fp16.h").is_file() && dir.join("cuda_bf16.h").is_file()
}

/// A CUDA root: `lib`/`lib64`/`lib/x64` with NVRTC, `include` with the headers.
fn root_paths(root: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let lib = ["lib", "lib64", "lib/x64", "targets/x86_64-linux/lib"]
        .iter()
        .find_map(|d| nvrtc_in(&root.join(d)));
    let inc = ["include", "targets/x86_64-linux/include"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| has_headers(d));
    (lib, inc)
}

/// The `nvidia` folders of the pip wheels under one `site-packages`: CUDA 13 wheels install into
/// `nvidia/cu13/{lib,include}`, CUDA 12 wheels into `nvidia/cuda_nvrtc/lib` and
/// `nvidia/cuda_runtime/include`.
fn wheel_paths(site: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let nv = site.join("nvidia");
    let (lib, inc) = root_paths(&nv.join("cu13"));
    if lib.is_some() && inc.is_some() {
        return (lib, inc);
    }
    let lib12 = nvrtc_in(&nv.join("cuda_nvrtc/lib"));
    let inc12 = Some(nv.join("cuda_runtime/include")).filter(|d| has_headers(d));
    (lib.or(lib12), inc.or(inc12))
}

fn site_packages_of_venv(venv: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for lib in ["lib", "lib64"] {
        if let Ok(rd) = std::fs::read_dir(venv.join(lib)) {
            let mut v: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path().join("site-packages"))
                .filter(|p| p.is_dir())
                .collect();
            v.sort();
            out.extend(v);
        }
    }
    out
}

/// The default venv of `scripts/install-nvrtc.sh`.
pub fn default_venv() -> Option<PathBuf> {
    env_path("SAMKIT_NVRTC_VENV")
        .or_else(|| env_path("HOME").map(|h| h.join(".cache/samkit/nvrtc-venv")))
}

fn python_sys_path() -> Vec<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; print('\\n'.join(p for p in sys.path if p))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect(),
        _ => Vec::new(),
    }
}

fn note(p: &mut CudaPaths, what: &str, from: &str) {
    if !p.origin.is_empty() {
        p.origin.push_str(", ");
    }
    p.origin.push_str(&format!("{what} from {from}"));
}

fn search_sites(p: &mut CudaPaths, sites: &[(PathBuf, String)]) {
    for (site, from) in sites {
        if p.nvrtc.is_some() && p.include.is_some() {
            return;
        }
        let (l, inc) = wheel_paths(site);
        if p.nvrtc.is_none() {
            if let Some(l) = l {
                p.nvrtc = Some(l);
                note(p, "nvrtc", &format!("{from} ({})", site.display()));
            }
        }
        if p.include.is_none() {
            if let Some(inc) = inc {
                p.include = Some(inc);
                note(p, "headers", &format!("{from} ({})", site.display()));
            }
        }
    }
}

/// Runs the search of the module documentation (no caching; see [`cuda_paths`]).
pub fn search() -> CudaPaths {
    let mut p = CudaPaths::default();
    if let Some(f) = env_path("SAMKIT_NVRTC_LIB").filter(|f| f.is_file()) {
        p.nvrtc = Some(f);
        note(&mut p, "nvrtc", "SAMKIT_NVRTC_LIB");
    }
    if let Some(d) = env_path("SAMKIT_CUDA_INCLUDE").filter(|d| has_headers(d)) {
        p.include = Some(d);
        note(&mut p, "headers", "SAMKIT_CUDA_INCLUDE");
    }
    let mut roots: Vec<(PathBuf, String)> = Vec::new();
    for var in ["SAMKIT_CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(r) = env_path(var) {
            roots.push((r, var.to_string()));
        }
    }
    roots.push(("/usr/local/cuda".into(), "/usr/local/cuda".into()));
    for (root, from) in &roots {
        if p.nvrtc.is_some() && p.include.is_some() {
            break;
        }
        // A root may also be a site-packages folder or a folder holding `nvidia/`.
        let (l, i) = root_paths(root);
        let (wl, wi) = wheel_paths(root);
        if p.nvrtc.is_none() {
            if let Some(l) = l.or(wl) {
                p.nvrtc = Some(l);
                note(&mut p, "nvrtc", from);
            }
        }
        if p.include.is_none() {
            if let Some(i) = i.or(wi) {
                p.include = Some(i);
                note(&mut p, "headers", from);
            }
        }
    }
    if p.nvrtc.is_some() && p.include.is_some() {
        return p;
    }
    let mut sites: Vec<(PathBuf, String)> = Vec::new();
    for venv in [env_path("VIRTUAL_ENV"), default_venv()]
        .into_iter()
        .flatten()
    {
        for s in site_packages_of_venv(&venv) {
            sites.push((s, format!("venv {}", venv.display())));
        }
    }
    search_sites(&mut p, &sites);
    if p.nvrtc.is_none() || p.include.is_none() {
        let py: Vec<(PathBuf, String)> = python_sys_path()
            .into_iter()
            .map(|s| (s, "python3 sys.path".to_string()))
            .collect();
        search_sites(&mut p, &py);
    }
    p
}

/// The search of the module documentation, run once per process.
pub fn cuda_paths() -> &'static CudaPaths {
    static PATHS: OnceLock<CudaPaths> = OnceLock::new();
    PATHS.get_or_init(search)
}

/// Loads NVRTC by its full path (see the module documentation), once per process, and checks
/// that cudarc can use it. Errors say what was searched.
pub fn ensure_nvrtc() -> Result<&'static CudaPaths> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let paths = cuda_paths();
    let r = LOADED.get_or_init(|| {
        if let Some(lib) = &paths.nvrtc {
            let dir = lib.parent().unwrap_or(Path::new("."));
            // The builtins first: NVRTC opens them by name when it compiles.
            if let Ok(rd) = std::fs::read_dir(dir) {
                let mut builtins: Vec<PathBuf> = rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
                    })
                    .collect();
                builtins.sort();
                for b in builtins {
                    // SAFETY: loading a shared library runs its initialisers; NVRTC's builtins
                    // have none beyond the C runtime's. The handle is leaked on purpose so the
                    // library stays loaded for the life of the process.
                    if let Ok(l) = unsafe { libloading::Library::new(&b) } {
                        std::mem::forget(l);
                    }
                }
            }
            // SAFETY: as above, for libnvrtc itself.
            match unsafe { libloading::Library::new(lib) } {
                Ok(l) => std::mem::forget(l),
                Err(e) => return Err(format!("cannot load {}: {e}", lib.display())),
            }
        }
        if culib_present("nvrtc") {
            Ok(())
        } else {
            Err(format!(
                "NVRTC not found (searched SAMKIT_NVRTC_LIB, SAMKIT_CUDA_ROOT, CUDA_PATH, \
                 CUDA_HOME, /usr/local/cuda, VIRTUAL_ENV, {}, python3's sys.path and the \
                 loader path); run scripts/install-nvrtc.sh",
                default_venv()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.cache/samkit/nvrtc-venv".into())
            ))
        }
    });
    match r {
        Ok(()) => Ok(paths),
        Err(e) => Err(Error::NoNvrtc(e.clone())),
    }
}

/// The include directory for the kernels, or an error naming the search.
pub fn include_dir() -> Result<&'static Path> {
    cuda_paths().include.as_deref().ok_or_else(|| {
        Error::NoNvrtc(
            "CUDA headers (cuda_fp16.h, cuda_bf16.h) not found: set SAMKIT_CUDA_INCLUDE or \
             SAMKIT_CUDA_ROOT, or run scripts/install-nvrtc.sh"
                .into(),
        )
    })
}

/// The CUDA major version the workspace's cudarc is built for (its `cuda-13000` feature): the
/// first versioned library names tried are this major's.
const CUDA_MAJOR: u32 = 13;

/// The file names cudarc's dynamic loading tries for the CUDA library `name` (`"cuda"`,
/// `"nvrtc"`, `"cublas"`, `"cudnn"`, ...), in its order: `lib<name>.so`, the Windows
/// `<name>64_<version>.dll` forms, then `lib<name>.so.<major>` down to `.so.1`.
fn culib_names(name: &str) -> Vec<String> {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let bits = usize::BITS;
    let m = CUDA_MAJOR;
    let mut names = vec![
        format!("{DLL_PREFIX}{name}{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}{name}{bits}{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}{name}{bits}_{m}{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}{name}{bits}_{m}0{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}{name}{bits}_{m}0_0{DLL_SUFFIX}"),
    ];
    names.extend(
        [m, 12, 11, 10, 9, 1]
            .iter()
            .map(|v| format!("{DLL_PREFIX}{name}{DLL_SUFFIX}.{v}")),
    );
    names
}

/// Opens the CUDA library `name` (`"cuda"`, `"nvrtc"`, `"cublas"`, `"cudnn"`, ...) by the file
/// names cudarc uses, through the dynamic loader, or `None` when none opens.
///
/// cudarc's own probes (`sys::is_culib_present`, `sys::culib`) exist only when cudarc loads the
/// libraries at run time; the workspace builds cudarc with `fallback-dynamic-loading`, which
/// turns into linking at build time when another crate (candle's `cuda` feature) asks for it, and
/// then those functions are gone. This probe works in both modes: with linking the library is
/// already in the process and `dlopen` of its name returns it. A library loaded earlier by its
/// full path (the NVRTC and cuDNN search, the emulator's fake `libcuda.so.1`) is found by its
/// soname the same way.
pub fn open_culib(name: &str) -> Option<libloading::Library> {
    culib_names(name).into_iter().find_map(|n| {
        // SAFETY: loading a shared library runs its initialisers; NVIDIA's libraries (and the
        // emulator's) have none beyond their runtimes'. No symbol is called here.
        unsafe { libloading::Library::new(n) }.ok()
    })
}

/// Whether the CUDA library `name` can be opened (see [`open_culib`]); nothing in it is called.
pub fn culib_present(name: &str) -> bool {
    open_culib(name).is_some()
}
