//! Part (a'): what SAM does on the survey's 1-D function, beyond the GIFs. The function has two
//! minima, a sharp one on the left (f'' ≈ 404) and a flatter one on the right (f'' ≈ 152), and a
//! local maximum near 0. For SGD and SAM the figure shows where the run ends and the curvature
//! f'' there, against SAM's ρ (from one start point) and against the start point (at one ρ),
//! with both minima's curvature marked. A flat-minimum seeker would end on the right at
//! f'' ≈ 152; the data say whether SAM does.
use std::path::{Path, PathBuf};

use plotters::prelude::SeriesLabelPosition;
use serde::Serialize;

use crate::error::Result;
use crate::plot::{self, Axes, Series};
use crate::toy::oned::{self, df, f, DOMAIN};
use samkit_core::{Rule, Sam};

/// `f''(x) = 30x⁴ + 20x³ + 30x − 60`.
pub fn d2f(x: f64) -> f64 {
    30.0 * x.powi(4) + 20.0 * x.powi(3) + 30.0 * x - 60.0
}

/// The two minima's marks: colours no optimizer uses (purple left, sky blue right).
const WELLS: [plotters::style::RGBColor; 2] = [
    plotters::style::RGBColor(110, 40, 150),
    plotters::style::RGBColor(0, 160, 220),
];

/// A neutral grey for marks that are not optimizers.
const GREY: plotters::style::RGBColor = plotters::style::RGBColor(120, 120, 120);

/// A stationary point of `f` in the domain.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Stationary {
    pub x: f64,
    pub f: f64,
    pub curvature: f64,
}

/// Points of the sampling grid used to bracket the roots of `f'`.
const ROOT_GRID: usize = 6000;
/// Bisection steps per root (the bracket shrinks to `6 / ROOT_GRID / 2^60`).
const BISECTIONS: usize = 60;

/// The minima and maxima of `f` in the domain, left to right (roots of `f'` by bisection).
pub fn stationary_points() -> (Vec<Stationary>, Vec<Stationary>) {
    let (mut minima, mut maxima) = (Vec::new(), Vec::new());
    let at = |i: usize| DOMAIN.0 + (DOMAIN.1 - DOMAIN.0) * i as f64 / ROOT_GRID as f64;
    for i in 0..ROOT_GRID {
        let (mut a, mut b) = (at(i), at(i + 1));
        if df(a).signum() == df(b).signum() {
            continue;
        }
        for _ in 0..BISECTIONS {
            let m = 0.5 * (a + b);
            if df(a).signum() == df(m).signum() {
                a = m;
            } else {
                b = m;
            }
        }
        let x = 0.5 * (a + b);
        let s = Stationary {
            x,
            f: f(x),
            curvature: d2f(x),
        };
        if s.curvature > 0.0 {
            minima.push(s);
        } else {
            maxima.push(s);
        }
    }
    (minima, maxima)
}

/// Where a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct End {
    pub optimizer: &'static str,
    pub rho: f64,
    pub x0: f64,
    /// The mean of the last [`TAIL`] iterates: SAM's normalised perturbation (`ρ·sign f'` in
    /// 1-D) keeps it bouncing around where it settles, so the last iterate alone depends on
    /// the step count's parity.
    pub final_x: f64,
    /// `max − min` of the last [`TAIL`] iterates: 0 for a run that settled, the bounce's
    /// width for one that did not.
    pub tail_spread: f64,
    pub final_f: f64,
    /// `f''` at the final point.
    pub curvature: f64,
    /// `"left well"` (the sharp minimum's basin), `"right well"` (the flat one's), `"local
    /// maximum"` (within [`NEAR`] of it) or `"diverged"`.
    pub region: String,
}

/// A final point within this distance of the local maximum is "at" it (SAM's bounce around a
/// point is about `lr·|f'|` wide, a few hundredths here).
pub const NEAR: f64 = 0.1;

/// The iterates averaged into a run's final point.
pub const TAIL: usize = 50;

