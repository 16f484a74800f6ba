//! The compile check of CI: every kernel family compiles with NVRTC to a cubin for sm_80 and
//! sm_90 with `-Xptxas=-v`, without an error, a warning or a register spill; the registers and
//! shared memory of each kernel are printed (run with `--nocapture` to see them).
//!
//! Needs NVRTC and the CUDA headers (see `samkit_cuda::env`), not a GPU. Without them the test
//! prints one skip line, unless `SAMKIT_REQUIRE_NVRTC=1`, when it fails.
use samkit_cuda::compile::{compile, nvrtc_version, prebuilt_name, Target, FAMILIES};

#[test]
fn every_kernel_compiles_clean_for_sm80_and_sm90() {
    let require = std::env::var("SAMKIT_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let ready = samkit_cuda::env::ensure_nvrtc().and_then(|_| samkit_cuda::env::include_dir());
    if let Err(e) = ready {
        if require {
            panic!("SAMKIT_REQUIRE_NVRTC=1 but {e}");
        }
        println!("skip: NVRTC not available ({e}); SAMKIT_REQUIRE_NVRTC=1 makes this a failure");
        return;
    }
    let paths = samkit_cuda::env::cuda_paths();
    let (maj, min) = nvrtc_version().expect("nvrtc version");
    println!("NVRTC {maj}.{min}: {}", paths.origin);
    // `SAMKIT_WRITE_CUBINS=<dir>`: keep the cubins, for a GPU machine without NVRTC
    // (`SAMKIT_CUDA_CUBIN_DIR`, see scripts/gpu-check.sh).
    let keep = std::env::var_os("SAMKIT_WRITE_CUBINS").map(std::path::PathBuf::from);
    let mut failures = Vec::new();
    let mut count = 0;
    for arch in [80u32, 90] {
        println!(
            "{:<8} {:<28} {:>5} {:>8} {:>6} {:>7}",
            "family", "kernel", "regs", "smem(B)", "stack", "spills"
        );
        for fam in FAMILIES {
            match compile(fam, Target::Cubin(arch)) {
                Ok(c) => {
                    for k in &c.kernels {
                        count += 1;
                        println!(
                            "{:<8} {:<28} {:>5} {:>8} {:>6} {:>7}  {}",
                            fam.name,
                            k.name,
                            k.registers,
                            k.smem,
                            k.stack,
                            k.spill_stores + k.spill_loads,
                            k.arch
                        );
                    }
                    assert!(!c.image.is_empty(), "{} sm_{arch}: empty cubin", fam.name);
                    assert!(
                        !c.kernels.is_empty(),
                        "{} sm_{arch}: no ptxas report",
                        fam.name
                    );
                    if let Err(e) = c.check_clean() {
                        failures.push(e.to_string());
                    } else if let Some(dir) = &keep {
                        std::fs::create_dir_all(dir).expect("SAMKIT_WRITE_CUBINS");
                        std::fs::write(dir.join(prebuilt_name(fam, arch)), &c.image)
                            .expect("writing a cubin");
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "compile check failed:\n{}",
        failures.join("\n")
    );
    println!("{count} kernel builds clean (sm_80, sm_90)");
}
