//! Building the fake libraries: the kernel families preprocessed to find their kernels and
//! `__launch_bounds__`, wrapped with a registry each, compiled with g++ through `emu.h` and
//! linked with `driver.cpp` into `libcuda.so.1`; `fakecublas.cpp` and `fakecudnn.cpp` into
//! `libcublas.so` and `libcudnn.so`. Each library is cached by the hash of its inputs (sources,
//! flags) under [`crate::cache_root`].
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{fake_dir, knobs};

/// The kernel families linked into the fake driver: every family of samkit-kernels' registry
/// (`<family>.cu`; `driver.cpp` lists their registries `emu_reg_<family>`, so the array's
/// length is spelled out: a new family fails to compile here until the driver lists it).
const FAMILIES: [samkit_cuda::samkit_kernels::Family; 6] = samkit_cuda::samkit_kernels::FAMILIES;

/// The deliberately broken (and fixed) kernels of samkit-cuda's `tests/emulator_catches.rs`, a
/// family of the emulator only (`fakecuda/catches.cu`).
const TEST_FAMILY: &str = "catches";

/// The fake driver's file name, its soname: the name cudarc's loader opens.
const DRIVER: &str = crate::LIBRARY_NAMES[0];

fn sanitize_flags() -> Vec<String> {
    if knobs::sanitize() {
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

/// The `.cu` files and `samkit.cuh` on disk (the samkit-kernels crate's `kernels/`).
fn kernels_dir() -> PathBuf {
    samkit_cuda::samkit_kernels::kernels_dir()
}

pub(crate) fn cxx() -> String {
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

pub(crate) fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
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

/// The cache directory of a build: `stem`, `-asan` when sanitized, the hash of its inputs, under
/// [`crate::cache_root`].
fn cache_dir(stem: &str, parts: &[&[u8]]) -> PathBuf {
    let kind = if knobs::sanitize() { "-asan" } else { "" };
    crate::cache_root().join(format!("{stem}{kind}-{:016x}", hash(parts)))
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
pub(crate) fn build() -> Result<PathBuf, String> {
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
    let lib = dir.join(DRIVER);
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
    compile_lib(&dir, DRIVER, &units, &common_flags())
}

/// Builds the fake `lib` of `fake_dir()/src` (cached by the hash of its source).
pub(crate) fn build_plain(src: &str, lib: &str) -> Result<PathBuf, String> {
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
pub(crate) fn load(lib: &Path) -> Result<(), String> {
    // SAFETY: our own test library; its initialisers are the C++ runtime's.
    let l =
        unsafe { libloading::Library::new(lib) }.map_err(|e| format!("{}: {e}", lib.display()))?;
    std::mem::forget(l);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_and_launch_bounds_are_read_from_a_preprocessed_family() {
        let pre = format!(
            "static int helper(int a) {{ return a; }}\n\
             extern \"C\" {KERNEL_MARK} void plain(float* x) {{ x[0] = helper(1); }}\n\
             extern \"C\" {KERNEL_MARK} {BOUNDS_MARK}(256, (2)) void after(float* x) {{}}\n\
             template <int N> struct S {{}};\n\
             extern \"C\" {BOUNDS_MARK}(1024) {KERNEL_MARK} void before(const S<2>* s) {{}}\n"
        );
        let ks = kernels_of(&pre).expect("three kernels");
        let got: Vec<(&str, Option<&str>)> = ks
            .iter()
            .map(|k| (k.name.as_str(), k.bounds.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("plain", None),
                ("after", Some("256, (2)")),
                ("before", Some("1024")),
            ]
        );
    }

    #[test]
    fn an_unreadable_kernel_declaration_is_an_error() {
        let unbalanced = format!("{KERNEL_MARK} {BOUNDS_MARK}(256 void k() {{}}");
        assert!(kernels_of(&unbalanced).is_err());
        let truncated = format!("{KERNEL_MARK} void");
        assert!(kernels_of(&truncated).is_err());
    }

    #[test]
    fn parenthesised_text_is_balanced() {
        assert_eq!(parenthesised(" (a(b)c) rest"), Some(("a(b)c", " rest")));
        assert_eq!(parenthesised("(a(b)"), None);
        assert_eq!(parenthesised("a)"), None);
    }

    #[test]
    fn cache_directories_differ_with_any_input() {
        let a = cache_dir("lib", &[b"one", b"two"]);
        assert_eq!(a, cache_dir("lib", &[b"one", b"two"]));
        assert_ne!(a, cache_dir("lib", &[b"one", b"tw0"]));
        // The parts are delimited: moving a byte from one part to the next changes the hash.
        assert_ne!(a, cache_dir("lib", &[b"onet", b"wo"]));
        assert!(a.starts_with(crate::cache_root()));
    }
}
