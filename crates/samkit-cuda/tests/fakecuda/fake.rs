//! The fake CUDA driver of `crates/samkit-cuda/tests/fakecuda`: the kernels of samkit-kernels' `kernels/*.cu`
//! built for the CPU with g++ (through `emu.h`) behind the part of the driver API that cudarc
//! uses, so that the whole stack (cudarc, NVRTC compilation, the typed launches, the optimizer,
//! the kernels' logic) runs on machines without a GPU; and the fake cuBLAS and cuDNN beside it
//! (`fakecublas.cpp`, `fakecudnn.cpp`: reference loops on host memory) for samkit-nn's CUDA
//! backend. Only where no real driver is installed.
//!
//! The emulated device is adversarial (see `emu.h` and `driver.cpp`): shuffled thread, warp and
//! block order, poisoned shared and fresh memory, canaries around exact allocations, warp
//! collectives checked against their masks, the launch limits of an sm_90 part with 132 SMs.
//! Each family is compiled inside an unnamed namespace with its `__shared__` variables in its
//! own section, and its registry records each kernel's `__launch_bounds__` (read from the
//! family preprocessed with marker definitions). Besides those, the driver links the
//! broken/fixed test kernels of `catches.cu` (`tests/emulator_catches.rs`).
//!
//! Knobs: `SAMKIT_FAKE_SEED=<n>` picks the schedule (default 1; 0 runs in order), e.g.
//! `SAMKIT_FAKE_SEED=7 cargo test -p samkit-cuda --test emulated`; `SAMKIT_FAKE_SMS=<n>` the SM
//! count; `SAMKIT_FAKE_SANITIZE=1` builds everything with `-fsanitize=address,undefined` into
//! separate cache directories (`scripts/test-sanitized.sh` preloads the runtimes).
//!
//! One implementation for the tests of both crates: samkit-cuda's `tests/common` and
//! samkit-nn's `tests/common` include this file with `#[path]`. Paths are taken from the
//! workspace root (both crates live in `crates/<name>`).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use samkit_cuda::Device;

/// The kernel families linked into the fake driver: every family of samkit-kernels' registry
/// (`<family>.cu`; `driver.cpp` lists their registries `emu_reg_<family>`).
const FAMILIES: [samkit_cuda::samkit_kernels::Family; 6] = samkit_cuda::samkit_kernels::FAMILIES;

/// The deliberately broken (and fixed) kernels of `tests/emulator_catches.rs`, a family of the
/// emulator only (`fake_dir()/catches.cu`).
const TEST_FAMILY: &str = "catches";

/// `SAMKIT_FAKE_SANITIZE=1`: build the kernels and the fake libraries with
/// `-fsanitize=address,undefined` (into their own cache directories). The test binary must then
/// run with the sanitizer runtimes preloaded (`scripts/test-sanitized.sh`).
fn sanitize() -> bool {
    std::env::var("SAMKIT_FAKE_SANITIZE").is_ok_and(|v| v == "1")
}

