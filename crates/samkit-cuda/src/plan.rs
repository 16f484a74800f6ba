//! A layout on the device: its units (the fixed partition every kernel walks), the unit range of
//! each segment, and the scratch of the two-stage reductions.
use std::sync::Arc;

use cudarc::driver::CudaStream;
use samkit_core::{Layout, ParamKind};

use crate::abi::{self, Ctl, Unit};
use crate::buffers::DevBuf;
use crate::error::Result;

/// Cuts a layout into units of at most [`abi::UNIT`] elements that never cross a segment: the
/// partition depends on the layout alone. Returns the units and, per segment, the index of its
/// first unit (one more entry at the end).
pub fn units_of(layout: &Layout) -> (Vec<Unit>, Vec<u32>) {
    let mut units = Vec::new();
    let mut first = Vec::with_capacity(layout.segments().len() + 1);
    for (si, s) in layout.segments().iter().enumerate() {
        first.push(units.len() as u32);
        let mut off = 0;
        while off < s.len {
            let len = abi::UNIT.min(s.len - off);
            units.push(Unit {
                global: (s.offset + off) as u64,
                seg_off: off as u64,
                seg: si as u32,
                len: len as u32,
                kind: match s.kind {
                    ParamKind::Weight => abi::KIND_WEIGHT,
                    ParamKind::Bias => abi::KIND_BIAS,
                },
                pad: 0,
            });
            off += len;
        }
    }
    first.push(units.len() as u32);
    (units, first)
}

pub(crate) struct Plan {
    pub layout: Layout,
    pub n: usize,
    /// 64-bit words of a bitset over the layout.
    pub words: usize,
    pub n_segs: usize,
    pub n_units: usize,
    pub units: DevBuf<Unit>,
    pub seg_units: DevBuf<u32>,
}

impl Plan {
    pub fn new(stream: &Arc<CudaStream>, layout: Layout) -> Result<Self> {
        let (units, first) = units_of(&layout);
        Ok(Plan {
            n: layout.len(),
            words: layout.len().div_ceil(64),
            n_segs: layout.segments().len(),
            n_units: units.len(),
            units: DevBuf::from_host(stream, &units)?,
            seg_units: DevBuf::from_host(stream, &first)?,
            layout,
        })
    }
}

/// The device-resident step state and the scratch of the reductions.
pub(crate) struct Work {
    pub ctl: DevBuf<Ctl>,
    /// Per unit: the first and second partial sums, and the non-finite flag.
    pub pa: DevBuf<f64>,
    pub pb: DevBuf<f64>,
    pub bad: DevBuf<u32>,
    /// Per segment.
    pub seg_tmp: DevBuf<f64>,
    pub seg_gsq: DevBuf<f64>,
    pub seg_gv: DevBuf<f64>,
    pub b_seg: DevBuf<f32>,
    pub coef_c_seg: DevBuf<f32>,
    /// The fused kernels' last-block counter: zero between launches (the last block resets it).
    pub ticket: DevBuf<u32>,
}

impl Work {
    pub fn new(stream: &Arc<CudaStream>, plan: &Plan) -> Result<Self> {
        Ok(Work {
            ctl: DevBuf::zeros(stream, 1)?,
            pa: DevBuf::zeros(stream, plan.n_units)?,
            pb: DevBuf::zeros(stream, plan.n_units)?,
            bad: DevBuf::zeros(stream, plan.n_units)?,
            seg_tmp: DevBuf::zeros(stream, plan.n_segs)?,
            seg_gsq: DevBuf::zeros(stream, plan.n_segs)?,
            seg_gv: DevBuf::zeros(stream, plan.n_segs)?,
            b_seg: DevBuf::zeros(stream, plan.n_segs)?,
            coef_c_seg: DevBuf::zeros(stream, plan.n_segs)?,
            ticket: DevBuf::zeros(stream, 1)?,
        })
    }

    /// Reads the step state back (waits for the stream).
    pub fn ctl(&self, stream: &Arc<CudaStream>) -> Result<Ctl> {
        Ok(self.ctl.download(stream)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_cover_resnet18_in_order() {
        let l = Layout::resnet18(10, 64).unwrap();
        let (u, first) = units_of(&l);
        assert_eq!(first.len(), l.segments().len() + 1);
        assert_eq!(u.iter().map(|u| u.len as usize).sum::<usize>(), l.len());
        for w in u.windows(2) {
            assert_eq!(w[0].global + w[0].len as u64, w[1].global);
        }
        assert!(u.iter().all(|u| u.len as usize <= abi::UNIT && u.len > 0));
        for (s, seg) in l.segments().iter().enumerate() {
            let n: u32 = u[first[s] as usize..first[s + 1] as usize]
                .iter()
                .map(|u| u.len)
                .sum();
            assert_eq!(n as usize, seg.len);
        }
    }
}