/// Where `x` lies: at the local maximum (within [`NEAR`]), else in the left or right well (the
/// basins either side of the maximum). SAM settles a distance of about ρ from a well's
/// minimum, not at it, so the well, not the minimum, is what is named.
fn region(x: f64, maxima: &[Stationary]) -> String {
    if !x.is_finite() {
        return "diverged".into();
    }
    match maxima.first() {
        Some(m) if (m.x - x).abs() < NEAR => "local maximum".into(),
        Some(m) if x < m.x => "left well".into(),
        Some(_) => "right well".into(),
        None => "no maximum".into(),
    }
}

/// The end of SAM (`rho > 0`) or SGD (`rho == 0`) after `steps` from `x0`.
pub fn end(rho: f64, lr: f64, x0: f64, steps: usize) -> Result<End> {
    let (name, rule) = if rho > 0.0 {
        (
            "SAM",
            Rule::Sam(Sam {
                rho: rho as f32,
                adaptive: false,
                eps_p: None,
                grad_centralization: false,
            }),
        )
    } else {
        ("SGD", Rule::Base)
    };
    let path = oned::path(rule, lr, x0, steps)?;
    let (_, maxima) = stationary_points();
    // A run that stopped early diverged: it has no final point.
    let tail = &path[path.len().saturating_sub(TAIL)..];
    let (x, spread) = if path.len() == steps + 1 {
        let lo = tail.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = tail.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (tail.iter().sum::<f64>() / tail.len() as f64, hi - lo)
    } else {
        (f64::NAN, f64::NAN)
    };
    Ok(End {
        optimizer: name,
        rho,
        x0,
        final_x: x,
        tail_spread: spread,
        final_f: f(x),
        curvature: d2f(x),
        region: region(x, &maxima),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    pub lr: f64,
    pub steps: usize,
    pub x0: f64,
    /// SAM's ρ of the start-point sweep.
    pub rho: f64,
    pub minima: Vec<Stationary>,
    pub maxima: Vec<Stationary>,
    /// SGD from `x0`.
    pub sgd: End,
    /// SAM from `x0` for every ρ of the sweep.
    pub over_rho: Vec<End>,
    /// SGD and SAM (at `rho`) from every start point.
    pub over_x0: Vec<(End, End)>,
}

/// Runs the sweeps.
pub fn sweep(
    lr: f64,
    steps: usize,
    x0: f64,
    rho: f64,
    rhos: &[f64],
    starts: &[f64],
) -> Result<Sweep> {
    let (minima, maxima) = stationary_points();
    let over_rho = rhos
        .iter()
        .map(|&r| end(r, lr, x0, steps))
        .collect::<Result<Vec<_>>>()?;
    let over_x0 = starts
        .iter()
        .map(|&s| Ok((end(0.0, lr, s, steps)?, end(rho, lr, s, steps)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Sweep {
        lr,
        steps,
        x0,
        rho,
        minima,
        maxima,
        sgd: end(0.0, lr, x0, steps)?,
        over_rho,
        over_x0,
    })
}

/// The figure: final point and curvature against ρ, and curvature against the start point.
pub fn plot(out: &Path, s: &Sweep) -> Result<PathBuf> {
    let file = out.join("oned_rho_sweep.png");
    let sam = plot::optimizer_color("sam");
    let sgd = plot::optimizer_color("sgd");
    let marks = |level: &dyn Fn(&Stationary) -> f64, rhos: (f64, f64)| -> Vec<Series> {
        let mut v = Vec::new();
        for (k, m) in s.minima.iter().enumerate() {
            let name = match (s.minima.len(), k) {
                (2, 0) => format!("left minimum (x = {:.2}, f'' = {:.0})", m.x, m.curvature),
                (2, 1) => format!("right minimum (x = {:.2}, f'' = {:.0})", m.x, m.curvature),
                _ => format!("minimum x = {:.2}, f'' = {:.0}", m.x, m.curvature),
            };
            v.push(
                Series::line(
                    name,
                    WELLS[k % 2],
                    vec![(rhos.0, level(m)), (rhos.1, level(m))],
                )
                .dashed(),
            );
        }
        v
    };
    let rho_range = s
        .over_rho
        .iter()
        .map(|e| e.rho)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
            (a.min(r), b.max(r))
        });
    let finite = |e: &End, v: f64| {
        if e.final_x.is_finite() {
            Some((e.rho, v))
        } else {
            None
        }
    };
    let x_vs_rho: Vec<(f64, f64)> = s
        .over_rho
        .iter()
        .filter_map(|e| finite(e, e.final_x))
        .collect();
    let c_vs_rho: Vec<(f64, f64)> = s
        .over_rho
        .iter()
        .filter_map(|e| finite(e, e.curvature))
        .collect();
    let mut left = marks(&|m| m.x, rho_range);
    for m in &s.maxima {
        left.push(
            Series::line(
                format!("local maximum (x = {:.2})", m.x),
                GREY,
                vec![(rho_range.0, m.x), (rho_range.1, m.x)],
            )
            .dashed(),
        );
    }
    left.push(Series::line("SAM's final x", sam, x_vs_rho).with_markers());
    left.push(Series::line(
        format!("SGD's final x ({:.3})", s.sgd.final_x),
        sgd,
        vec![(rho_range.0, s.sgd.final_x), (rho_range.1, s.sgd.final_x)],
    ));
    let mut mid = marks(&|m| m.curvature, rho_range);
    mid.push(Series::line("SAM: f'' at its final point", sam, c_vs_rho).with_markers());
    mid.push(Series::line(
        format!("SGD: f'' at its final point ({:.0})", s.sgd.curvature),
        sgd,
        vec![
            (rho_range.0, s.sgd.curvature),
            (rho_range.1, s.sgd.curvature),
        ],
    ));
    let x0_range = s
        .over_x0
        .iter()
        .map(|e| e.0.x0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
            (a.min(r), b.max(r))
        });
    let mut right = marks(&|m| m.curvature, x0_range);
    let by_x0 = |pick: &dyn Fn(&(End, End)) -> &End| -> Vec<(f64, f64)> {
        s.over_x0
            .iter()
            .filter(|p| pick(p).final_x.is_finite())
            .map(|p| (p.0.x0, pick(p).curvature))
            .collect()
    };
    right.push(Series::line("SGD", sgd, by_x0(&|p| &p.0)).with_markers());
    right.push(Series::line(format!("SAM (ρ = {})", s.rho), sam, by_x0(&|p| &p.1)).with_markers());
    let header = format!(
        "{}: where SGD and SAM end after {} steps (lr = {}) and the curvature there",
        oned::FORMULA,
        s.steps,
        s.lr
    );
    plot::png(&file, (1800, 600), |root| {
        let body = plot::titled(root, &header, 20)?;
        let panels = body.split_evenly((1, 3));
        plot::line_chart(
            &panels[0],
            &Axes::new(format!("Final x against ρ (x₀ = {})", s.x0), "ρ", "final x")
                .legend_at(SeriesLabelPosition::MiddleRight),
            &left,
        )?;
        plot::line_chart(
            &panels[1],
            &Axes::new(
                format!("f'' at the final point against ρ (x₀ = {})", s.x0),
                "ρ",
                "f''(final x)",
            )
            .legend_at(SeriesLabelPosition::MiddleRight),
            &mid,
        )?;
        plot::line_chart(
            &panels[2],
            &Axes::new(
                "f'' at the final point against the start point",
                "start point x₀",
                "f''(final x)",
            )
            .legend_at(SeriesLabelPosition::MiddleRight),
            &right,
        )
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_minima_have_the_issues_curvatures() {
        let (minima, maxima) = stationary_points();
        assert_eq!(minima.len(), 2, "{minima:?}");
        assert_eq!(maxima.len(), 1, "{maxima:?}");
        // Left: sharp (≈ 404); right: flat (≈ 152); a maximum between them near 0.
        assert!(minima[0].x < maxima[0].x && maxima[0].x < minima[1].x);
        assert!((minima[0].curvature - 404.0).abs() < 1.0, "{minima:?}");
        assert!((minima[1].curvature - 152.0).abs() < 1.0, "{minima:?}");
        assert!(maxima[0].x.abs() < 0.1, "{maxima:?}");
        for m in minima.iter().chain(&maxima) {
            assert!(df(m.x).abs() < 1e-9);
        }
        // f'' by finite differences of f'.
        for x in [-2.0, -0.3, 0.4, 1.7] {
            let h = 1e-6;
            let fd = (df(x + h) - df(x - h)) / (2.0 * h);
            assert!((fd - d2f(x)).abs() < 1e-4 * (1.0 + fd.abs()), "{x}");
        }
    }
}
