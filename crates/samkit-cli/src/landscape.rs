//! `samkit landscape`: the loss surface around a checkpoint along two filter-normalised random
//! directions (Li et al., 2018; the survey's figures 8 and 9b), and the 1-D interpolation
//! between two checkpoints.
//!
//! The output folder is checked before any work. A loss that is not finite (far from the
//! checkpoint with a large `--span`) is kept as `inf`/`NaN` in `landscape.csv` (`null` in the
//! JSON, which has no such numbers), drawn in its own colour in `landscape.png` and counted in
//! its title; the interpolation chart leaves such points out and says how many.
use std::path::{Path, PathBuf};

use clap::Args;
use samkit_core::philox::PhiloxRng;
use samkit_core::Layout;
use samkit_nn::{BufferData, Model};
use serde::Serialize;

use crate::error::{check, CliError, Result};
use crate::output::{write_json, Output};
use crate::plot::{self, Axes, ColorScale, Field, Series};
use crate::progress;
use crate::sharpness::{measure, Sharpness, SharpnessOptions};
use samkit_train::probe::{trained, Probe};

#[derive(Args, Debug)]
pub struct LandscapeArgs {
    /// Checkpoint folders written by `samkit train` (their `checkpoint/`), repeated or
    /// comma-separated: every surface is drawn on one shared colour scale.
    #[arg(long, required = true, value_delimiter = ',', num_args = 1..)]
    pub checkpoint: Vec<PathBuf>,
    /// Names of the checkpoints in the figures and tables, comma-separated, one per
    /// --checkpoint (default: each checkpoint's optimizer, numbered if two share one).
    #[arg(long, value_delimiter = ',')]
    pub names: Vec<String>,
    /// A second checkpoint: also plot the loss along the line from the first --checkpoint to it.
    #[arg(long)]
    pub to: Option<PathBuf>,
    /// Grid points per axis.
    #[arg(long, default_value_t = 21)]
    pub grid: usize,
    /// The grid spans [−span, span] along each direction.
    #[arg(long, default_value_t = 1.0)]
    pub span: f64,
    /// Training images the loss is averaged over.
    #[arg(long, default_value_t = 512)]
    pub samples: usize,
    /// Points along the interpolation line (t from −0.5 to 1.5).
    #[arg(long, default_value_t = 41)]
    pub line_points: usize,
    /// Seed of the random directions (the same for every checkpoint).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also draw the surfaces in 3-D (landscape_3d.png), on the same scale.
    #[arg(long)]
    pub surface: bool,
    /// Logarithmic loss axis in the interpolation plot.
    #[arg(long)]
    pub log_y: bool,
    /// Radius ρ of the ε-sharpness in the sharpness table, and the ρ of the survey's §3.3
    /// bound λmax ≤ 2‖∇L‖/ρ.
    #[arg(long, default_value_t = 0.05)]
    pub rho: f64,
    /// SAM ascent steps of the ε-sharpness estimate (1: SAM's own single step).
    #[arg(long, default_value_t = 3)]
    pub ascent_steps: usize,
    /// Power iterations for the table's λmax (0: not measured).
    #[arg(long, default_value_t = 10)]
    pub power_iters: usize,
    /// Hutchinson probes for the table's Hessian trace (0: not measured).
    #[arg(long, default_value_t = 4)]
    pub hutchinson: usize,
    /// Relative finite-difference step of the Hessian-vector products (as `hessian --fd-eps`).
    #[arg(long, default_value_t = 1e-2)]
    pub fd_eps: f64,
    /// Output folder: landscape.csv, landscape.json, landscape.png, sharpness.csv, and
    /// interpolation.png (with --to), landscape_3d.png (with --surface).
    #[arg(long, default_value = "results/landscape")]
    pub out: PathBuf,
}

/// The names of the two grid axes, as in `landscape.csv`'s header and on the figures.
pub const AXES: [&str; 2] = ["alpha", "beta"];

