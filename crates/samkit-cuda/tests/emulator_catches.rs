//! The emulator of samkit-testkit must fail what a sequential CPU run would let pass and an
//! H200 would not: each test launches a deliberately broken kernel and its fixed twin
//! (samkit-testkit's `fakecuda/catches.cu`, a kernel family of the emulator only) and asserts
//! that the broken one fails (a wrong result or a launch error) and the fixed one passes.
//!
//! Skipped, with one line, where a real driver is installed or the emulator cannot be built
//! (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure). The schedule depends on
//! `SAMKIT_FAKE_SEED`; every assertion here holds for any seed but 0 (in order: then only the
//! write-after-read race goes unchecked): the broken kernels are caught in every block, or in
//! enough blocks that no schedule lets all of them pass.
use std::sync::Arc;

use cudarc::driver::{
    sys::{CUfunction_attribute, CUresult},
    CudaFunction, CudaModule, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use samkit_cuda::Device;

/// Threads per block of the test kernels (`EMU_TEST_BLOCK` in catches.cu).
const BLOCK: u32 = 256;
/// Blocks of the launches whose bug shows in some blocks only, not necessarily all.
const MANY_BLOCKS: u32 = 96;

fn dev() -> Option<Arc<Device>> {
    samkit_testkit::device_or_skip()
}

/// The test kernels' module: the fake driver ignores the image and finds kernels by name.
fn module(d: &Device) -> Arc<CudaModule> {
    let placeholder = cudarc::nvrtc::Ptx::from_src("// the emulator's own kernels (catches.cu)");
    d.context().load_module(placeholder).expect("load_module")
}

fn func(d: &Device, name: &str) -> CudaFunction {
    module(d).load_function(name).expect(name)
}

fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launch_error(r: Result<(), DriverError>) -> CUresult {
    match r {
        Ok(()) => panic!("the launch succeeded; the emulator should have failed it"),
        Err(e) => e.0,
    }
}

/// Runs `kernel(in, out)` over `grid` blocks of [`BLOCK`] threads with `input`; `out` starts
/// at zero.
fn run_in_out(
    s: &Arc<CudaStream>,
    f: &CudaFunction,
    input: &[f32],
    out_len: usize,
    grid: u32,
) -> Vec<f32> {
    let inp = s.clone_htod(input).expect("htod");
    let mut out = s.alloc_zeros::<f32>(out_len).expect("alloc");
    let mut b = s.launch_builder(f);
    b.arg(&inp).arg(&mut out);
    // SAFETY: the kernel takes (const float*, float*) and reads/writes grid·BLOCK elements.
    unsafe { b.launch(cfg(grid, BLOCK)) }.expect("launch");
    s.clone_dtoh(&out).expect("dtoh")
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i % 1000) as f32 + 0.5).collect()
}

#[test]
fn emulator_catches_a_missing_syncthreads() {
    let Some(d) = dev() else { return };
    let s = d.stream();
    // A read of another thread's shared-memory write with no barrier between: the shuffled order
    // runs some readers before the writers, which then read the 0xff poison (NaN).
    let n = BLOCK as usize * 4;
    let input = ramp(n);
    let want: Vec<f32> = (0..n)
        .map(|i| {
            input[(i / BLOCK as usize) * BLOCK as usize + BLOCK as usize - 1 - i % BLOCK as usize]
        })
        .collect();
    let fixed = run_in_out(s, &func(&d, "emu_test_reverse"), &input, n, 4);
    assert_eq!(fixed, want, "the fixed kernel must pass");
    let broken = run_in_out(s, &func(&d, "emu_test_reverse_nosync"), &input, n, 4);
    let wrong = broken
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert!(
        wrong > 0,
        "a missing __syncthreads between a write and a read went unnoticed"
    );

    // A missing barrier between thread 0's read of the partials and the next reduction's writes
    // (write-after-read): caught because warps lag behind each other for rounds.
    let n = BLOCK as usize * MANY_BLOCKS as usize;
    let input: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let want: Vec<f32> = input
        .chunks(BLOCK as usize)
        .map(|c| 3.0 * c.iter().sum::<f32>())
        .collect();
    let fixed = run_in_out(
        s,
        &func(&d, "emu_test_two_sums"),
        &input,
        MANY_BLOCKS as usize,
        MANY_BLOCKS,
    );
    assert_eq!(fixed, want, "the fixed kernel must pass");
    let broken = run_in_out(
        s,
        &func(&d, "emu_test_two_sums_nosync"),
        &input,
        MANY_BLOCKS as usize,
        MANY_BLOCKS,
    );
    if samkit_testkit::knobs::in_order() {
        println!("SAMKIT_FAKE_SEED=0 runs in order: a write-after-read race cannot show");
    } else {
        assert_ne!(
            broken, want,
            "a missing __syncthreads before reusing shared memory went unnoticed"
        );
    }
}

