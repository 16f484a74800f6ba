//! The kernel sources and their compilation with NVRTC, straight to a cubin for a real
//! architecture (`sm_XX`), with ptxas' resource report parsed per kernel.
//!
//! A cubin is loaded by the driver as it is, so a newer NVRTC than the driver is no problem (a PTX
//! image from a newer NVRTC is refused by an older driver). Compilation needs NVRTC and the CUDA
//! headers only, not a GPU: the compile check of CI runs it for sm_80 and sm_90.
use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::env;
use crate::error::{Error, Result};

// The sources and their registry live in samkit-kernels; re-exported here so that the compile
// API (`compile(family, target)`) and its inputs are named from one module.
pub use samkit_kernels::{Family, FISHER, HEADER, HEADER_NAME, NORM, PERTURB, SELECT, UPDATE};

/// The optimizer's families, in the order the compile check reports them (samkit-nn's `nn`
/// family is `samkit_kernels::NN`).
pub const FAMILIES: [Family; 5] = samkit_kernels::OPTIMIZER_FAMILIES;

/// What NVRTC produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A cubin for `sm_XX` (XX = 10·major + minor).
    Cubin(u32),
    /// PTX for `compute_XX`, JIT-compiled by the driver: only when NVRTC does not know the device.
    Ptx(u32),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cubin(a) => write!(f, "sm_{a}"),
            Target::Ptx(a) => write!(f, "compute_{a}"),
        }
    }
}

/// ptxas' resource report for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelInfo {
    pub name: String,
    pub arch: String,
    pub registers: u32,
    pub barriers: u32,
    /// Static shared memory in bytes.
    pub smem: u32,
    pub stack: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// A compiled family.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub family: &'static str,
    pub target: Target,
    /// The cubin, or the NUL-terminated PTX.
    pub image: Vec<u8>,
    /// NVRTC's log, ptxas' report included.
    pub log: String,
    pub kernels: Vec<KernelInfo>,
}

impl Compiled {
    /// Lines of the log that are warnings or errors (the compile check fails on any).
    pub fn diagnostics(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("warning") || l.contains("error")
            })
            .collect()
    }

    /// Kernels that spill registers to local memory.
    pub fn spills(&self) -> Vec<&KernelInfo> {
        self.kernels
            .iter()
            .filter(|k| k.spill_stores > 0 || k.spill_loads > 0)
            .collect()
    }

    /// An error for any warning, error or spill.
    pub fn check_clean(&self) -> Result<()> {
        let mut problems: Vec<String> = self.diagnostics().iter().map(|s| s.to_string()).collect();
        for k in self.spills() {
            problems.push(format!(
                "{} spills ({} bytes stores, {} bytes loads)",
                k.name, k.spill_stores, k.spill_loads
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Compile {
                family: self.family.to_string(),
                arch: self.target.to_string(),
                detail: problems.join("\n"),
            })
        }
    }
}

/// The NVRTC options of every build: f32 expressions round as in the CPU reference (no FMA
/// contraction, IEEE division and square root), line info for compute-sanitizer, and ptxas'
/// resource report; the host's struct sizes for the kernels' `static_assert`s.
pub fn options(target: Target, include: &std::path::Path) -> Vec<String> {
    let arch = match target {
        Target::Cubin(a) => format!("--gpu-architecture=sm_{a}"),
        Target::Ptx(a) => format!("--gpu-architecture=compute_{a}"),
    };
    let mut o = vec![
        arch,
        "--std=c++17".into(),
        "--fmad=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
        "--generate-line-info".into(),
        "--ptxas-options=-v".into(),
        "--ptxas-options=--warn-on-spills".into(),
        format!("--include-path={}", include.display()),
    ];
    o.extend(
        crate::abi::sizes()
            .into_iter()
            .map(|(name, size)| format!("-DSK_ABI_SIZE_{name}={size}")),
    );
    o
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    env::ensure_nvrtc()?;
    let (mut a, mut b) = (0, 0);
    // SAFETY: both pointers are to live locals; NVRTC writes two ints.
    unsafe { nvrtc_sys::nvrtcVersion(&mut a, &mut b) }
        .result()
        .map_err(|e| Error::NoNvrtc(format!("nvrtcVersion: {e}")))?;
    Ok((a, b))
}