/// A random direction with each filter scaled to the norm of the same filter of `w`; zero on
/// biases and on 1-D weights (batch-norm scales), as Li et al. do.
pub fn filter_normalised_direction(layout: &Layout, w: &[f32], seed: u64, stream: u32) -> Vec<f32> {
    let mut rng = PhiloxRng::new(seed, stream);
    let mut d = vec![0f32; w.len()];
    for s in layout.segments() {
        if s.shape.len() < 2 || s.kind == samkit_core::ParamKind::Bias {
            continue;
        }
        let fl = s.filter_len();
        for (df, wf) in d[s.range()].chunks_mut(fl).zip(w[s.range()].chunks(fl)) {
            for x in df.iter_mut() {
                *x = rng.normal() as f32;
            }
            let dn = df.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let wn = wf.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let scale = if dn > 0.0 { (wn / dn) as f32 } else { 0.0 };
            for x in df.iter_mut() {
                *x *= scale;
            }
        }
    }
    d
}

/// Creates `dir` and checks that a file can be written in it, so that a bad `--out` fails
/// before minutes of work rather than after.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    Ok(samkit_train::files::check_writable_dir(dir)?)
}

/// The folder's files must not be folders themselves (a write would fail at the end).
fn ensure_files_writable(dir: &Path, names: &[&str]) -> Result<()> {
    Ok(samkit_train::files::check_output_names(dir, names)?)
}

/// One checkpoint's surface.
#[derive(Serialize)]
struct SurfaceOut {
    name: String,
    checkpoint: String,
    optimizer: String,
    epochs: u32,
    /// `loss[j][i]` at `(alphas[i], betas[j])`; `null` where the loss is not finite.
    loss: Vec<Vec<f64>>,
    accuracy: Vec<Vec<f64>>,
    /// Grid points whose loss is inf or NaN (their values are in landscape.csv).
    non_finite: usize,
    /// `(alpha, beta, loss)` of the lowest finite loss on the grid.
    lowest: Option<(f64, f64, f64)>,
    /// The loss at the checkpoint (the grid's centre).
    centre_loss: f64,
    /// Mean of `loss − centre_loss` over the finite grid points: how fast the loss rises
    /// around the checkpoint, on the shared grid.
    mean_rise: f64,
}

