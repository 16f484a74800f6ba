//! Finding cuDNN and cuBLAS at run time (nothing is linked at build time).
//!
//! cudarc opens `libcudnn.so*` and `libcublas.so*` by file name through the dynamic loader, which
//! reads `LD_LIBRARY_PATH` only when the process starts, and panics when a library is missing.
//! [`ensure`] therefore first looks for the libraries itself and loads them by their full paths
//! (the loader then resolves cudarc's requests by soname to the copies already in the process),
//! then checks that cudarc finds them and that every function the backend calls is exported, so
//! that a missing library is an error value, never a panic. The search, first hit wins:
//!
//! 1. `SAMKIT_CUDNN_LIB`, `SAMKIT_CUBLAS_LIB`: the library files;
//! 2. the dynamic loader's own path (`LD_LIBRARY_PATH`, `ldconfig`);
//! 3. the Python `nvidia` packages (`nvidia/cudnn/lib`, `nvidia/cublas/lib`, `nvidia/cu13/lib`,
//!    ...) of `VIRTUAL_ENV` and of the `sys.path` of `python3` (PyTorch's wheels bring them).
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::error::CudaError;

/// The cuDNN functions the backend calls (checked once, before the first call).
const CUDNN_SYMBOLS: &[&str] = &[
    "cudnnCreate",
    "cudnnDestroy",
    "cudnnSetStream",
    "cudnnGetVersion",
    "cudnnCreateTensorDescriptor",
    "cudnnSetTensor4dDescriptor",
    "cudnnDestroyTensorDescriptor",
    "cudnnCreateFilterDescriptor",
    "cudnnSetFilter4dDescriptor",
    "cudnnDestroyFilterDescriptor",
    "cudnnCreateConvolutionDescriptor",
    "cudnnSetConvolution2dDescriptor",
    "cudnnSetConvolutionMathType",
    "cudnnSetConvolutionGroupCount",
    "cudnnDestroyConvolutionDescriptor",
    "cudnnGetConvolutionForwardAlgorithm_v7",
    "cudnnGetConvolutionBackwardDataAlgorithm_v7",
    "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
    "cudnnFindConvolutionForwardAlgorithmEx",
    "cudnnFindConvolutionBackwardDataAlgorithmEx",
    "cudnnFindConvolutionBackwardFilterAlgorithmEx",
    "cudnnGetConvolutionForwardWorkspaceSize",
    "cudnnGetConvolutionBackwardDataWorkspaceSize",
    "cudnnGetConvolutionBackwardFilterWorkspaceSize",
    "cudnnConvolutionForward",
    "cudnnConvolutionBackwardData",
    "cudnnConvolutionBackwardFilter",
    "cudnnBatchNormalizationForwardTraining",
    "cudnnBatchNormalizationForwardInference",
    "cudnnBatchNormalizationBackward",
];

/// The cuBLAS functions the backend calls.
const CUBLAS_SYMBOLS: &[&str] = &[
    "cublasCreate_v2",
    "cublasDestroy_v2",
    "cublasSetStream_v2",
    "cublasSetMathMode",
    "cublasSgemm_v2",
];

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `site-packages` folders of the active venv and of `python3`'s `sys.path`.
fn python_sites() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(v) = env_path("VIRTUAL_ENV") {
        for lib in ["lib", "lib64"] {
            if let Ok(rd) = std::fs::read_dir(v.join(lib)) {
                for e in rd.flatten() {
                    let s = e.path().join("site-packages");
                    if s.is_dir() {
                        out.push(s);
                    }
                }
            }
        }
    }
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; print('\\n'.join(p for p in sys.path if p))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(o) = py {
        if o.status.success() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(PathBuf::from)
                    .filter(|p| p.is_dir()),
            );
        }
    }
    out
}

