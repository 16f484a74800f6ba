//! `samkit bench-kernels`: the CUDA optimizer kernels on the ResNet-18 layout — time, GB/s and
//! the fraction of a device-to-device copy measured in the same run, L2 flushed between
//! repeats. Without a CUDA device it says so and exits 0.
use std::path::PathBuf;

use clap::Args;
use samkit_core::Layout;
use samkit_cuda::bench::{format_table, kernel_table};
use samkit_cuda::device::Device;

use crate::error::{check, Result};
use crate::output::{write_json, Output};

#[derive(Args, Debug)]
pub struct BenchKernelsArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// ResNet-18 width of the parameter layout (64: 11,173,962 parameters).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Timed repeats per kernel (median reported).
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Also write the table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: &BenchKernelsArgs, out: &mut Output) -> Result<()> {
    check::count("width", a.width, 1, 1024)?;
    check::count("repeats", a.repeats, 1, 100_000)?;
    let dev = match Device::open(a.device) {
        Ok(d) => d,
        Err(e) => {
            out.say(format!("{e}; nothing to measure"));
            return Ok(());
        }
    };
    let layout = Layout::resnet18(10, a.width)?;
    let n = layout.len();
    let rows = kernel_table(&dev, Some(layout), a.repeats)?;
    out.say(format_table(&dev, n, &rows));
    if let Some(p) = &a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kernel": r.kernel, "time_us": r.time_us, "bytes_per_param": r.bytes_per_param,
                    "gb_s": r.gb_s, "frac_copy": r.frac_copy, "deterministic": r.deterministic,
                    "launches": r.launches,
                })
            })
            .collect();
        write_json(p, &v)?;
        out.wrote(p.clone());
    }
    Ok(())
}