fn sanitize_flags() -> Vec<String> {
    if sanitize() {
        [
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
            "-g",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `.cu` files and `samkit.cuh` on disk (the samkit-kernels crate's `kernels/`).
fn kernels_dir() -> PathBuf {
    samkit_cuda::samkit_kernels::kernels_dir()
}

fn fake_dir() -> PathBuf {
    root().join("crates/samkit-cuda/tests/fakecuda")
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".into())
}

/// The C++ compiler, without the sanitizer runtimes a sanitized test run preloads.
fn compiler() -> Command {
    let mut c = Command::new(cxx());
    c.env_remove("LD_PRELOAD");
    c
}

fn common_flags() -> Vec<String> {
    let mut v = sanitize_flags();
    v.extend([
        "-std=c++20".to_string(),
        "-include".into(),
        fake_dir().join("emu.h").display().to_string(),
        format!("-I{}", fake_dir().join("include").display()),
        format!("-I{}", kernels_dir().display()),
    ]);
    for (name, size) in samkit_cuda::abi::sizes() {
        v.push(format!("-DSK_ABI_SIZE_{name}={size}"));
    }
    v
}

/// One `extern "C"` kernel of a preprocessed family: its name and the arguments of its
/// `__launch_bounds__` (C++ expressions), if any.
struct KernelDecl {
    name: String,
    bounds: Option<String>,
}

const KERNEL_MARK: &str = "SK_KERNEL_MARK";
const BOUNDS_MARK: &str = "SK_LAUNCH_BOUNDS";

/// The text inside the parentheses that open `s` (balanced), and what follows them.
fn parenthesised(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start().strip_prefix('(')?;
    let mut depth = 1usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[..i], &s[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// The kernels of a preprocessed family (`__global__` defined as `SK_KERNEL_MARK`,
/// `__launch_bounds__(...)` as `SK_LAUNCH_BOUNDS(...)`, before or after `__global__`).
fn kernels_of(pre: &str) -> Result<Vec<KernelDecl>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = pre[at..].find(KERNEL_MARK).map(|i| i + at) {
        // Bounds written before `__global__`, in the same declaration.
        let start = pre[..i].rfind([';', '}']).map_or(0, |j| j + 1);
        let mut bounds = pre[start..i]
            .find(BOUNDS_MARK)
            .and_then(|j| parenthesised(&pre[start + j + BOUNDS_MARK.len()..i]))
            .map(|(b, _)| b.to_string());
        let mut rest = &pre[i + KERNEL_MARK.len()..];
        let name = loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(BOUNDS_MARK) {
                let (b, r) = parenthesised(r).ok_or("unbalanced __launch_bounds__")?;
                bounds = Some(b.to_string());
                rest = r;
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .ok_or("a kernel declaration runs to the end")?;
            if end == 0 {
                return Err(format!(
                    "cannot read the kernel declaration at: {}",
                    &rest[..rest.len().min(80)]
                ));
            }
            let (word, r) = rest.split_at(end);
            rest = r;
            if rest.trim_start().starts_with('(') {
                break word.to_string();
            }
        };
        out.push(KernelDecl { name, bounds });
        at = i + KERNEL_MARK.len();
    }
    Ok(out)
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

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Compiles `units` (each to an object, in parallel) and links them into the shared library
/// `dir/name` with soname `name`; written under a temporary name, then renamed, so a concurrent
/// test binary never opens half a library.
fn compile_lib(
    dir: &Path,
    name: &str,
    units: &[PathBuf],
    flags: &[String],
) -> Result<PathBuf, String> {
    let lib = dir.join(name);
    let opts = [
        "-O1",
        "-fPIC",
        "-pthread",
        "-ffp-contract=off",
        "-fno-fast-math",
    ];
    let pid = std::process::id();
    let mut jobs = Vec::new();
    for u in units {
        let stem = u.file_stem().and_then(|s| s.to_str()).unwrap_or("unit");
        let obj = dir.join(format!("{name}-{stem}.o.tmp{pid}"));
        let mut cmd = compiler();
        cmd.args(flags)
            .args(opts)
            .arg("-c")
            .arg(u)
            .arg("-o")
            .arg(&obj);
        let child = cmd
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("{cmd:?}: {e}"))?;
        jobs.push((cmd, child, obj));
    }
    let mut objs = Vec::new();
    let mut errs = String::new();
    for (cmd, child, obj) in jobs {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            errs.push_str(&format!(
                "{cmd:?} failed:\n{}\n",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        objs.push(obj);
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let tmp = dir.join(format!("{name}.tmp{pid}"));
    run(compiler()
        .args(opts)
        .args(sanitize_flags())
        .args(["-shared", &format!("-Wl,-soname,{name}"), "-o"])
        .arg(&tmp)
        .args(&objs))?;
    for o in &objs {
        let _ = std::fs::remove_file(o);
    }
    std::fs::rename(&tmp, &lib).map_err(|e| e.to_string())?;
    Ok(lib)
}

/// The families linked into the driver, with their sources: samkit-kernels' `kernels/*.cu` and the test family.
fn family_sources() -> Vec<(&'static str, PathBuf)> {
    let mut v: Vec<(&'static str, PathBuf)> = FAMILIES
        .iter()
        .map(|f| (f.name, kernels_dir().join(format!("{}.cu", f.name))))
        .collect();
    v.push((TEST_FAMILY, fake_dir().join(format!("{TEST_FAMILY}.cu"))));
    v
}

/// The cache directory of a build: `stem`, `-asan` when sanitized, the hash of its inputs.
fn cache_dir(stem: &str, parts: &[&[u8]]) -> PathBuf {
    let kind = if sanitize() { "-asan" } else { "" };
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{stem}{kind}-{:016x}", hash(parts)))
}

/// The wrapper of family `f` (source `src`, preprocessed `pre`): the family compiled with its
/// own section of `__shared__` variables, a thunk per kernel and the registry `emu_reg_<f>`
/// with each kernel's shared section and `__launch_bounds__`.
fn wrapper(f: &str, src: &Path, pre: &str) -> Result<String, String> {
    let ks = kernels_of(pre).map_err(|e| format!("{f}: {e}"))?;
    if ks.is_empty() {
        return Err(format!("no kernel found in {}", src.display()));
    }
    let sec = format!("emu_shared_{f}");
    // The family inside an unnamed namespace: its templates and inline functions (those of
    // samkit.cuh too) become local to the family, so that their __shared__ statics are plain
    // variables of this family's section (GCC refuses COMDAT and plain variables in one named
    // section, and a COMDAT copy would be shared with another family's section).
    let mut w = format!(
        "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n\
         #undef EMU_SHARED_SECTION\n#define EMU_SHARED_SECTION \"{sec}\"\n\
         namespace {{\n#include \"{}\"\n}}\n",
        src.display()
    );
    // The section exists even in a family without __shared__ variables.
    w.push_str(&format!(
        "static char emu_anchor_{f} __attribute__((section(\"{sec}\"), used));\n\
         extern \"C\" char __start_{sec}[], __stop_{sec}[];\n"
    ));
    for k in &ks {
        let name = &k.name;
        w.push_str(&format!(
            "extern \"C\" void emu_w_{name}(void** p) {{ emu::call({name}, p); }}\n"
        ));
    }
    w.push_str(&format!(
        "extern \"C\" const emu::Kern emu_reg_{f}[] = {{\n"
    ));
    for k in &ks {
        let name = &k.name;
        let (max, min) = match &k.bounds {
            Some(b) => (format!("emu::lb({b})"), format!("emu::lb_min_blocks({b})")),
            None => ("0".to_string(), "0".to_string()),
        };
        w.push_str(&format!(
            "    {{\"{name}\", emu_w_{name}, __start_{sec}, __stop_{sec}, {max}, {min}}},\n"
        ));
    }
    w.push_str("    {nullptr, nullptr, nullptr, nullptr, 0, 0},\n};\n");
    Ok(w)
}

/// Builds `libcuda.so.1` (cached by the hash of its sources) and returns its path.
fn build() -> Result<PathBuf, String> {
    let fams = family_sources();
    let mut srcs: Vec<Vec<u8>> = Vec::new();
    for (_, src) in &fams {
        srcs.push(read(src)?);
    }
    srcs.push(read(&kernels_dir().join("samkit.cuh"))?);
    for f in [
        "emu.h",
        "driver.cpp",
        "include/cuda_fp16.h",
        "include/cuda_bf16.h",
    ] {
        srcs.push(read(&fake_dir().join(f))?);
    }
    let flags = common_flags().join(" ");
    let mut parts: Vec<&[u8]> = srcs.iter().map(|v| v.as_slice()).collect();
    parts.push(flags.as_bytes());
    let dir = cache_dir("fakecuda", &parts);
    let lib = dir.join("libcuda.so.1");
    if lib.is_file() {
        return Ok(lib);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut units = vec![fake_dir().join("driver.cpp")];
    for (f, src) in &fams {
        let pre = run(compiler()
            .args(common_flags())
            .args(["-E", "-P", "-x", "c++"])
            .arg(format!("-D__global__={KERNEL_MARK}"))
            .arg(format!(
                "-D__launch_bounds__(...)={BOUNDS_MARK}(__VA_ARGS__)"
            ))
            .arg(src))?;
        let w = wrapper(f, src, &String::from_utf8_lossy(&pre))?;
        let path = dir.join(format!("{f}_emu.cpp"));
        std::fs::write(&path, w).map_err(|e| e.to_string())?;
        units.push(path);
    }
    compile_lib(&dir, "libcuda.so.1", &units, &common_flags())
}

/// Builds the fake `lib` of `fake_dir()/src` (cached by the hash of its source).
fn build_plain(src: &str, lib: &str) -> Result<PathBuf, String> {
    let text = read(&fake_dir().join(src))?;
    let mut flags = sanitize_flags();
    flags.push("-std=c++20".to_string());
    let joined = flags.join(" ");
    let dir = cache_dir(lib, &[&text, lib.as_bytes(), joined.as_bytes()]);
    let path = dir.join(lib);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    compile_lib(&dir, lib, &[fake_dir().join(src)], &flags)
}

/// Opens `lib` and leaks the handle, so it stays loaded and cudarc's `dlopen` of its soname
/// finds it.
fn load(lib: &Path) -> Result<(), String> {
    // SAFETY: our own test library; its initialisers are the C++ runtime's.
    let l =
        unsafe { libloading::Library::new(lib) }.map_err(|e| format!("{}: {e}", lib.display()))?;
    std::mem::forget(l);
    Ok(())
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
    run(Command::new(cxx()).arg("--version"))
        .map_err(|e| Unavailable(format!("no C++ compiler: {e}")))?;
    Ok(())
}

/// The fake device. `SAMKIT_REQUIRE_EMULATION=1` turns a missing compiler or NVRTC into a
/// failure too.
pub fn device() -> Result<Arc<Device>, NoFake> {
    static DEV: OnceLock<Result<Arc<Device>, NoFake>> = OnceLock::new();
    DEV.get_or_init(|| {
        use NoFake::*;
        available()?;
        load(&build().map_err(Broken)?).map_err(Broken)?;
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
        let blas = build_plain("fakecublas.cpp", "libcublas.so").map_err(NoFake::Broken)?;
        let dnn = build_plain("fakecudnn.cpp", "libcudnn.so").map_err(NoFake::Broken)?;
        load(&blas).map_err(NoFake::Broken)?;
        load(&dnn).map_err(NoFake::Broken)
    })
    .clone()?;
    Ok(d)
}

/// The fake driver, cuBLAS and cuDNN built but not loaded here: for a child process (the
/// `samkit` binary), whose loader finds them through `LD_LIBRARY_PATH`.
pub fn library_files() -> Result<Vec<PathBuf>, NoFake> {
    // Once per process: the tests of a binary ask at the same time, and the temporary files of
    // a build are named by the process.
    static FILES: OnceLock<Result<Vec<PathBuf>, NoFake>> = OnceLock::new();
    FILES
        .get_or_init(|| {
            use NoFake::Broken;
            available()?;
            Ok(vec![
                build().map_err(Broken)?,
                build_plain("fakecublas.cpp", "libcublas.so").map_err(Broken)?,
                build_plain("fakecudnn.cpp", "libcudnn.so").map_err(Broken)?,
            ])
        })
        .clone()
}

/// Whether a missing emulator must fail the test run.
pub fn required() -> bool {
    std::env::var("SAMKIT_REQUIRE_EMULATION").is_ok_and(|v| v == "1")
}

/// The result of [`device`] or [`device_with_dnn`] for a test: the device, or `None` after one
/// skip line where there is nothing to emulate with (a failure under
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