/// Files of `dir` whose names start with `prefix` and contain `.so`, sorted.
fn libs_in(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix) && n.contains(".so"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Loads every library of `files` that loads, retrying the others while some load (a library
/// whose dependencies are not loaded yet fails the first time). Handles are leaked on purpose:
/// the libraries stay loaded for the life of the process.
fn load_all(files: &[PathBuf]) -> usize {
    let mut left: Vec<&PathBuf> = files.iter().collect();
    let mut loaded = 0;
    loop {
        let before = left.len();
        left.retain(|f| {
            // SAFETY: loading a shared library runs its initialisers; NVIDIA's libraries have
            // none beyond their runtimes'. The handle is leaked so the library stays loaded.
            match unsafe { libloading::Library::new(f.as_path()) } {
                Ok(l) => {
                    std::mem::forget(l);
                    false
                }
                Err(_) => true,
            }
        });
        loaded += before - left.len();
        if left.is_empty() || left.len() == before {
            return loaded;
        }
    }
}

/// Preloads `lib` (`"cudnn"` or `"cublas"`) from the search of the module documentation when
/// cudarc would not find it through the loader.
fn preload(lib: &'static str, env: &str, present: fn() -> bool) {
    if let Some(f) = env_path(env) {
        let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
        // The companions first (cuDNN's sub-libraries, cuBLASLt), then the file itself.
        let mut files = libs_in(&dir, &format!("lib{lib}"));
        files.retain(|p| p != &f);
        files.push(f);
        load_all(&files);
        return;
    }
    if present() {
        return;
    }
    let subdirs: &[&str] = match lib {
        "cudnn" => &["cudnn/lib", "cu13/lib", "cu12/lib"],
        _ => &["cublas/lib", "cu13/lib", "cu12/lib"],
    };
    for site in python_sites() {
        for sub in subdirs {
            let dir = site.join("nvidia").join(sub);
            let files = if lib == "cublas" {
                libs_in(&dir, "libcublas")
            } else {
                libs_in(&dir, "libcudnn")
            };
            if files.is_empty() {
                continue;
            }
            load_all(&files);
            if present() {
                return;
            }
        }
    }
}

fn cudnn_present() -> bool {
    samkit_cuda::env::culib_present("cudnn")
}

fn cublas_present() -> bool {
    samkit_cuda::env::culib_present("cublas")
}

/// Checks that the library cudarc opens by the name `culib` (`"cublas"`, `"cudnn"`) exports
/// every function of `names`.
fn check_symbols(lib: &'static str, culib: &str, names: &[&str]) -> Result<(), String> {
    let l = samkit_cuda::env::open_culib(culib)
        .ok_or_else(|| format!("{lib} cannot be opened by name"))?;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        // SAFETY: only looks the symbol up; the pointer is neither called nor kept.
        .filter(|n| unsafe { l.get::<*const ()>(n.as_bytes()) }.is_err())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{lib} lacks {}", missing.join(", ")))
    }
}

/// Finds and loads cuDNN and cuBLAS once per process and checks their functions.
pub fn ensure() -> Result<(), CudaError> {
    static DONE: OnceLock<Result<(), (&'static str, String)>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        const HINT: &str = "install the nvidia-cudnn-cu1x / nvidia-cublas-cu1x wheels (PyTorch \
                            brings them), add their lib folders to LD_LIBRARY_PATH, or set \
                            SAMKIT_CUDNN_LIB / SAMKIT_CUBLAS_LIB";
        preload("cublas", "SAMKIT_CUBLAS_LIB", cublas_present);
        if !cublas_present() {
            return Err(("cuBLAS", format!("libcublas.so not found; {HINT}")));
        }
        preload("cudnn", "SAMKIT_CUDNN_LIB", cudnn_present);
        if !cudnn_present() {
            return Err(("cuDNN", format!("libcudnn.so not found; {HINT}")));
        }
        check_symbols("cuBLAS", "cublas", CUBLAS_SYMBOLS).map_err(|e| ("cuBLAS", e))?;
        check_symbols("cuDNN", "cudnn", CUDNN_SYMBOLS).map_err(|e| ("cuDNN", e))?;
        Ok(())
    });
    r.clone()
        .map_err(|(lib, detail)| CudaError::MissingLibrary { lib, detail })
}