/// Launches `emu_test_scale*` over `n` elements; the launch's result and the output.
fn scale(d: &Device, name: &str, n: u32) -> (Result<(), DriverError>, Vec<f32>) {
    let s = d.stream();
    let input = ramp(n as usize);
    let inp = s.clone_htod(&input).expect("htod");
    let mut out = s.alloc_zeros::<f32>(n as usize).expect("alloc");
    let f = func(d, name);
    let mut b = s.launch_builder(&f);
    b.arg(&inp).arg(&mut out).arg(&n);
    // SAFETY: (const float*, float*, u32); the broken twin writes out[n], which the emulator's
    // canary catches (the allocation has slack behind it, so the host memory is not corrupted).
    let r = unsafe { b.launch(cfg(n.div_ceil(128), 128)) }.map(|_| ());
    (r, s.clone_dtoh(&out).expect("dtoh"))
}

#[test]
fn emulator_catches_an_out_of_bounds_write() {
    let Some(d) = dev() else { return };
    // 1000 elements: the write one past the end lands inside the allocation's 256-byte rounding,
    // where an allocator with slack would hide it.
    let n = 1000;
    let (r, out) = scale(&d, "emu_test_scale", n);
    r.expect("the fixed kernel must pass");
    let want: Vec<f32> = ramp(n as usize).iter().map(|x| 2.0 * x).collect();
    assert_eq!(out, want);
    let (r, _) = scale(&d, "emu_test_scale_overrun", n);
    assert_eq!(
        launch_error(r),
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        "a write past the end of an allocation must fail the launch"
    );
    // The canary was re-armed: the next launch and the frees are clean.
    let (r, out) = scale(&d, "emu_test_scale", n);
    r.expect("a launch after a caught overrun");
    assert_eq!(out, want);
}

/// Launches `emu_test_half_sum*` over `warps` warps; the launch's result and the output.
fn half_sum(d: &Device, name: &str, warps: u32) -> (Result<(), DriverError>, Vec<u32>) {
    let s = d.stream();
    let input: Vec<u32> = (0..warps * 32).collect();
    let inp = s.clone_htod(&input).expect("htod");
    let mut out = s.alloc_zeros::<u32>(warps as usize).expect("alloc");
    let f = func(d, name);
    let mut b = s.launch_builder(&f);
    b.arg(&inp).arg(&mut out);
    // SAFETY: (const u32*, u32*) with one thread per input element, one output per warp.
    let r = unsafe { b.launch(cfg(warps / 2, 64)) }.map(|_| ());
    (r, s.clone_dtoh(&out).expect("dtoh"))
}

#[test]
fn emulator_rejects_a_partial_mask_shuffle() {
    let Some(d) = dev() else { return };
    let warps = 8;
    let (r, out) = half_sum(&d, "emu_test_half_sum", warps);
    r.expect("the fixed kernel (mask = the lanes that take part) must pass");
    let want: Vec<u32> = (0..warps)
        .map(|w| (0..16).map(|l| w * 32 + l).sum())
        .collect();
    assert_eq!(out, want);
    // The full mask while half the warp skips the shuffle.
    let (r, _) = half_sum(&d, "emu_test_half_sum_full_mask", warps);
    assert_eq!(
        launch_error(r),
        CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION,
        "a shuffle whose mask names lanes that do not take part must fail"
    );
    // Lanes that take part without being in the mask.
    let (r, _) = half_sum(&d, "emu_test_half_sum_foreign_lanes", warps);
    assert_eq!(
        launch_error(r),
        CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION,
        "a shuffle by lanes outside its mask must fail"
    );
}

#[test]
fn emulator_rejects_a_block_above_launch_bounds() {
    let Some(d) = dev() else { return };
    let s = d.stream();
    let f = func(&d, "emu_test_bounded");
    assert_eq!(f.max_threads_per_block().expect("attribute"), 128);
    let launch = |grid: u32, block: u32, smem: u32| {
        let mut out = s.alloc_zeros::<u32>(1024).expect("alloc");
        let mut b = s.launch_builder(&f);
        b.arg(&mut out);
        let c = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: (u32*) with grid·block ≤ 1024 elements written.
        let r = unsafe { b.launch(c) }.map(|_| ());
        (r, s.clone_dtoh(&out).expect("dtoh"))
    };
    let (r, out) = launch(8, 128, 0);
    r.expect("a block within the launch bounds must run");
    assert_eq!(out, (0..1024).collect::<Vec<u32>>());
    let (r, _) = launch(4, 256, 0);
    assert_eq!(
        launch_error(r),
        CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        "a block above __launch_bounds__ must fail as on the GPU"
    );
    // The occupancy calculator agrees: no block of 256 threads fits.
    assert_eq!(
        f.occupancy_max_active_blocks_per_multiprocessor(256, 0, None)
            .expect("occupancy"),
        0
    );
    // Dynamic shared memory: 48 KiB without opting in, 227 KiB at most.
    let (r, _) = launch(8, 128, 48 * 1024 + 1);
    assert_eq!(launch_error(r), CUresult::CUDA_ERROR_INVALID_VALUE);
    let attr = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    assert!(f.set_attribute(attr, 228 * 1024).is_err());
    f.set_attribute(attr, 100 * 1024)
        .expect("opt in to 100 KiB");
    let (r, _) = launch(8, 128, 100 * 1024);
    r.expect("dynamic shared memory within the raised limit");
    f.set_attribute(attr, 48 * 1024)
        .expect("back to the default");

    // A kernel without bounds: up to 1024 threads, and the grid limits of sm_90.
    let g = func(&d, "emu_test_scale");
    assert_eq!(g.max_threads_per_block().expect("attribute"), 1024);
    let n = 1u32;
    let inp = s.alloc_zeros::<f32>(1).expect("alloc");
    let mut out = s.alloc_zeros::<f32>(1).expect("alloc");
    for (grid, block) in [
        ((1, 1, 1), (2048, 1, 1)),
        ((1, 65536, 1), (32, 1, 1)),
        ((1, 1, 1), (1, 1, 65)),
    ] {
        let mut b = s.launch_builder(&g);
        b.arg(&inp).arg(&mut out).arg(&n);
        let c = LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes: 0,
        };
        // SAFETY: rejected before it runs (checked below).
        let r = unsafe { b.launch(c) }.map(|_| ());
        assert_eq!(
            launch_error(r),
            CUresult::CUDA_ERROR_INVALID_VALUE,
            "{grid:?} {block:?}"
        );
    }
}

