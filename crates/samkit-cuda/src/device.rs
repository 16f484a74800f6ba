//! A CUDA device: its context, the stream every samkit kernel runs on, and the kernel families
//! compiled for its compute capability (at first use, cached per device in memory and per
//! machine on disk).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::abi;
use crate::compile::{self, Family, Target};
use crate::error::{Error, Result};

/// A loaded kernel and how many of its blocks fit on one SM.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub(crate) func: CudaFunction,
    pub name: String,
    /// Blocks of [`abi::BLOCK`] threads resident per SM (from the occupancy calculator).
    pub blocks_per_sm: u32,
}

pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    cc: (i32, i32),
    sm_count: u32,
    target: Target,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    kernels: Mutex<HashMap<String, Kernel>>,
    /// A cap on the blocks of grid-stride kernels (0: none), to show results do not depend on it.
    max_blocks: AtomicU32,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("cc", &self.cc)
            .field("sm_count", &self.sm_count)
            .field("target", &self.target)
            .finish()
    }
}

/// Whether a CUDA driver library is present at all (no device is opened).
pub fn driver_present() -> bool {
    // `nvcuda` is the driver's name on Windows, as in cudarc's own probe.
    crate::env::culib_present("cuda") || crate::env::culib_present("nvcuda")
}

impl Device {
    /// Opens device `ordinal` with a new stream. Without a driver or a device this is
    /// [`Error::NoDevice`] (`CudaContext::new` would panic without the driver library).
    pub fn open(ordinal: usize) -> Result<Arc<Device>> {
        if !driver_present() {
            return Err(Error::NoDevice(
                "the CUDA driver library (libcuda.so) is not installed".into(),
            ));
        }
        let count = CudaContext::device_count()
            .map_err(|e| Error::NoDevice(format!("cuInit/cuDeviceGetCount: {e}")))?;
        if count <= 0 {
            return Err(Error::NoDevice("the driver reports no device".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::NoDevice(format!("creating a context on device {ordinal}: {e}")))?;
        let stream = ctx.new_stream()?;
        Self::with_stream(ctx, stream)
    }

    /// Opens device 0, CUDA's default device. Another device is [`Device::open`]'s ordinal,
    /// chosen by the caller (a trainer's option), never read from the environment.
    pub fn open_default() -> Result<Arc<Device>> {
        Self::open(0)
    }

    /// Uses a caller's context and stream (a trainer's own stream: the optimizer's kernels are
    /// then ordered with its forward and backward passes).
    pub fn with_stream(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Arc<Device>> {
        let cc = ctx.compute_capability()?;
        let sm_count =
            ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let name = ctx.name()?;
        let arch = (cc.0 * 10 + cc.1) as u32;
        let target = if prebuilt(compile::NORM, arch).is_some() {
            Target::Cubin(arch)
        } else {
            compile::target_for(cc.0, cc.1)?
        };
        Ok(Arc::new(Device {
            ctx,
            stream,
            name,
            cc,
            sm_count,
            target,
            modules: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
            max_blocks: AtomicU32::new(0),
        }))
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every samkit kernel of this device runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// What the kernels are compiled to for this device.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Waits for the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    /// The module of `family` on this device: a prebuilt cubin of `SAMKIT_CUDA_CUBIN_DIR`, else
    /// the disk cache, else NVRTC; loaded once per device and ABI-checked when the family has an
    /// `sk_abi*` probe. samkit-nn loads its `nn` family through this too (one loader, one cache).
    pub fn module(&self, family: Family) -> Result<Arc<CudaModule>> {
        if let Some(m) = self.modules.lock().expect("modules").get(family.name) {
            return Ok(m.clone());
        }
        let image = load_or_compile(family, self.target)?;
        let ptx = match self.target {
            Target::Cubin(_) => Ptx::from_binary(image),
            Target::Ptx(_) => Ptx::from_src(
                String::from_utf8_lossy(&image)
                    .trim_end_matches('\0')
                    .to_string(),
            ),
        };
        let module = self.ctx.load_module(ptx)?;
        self.check_abi(family, &module)?;
        self.modules
            .lock()
            .expect("modules")
            .insert(family.name, module.clone());
        Ok(module)
    }

    /// Runs the family's `sk_abi*` kernel and compares its report with [`abi::expected`].
    fn check_abi(&self, family: Family, module: &Arc<CudaModule>) -> Result<()> {
        let Some((_, kernel, want)) = abi::expected()
            .into_iter()
            .find(|(f, _, _)| *f == family.name)
        else {
            return Ok(());
        };
        let f = module.load_function(kernel)?;
        let got = crate::ops::abi_probe(&self.stream, &f, want.len())?;
        if got != want {
            return Err(Error::Abi(format!(
                "{kernel}: kernels report {got:?}, the host expects {want:?}"
            )));
        }
        Ok(())
    }

    /// A kernel by name from its family, loaded once per device.
    pub(crate) fn kernel(&self, family: Family, name: &str) -> Result<Kernel> {
        if let Some(k) = self.kernels.lock().expect("kernels").get(name) {
            return Ok(k.clone());
        }
        let module = self.module(family)?;
        let func = module.load_function(name)?;
        let blocks_per_sm = func
            .occupancy_max_active_blocks_per_multiprocessor(abi::BLOCK, 0, None)?
            .max(1);
        let k = Kernel {
            func,
            name: name.to_string(),
            blocks_per_sm,
        };
        self.kernels
            .lock()
            .expect("kernels")
            .insert(name.to_string(), k.clone());
        Ok(k)
    }

    /// Blocks for a grid-stride kernel over `work` items (units, words): the device filled to the
    /// kernel's occupancy, never more blocks than items, and as few as keep the rounds of the
    /// grid-stride loop even (2.6 rounds of a full grid take 3 rounds either way; 3 even rounds
    /// of a slightly smaller grid finish together). Results never depend on it.
    pub(crate) fn grid(&self, k: &Kernel, work: usize) -> u32 {
        let mut full = (self.sm_count as usize * k.blocks_per_sm as usize).max(1);
        let cap = self.max_blocks.load(Ordering::Relaxed) as usize;
        if cap > 0 {
            full = full.min(cap);
        }
        let work = work.max(1);
        let rounds = work.div_ceil(full);
        work.div_ceil(rounds) as u32
    }

    /// Caps the grid of the streaming kernels (`None`: as many blocks as fit on the device).
    /// Results are the same bits whatever the cap: the tests use this to show it.
    pub fn set_max_blocks(&self, cap: Option<u32>) {
        self.max_blocks.store(cap.unwrap_or(0), Ordering::Relaxed);
    }

    /// Compiles (or loads from the disk cache) every family now, so that the first step does not
    /// pay for it.
    pub fn warm_up(&self) -> Result<()> {
        for f in compile::FAMILIES {
            self.module(f)?;
        }
        Ok(())
    }
}

/// `SAMKIT_CUDA_CACHE`, default `~/.cache/samkit/kernels`; `SAMKIT_CUDA_CACHE=off` disables it.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("SAMKIT_CUDA_CACHE") {
        Some(v) if v == "off" || v == "0" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/samkit/kernels")),
    }
}

/// FNV-1a over everything that determines the image: sources, options, NVRTC version.
fn image_key(family: Family, target: Target) -> Result<u64> {
    let (maj, min) = compile::nvrtc_version()?;
    let include = crate::env::include_dir()?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(family.source.as_bytes());
    eat(compile::HEADER.as_bytes());
    for o in compile::options(target, include) {
        eat(o.as_bytes());
    }
    eat(format!("nvrtc {maj}.{min}").as_bytes());
    Ok(h)
}

/// A prebuilt cubin of `SAMKIT_CUDA_CUBIN_DIR` for this family and architecture, if any.
fn prebuilt(family: Family, arch: u32) -> Option<PathBuf> {
    let dir = std::env::var_os("SAMKIT_CUDA_CUBIN_DIR").filter(|v| !v.is_empty())?;
    let f = PathBuf::from(dir).join(compile::prebuilt_name(family, arch));
    f.is_file().then_some(f)
}

fn load_or_compile(family: Family, target: Target) -> Result<Vec<u8>> {
    if let Target::Cubin(arch) = target {
        if let Some(f) = prebuilt(family, arch) {
            if let Ok(bytes) = std::fs::read(&f) {
                return Ok(bytes);
            }
        }
    }
    let file = cache_dir().and_then(|d| {
        image_key(family, target)
            .ok()
            .map(|k| d.join(format!("{}-{target}-{k:016x}.bin", family.name)))
    });
    if let Some(f) = &file {
        if let Ok(bytes) = std::fs::read(f) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let c = compile::compile_cached(family, target)?;
    c.check_clean()?;
    if let Some(f) = &file {
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &c.image).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(c.image.clone())
}
