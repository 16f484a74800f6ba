//! Part (c): SAM near a noisy saddle. The mean number of steps until SAM leaves the saddle of
//! `f(x, y) = x²/2 − y²/2 + y⁴/4` as a function of the momentum γ and the batch size B (the
//! survey's theorem 2 and figure 6: more momentum and smaller batches escape sooner).
use std::path::{Path, PathBuf};

use plotters::prelude::SeriesLabelPosition;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::plot::{self, Axes, Heatmap, Series};
use crate::progress;
use crate::rng::Rng;
use samkit_core::{BaseOptimizer, Eval, GradRequest, Layout, Optimizer, Pass, Rule, Sam};

/// `x²/2 − y²/2 + y⁴/4`: a saddle at the origin (Hessian eigenvalues +1 and −1), minima at
/// `(0, ±1)`; the quartic keeps it bounded below.
pub fn f(x: f64, y: f64) -> f64 {
    0.5 * x * x - 0.5 * y * y + 0.25 * y.powi(4)
}

pub fn grad(x: f64, y: f64) -> (f64, f64) {
    (x, -y + y * y * y)
}

#[derive(Clone, Debug, Serialize)]
pub struct SaddleParams {
    pub lr: f64,
    pub rho: f64,
    /// Per-sample gradient noise std; a batch of `B` samples has std `noise / √B`.
    pub noise: f64,
    /// Escaped once `|y|` exceeds this.
    pub threshold: f64,
    pub max_steps: usize,
}

