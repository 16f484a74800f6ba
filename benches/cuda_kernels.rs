//! Criterion benches of the CUDA kernels (one per kernel, GPU time from CUDA events, the L2
//! cache flushed before every run), then the `bench-kernels` table: time, GB/s and the fraction
//! of a device-to-device copy of the same size measured in the same run.
//!
//! Over the CIFAR ResNet-18 layout (11,173,962 f32 parameters, 62 segments). Without a GPU it
//! prints `no CUDA device: skipping` and exits 0. `SAMKIT_BENCH_JSON=<file>` also writes the
//! table as JSON (scripts/gpu-check.sh). Test plumbing for the rehearsal of the GPU check on the
//! emulated device (where the 11.2M layout takes minutes per kernel): `SAMKIT_BENCH_WIDTH=<w>`
//! benches the ResNet-18 layout of width `w`, `SAMKIT_BENCH_QUICK=1` takes few, short samples.
use std::time::Duration;

use criterion::{Criterion, Throughput};
use samkit_core::Layout;
use samkit_cuda::bench::{format_table, kernel_table, KernelBench, BENCHES};
use samkit_cuda::Device;

fn main() {
    let dev = match Device::open_default() {
        Ok(d) => d,
        Err(e) if e.is_no_device() => {
            println!("no CUDA device: skipping ({e})");
            return;
        }
        Err(e) => {
            eprintln!("cuda_kernels: {e}");
            std::process::exit(1);
        }
    };
    let layout = match std::env::var("SAMKIT_BENCH_WIDTH") {
        Err(_) => None,
        Ok(w) => match w.parse::<usize>().ok().map(|w| Layout::resnet18(10, w)) {
            Some(Ok(l)) => Some(l),
            _ => {
                eprintln!("cuda_kernels: SAMKIT_BENCH_WIDTH={w} is not a ResNet-18 width");
                std::process::exit(2);
            }
        },
    };
    let quick = std::env::var("SAMKIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let mut b = KernelBench::new(&dev, layout.clone()).expect("bench buffers");
    let n = b.params() as u64;
    let (samples, warm_up, measure, repeats) = if quick {
        (10, Duration::from_millis(1), Duration::from_millis(10), 2)
    } else {
        (20, Duration::from_millis(300), Duration::from_secs(2), 50)
    };
    let mut c = Criterion::default()
        .sample_size(samples)
        .warm_up_time(warm_up)
        .measurement_time(measure)
        .configure_from_args();
    {
        let mut group = c.benchmark_group("cuda");
        group.throughput(Throughput::Elements(n));
        for &(name, _) in BENCHES {
            group.bench_function(name, |bencher| {
                bencher.iter_custom(|iters| {
                    let t = b.time(name, iters as usize).expect(name);
                    Duration::from_secs_f64(t.iter().sum())
                })
            });
        }
        group.finish();
    }
    c.final_summary();
    drop(b);
    let rows = kernel_table(&dev, layout, repeats).expect("kernel table");
    println!("\n{}", format_table(&dev, n as usize, &rows));
    if let Some(path) = std::env::var_os("SAMKIT_BENCH_JSON") {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kernel": r.kernel,
                    "time_us": r.time_us,
                    "bytes_per_param": if r.bytes_per_param.is_finite() { Some(r.bytes_per_param) } else { None },
                    "gb_s": if r.gb_s.is_finite() { Some(r.gb_s) } else { None },
                    "fraction_of_copy": if r.frac_copy.is_finite() { Some(r.frac_copy) } else { None },
                    "deterministic": r.deterministic,
                    "launches": r.launches,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "device": dev.name(),
            "compute_capability": format!("{}.{}", dev.compute_capability().0, dev.compute_capability().1),
            "sm_count": dev.sm_count(),
            "params": n,
            "rows": json,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("SAMKIT_BENCH_JSON");
    }
}
