//! Part (b): the Beale function and the trajectories of SGD and the SAM family over its
//! contour plot (the survey's figures 5 and 7).
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::plot::{self, optimizer_color, ContourPlot, Field, Path2};
use crate::toy::trajectory;
use samkit_core::{Asam, BaseOptimizer, FriendlySam, Gsam, Rule, Sam};

/// `(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²`; global minimum 0 at (3, 0.5).
pub fn beale(x: f64, y: f64) -> f64 {
    let a = 1.5 - x + x * y;
    let b = 2.25 - x + x * y * y;
    let c = 2.625 - x + x * y * y * y;
    a * a + b * b + c * c
}

pub fn beale_grad(x: f64, y: f64) -> (f64, f64) {
    let a = 1.5 - x + x * y;
    let b = 2.25 - x + x * y * y;
    let c = 2.625 - x + x * y * y * y;
    let gx = 2.0 * a * (y - 1.0) + 2.0 * b * (y * y - 1.0) + 2.0 * c * (y * y * y - 1.0);
    let gy = 2.0 * a * x + 4.0 * b * x * y + 6.0 * c * x * y * y;
    (gx, gy)
}

pub const MINIMUM: (f64, f64) = (3.0, 0.5);
/// A saddle point of the Beale function (zero gradient, f = 14.203125).
pub const SADDLE: (f64, f64) = (0.0, 1.0);

/// The five optimizers of the figure, all with plain SGD as the base optimizer.
pub fn rules(rho: f32, lr: f32) -> Vec<(&'static str, Rule)> {
    vec![
        ("SGD", Rule::Base),
        (
            "SAM",
            Rule::Sam(Sam {
                rho,
                adaptive: false,
                eps_p: None,
                grad_centralization: false,
            }),
        ),
        (
            "ASAM",
            Rule::Asam(Asam {
                rho,
                ..Asam::default()
            }),
        ),
        (
            "FriendlySAM",
            Rule::FriendlySam(FriendlySam {
                rho,
                ..FriendlySam::default()
            }),
        ),
        (
            "GSAM",
            Rule::Gsam(Gsam {
                rho_max: rho,
                rho_min: rho,
                lr_max: lr,
                lr_min: lr,
                ..Gsam::default()
            }),
        ),
    ]
}

#[derive(Debug, Serialize)]
pub struct BealeRun {
    pub name: &'static str,
    pub path: Vec<(f64, f64)>,
    pub final_point: (f64, f64),
    pub final_value: f64,
    pub distance_to_minimum: f64,
    pub distance_to_saddle: f64,
}

pub fn run_all(start: (f64, f64), steps: usize, lr: f64, rho: f64) -> Result<Vec<BealeRun>> {
    rules(rho as f32, lr as f32)
        .into_iter()
        .map(|(name, rule)| {
            let pts = trajectory(
                rule,
                BaseOptimizer::sgd(lr as f32, 0.0, 0.0),
                &[start.0, start.1],
                steps,
                |w, g| {
                    let (x, y) = (w[0] as f64, w[1] as f64);
                    let (gx, gy) = beale_grad(x, y);
                    g[0] = gx as f32;
                    g[1] = gy as f32;
                    beale(x, y)
                },
            )?;
            let path: Vec<(f64, f64)> = pts.iter().map(|p| (p[0], p[1])).collect();
            let last = *path.last().unwrap_or(&start);
            let dist = |p: (f64, f64)| ((last.0 - p.0).powi(2) + (last.1 - p.1).powi(2)).sqrt();
            Ok(BealeRun {
                name,
                final_point: last,
                final_value: beale(last.0, last.1),
                distance_to_minimum: dist(MINIMUM),
                distance_to_saddle: dist(SADDLE),
                path,
            })
        })
        .collect()
}

