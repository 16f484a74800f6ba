//! The fake CUDA driver, cuBLAS and cuDNN of `fakecuda/` as files on disk, for
//! `scripts/gpu-check.sh rehearse`: it runs the GPU check's carried binaries (bin/parity,
//! bin/cuda_kernels, ...) against them by putting their folder first on `LD_LIBRARY_PATH`, so
//! the script's staging, caps and summary are exercised end to end where no GPU is. One
//! implementation of the libraries: this binary asks the test kit for them (built once, cached
//! by the hash of their sources under the target directory) instead of the script compiling
//! them with flags of its own.
//!
//! `SAMKIT_FAKE_LIBS_LIST=<file>` writes their paths there, one a line, in the order driver,
//! cuBLAS, cuDNN. Skipped, with one line, where a real driver is installed or g++ or NVRTC is
//! missing (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
use samkit_testkit::{library_files, or_skip, LIBRARY_NAMES};

#[test]
fn fake_libraries_are_built_and_listed() {
    let Some(libs) = or_skip(library_files()) else {
        return;
    };
    let names: Vec<String> = libs
        .iter()
        .map(|l| {
            l.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(names, LIBRARY_NAMES, "{libs:?}");
    for l in &libs {
        let meta = std::fs::metadata(l).unwrap_or_else(|e| panic!("{}: {e}", l.display()));
        assert!(meta.is_file() && meta.len() > 0, "{}", l.display());
        assert!(
            l.starts_with(samkit_testkit::cache_root()),
            "{} is outside the cache",
            l.display()
        );
    }
    if let Some(list) = std::env::var_os("SAMKIT_FAKE_LIBS_LIST") {
        let text: String = libs.iter().map(|l| format!("{}\n", l.display())).collect();
        std::fs::write(&list, text)
            .unwrap_or_else(|e| panic!("SAMKIT_FAKE_LIBS_LIST={list:?}: {e}"));
    }
}