/// The real architectures this NVRTC can compile for (`[75, 80, 86, 89, 90, ...]`).
pub fn supported_archs() -> Result<Vec<u32>> {
    env::ensure_nvrtc()?;
    let mut n = 0;
    // SAFETY: writes one int.
    unsafe { nvrtc_sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(|e| Error::NoNvrtc(format!("nvrtcGetNumSupportedArchs: {e}")))?;
    let mut v = vec![0i32; n.max(0) as usize];
    // SAFETY: `v` holds the number of ints NVRTC just reported.
    unsafe { nvrtc_sys::nvrtcGetSupportedArchs(v.as_mut_ptr()) }
        .result()
        .map_err(|e| Error::NoNvrtc(format!("nvrtcGetSupportedArchs: {e}")))?;
    Ok(v.into_iter().map(|a| a as u32).collect())
}

/// The target for a device of compute capability `(major, minor)`: its own `sm_XX` when NVRTC
/// knows it; else the newest known `sm_XY` of the same major with `Y ≤ minor` (binary
/// compatible); else PTX for the newest known architecture below the device.
pub fn target_for(major: i32, minor: i32) -> Result<Target> {
    let want = (major * 10 + minor) as u32;
    let archs = supported_archs()?;
    if archs.contains(&want) {
        return Ok(Target::Cubin(want));
    }
    if let Some(&a) = archs
        .iter()
        .filter(|&&a| a / 10 == major as u32 && a <= want)
        .max()
    {
        return Ok(Target::Cubin(a));
    }
    archs
        .iter()
        .filter(|&&a| a <= want)
        .max()
        .map(|&a| Target::Ptx(a))
        .ok_or_else(|| Error::Compile {
            family: "*".into(),
            arch: format!("sm_{want}"),
            detail: format!("NVRTC supports {archs:?}, nothing at or below the device"),
        })
}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Compile {
        family: what.into(),
        arch: String::new(),
        detail: "source contains a NUL byte".into(),
    })
}

struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram below and destroyed once, here.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

/// Compiles one family (uncached).
pub fn compile(family: Family, target: Target) -> Result<Compiled> {
    env::ensure_nvrtc()?;
    let include = env::include_dir()?;
    let err = |detail: String| Error::Compile {
        family: family.name.to_string(),
        arch: target.to_string(),
        detail,
    };
    let src = c_string(family.source, family.name)?;
    let name = c_string(&format!("{}.cu", family.name), family.name)?;
    let hsrc = c_string(HEADER, HEADER_NAME)?;
    let hname = c_string(HEADER_NAME, HEADER_NAME)?;
    let headers: [*const c_char; 1] = [hsrc.as_ptr()];
    let names: [*const c_char; 1] = [hname.as_ptr()];
    let mut raw = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer is to a NUL-terminated string that outlives the program (NVRTC copies
    // the sources at creation); the arrays hold one header and its include name.
    unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            raw.as_mut_ptr(),
            src.as_ptr(),
            name.as_ptr(),
            1,
            headers.as_ptr(),
            names.as_ptr(),
        )
    }
    .result()
    .map_err(|e| err(format!("nvrtcCreateProgram: {e}")))?;
    // SAFETY: nvrtcCreateProgram succeeded, so the handle is initialised.
    let prog = Program(unsafe { raw.assume_init() });
    let opts = options(target, include);
    // SAFETY: `prog` is a live program.
    let compiled = unsafe { nvrtc::compile_program(prog.0, &opts) };
    // SAFETY: `prog` is a live program.
    let log = unsafe { nvrtc::get_program_log(prog.0) }
        .map(|v| {
            let bytes: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(err(format!("{e}\n{log}")));
    }
    let image = match target {
        Target::Cubin(_) => {
            let mut size = 0usize;
            // SAFETY: `prog` compiled for a real architecture, so it has a cubin.
            unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog.0, &mut size) }
                .result()
                .map_err(|e| err(format!("nvrtcGetCUBINSize: {e}")))?;
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds the size NVRTC just reported.
            unsafe { nvrtc_sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut c_char) }
                .result()
                .map_err(|e| err(format!("nvrtcGetCUBIN: {e}")))?;
            buf
        }
        Target::Ptx(_) => {
            // SAFETY: `prog` compiled successfully.
            let ptx =
                unsafe { nvrtc::get_ptx(prog.0) }.map_err(|e| err(format!("nvrtcGetPTX: {e}")))?;
            ptx.into_iter().map(|c| c as u8).collect()
        }
    };
    let kernels = parse_ptxas(&log);
    Ok(Compiled {
        family: family.name,
        target,
        image,
        log,
        kernels,
    })
}

