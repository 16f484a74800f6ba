//! Part (a): the survey's 1-D function and the GIFs of SAM and SGD on it.
use std::path::Path;

use plotters::prelude::*;

use crate::error::Result;
use crate::plot::{self, OrStr, FONT};
use crate::toy::trajectory;
use samkit_core::{BaseOptimizer, Rule, Sam};

/// `f(x) = x⁶ + x⁵ + 5x³ − 30x² + 3x`.
pub fn f(x: f64) -> f64 {
    x.powi(6) + x.powi(5) + 5.0 * x.powi(3) - 30.0 * x * x + 3.0 * x
}

/// `f'(x) = 6x⁵ + 5x⁴ + 15x² − 60x + 3`.
pub fn df(x: f64) -> f64 {
    6.0 * x.powi(5) + 5.0 * x.powi(4) + 15.0 * x * x - 60.0 * x + 3.0
}

pub const FORMULA: &str = "f(x) = x⁶ + x⁵ + 5x³ − 30x² + 3x";
pub const DOMAIN: (f64, f64) = (-3.0, 3.0);
/// The visible part of the y axis: both wells and the hill between them (f(3) = 846 would
/// flatten them).
const Y_VIEW: (f64, f64) = (-170.0, 250.0);

/// `x_0, x_1, ..., x_steps` of the rule on `f` through `samkit_core::Optimizer`.
pub fn path(rule: Rule, lr: f64, x0: f64, steps: usize) -> Result<Vec<f64>> {
    let pts = trajectory(
        rule,
        BaseOptimizer::sgd(lr as f32, 0.0, 0.0),
        &[x0],
        steps,
        |w, g| {
            g[0] = df(w[0] as f64) as f32;
            f(w[0] as f64)
        },
    )?;
    Ok(pts.into_iter().map(|p| p[0]).collect())
}

pub struct OneDRun {
    pub name: &'static str,
    pub path: Vec<f64>,
}

/// Runs SAM and SGD and writes one GIF for each; returns the runs and the files.
pub fn run(
    out: &Path,
    frames: usize,
    x0: f64,
    lr: f64,
    rho: f64,
) -> Result<(Vec<OneDRun>, Vec<std::path::PathBuf>)> {
    let runs = vec![
        OneDRun {
            name: "SAM",
            path: path(
                Rule::Sam(Sam {
                    rho: rho as f32,
                    adaptive: false,
                    eps_p: None,
                    grad_centralization: false,
                }),
                lr,
                x0,
                frames,
            )?,
        },
        OneDRun {
            name: "SGD",
            path: path(Rule::Base, lr, x0, frames)?,
        },
    ];
    let mut files = Vec::new();
    for r in &runs {
        let file = out.join(format!("{}_1d.gif", r.name.to_ascii_lowercase()));
        let subtitle = if r.name == "SAM" {
            format!("SAM (ρ = {rho}, lr = {lr}, x₀ = {x0})")
        } else {
            format!("SGD (lr = {lr}, x₀ = {x0})")
        };
        plot::gif(&file, (720, 540), 200, frames, |k, root| {
            draw_frame(root, r, k + 1, frames, &subtitle)
        })?;
        files.push(file);
    }
    Ok((runs, files))
}

