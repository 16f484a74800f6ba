//! The two ways a trainer hands buffers to an optimizer: one flat arena, or a list of
//! separate slices (one per segment of the layout). Both give the same per-segment views,
//! so every pass, and every reduction, is the same whatever the caller's representation.
use crate::error::{Error, Result};
use crate::layout::Layout;

/// Read access to a buffer laid out as `layout`.
pub trait Params {
    fn segments<'a>(&'a self, layout: &Layout, what: &'static str) -> Result<Vec<&'a [f32]>>;
}

/// Write access to a buffer laid out as `layout`.
pub trait ParamsMut: Params {
    fn segments_mut<'a>(
        &'a mut self,
        layout: &Layout,
        what: &'static str,
    ) -> Result<Vec<&'a mut [f32]>>;
}

fn check_list(
    layout: &Layout,
    what: &'static str,
    lens: impl Iterator<Item = usize>,
) -> Result<()> {
    let lens: Vec<usize> = lens.collect();
    if lens.len() != layout.segments().len() {
        return Err(Error::LayoutMismatch {
            what,
            detail: format!(
                "{} slices, the layout has {} segments",
                lens.len(),
                layout.segments().len()
            ),
        });
    }
    for (n, s) in lens.iter().zip(layout.segments()) {
        if *n != s.len {
            return Err(Error::LayoutMismatch {
                what,
                detail: format!(
                    "slice for `{}` has {n} elements, expected {}",
                    s.name, s.len
                ),
            });
        }
    }
    Ok(())
}

impl Params for [f32] {
    fn segments<'a>(&'a self, layout: &Layout, what: &'static str) -> Result<Vec<&'a [f32]>> {
        layout.check_len(what, self.len())?;
        layout.split(self)
    }
}

impl ParamsMut for [f32] {
    fn segments_mut<'a>(
        &'a mut self,
        layout: &Layout,
        what: &'static str,
    ) -> Result<Vec<&'a mut [f32]>> {
        layout.check_len(what, self.len())?;
        layout.split_mut(self)
    }
}

impl Params for [&[f32]] {
    fn segments<'a>(&'a self, layout: &Layout, what: &'static str) -> Result<Vec<&'a [f32]>> {
        check_list(layout, what, self.iter().map(|s| s.len()))?;
        Ok(self.to_vec())
    }
}

impl Params for [&mut [f32]] {
    fn segments<'a>(&'a self, layout: &Layout, what: &'static str) -> Result<Vec<&'a [f32]>> {
        check_list(layout, what, self.iter().map(|s| s.len()))?;
        Ok(self.iter().map(|s| &**s).collect())
    }
}

impl ParamsMut for [&mut [f32]] {
    fn segments_mut<'a>(
        &'a mut self,
        layout: &Layout,
        what: &'static str,
    ) -> Result<Vec<&'a mut [f32]>> {
        check_list(layout, what, self.iter().map(|s| s.len()))?;
        Ok(self.iter_mut().map(|s| &mut **s).collect())
    }
}

impl Params for [Vec<f32>] {
    fn segments<'a>(&'a self, layout: &Layout, what: &'static str) -> Result<Vec<&'a [f32]>> {
        check_list(layout, what, self.iter().map(|s| s.len()))?;
        Ok(self.iter().map(|s| s.as_slice()).collect())
    }
}

impl ParamsMut for [Vec<f32>] {
    fn segments_mut<'a>(
        &'a mut self,
        layout: &Layout,
        what: &'static str,
    ) -> Result<Vec<&'a mut [f32]>> {
        check_list(layout, what, self.iter().map(|s| s.len()))?;
        Ok(self.iter_mut().map(|s| s.as_mut_slice()).collect())
    }
}

// A `Vec` of any of them (`Vec<f32>` flat, `Vec<Vec<f32>>` per segment, ...), as its slice.
impl<B> Params for Vec<B>
where
    [B]: Params,
{
    fn segments<'a>(&'a self, layout: &Layout, what: &'static str) -> Result<Vec<&'a [f32]>> {
        self.as_slice().segments(layout, what)
    }
}

impl<B> ParamsMut for Vec<B>
where
    [B]: ParamsMut,
{
    fn segments_mut<'a>(
        &'a mut self,
        layout: &Layout,
        what: &'static str,
    ) -> Result<Vec<&'a mut [f32]>> {
        self.as_mut_slice().segments_mut(layout, what)
    }
}

/// Copies a buffer in any representation into a new flat vector.
pub fn to_flat<P: Params + ?Sized>(p: &P, layout: &Layout) -> Result<Vec<f32>> {
    Ok(p.segments(layout, "params")?.concat())
}