/// The plotted window: the box around the paths, the start and the minimum, with a margin,
/// kept inside the usual [−4.5, 4.5]² domain.
fn window(runs: &[BealeRun], start: (f64, f64)) -> ((f64, f64), (f64, f64)) {
    let mut xs = vec![start.0, MINIMUM.0, SADDLE.0];
    let mut ys = vec![start.1, MINIMUM.1, SADDLE.1];
    for r in runs {
        for &(x, y) in &r.path {
            if x.is_finite() && y.is_finite() {
                xs.push(x);
                ys.push(y);
            }
        }
    }
    let span = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.12).max(0.3);
        ((lo - pad).max(-4.5), (hi + pad).min(4.5))
    };
    (span(&xs), span(&ys))
}

pub fn plot(
    out: &Path,
    runs: &[BealeRun],
    start: (f64, f64),
    lr: f64,
    rho: f64,
) -> Result<PathBuf> {
    let (wx, wy) = window(runs, start);
    let field = Field::sample(wx, wy, 220, |x, y| (1.0 + beale(x, y)).ln());
    let top = field
        .values
        .iter()
        .flatten()
        .copied()
        .fold(0.0f64, f64::max);
    let levels: Vec<f64> = (1..=22).map(|k| top * k as f64 / 23.0).collect();
    let paths: Vec<Path2> = runs
        .iter()
        .map(|r| Path2 {
            name: r.name.to_string(),
            color: optimizer_color(r.name),
            points: r.path.clone(),
        })
        .collect();
    let title = format!(
        "Beale function, contours of ln(1 + f): {} steps, lr = {lr}, ρ = {rho}",
        runs.first().map_or(0, |r| r.path.len() - 1)
    );
    let file = out.join("beale_trajectories.png");
    plot::png(&file, (1000, 800), |root| {
        plot::contour_plot(
            root,
            &ContourPlot {
                title: &title,
                field: &field,
                levels: &levels,
                paths: &paths,
                start,
                star: MINIMUM,
                star_label: "global minimum (3, 0.5)",
                saddle: Some(SADDLE),
            },
        )
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        for &(x, y) in &[
            (0.7, 1.4),
            (-1.0, 1.5),
            (2.0, -0.5),
            (3.1, 0.45),
            (-3.0, 2.5),
        ] {
            let h = 1e-6;
            let fx = (beale(x + h, y) - beale(x - h, y)) / (2.0 * h);
            let fy = (beale(x, y + h) - beale(x, y - h)) / (2.0 * h);
            let (gx, gy) = beale_grad(x, y);
            assert!((fx - gx).abs() < 1e-4 * (1.0 + gx.abs()), "d/dx at {x},{y}");
            assert!((fy - gy).abs() < 1e-4 * (1.0 + gy.abs()), "d/dy at {x},{y}");
        }
    }

    #[test]
    fn minimum_and_saddle_are_stationary() {
        assert_eq!(beale(MINIMUM.0, MINIMUM.1), 0.0);
        assert_eq!(beale_grad(MINIMUM.0, MINIMUM.1), (0.0, 0.0));
        assert_eq!(beale_grad(SADDLE.0, SADDLE.1), (0.0, 0.0));
        assert!((beale(SADDLE.0, SADDLE.1) - 14.203125).abs() < 1e-12);
    }

    #[test]
    fn sgd_reaches_the_minimum_and_sam_stalls_at_the_saddle() {
        let runs = run_all((0.7, 1.4), 2000, 0.003, 0.5).unwrap();
        let by = |n: &str| runs.iter().find(|r| r.name == n).unwrap();
        assert!(
            by("SGD").distance_to_minimum < 0.1,
            "{:?}",
            by("SGD").final_point
        );
        assert!(
            by("SAM").distance_to_saddle < 0.1,
            "{:?}",
            by("SAM").final_point
        );
        assert!(
            by("ASAM").distance_to_minimum < 0.2,
            "{:?}",
            by("ASAM").final_point
        );
        assert_eq!(runs.len(), 5);
        assert!(runs.iter().all(|r| r.path.len() == 2001));
    }
}