#[test]
fn emulator_turns_a_trap_into_a_launch_error() {
    let Some(d) = dev() else { return };
    let s = d.stream();
    let f = func(&d, "emu_test_trap");
    let run = |bad: u32| {
        let mut out = s.alloc_zeros::<u32>(64).expect("alloc");
        let mut b = s.launch_builder(&f);
        b.arg(&bad).arg(&mut out);
        // SAFETY: (u32, u32*) with 64 threads writing 64 elements.
        let r = unsafe { b.launch(cfg(1, 64)) }.map(|_| ());
        (r, s.clone_dtoh(&out).expect("dtoh"))
    };
    let (r, _) = run(1);
    assert_eq!(launch_error(r), CUresult::CUDA_ERROR_LAUNCH_FAILED);
    // The process and the context go on (a real context would stay broken).
    let (r, out) = run(0);
    r.expect("a launch without a trap");
    assert_eq!(out, (0..64).collect::<Vec<u32>>());
}

#[test]
fn emulator_runs_a_last_block_ticket_and_warp_matching() {
    let Some(d) = dev() else { return };
    let s = d.stream();
    let grid = MANY_BLOCKS;
    let n = (grid * BLOCK) as usize;
    let input: Vec<u32> = (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) >> 20)
        .collect();
    let want: u64 = input.iter().map(|&x| x as u64).sum();
    let inp = s.clone_htod(&input).expect("htod");
    let mut part = s.alloc_zeros::<u64>(grid as usize).expect("alloc");
    let mut ticket = s.alloc_zeros::<u32>(1).expect("alloc");
    let mut total = s.alloc_zeros::<u64>(1).expect("alloc");
    let f = func(&d, "emu_test_ticket_sum");
    // Twice: the last block resets the ticket for the next launch.
    for _ in 0..2 {
        let mut b = s.launch_builder(&f);
        b.arg(&inp).arg(&mut part).arg(&mut ticket).arg(&mut total);
        // SAFETY: (const u32*, u64*, u32*, u64*) sized for `grid` blocks of BLOCK threads.
        unsafe { b.launch(cfg(grid, BLOCK)) }.expect("launch");
        assert_eq!(s.clone_dtoh(&total).expect("dtoh"), vec![want]);
        assert_eq!(s.clone_dtoh(&ticket).expect("dtoh"), vec![0]);
    }

    let mut counts = s.alloc_zeros::<u32>(8).expect("alloc");
    let g = func(&d, "emu_test_match_count");
    let mut b = s.launch_builder(&g);
    b.arg(&inp).arg(&mut counts);
    // SAFETY: (const u32*, u32*) with grid·BLOCK keys and 8 counters.
    unsafe { b.launch(cfg(grid, BLOCK)) }.expect("launch");
    let mut want = [0u32; 8];
    for &k in &input {
        want[(k & 7) as usize] += 1;
    }
    assert_eq!(s.clone_dtoh(&counts).expect("dtoh"), want.to_vec());
}

#[test]
fn emulated_device_has_the_sms_and_occupancy_of_an_h200() {
    let Some(d) = dev() else { return };
    if !samkit_testkit::knobs::sms_overridden() {
        assert_eq!(d.sm_count(), 132);
    }
    let f = func(&d, "emu_test_scale");
    let occ = |threads: u32, smem: usize| {
        f.occupancy_max_active_blocks_per_multiprocessor(threads, smem, None)
            .expect("occupancy")
    };
    // min(32, 2048 / threads) blocks, limited by 228 KiB of shared memory (1 KiB reserved per
    // block).
    assert_eq!(occ(256, 0), 8);
    assert_eq!(occ(1024, 0), 2);
    assert_eq!(occ(32, 0), 32);
    assert_eq!(occ(64, 0), 32);
    assert_eq!(occ(128, 40 * 1024), 5);
}