/// A hash of everything in a family's image that does not depend on NVRTC: its source, the
/// header and the host's struct sizes. Names prebuilt cubins (see [`prebuilt_name`]).
pub fn source_hash(family: Family) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let sizes: String = crate::abi::sizes()
        .iter()
        .map(|(n, s)| format!("{n}={s};"))
        .collect();
    for part in [family.source, HEADER, sizes.as_str()] {
        for &b in part.as_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The file name of a prebuilt cubin: `<family>-sm_<arch>-<source hash>.cubin`. A device loads
/// one from `SAMKIT_CUDA_CUBIN_DIR` when it exists for its exact architecture (no NVRTC needed);
/// the compile check writes them to `SAMKIT_WRITE_CUBINS`.
pub fn prebuilt_name(family: Family, arch: u32) -> String {
    format!(
        "{}-sm_{arch}-{:016x}.cubin",
        family.name,
        source_hash(family)
    )
}

/// Compiles one family, once per process and target.
pub fn compile_cached(family: Family, target: Target) -> Result<Arc<Compiled>> {
    type Cache = Mutex<HashMap<(&'static str, Target), Arc<Compiled>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache
        .lock()
        .expect("compile cache")
        .get(&(family.name, target))
    {
        return Ok(c.clone());
    }
    let c = Arc::new(compile(family, target)?);
    cache
        .lock()
        .expect("compile cache")
        .insert((family.name, target), c.clone());
    Ok(c)
}

fn number_before(s: &str, unit: &str) -> Option<u32> {
    let i = s.find(unit)?;
    s[..i].split_whitespace().last()?.parse().ok()
}

/// Parses ptxas' `-v` report:
///
/// ```text
/// ptxas info    : Compiling entry function 'sk_dot_f32' for 'sm_90'
/// ptxas info    : Function properties for sk_dot_f32
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 30 registers, used 1 barriers, 64 bytes smem
/// ```
pub fn parse_ptxas(log: &str) -> Vec<KernelInfo> {
    let mut out: Vec<KernelInfo> = Vec::new();
    let mut current: Option<usize> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            out.push(KernelInfo {
                name,
                arch,
                ..KernelInfo::default()
            });
            current = Some(out.len() - 1);
            continue;
        }
        let Some(k) = current.and_then(|i| out.get_mut(i)) else {
            continue;
        };
        if line.contains("bytes stack frame") {
            k.stack = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used") && line.contains("registers") {
            for part in line.split(':').next_back().unwrap_or_default().split(',') {
                let part = part.trim();
                if part.ends_with("registers") {
                    k.registers = number_before(part, "registers").unwrap_or(0);
                } else if part.ends_with("barriers") {
                    k.barriers = number_before(part, "barriers").unwrap_or(0);
                } else if part.ends_with("bytes smem") {
                    k.smem = number_before(part, "bytes smem").unwrap_or(0);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
            ptxas info    : Function properties for k\n\
            ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
            ptxas info    : Used 12 registers, used 1 barriers, 1024 bytes smem, 384 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'j' for 'sm_80'\n\
            ptxas info    : Function properties for j\n\
                0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 40 registers, 380 bytes cmem[0]\n";
        let k = parse_ptxas(log);
        assert_eq!(k.len(), 2);
        assert_eq!(
            k[0],
            KernelInfo {
                name: "k".into(),
                arch: "sm_80".into(),
                registers: 12,
                barriers: 1,
                smem: 1024,
                stack: 8,
                spill_stores: 4,
                spill_loads: 4,
            }
        );
        assert_eq!((k[1].registers, k[1].smem, k[1].spill_stores), (40, 0, 0));
    }
}
