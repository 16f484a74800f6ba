//! Test support of the samkit workspace (`publish = false`; a path dev-dependency of the crates
//! whose tests use it): the CPU emulation of a CUDA device, [`device_or_skip`] /
//! [`or_skip`] for the tests that run on it, and [`fuzz`], the mutation strategies and the
//! allocation recorder of the file parsers' fuzz tests.
//!
//! The fake CUDA driver of `fakecuda/` (beside this crate's `Cargo.toml`): the kernels of
//! samkit-kernels' `kernels/*.cu` built for the CPU with g++ (through `emu.h`) behind the part
//! of the driver API that cudarc uses, so that the whole stack (cudarc, NVRTC compilation, the
//! typed launches, the optimizer, the kernels' logic) runs on machines without a GPU; and the
//! fake cuBLAS and cuDNN beside it (`fakecublas.cpp`, `fakecudnn.cpp`: reference loops on host
//! memory) for samkit-nn's CUDA backend. Only where no real driver is installed.
//!
//! The emulated device is adversarial (see `emu.h` and `driver.cpp`): shuffled thread, warp and
//! block order, poisoned shared and fresh memory, canaries around exact allocations, warp
//! collectives checked against their masks, the launch limits of an sm_90 part with 132 SMs.
//! Each family is compiled inside an unnamed namespace with its `__shared__` variables in its
//! own section, and its registry records each kernel's `__launch_bounds__` (read from the
//! family preprocessed with marker definitions). Besides those, the driver links the
//! broken/fixed test kernels of `fakecuda/catches.cu` (samkit-cuda's
//! `tests/emulator_catches.rs`).
//!
//! Three ways in:
//! - [`device`] / [`device_or_skip`]: the fake driver loaded into this process and device 0
//!   opened on it; [`device_with_dnn`] also loads the fake cuBLAS and cuDNN;
//! - [`library_files`]: the three libraries built but not loaded, for a child process (the
//!   `samkit` binary, `scripts/gpu-check.sh rehearse`) that finds them through its library
//!   path; `tests/fake_libs.rs` lists them for the script;
//! - [`or_skip`]: a skip line where there is nothing to emulate with, a failure where the
//!   emulator is broken.
//!
//! Knobs (test plumbing only, see [`knobs`]): `SAMKIT_FAKE_SEED=<n>` picks the schedule
//! (default 1; 0 runs in order), e.g. `SAMKIT_FAKE_SEED=7 cargo test -p samkit-cuda --test
//! emulated`; `SAMKIT_FAKE_SMS=<n>` the SM count; `SAMKIT_FAKE_SANITIZE=1` builds everything
//! with `-fsanitize=address,undefined` into separate cache directories
//! (`scripts/test-sanitized.sh` preloads the runtimes); `SAMKIT_REQUIRE_EMULATION=1` fails
//! instead of skipping.
//!
//! Sources are found from this crate's `CARGO_MANIFEST_DIR` (`fakecuda/`) and
//! `samkit_kernels::kernels_dir()` (the kernels), so the tests of any crate can use it; the
//! built libraries are cached under [`cache_root`].
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use samkit_cuda::Device;

mod compile;
pub mod fuzz;
pub mod knobs;

pub use knobs::required;

/// The emulator's sources: `emu.h`, `driver.cpp`, `fakecublas.cpp`, `fakecudnn.cpp`,
/// `catches.cu` and the shim headers of `include/`.
pub fn fake_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fakecuda")
}

/// Where the built libraries are cached, one folder per build named by the hash of its inputs:
/// the target directory's `tmp/` (cargo's `CARGO_TARGET_TMPDIR`, found by this crate's build
/// script), shared by the tests of every crate.
pub fn cache_root() -> PathBuf {
    PathBuf::from(env!("SAMKIT_TESTKIT_CACHE"))
}

/// The file names of [`library_files`], in its order: cudarc opens the driver by its soname and
/// samkit-nn tries `libcublas.so` and `libcudnn.so` first.
pub const LIBRARY_NAMES: [&str; 3] = ["libcuda.so.1", "libcublas.so", "libcudnn.so"];

/// Why there is no fake device.
#[derive(Clone, Debug)]
pub enum NoFake {
    /// Nothing to emulate with here (a real driver is installed, no C++ compiler, no NVRTC):
    /// the tests print one skip line.
    Unavailable(String),
    /// The emulator failed to build or to open: the tests fail.
    Broken(String),
}

