//! Tells the library where to cache the fake libraries it builds: cargo's temporary directory of
//! the target directory (`<target>/tmp`, the `CARGO_TARGET_TMPDIR` of integration tests), so
//! every crate's tests, and every profile, share one cache keyed by the hash of the sources.
//! `CARGO_TARGET_TMPDIR` itself is only given to integration tests and benches, not to a
//! library, hence this script.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/[<triple>/]<profile>/build/samkit-testkit-<hash>/out: two levels
    // above its `build` folder is the target directory (or its per-triple folder).
    let cache = out
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "build"))
        .and_then(|b| b.parent())
        .and_then(|profile| profile.parent())
        .map_or_else(|| out.join("cache"), |target| target.join("tmp"));
    println!("cargo:rustc-env=SAMKIT_TESTKIT_CACHE={}", cache.display());
}