/// Steps SAM (SGD base with momentum `gamma`) takes from the saddle until `|y| > threshold`,
/// or `None` if it is still there after `max_steps`. Both passes of a step see the same
/// mini-batch noise, as two passes over one batch do.
pub fn escape_time(
    p: &SaddleParams,
    gamma: f64,
    batch: usize,
    rng: &mut Rng,
) -> Result<Option<usize>> {
    let rule = Rule::Sam(Sam {
        rho: p.rho as f32,
        adaptive: false,
        eps_p: None,
        grad_centralization: false,
    });
    let base = BaseOptimizer::sgd(p.lr as f32, gamma as f32, 0.0);
    let mut opt = Optimizer::new(Layout::flat(2)?, rule, base)?;
    let mut w = vec![0.0f32; 2];
    let std = p.noise / (batch as f64).sqrt();
    let mut noise = (0.0, 0.0);
    for t in 1..=p.max_steps {
        opt.step(&mut w, |req, w: &Vec<f32>, g| {
            match req {
                GradRequest::Batch(Pass::Clean) => {
                    noise = (std * rng.normal(), std * rng.normal());
                }
                GradRequest::Batch(Pass::Perturbed) => {}
                other => {
                    return Err(samkit_core::Error::Oracle(format!(
                        "the saddle has no {other:?} gradient"
                    )))
                }
            }
            let (x, y) = (w[0] as f64, w[1] as f64);
            let (gx, gy) = grad(x, y);
            g[0] = (gx + noise.0) as f32;
            g[1] = (gy + noise.1) as f32;
            Ok(Eval {
                loss: f(x, y),
                samples: batch,
            })
        })?;
        if (w[1] as f64).abs() > p.threshold {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub momentum: f64,
    pub batch: usize,
    /// Mean escape time over the seeds, a run that never escaped counted as `max_steps`.
    pub mean_steps: f64,
    /// Runs still at the saddle after `max_steps`.
    pub stuck: usize,
    pub seeds: usize,
}

/// Every (γ, B) cell over `seeds` runs; seed `s` uses the same noise stream in every cell.
pub fn grid(
    p: &SaddleParams,
    momenta: &[f64],
    batches: &[usize],
    seeds: usize,
    seed: u64,
) -> Result<Vec<Cell>> {
    let cells: Vec<(f64, usize)> = momenta
        .iter()
        .flat_map(|&g| batches.iter().map(move |&b| (g, b)))
        .collect();
    let pb = progress::bar((cells.len() * seeds) as u64, "saddle escape runs");
    let out = cells
        .par_iter()
        .map(|&(gamma, batch)| {
            let times = (0..seeds)
                .into_par_iter()
                .map(|s| {
                    let mut rng = Rng::stream(seed, s as u64);
                    let r = escape_time(p, gamma, batch, &mut rng);
                    pb.inc(1);
                    r
                })
                .collect::<Result<Vec<_>>>()?;
            let stuck = times.iter().filter(|t| t.is_none()).count();
            let total: usize = times.iter().map(|t| t.unwrap_or(p.max_steps)).sum();
            Ok(Cell {
                momentum: gamma,
                batch,
                mean_steps: total as f64 / seeds as f64,
                stuck,
                seeds,
            })
        })
        .collect::<Result<Vec<_>>>();
    pb.finish_and_clear();
    out
}

fn cell_text(c: &Cell, max_steps: usize) -> String {
    if c.stuck == c.seeds {
        format!("≥{max_steps}")
    } else if c.stuck > 0 {
        format!("{:.0} ({} stuck)", c.mean_steps, c.stuck)
    } else {
        format!("{:.0}", c.mean_steps)
    }
}

/// The table printed on stdout: one row per γ, one column per B.
pub fn table(cells: &[Cell], momenta: &[f64], batches: &[usize], max_steps: usize) -> String {
    let mut s = String::new();
    s.push_str("mean steps to escape the saddle (|y| > threshold); runs that never escaped count as the cap\n");
    s.push_str(&format!("{:>8}", "γ \\ B"));
    for b in batches {
        s.push_str(&format!("{:>18}", b));
    }
    s.push('\n');
    for &g in momenta {
        s.push_str(&format!("{:>8}", g));
        for &b in batches {
            let c = cells
                .iter()
                .find(|c| c.momentum == g && c.batch == b)
                .map(|c| cell_text(c, max_steps))
                .unwrap_or_default();
            s.push_str(&format!("{c:>18}"));
        }
        s.push('\n');
    }
    s
}

pub fn plot(
    out: &Path,
    cells: &[Cell],
    momenta: &[f64],
    batches: &[usize],
    p: &SaddleParams,
) -> Result<Vec<PathBuf>> {
    let find = |g: f64, b: usize| cells.iter().find(|c| c.momentum == g && c.batch == b);
    let col_names: Vec<String> = batches.iter().map(|b| b.to_string()).collect();
    let row_names: Vec<String> = momenta.iter().map(|g| g.to_string()).collect();
    let color_values: Vec<Vec<f64>> = momenta
        .iter()
        .map(|&g| {
            batches
                .iter()
                .map(|&b| find(g, b).map_or(f64::NAN, |c| c.mean_steps.max(1.0).log10()))
                .collect()
        })
        .collect();
    let cell_text: Vec<Vec<String>> = momenta
        .iter()
        .map(|&g| {
            batches
                .iter()
                .map(|&b| {
                    find(g, b)
                        .map(|c| cell_text(c, p.max_steps))
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    let seeds = cells.first().map_or(0, |c| c.seeds);
    let title = format!(
        "SAM at a noisy saddle: mean steps to escape, darker = sooner (ρ = {}, lr = {}, {} seeds)",
        p.rho, p.lr, seeds
    );
    let heat = out.join("saddle_escape_heatmap.png");
    plot::png(&heat, (1000, 620), |root| {
        plot::heatmap(
            root,
            &Heatmap {
                title: &title,
                x_label: "batch size B (gradient noise std ∝ 1/√B)",
                y_label: "momentum γ",
                col_names: &col_names,
                row_names: &row_names,
                color_values: &color_values,
                cell_text: &cell_text,
            },
        )
    })?;
    let series: Vec<Series> = momenta
        .iter()
        .enumerate()
        .map(|(i, &g)| {
            let pts = batches
                .iter()
                .filter_map(|&b| find(g, b).map(|c| (b as f64, c.mean_steps)))
                .collect();
            Series::line(format!("γ = {g}"), plot::palette(i), pts).with_markers()
        })
        .chain(std::iter::once(
            Series::line(
                format!("cap: {} steps", p.max_steps),
                plotters::style::RGBColor(120, 120, 120),
                batches
                    .iter()
                    .map(|&b| (b as f64, p.max_steps as f64))
                    .collect(),
            )
            .dashed(),
        ))
        .collect();
    let lines = out.join("saddle_escape_vs_batch.png");
    let axes = Axes::new(
        format!(
            "SAM escape time vs batch size (ρ = {}, lr = {})",
            p.rho, p.lr
        ),
        "batch size B",
        "mean steps to escape",
    )
    .log_log()
    .legend_at(SeriesLabelPosition::UpperLeft);
    let mut axes = axes;
    if batches.len() == 1 {
        let b = batches[0] as f64;
        axes.x_range = Some((b / 2.0, b * 2.0));
    }
    plot::png(&lines, (900, 620), |root| {
        plot::line_chart(root, &axes, &series)
    })?;
    Ok(vec![heat, lines])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SaddleParams {
        SaddleParams {
            lr: 0.01,
            rho: 0.05,
            noise: 1.0,
            threshold: 0.5,
            max_steps: 5000,
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for &(x, y) in &[(0.3, -0.7), (1.0, 1.2), (-0.2, 0.05)] {
            let h = 1e-6;
            let fx = (f(x + h, y) - f(x - h, y)) / (2.0 * h);
            let fy = (f(x, y + h) - f(x, y - h)) / (2.0 * h);
            let (gx, gy) = grad(x, y);
            assert!((fx - gx).abs() < 1e-6 && (fy - gy).abs() < 1e-6);
        }
    }

    #[test]
    fn without_noise_sam_never_leaves_the_saddle() {
        let p = SaddleParams {
            noise: 0.0,
            max_steps: 200,
            ..params()
        };
        assert_eq!(escape_time(&p, 0.9, 1, &mut Rng::new(0)).unwrap(), None);
    }

    #[test]
    fn escape_is_reproducible_and_faster_with_momentum_and_small_batches() {
        let p = params();
        let a = escape_time(&p, 0.5, 4, &mut Rng::stream(1, 0)).unwrap();
        let b = escape_time(&p, 0.5, 4, &mut Rng::stream(1, 0)).unwrap();
        assert_eq!(a, b);
        assert!(a.is_some());
        let cells = grid(&p, &[0.0, 0.9], &[1, 256], 12, 3).unwrap();
        let m = |g: f64, b: usize| {
            cells
                .iter()
                .find(|c| c.momentum == g && c.batch == b)
                .unwrap()
                .mean_steps
        };
        assert!(m(0.9, 1) < m(0.0, 1), "momentum helps");
        assert!(m(0.0, 1) < m(0.0, 256), "small batches help");
        assert!(m(0.9, 256) < m(0.0, 256));
        let t = table(&cells, &[0.0, 0.9], &[1, 256], p.max_steps);
        assert_eq!(t.lines().count(), 4);
    }
}