/// Whether the emulation can be built and used here: no real driver (the GPU tests run there),
/// NVRTC with its headers, a C++ compiler.
fn available() -> Result<(), NoFake> {
    use NoFake::Unavailable;
    if samkit_cuda::device::driver_present() {
        return Err(Unavailable(
            "a CUDA driver is installed: the GPU tests run instead".into(),
        ));
    }
    samkit_cuda::env::ensure_nvrtc().map_err(|e| Unavailable(e.to_string()))?;
    samkit_cuda::env::include_dir().map_err(|e| Unavailable(e.to_string()))?;
    compile::run(Command::new(compile::cxx()).arg("--version"))
        .map_err(|e| Unavailable(format!("no C++ compiler: {e}")))?;
    Ok(())
}

/// The fake device: the fake driver built (or found in the cache), loaded into this process,
/// and its device 0 opened. Once per process.
pub fn device() -> Result<Arc<Device>, NoFake> {
    static DEV: OnceLock<Result<Arc<Device>, NoFake>> = OnceLock::new();
    DEV.get_or_init(|| {
        use NoFake::*;
        available()?;
        compile::load(&compile::build().map_err(Broken)?).map_err(Broken)?;
        Device::open(0).map_err(|e| Broken(e.to_string()))
    })
    .clone()
}

/// The fake device with the fake cuBLAS (`libcublas.so`) and cuDNN (`libcudnn.so`) loaded.
/// Their sonames are the first names cudarc's loader tries (`get_lib_name_candidates`), so
/// cudarc opens these even where a real cuBLAS or cuDNN is on the loader's path.
pub fn device_with_dnn() -> Result<Arc<Device>, NoFake> {
    static LIBS: OnceLock<Result<(), NoFake>> = OnceLock::new();
    let d = device()?;
    LIBS.get_or_init(|| {
        let blas =
            compile::build_plain("fakecublas.cpp", LIBRARY_NAMES[1]).map_err(NoFake::Broken)?;
        let dnn =
            compile::build_plain("fakecudnn.cpp", LIBRARY_NAMES[2]).map_err(NoFake::Broken)?;
        compile::load(&blas).map_err(NoFake::Broken)?;
        compile::load(&dnn).map_err(NoFake::Broken)
    })
    .clone()?;
    Ok(d)
}

/// The fake driver, cuBLAS and cuDNN (named as in [`LIBRARY_NAMES`], in that order) built but
/// not loaded here: for a child process (the `samkit` binary), whose loader finds them through
/// `LD_LIBRARY_PATH`.
pub fn library_files() -> Result<Vec<PathBuf>, NoFake> {
    // Once per process: the tests of a binary ask at the same time, and the temporary files of
    // a build are named by the process.
    static FILES: OnceLock<Result<Vec<PathBuf>, NoFake>> = OnceLock::new();
    FILES
        .get_or_init(|| {
            use NoFake::Broken;
            available()?;
            Ok(vec![
                compile::build().map_err(Broken)?,
                compile::build_plain("fakecublas.cpp", LIBRARY_NAMES[1]).map_err(Broken)?,
                compile::build_plain("fakecudnn.cpp", LIBRARY_NAMES[2]).map_err(Broken)?,
            ])
        })
        .clone()
}

/// The result of [`device`], [`device_with_dnn`] or [`library_files`] for a test: the value, or
/// `None` after one skip line where there is nothing to emulate with (a failure under
/// `SAMKIT_REQUIRE_EMULATION=1`); a broken emulator fails the test.
pub fn or_skip<T>(r: Result<T, NoFake>) -> Option<T> {
    match r {
        Ok(d) => Some(d),
        Err(NoFake::Unavailable(e)) if !required() => {
            println!("skip: no CPU emulation of CUDA ({e})");
            None
        }
        Err(NoFake::Unavailable(e)) => panic!("SAMKIT_REQUIRE_EMULATION=1 but {e}"),
        Err(NoFake::Broken(e)) => panic!("the CPU emulation of CUDA is broken: {e}"),
    }
}

/// The fake device, or `None` after one skip line (see [`or_skip`]).
pub fn device_or_skip() -> Option<Arc<Device>> {
    or_skip(device())
}
