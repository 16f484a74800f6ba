//! Lists of views (`CudaView`/`CudaViewMut`, one per segment, of memory another framework owns:
//! samkit-candle's path for candle's CUDA Vars) step exactly as lists of owned `CudaSlice`s, and
//! a list of the wrong shape is refused with the buffer named. On the emulated device; skipped,
//! with one line, where no emulation is available (see `emulated.rs`).
mod common;

use std::sync::Arc;

use common::parity::values;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use samkit_core::{BaseOptimizer, FirstOutcome, Layout, Rule, Sam, SamOptimizer, Sgd};
use samkit_cuda::{Device, Error, GpuOptimizer};

fn dev() -> Option<Arc<Device>> {
    samkit_testkit::device_or_skip()
}

fn layout() -> Layout {
    Layout::mlp(&[7, 5, 3]).unwrap()
}

fn optimizer(dev: &Arc<Device>) -> GpuOptimizer<f32> {
    let base = BaseOptimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    });
    GpuOptimizer::<f32>::new(dev, layout(), Rule::Sam(Sam::default()), base).unwrap()
}

/// One SAM step on per-segment lists of `W` weights and `G` gradients.
fn sam_step<W, G>(opt: &mut GpuOptimizer<f32>, w: &mut W, g: &G, g2: &G)
where
    W: samkit_cuda::DeviceParamsMut<f32> + ?Sized,
    G: samkit_cuda::DeviceParams<f32> + ?Sized,
{
    let fo = SamOptimizer::<W, G>::first_step(opt, w, g).unwrap();
    assert_eq!(fo, FirstOutcome::Perturbed);
    SamOptimizer::<W, G>::second_step(opt, w, g2).unwrap();
}

fn per_segment(dev: &Device, layout: &Layout, v: &[f32]) -> Vec<CudaSlice<f32>> {
    let s = dev.stream();
    layout
        .segments()
        .iter()
        .map(|seg| s.clone_htod(&v[seg.range()]).unwrap())
        .collect()
}

fn download(dev: &Device, list: &[CudaSlice<f32>]) -> Vec<u32> {
    let s = dev.stream();
    list.iter()
        .flat_map(|b| s.clone_dtoh(b).unwrap())
        .map(f32::to_bits)
        .collect()
}

#[test]
fn views_step_as_owned_slices_and_wrong_shapes_are_refused() {
    let Some(d) = dev() else { return };
    let layout = layout();
    let n = layout.len();
    let (w0, g, g2) = (values(n, 1, 0.5), values(n, 2, 0.1), values(n, 3, 0.1));

    // Owned slices, one per segment.
    let mut w_owned = per_segment(&d, &layout, &w0);
    let (g_owned, g2_owned) = (per_segment(&d, &layout, &g), per_segment(&d, &layout, &g2));
    let mut opt = optimizer(&d);
    sam_step(&mut opt, &mut w_owned[..], &g_owned[..], &g2_owned[..]);

    // Views of the same values, as a framework that owns the memory hands them over.
    let mut w_mem = per_segment(&d, &layout, &w0);
    let (g_mem, g2_mem) = (per_segment(&d, &layout, &g), per_segment(&d, &layout, &g2));
    let mut opt = optimizer(&d);
    {
        let mut w_views: Vec<CudaViewMut<f32>> =
            w_mem.iter_mut().map(|s| s.slice_mut(..)).collect();
        let g_views: Vec<CudaView<f32>> = g_mem.iter().map(|s| s.slice(..)).collect();
        let g2_views: Vec<CudaView<f32>> = g2_mem.iter().map(|s| s.slice(..)).collect();
        sam_step(&mut opt, &mut w_views[..], &g_views[..], &g2_views[..]);
    }
    assert_eq!(
        download(&d, &w_mem),
        download(&d, &w_owned),
        "a step on views differs from the step on owned slices"
    );

    // A list without its last segment, and a segment one element short.
    let last = g_mem.len() - 1;
    let g_short: Vec<CudaView<f32>> = g_mem[..last].iter().map(|s| s.slice(..)).collect();
    let mut g_cut: Vec<CudaView<f32>> = g_mem.iter().map(|s| s.slice(..)).collect();
    g_cut[last] = g_mem[last].slice(..g_mem[last].len() - 1);
    let mut w_views: Vec<CudaViewMut<f32>> = w_mem.iter_mut().map(|s| s.slice_mut(..)).collect();
    for (g_bad, says) in [(&g_short, "segments"), (&g_cut, "elements")] {
        let err = SamOptimizer::<[CudaViewMut<f32>], [CudaView<f32>]>::first_step(
            &mut opt,
            &mut w_views[..],
            &g_bad[..],
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Buffer { what: "gradient", detail } if detail.contains(says)),
            "{err}"
        );
    }
}