fn draw_frame(
    root: &plot::Area,
    run: &OneDRun,
    step: usize,
    total: usize,
    sub: &str,
) -> plot::DrawResult {
    let color = RGBColor(214, 39, 40);
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{}: step {step}/{total}", sub), (FONT, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(DOMAIN.0..DOMAIN.1, Y_VIEW.0..Y_VIEW.1)
        .s()?;
    chart
        .configure_mesh()
        .x_desc("x")
        .y_desc("f(x)")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .x_label_formatter(&|v| plot::tick(*v))
        .y_label_formatter(&|v| plot::tick(*v))
        .light_line_style(RGBColor(230, 230, 230))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .s()?;
    let n = 600;
    // Only the part inside the view (f leaves it once, near x = 2.55).
    let curve = (0..=n)
        .map(|i| {
            let x = DOMAIN.0 + (DOMAIN.1 - DOMAIN.0) * i as f64 / n as f64;
            (x, f(x))
        })
        .filter(|p| p.1 <= Y_VIEW.1);
    chart
        .draw_series(LineSeries::new(curve, BLUE.stroke_width(2)))
        .s()?
        .label(FORMULA)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    let in_view = |x: f64| x.is_finite() && (DOMAIN.0..=DOMAIN.1).contains(&x);
    // A diverged run's path ends early: its later frames keep the last point.
    let last = run.path.len().saturating_sub(1);
    let shown = step.min(last);
    // The points visited so far, fading.
    let trail: Vec<(f64, f64)> = run.path[..shown]
        .iter()
        .copied()
        .filter(|&x| in_view(x))
        .map(|x| (x, f(x).clamp(Y_VIEW.0, Y_VIEW.1)))
        .collect();
    chart
        .draw_series(
            trail
                .iter()
                .map(|&p| Circle::new(p, 4, color.mix(0.45).filled())),
        )
        .s()?;
    let x = run.path.get(shown).copied().unwrap_or(f64::NAN);
    let fx = f(x);
    if in_view(x) {
        let p = (x, fx.clamp(Y_VIEW.0, Y_VIEW.1));
        chart
            .draw_series(std::iter::once(Circle::new(p, 7, color.filled())))
            .s()?
            .label("current point")
            .legend(move |(a, b)| Circle::new((a + 10, b), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(150, 150, 150))
        .draw()
        .s()?;
    let mut text = format!("x = {x:.4}   f(x) = {fx:.3}");
    if step > last {
        text = format!("diverged after step {last}: {text}");
    } else if !in_view(x) {
        text.push_str("  (outside the plot)");
    }
    root.draw(&Text::new(
        text,
        (90, 100),
        (FONT, 20).into_font().color(&color),
    ))
    .s()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivative_matches_finite_differences() {
        for &x in &[-2.9, -2.24, -1.0, 0.0, 0.37, 1.401, 2.5] {
            let h = 1e-6;
            let fd = (f(x + h) - f(x - h)) / (2.0 * h);
            assert!((fd - df(x)).abs() < 1e-5 * (1.0 + df(x).abs()), "x = {x}");
        }
    }

    #[test]
    fn one_sam_step_matches_the_hand_computation() {
        // f'(1) = 6 + 5 + 15 − 60 + 3 = −31, so e = ρ·sign(f'(1)) = −0.1 and
        // f'(0.9) = 6·0.59049 + 5·0.6561 + 15·0.81 − 54 + 3 = −32.02656;
        // x₁ = 1 − 0.01·(−32.02656) = 1.3202656.
        let rule = Rule::Sam(Sam {
            rho: 0.1,
            adaptive: false,
            eps_p: None,
            grad_centralization: false,
        });
        let p = path(rule, 0.01, 1.0, 1).unwrap();
        assert_eq!(p.len(), 2);
        assert!((p[1] - 1.320_265_6).abs() < 1e-5, "got {}", p[1]);
        // SGD: x₁ = 1 − 0.01·(−31) = 1.31.
        let p = path(Rule::Base, 0.01, 1.0, 1).unwrap();
        assert!((p[1] - 1.31).abs() < 1e-6, "got {}", p[1]);
    }

    #[test]
    fn a_diverging_run_still_draws_every_frame() {
        let dir = std::env::temp_dir().join(format!("samkit-oned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (runs, files) = run(&dir, 4, 3.0, 5.0, 0.1).unwrap();
        assert!(runs.iter().all(|r| r.path.len() < 5));
        assert_eq!(files.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sgd_with_the_defaults_reaches_the_global_minimum() {
        let p = path(Rule::Base, 0.004, -0.2, 30).unwrap();
        assert!((p[30] + 2.24).abs() < 0.01, "got {}", p[30]);
    }
}
