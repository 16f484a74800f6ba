//! The fake CUDA driver of `tests/fakecuda`: the kernels of `kernels/*.cu` built for the CPU with
//! g++ (through `emu.h`) behind the part of the driver API that cudarc uses, so that the whole
//! stack (cudarc, NVRTC compilation, the typed launches, the optimizer, the kernels' logic) runs
//! on machines without a GPU. Only where no real driver is installed.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use samkit_cuda::Device;

const FAMILIES: [&str; 5] = ["norm", "perturb", "update", "fisher", "select"];

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels")
}

fn fake_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakecuda")
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".into())
}

fn common_flags() -> Vec<String> {
    let mut v = vec![
        "-std=c++20".to_string(),
        "-include".into(),
        fake_dir().join("emu.h").display().to_string(),
        format!("-I{}", fake_dir().join("include").display()),
        format!("-I{}", kernels_dir().display()),
    ];
    for (name, size) in samkit_cuda::abi::sizes() {
        v.push(format!("-DSK_ABI_SIZE_{name}={size}"));
    }
    v
}

/// `(kernel, parameter type, by pointer)` of every `extern "C"` kernel of a preprocessed family.
fn kernels_of(pre: &str) -> Vec<(String, String, bool)> {
    let mark = "extern \"C\" SK_KERNEL_MARK void ";
    let mut out = Vec::new();
    let mut rest = pre;
    while let Some(i) = rest.find(mark) {
        rest = &rest[i + mark.len()..];
        let open = rest.find('(').expect("(");
        let close = rest.find(')').expect(")");
        let name = rest[..open].trim().to_string();
        let param = rest[open + 1..close].trim();
        let by_ptr = param.contains('*');
        let ty = param
            .split(|c: char| c == '*' || c.is_whitespace())
            .find(|s| !s.is_empty())
            .expect("parameter type")
            .to_string();
        out.push((name, ty, by_ptr));
    }
    out
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h = h.wrapping_mul(0x0000_0100_0000_01b3) ^ 0xff;
    }
    h
}

/// Builds `libcuda.so.1` (cached by the hash of its sources) and returns its path.
fn build() -> Result<PathBuf, String> {
    let mut srcs: Vec<Vec<u8>> = Vec::new();
    for f in FAMILIES {
        srcs.push(std::fs::read(kernels_dir().join(format!("{f}.cu"))).map_err(|e| e.to_string())?);
    }
    srcs.push(std::fs::read(kernels_dir().join("samkit.cuh")).map_err(|e| e.to_string())?);
    for f in [
        "emu.h",
        "driver.cpp",
        "include/cuda_fp16.h",
        "include/cuda_bf16.h",
    ] {
        srcs.push(std::fs::read(fake_dir().join(f)).map_err(|e| e.to_string())?);
    }
    let flags = common_flags().join(" ");
    let mut parts: Vec<&[u8]> = srcs.iter().map(|v| v.as_slice()).collect();
    parts.push(flags.as_bytes());
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fakecuda-{:016x}", hash(&parts)));
    let lib = dir.join("libcuda.so.1");
    if lib.is_file() {
        return Ok(lib);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut units = vec![fake_dir().join("driver.cpp")];
    for f in FAMILIES {
        let src = kernels_dir().join(format!("{f}.cu"));
        let pre = run(Command::new(cxx())
            .args(common_flags())
            .args(["-E", "-P", "-x", "c++", "-D__global__=SK_KERNEL_MARK"])
            .arg(&src))?;
        let pre = String::from_utf8_lossy(&pre);
        let ks = kernels_of(&pre);
        if ks.is_empty() {
            return Err(format!("no kernel found in {f}.cu"));
        }
        let mut w = format!("#include \"{}\"\n", src.display());
        for (name, ty, by_ptr) in &ks {
            if *by_ptr {
                w.push_str(&format!(
                    "extern \"C\" void emu_w_{name}(void** p) {{ {name}(*static_cast<{ty}**>(p[0])); }}\n"
                ));
            } else {
                w.push_str(&format!(
                    "extern \"C\" void emu_w_{name}(void** p) {{ {name}(*static_cast<{ty}*>(p[0])); }}\n"
                ));
            }
        }
        w.push_str(&format!(
            "extern \"C\" const emu::Kern emu_reg_{f}[] = {{\n"
        ));
        for (name, _, _) in &ks {
            w.push_str(&format!("    {{\"{name}\", emu_w_{name}}},\n"));
        }
        w.push_str("    {nullptr, nullptr},\n};\n");
        let path = dir.join(format!("{f}_emu.cpp"));
        std::fs::write(&path, w).map_err(|e| e.to_string())?;
        units.push(path);
    }
    let tmp = dir.join(format!("libcuda.so.1.tmp{}", std::process::id()));
    run(Command::new(cxx())
        .args(common_flags())
        .args([
            "-O1",
            "-fPIC",
            "-shared",
            "-pthread",
            "-ffp-contract=off",
            "-fno-fast-math",
            "-Wl,-soname,libcuda.so.1",
            "-o",
        ])
        .arg(&tmp)
        .args(&units))?;
    std::fs::rename(&tmp, &lib).map_err(|e| e.to_string())?;
    Ok(lib)
}

/// Why there is no fake device.
#[derive(Clone, Debug)]
pub enum NoFake {
    /// Nothing to emulate with here (a real driver is installed, no C++ compiler, no NVRTC):
    /// the tests print one skip line.
    Unavailable(String),
    /// The emulator failed to build or to open: the tests fail.
    Broken(String),
}

/// The fake device. `SAMKIT_REQUIRE_EMULATION=1` turns a missing compiler or NVRTC into a
/// failure too.
pub fn device() -> Result<Arc<Device>, NoFake> {
    static DEV: OnceLock<Result<Arc<Device>, NoFake>> = OnceLock::new();
    DEV.get_or_init(|| {
        use NoFake::*;
        if samkit_cuda::device::driver_present() {
            return Err(Unavailable(
                "a CUDA driver is installed: the GPU parity tests run instead".into(),
            ));
        }
        samkit_cuda::env::ensure_nvrtc().map_err(|e| Unavailable(e.to_string()))?;
        samkit_cuda::env::include_dir().map_err(|e| Unavailable(e.to_string()))?;
        run(Command::new(cxx()).arg("--version"))
            .map_err(|e| Unavailable(format!("no C++ compiler: {e}")))?;
        let lib = build().map_err(Broken)?;
        // SAFETY: our own test library; its initialisers are the C++ runtime's. Leaked so it
        // stays loaded: cudarc then finds it by its soname.
        let l = unsafe { libloading::Library::new(&lib) }.map_err(|e| Broken(e.to_string()))?;
        std::mem::forget(l);
        Device::open(0).map_err(|e| Broken(e.to_string()))
    })
    .clone()
}

/// Whether a missing emulator must fail the test run.
pub fn required() -> bool {
    std::env::var("SAMKIT_REQUIRE_EMULATION").is_ok_and(|v| v == "1")
}