#[derive(Serialize)]
struct Report {
    /// The first checkpoint's surface, at the top level as before.
    checkpoint: String,
    data: String,
    samples: usize,
    /// The grid's axis names (landscape.csv's first two columns).
    axes: [&'static str; 2],
    alphas: Vec<f64>,
    betas: Vec<f64>,
    loss: Vec<Vec<f64>>,
    non_finite: usize,
    accuracy: Vec<Vec<f64>>,
    /// The colour scale every panel (and the 3-D surfaces) share; `null` if no loss is finite.
    color_scale: Option<ColorScale>,
    /// Iso-lines drawn on every panel, at the same losses.
    levels: Vec<f64>,
    surfaces: Vec<SurfaceOut>,
    sharpness: Vec<Sharpness>,
    line: Option<Line>,
}

#[derive(Serialize)]
struct Line {
    from: String,
    to: String,
    /// The names the plot gives the line's ends, at t = 0 and t = 1.
    from_name: String,
    to_name: String,
    log_y: bool,
    t: Vec<f64>,
    loss: Vec<f64>,
    accuracy: Vec<f64>,
}

/// The most checkpoints one figure holds side by side.
pub const MAX_CHECKPOINTS: usize = 8;

/// Checks the flags that need no checkpoint.
fn validate(a: &LandscapeArgs) -> Result<()> {
    check::count("checkpoint", a.checkpoint.len(), 1, MAX_CHECKPOINTS)?;
    if !a.names.is_empty() && a.names.len() != a.checkpoint.len() {
        return Err(CliError::invalid(
            "names",
            format!(
                "{} names for {} checkpoints: give one per --checkpoint",
                a.names.len(),
                a.checkpoint.len()
            ),
        ));
    }
    if a.names.iter().any(|n| n.trim().is_empty()) {
        return Err(CliError::invalid("names", "a name is empty"));
    }
    check::count("grid", a.grid, 2, 201)?;
    check::positive("span", a.span)?;
    check::count("samples", a.samples, 1, 1_000_000)?;
    check::count("line-points", a.line_points, 2, 10_001)?;
    check::positive("rho", a.rho)?;
    check::count("ascent-steps", a.ascent_steps, 1, 1000)?;
    check::count("power-iters", a.power_iters, 0, 10_000)?;
    check::count("hutchinson", a.hutchinson, 0, 100_000)?;
    check::positive("fd-eps", a.fd_eps)?;
    if a.fd_eps > crate::hessian::MAX_REL_EPS {
        return Err(CliError::invalid(
            "fd-eps",
            format!(
                "{} is a step larger than the typical weight (at most {})",
                a.fd_eps,
                crate::hessian::MAX_REL_EPS
            ),
        ));
    }
    Ok(())
}

/// The checkpoints' display names: `--names`, or each optimizer, numbered where two share one.
fn display_names(given: &[String], optimizers: &[String]) -> Vec<String> {
    if !given.is_empty() {
        return given.iter().map(|n| n.trim().to_string()).collect();
    }
    optimizers
        .iter()
        .enumerate()
        .map(|(i, o)| {
            if optimizers.iter().filter(|x| *x == o).count() > 1 {
                let k = optimizers[..=i].iter().filter(|x| *x == o).count();
                format!("{o} #{k}")
            } else {
                o.clone()
            }
        })
        .collect()
}

/// Values on the grid, `[j][i]` at `(alphas[i], betas[j])`.
type Grid = Vec<Vec<f64>>;

/// Loss and accuracy of `t` on the grid `w0 + α·d1 + β·d2`.
fn grid_losses(
    t: &mut samkit_train::Trainer,
    probe: &Probe,
    coords: &[f64],
    seed: u64,
    label: &str,
) -> Result<(Grid, Grid)> {
    let n = coords.len();
    let w0 = t.engine.net.params.clone();
    let layout = t.engine.net.model.layout().clone();
    let d1 = filter_normalised_direction(&layout, &w0, seed, 1);
    let d2 = filter_normalised_direction(&layout, &w0, seed, 2);
    let bar = progress::bar((n * n) as u64, label);
    let mut loss = vec![vec![0.0; n]; n];
    let mut acc = vec![vec![0.0; n]; n];
    let mut w = w0.clone();
    for (j, &b) in coords.iter().enumerate() {
        for (i, &al) in coords.iter().enumerate() {
            for k in 0..w.len() {
                w[k] = w0[k] + al as f32 * d1[k] + b as f32 * d2[k];
            }
            let (l, ac) = probe.loss_acc(t, &w)?;
            loss[j][i] = l;
            acc[j][i] = ac;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok((loss, acc))
}

/// The surface's summary numbers.
fn summarise(
    name: &str,
    dir: &Path,
    t: &samkit_train::Trainer,
    coords: &[f64],
    loss: Vec<Vec<f64>>,
    accuracy: Vec<Vec<f64>>,
) -> SurfaceOut {
    let n = coords.len();
    let centre_loss = loss[n / 2][n / 2];
    let lowest = (0..n)
        .flat_map(|j| (0..n).map(move |i| (j, i)))
        .filter(|&(j, i)| loss[j][i].is_finite())
        .min_by(|&(j, i), &(q, p)| loss[j][i].total_cmp(&loss[q][p]))
        .map(|(j, i)| (coords[i], coords[j], loss[j][i]));
    let finite: Vec<f64> = loss
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let mean_rise = if finite.is_empty() {
        f64::NAN
    } else {
        finite.iter().map(|v| v - centre_loss).sum::<f64>() / finite.len() as f64
    };
    SurfaceOut {
        name: name.to_string(),
        checkpoint: dir.display().to_string(),
        optimizer: t.cfg.optimizer.clone(),
        epochs: t.epoch,
        non_finite: loss.iter().flatten().filter(|v| !v.is_finite()).count(),
        loss,
        accuracy,
        lowest,
        centre_loss,
        mean_rise,
    }
}

pub fn run(a: &LandscapeArgs, out: &mut Output) -> Result<()> {
    validate(a)?;
    let mut loaded = Vec::new();
    for dir in &a.checkpoint {
        loaded.push(trained(dir)?);
    }
    // The output folder before the grid (the minutes of work), after the checkpoints (so a
    // bad --checkpoint leaves no folder behind).
    ensure_writable_dir(&a.out)?;
    ensure_files_writable(
        &a.out,
        &[
            "landscape.csv",
            "landscape.png",
            "landscape.json",
            "sharpness.csv",
            "interpolation.png",
            "landscape_3d.png",
        ],
    )?;
    // The second checkpoint too, before the grid.
    let other = match &a.to {
        Some(dir) => {
            let (other, _) = trained(dir)?;
            if other.engine.net.model.layout() != loaded[0].0.engine.net.model.layout() {
                return Err(CliError::invalid(
                    "to",
                    format!("{} holds a different model", dir.display()),
                ));
            }
            Some(other)
        }
        None => None,
    };
    let optimizers: Vec<String> = loaded
        .iter()
        .map(|(t, _)| t.cfg.optimizer.clone())
        .collect();
    let names = display_names(&a.names, &optimizers);
    let coords: Vec<f64> = (0..a.grid)
        .map(|i| -a.span + 2.0 * a.span * i as f64 / (a.grid - 1) as f64)
        .collect();
    let opts = SharpnessOptions {
        rho: a.rho,
        ascent_steps: a.ascent_steps,
        power_iters: a.power_iters,
        hutchinson: a.hutchinson,
        fd_eps: a.fd_eps,
        seed: a.seed,
    };
    let mut surfaces = Vec::new();
    let mut sharp = Vec::new();
    let mut samples = 0;
    let mut line = None;
    let mut other = other;
    for (k, ((mut t, data), dir)) in loaded.into_iter().zip(&a.checkpoint).enumerate() {
        out.say(format!(
            "checkpoint {} ({}): {} after {} epochs; data: {data}",
            dir.display(),
            names[k],
            t.cfg.optimizer,
            t.epoch
        ));
        let train = t.train_set().clone();
        let probe = Probe::new(&t, &train, a.samples)?;
        samples = probe.samples();
        let (loss, acc) = grid_losses(&mut t, &probe, &coords, a.seed, &names[k])?;
        let w0 = t.engine.net.params.clone();
        let row = measure(
            &names[k],
            |w: &[f32], g: &mut [f32]| Ok(probe.grad(&mut t, w, g)?),
            &w0,
            &opts,
        )?;
        sharp.push(row);
        if k == 0 {
            if let (Some(to), Some(o)) = (&a.to, other.take()) {
                line = Some(interpolate(
                    &mut t,
                    &probe,
                    &w0,
                    (to, o),
                    a.line_points,
                    (dir, &names[k], a.log_y),
                    out,
                )?);
            }
        }
        surfaces.push(summarise(&names[k], dir, &t, &coords, loss, acc));
    }
    let data = a
        .checkpoint
        .first()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let scale = ColorScale::of(
        surfaces
            .iter()
            .flat_map(|s| s.loss.iter().flatten().copied()),
    );
    let levels = scale.map_or_else(Vec::new, |s| s.levels(LEVELS));

    let csv = a.out.join("landscape.csv");
    let mut s = format!("{},{},loss,accuracy,checkpoint\n", AXES[0], AXES[1]);
    for surf in &surfaces {
        for (j, &b) in coords.iter().enumerate() {
            for (i, &al) in coords.iter().enumerate() {
                s += &format!(
                    "{al},{b},{},{},{}\n",
                    surf.loss[j][i],
                    surf.accuracy[j][i],
                    surf.name.replace(',', ";")
                );
            }
        }
    }
    samkit_train::files::write_atomic(&csv, s.as_bytes())?;
    out.wrote(csv);
    let sc = a.out.join("sharpness.csv");
    samkit_train::files::write_atomic(&sc, crate::sharpness::csv(&sharp).as_bytes())?;
    out.wrote(sc);

    plot::init_fonts();
    let fields: Vec<Field> = surfaces
        .iter()
        .map(|s| Field {
            xs: coords.clone(),
            ys: coords.clone(),
            values: s.loss.clone(),
        })
        .collect();
    let titles: Vec<String> = surfaces
        .iter()
        .map(|s| {
            let blown = if s.non_finite > 0 {
                format!(", {} inf/NaN in magenta", s.non_finite)
            } else {
                String::new()
            };
            format!("{} (loss {:.4}{blown})", s.name, s.centre_loss)
        })
        .collect();
    let table = crate::sharpness::table(&sharp);
    let n = surfaces.len() as u32;
    let (panel_w, panel_h, bar_w) = (560u32, 560u32, 120u32);
    let table_h = 60 + 22 * table.len() as u32;
    let png = a.out.join("landscape.png");
    let fallback = ColorScale {
        lo: 0.0,
        hi: 1.0,
        log: false,
    };
    let shared = scale.unwrap_or(fallback);
    let header = format!(
        "Loss around each checkpoint along two filter-normalised directions ({samples} training \
         samples, seed {}): one colour scale for all",
        a.seed
    );
    plot::png(
        &png,
        (panel_w * n + bar_w, panel_h + table_h + 30),
        |root| {
            let body = plot::titled(root, &header, 18)?;
            let (top, bottom) = body.split_vertically(panel_h);
            let (panels, bar) = top.split_horizontally(panel_w * n);
            for ((area, field), (title, surf)) in panels
                .split_evenly((1, n as usize))
                .iter()
                .zip(&fields)
                .zip(titles.iter().zip(&surfaces))
            {
                plot::landscape_panel(
                    area,
                    &plot::LandscapePanel {
                        title,
                        field,
                        scale: &shared,
                        levels: &levels,
                        x_label: AXES[0],
                        y_label: AXES[1],
                        lowest: surf.lowest.map(|l| (l.0, l.1)),
                        checkpoint: (0.0, 0.0),
                    },
                )?;
            }
            plot::color_bar(&bar, &shared, "loss")?;
            let rows: Vec<Vec<String>> = table.iter().map(|l| vec![l.clone()]).collect();
            plot::text_table(
            &bottom,
            &format!(
                "Sharpness at each checkpoint (ρ = {}; the survey's §3.3 bound: λmax ≤ 2‖∇L‖/ρ at a SAM solution)",
                a.rho
            ),
            &rows,
            &[],
        )
        },
    )?;
    out.wrote(png);
    if a.surface {
        let png = a.out.join("landscape_3d.png");
        plot::png(&png, (panel_w * n, panel_h), |root| {
            for ((area, field), surf) in root
                .split_evenly((1, n as usize))
                .iter()
                .zip(&fields)
                .zip(&surfaces)
            {
                let title = format!("{}: loss over ({}, {})", surf.name, AXES[0], AXES[1]);
                plot::surface_3d(area, &title, field, &shared)?;
            }
            Ok(())
        })?;
        out.wrote(png);
    }
    if let Some(l) = &line {
        let png = a.out.join("interpolation.png");
        plot::png(&png, (900, 600), |area| interpolation_chart(area, l))?;
        out.wrote(png);
    }
    for s in &surfaces {
        match s.lowest {
            Some((al, b, lo)) => out.say(format!(
                "{}: loss at the checkpoint {:.4}, lowest on the grid {lo:.4} at ({al:.2}, {b:.2}), mean rise over the grid {:.4}",
                s.name, s.centre_loss, s.mean_rise
            )),
            None => out.say(format!(
                "{}: loss at the checkpoint {:.4}; no finite loss on the grid",
                s.name, s.centre_loss
            )),
        }
        if s.non_finite > 0 {
            out.say(format!(
                "{non_finite} of {} grid losses are inf/NaN (kept in landscape.csv; a smaller --span stays where the loss is finite)",
                a.grid * a.grid,
                non_finite = s.non_finite
            ));
        }
    }
    out.say(format!(
        "sharpness (ρ = {}, {} ascent steps; §3.3 bound λmax ≤ 2‖∇L‖/ρ):",
        a.rho, a.ascent_steps
    ));
    for l in &table {
        out.say(format!("  {l}"));
    }
    let first = &surfaces[0];
    let report = Report {
        checkpoint: first.checkpoint.clone(),
        data,
        samples,
        axes: AXES,
        alphas: coords.clone(),
        betas: coords,
        loss: first.loss.clone(),
        non_finite: first.non_finite,
        accuracy: first.accuracy.clone(),
        color_scale: scale,
        levels,
        sharpness: sharp,
        line,
        surfaces,
    };
    let json = a.out.join("landscape.json");
    write_json(&json, &report)?;
    out.wrote(json);
    Ok(())
}

/// Iso-lines per panel.
const LEVELS: usize = 10;

/// The loss along the line, its ends marked with the checkpoints' names.
fn interpolation_chart(area: &plot::Area, l: &Line) -> plot::DrawResult {
    let dropped = l
        .loss
        .iter()
        .filter(|v| !v.is_finite() || (l.log_y && **v <= 0.0))
        .count();
    let title = if dropped > 0 {
        format!(
            "Loss from {} (t = 0) to {} (t = 1) ({dropped} of {} points not drawn: inf/NaN{})",
            l.from_name,
            l.to_name,
            l.loss.len(),
            if l.log_y { " or ≤ 0" } else { "" }
        )
    } else {
        format!(
            "Loss along (1 − t)·w_a + t·w_b, from {} (t = 0) to {} (t = 1)",
            l.from_name, l.to_name
        )
    };
    let series = vec![Series::line(
        "loss",
        plot::palette(0),
        l.t.iter().copied().zip(l.loss.iter().copied()).collect(),
    )
    .with_markers()];
    let mut axes = Axes::new(title, "t", "loss");
    if l.log_y {
        axes = axes.log_y();
    }
    axes.x_marks = vec![(0.0, l.from_name.clone()), (1.0, l.to_name.clone())];
    plot::line_chart(area, &axes, &series)
}

/// Loss along the line between this checkpoint and another of the same model, with the
/// batch-norm running statistics interpolated alike.
fn interpolate(
    t: &mut samkit_train::Trainer,
    probe: &Probe,
    wa: &[f32],
    (dir, mut other): (&Path, samkit_train::Trainer),
    points: usize,
    ends: (&Path, &str, bool),
    out: &mut Output,
) -> Result<Line> {
    let (from, from_name, log_y) = ends;
    let to_name = if other.cfg.optimizer == from_name {
        format!("{} (--to)", other.cfg.optimizer)
    } else {
        other.cfg.optimizer.clone()
    };
    let buf_a = t.engine.net.model.buffers()?;
    let wb = other.engine.net.params.clone();
    let buf_b = other.engine.net.model.buffers()?;
    out.say(format!(
        "interpolating to {} ({})",
        dir.display(),
        other.cfg.optimizer
    ));
    let ts: Vec<f64> = (0..points)
        .map(|i| -0.5 + 2.0 * i as f64 / (points - 1) as f64)
        .collect();
    let (mut loss, mut acc) = (Vec::new(), Vec::new());
    let mut w = vec![0f32; wa.len()];
    for &x in &ts {
        let f = x as f32;
        for k in 0..w.len() {
            w[k] = (1.0 - f) * wa[k] + f * wb[k];
        }
        let mixed: Vec<_> = buf_a
            .iter()
            .zip(&buf_b)
            .map(|(a, b)| {
                let mut m = a.clone();
                if let (BufferData::F32(va), BufferData::F32(vb)) = (&a.data, &b.data) {
                    m.data = BufferData::F32(
                        va.iter()
                            .zip(vb)
                            .map(|(p, q)| (1.0 - f) * p + f * q)
                            .collect(),
                    );
                }
                m
            })
            .collect();
        t.engine.net.model.set_buffers(&mixed)?;
        let (l, a) = probe.loss_acc(t, &w)?;
        loss.push(l);
        acc.push(a);
    }
    t.engine.net.model.set_buffers(&buf_a)?;
    Ok(Line {
        from: from.display().to_string(),
        to: dir.display().to_string(),
        from_name: from_name.to_string(),
        to_name,
        log_y,
        t: ts,
        loss,
        accuracy: acc,
    })
}
