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
use crate::plot::{self, Axes, ContourPlot, Field, Series};
use crate::progress;
use samkit_train::probe::{trained, Probe};

#[derive(Args, Debug)]
pub struct LandscapeArgs {
    /// Checkpoint folder written by `samkit train` (its `checkpoint/`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A second checkpoint: also plot the loss along the line between the two.
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
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "results/landscape")]
    pub out: PathBuf,
}

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
    std::fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
    let probe = dir.join(format!(".samkit-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| CliError::io(&probe, e))?;
    std::fs::remove_file(&probe).map_err(|e| CliError::io(&probe, e))
}

/// The folder's files must not be folders themselves (a write would fail at the end).
fn ensure_files_writable(dir: &Path, names: &[&str]) -> Result<()> {
    for n in names {
        let p = dir.join(n);
        if p.is_dir() {
            return Err(CliError::io(
                &p,
                std::io::Error::other("a folder is in the way of this output file"),
            ));
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Surface {
    checkpoint: String,
    data: String,
    samples: usize,
    alphas: Vec<f64>,
    betas: Vec<f64>,
    /// `loss[j][i]` at `(alphas[i], betas[j])`; `null` where the loss is not finite.
    loss: Vec<Vec<f64>>,
    /// Grid points whose loss is inf or NaN (their values are in landscape.csv).
    non_finite: usize,
    accuracy: Vec<Vec<f64>>,
    line: Option<Line>,
}

#[derive(Serialize)]
struct Line {
    to: String,
    t: Vec<f64>,
    loss: Vec<f64>,
    accuracy: Vec<f64>,
}

pub fn run(a: &LandscapeArgs, out: &mut Output) -> Result<()> {
    check::count("grid", a.grid, 2, 201)?;
    check::positive("span", a.span)?;
    check::count("samples", a.samples, 1, 1_000_000)?;
    check::count("line-points", a.line_points, 2, 10_001)?;
    let (mut t, data) = trained(&a.checkpoint)?;
    // The output folder before the grid (the minutes of work), after the checkpoint (so a
    // bad --checkpoint leaves no folder behind).
    ensure_writable_dir(&a.out)?;
    ensure_files_writable(
        &a.out,
        &[
            "landscape.csv",
            "landscape.png",
            "landscape.json",
            "interpolation.png",
        ],
    )?;
    // The second checkpoint too, before the grid.
    let other = match &a.to {
        Some(dir) => {
            let (other, _) = trained(dir)?;
            if other.engine.net.model.layout() != t.engine.net.model.layout() {
                return Err(CliError::invalid(
                    "to",
                    format!("{} holds a different model", dir.display()),
                ));
            }
            Some(other)
        }
        None => None,
    };
    out.say(format!(
        "checkpoint {}: {} after {} epochs; data: {data}",
        a.checkpoint.display(),
        t.cfg.optimizer,
        t.epoch
    ));
    let train = t.train_set().clone();
    let probe = Probe::new(&t, &train, a.samples)?;
    let w0 = t.engine.net.params.clone();
    let layout = t.engine.net.model.layout().clone();
    let d1 = filter_normalised_direction(&layout, &w0, a.seed, 1);
    let d2 = filter_normalised_direction(&layout, &w0, a.seed, 2);
    let coords: Vec<f64> = (0..a.grid)
        .map(|i| -a.span + 2.0 * a.span * i as f64 / (a.grid - 1) as f64)
        .collect();
    let bar = progress::bar((a.grid * a.grid) as u64, "landscape");
    let mut loss = vec![vec![0.0; a.grid]; a.grid];
    let mut acc = vec![vec![0.0; a.grid]; a.grid];
    let mut w = w0.clone();
    for (j, &b) in coords.iter().enumerate() {
        for (i, &al) in coords.iter().enumerate() {
            for k in 0..w.len() {
                w[k] = w0[k] + al as f32 * d1[k] + b as f32 * d2[k];
            }
            let (l, ac) = probe.loss_acc(&mut t, &w)?;
            loss[j][i] = l;
            acc[j][i] = ac;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let line = match (&a.to, other) {
        (Some(dir), Some(other)) => Some(interpolate(
            &mut t,
            &probe,
            &w0,
            dir,
            other,
            a.line_points,
            out,
        )?),
        _ => None,
    };
    let csv = a.out.join("landscape.csv");
    let mut s = String::from("alpha,beta,loss,accuracy\n");
    for (j, &b) in coords.iter().enumerate() {
        for (i, &al) in coords.iter().enumerate() {
            s += &format!("{al},{b},{},{}\n", loss[j][i], acc[j][i]);
        }
    }
    std::fs::write(&csv, s).map_err(|e| CliError::io(&csv, e))?;
    out.wrote(csv);
    plot::init_fonts();
    let field = Field {
        xs: coords.clone(),
        ys: coords.clone(),
        values: loss.clone(),
    };
    let non_finite = loss.iter().flatten().filter(|v| !v.is_finite()).count();
    // Range, levels and lowest point over the finite losses only.
    let finite = || loss.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let levels: Vec<f64> = if lo < hi {
        (1..12)
            .map(|k| lo + (hi - lo) * (k as f64 / 12.0).powi(2))
            .collect()
    } else {
        Vec::new()
    };
    let lowest = (0..a.grid)
        .flat_map(|j| (0..a.grid).map(move |i| (j, i)))
        .filter(|&(j, i)| loss[j][i].is_finite())
        .min_by(|&(j, i), &(q, p)| loss[j][i].total_cmp(&loss[q][p]));
    let (mj, mi) = lowest.unwrap_or((a.grid / 2, a.grid / 2));
    let png = a.out.join("landscape.png");
    let blown = if non_finite > 0 {
        format!(
            "; {non_finite} of {} losses inf/NaN, in magenta",
            a.grid * a.grid
        )
    } else {
        String::new()
    };
    let title = format!(
        "Loss around {} ({}, {} samples; filter-normalised directions{blown})",
        t.cfg.optimizer,
        t.cfg.data.data_name(),
        probe.samples()
    );
    let star_label = if lowest.is_some() {
        "lowest loss on the grid"
    } else {
        "checkpoint (no finite loss on the grid)"
    };
    plot::png(&png, (900, 800), |area| {
        plot::contour_plot(
            area,
            &ContourPlot {
                title: &title,
                field: &field,
                levels: &levels,
                paths: &[],
                start: (0.0, 0.0),
                star: (coords[mi], coords[mj]),
                star_label,
                saddle: None,
            },
        )
    })?;
    out.wrote(png);
    if let Some(l) = &line {
        let png = a.out.join("interpolation.png");
        let dropped = l.loss.iter().filter(|v| !v.is_finite()).count();
        let title = if dropped > 0 {
            format!(
                "Loss along (1 − t)·w_a + t·w_b ({dropped} of {} points inf/NaN, not drawn)",
                l.loss.len()
            )
        } else {
            "Loss along (1 − t)·w_a + t·w_b".to_string()
        };
        let series = vec![Series::line(
            "loss",
            plot::palette(0),
            l.t.iter().copied().zip(l.loss.iter().copied()).collect(),
        )
        .with_markers()];
        plot::png(&png, (900, 600), |area| {
            plot::line_chart(area, &Axes::new(title, "t", "loss"), &series)
        })?;
        out.wrote(png);
    }
    if lowest.is_some() {
        out.say(format!(
            "loss at the checkpoint {:.4}, lowest on the grid {:.4} at ({:.2}, {:.2}), highest finite {:.4}",
            loss[a.grid / 2][a.grid / 2],
            lo,
            coords[mi],
            coords[mj],
            hi
        ));
    } else {
        out.say(format!(
            "loss at the checkpoint {:.4}; no finite loss on the grid",
            loss[a.grid / 2][a.grid / 2]
        ));
    }
    if non_finite > 0 {
        out.say(format!(
            "{non_finite} of {} grid losses are inf/NaN (kept in landscape.csv; a smaller --span stays where the loss is finite)",
            a.grid * a.grid
        ));
    }
    let json = a.out.join("landscape.json");
    write_json(
        &json,
        &Surface {
            checkpoint: a.checkpoint.display().to_string(),
            data: data.clone(),
            samples: probe.samples(),
            alphas: coords.clone(),
            betas: coords,
            loss,
            non_finite,
            accuracy: acc,
            line,
        },
    )?;
    out.wrote(json);
    Ok(())
}

/// Loss along the line between this checkpoint and another of the same model, with the
/// batch-norm running statistics interpolated alike.
fn interpolate(
    t: &mut samkit_train::Trainer,
    probe: &Probe,
    wa: &[f32],
    dir: &Path,
    mut other: samkit_train::Trainer,
    points: usize,
    out: &mut Output,
) -> Result<Line> {
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
        to: dir.display().to_string(),
        t: ts,
        loss,
        accuracy: acc,
    })
}
