//! `samkit landscape`: the loss surface around a checkpoint along two filter-normalised random
//! directions (Li et al., 2018; the survey's figures 8 and 9b), and the 1-D interpolation
//! between two checkpoints.
use std::path::PathBuf;

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

#[derive(Serialize)]
struct Surface {
    checkpoint: String,
    data: String,
    samples: usize,
    alphas: Vec<f64>,
    betas: Vec<f64>,
    /// `loss[j][i]` at `(alphas[i], betas[j])`.
    loss: Vec<Vec<f64>>,
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
    let line = match &a.to {
        Some(dir) => Some(interpolate(&mut t, &probe, &w0, dir, a.line_points, out)?),
        None => None,
    };
    std::fs::create_dir_all(&a.out).map_err(|e| CliError::io(&a.out, e))?;
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
    let (lo, hi) = loss
        .iter()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let levels: Vec<f64> = (1..12)
        .map(|k| lo + (hi - lo) * (k as f64 / 12.0).powi(2))
        .collect();
    let (mj, mi) = (0..a.grid)
        .flat_map(|j| (0..a.grid).map(move |i| (j, i)))
        .min_by(|&(j, i), &(q, p)| loss[j][i].total_cmp(&loss[q][p]))
        .unwrap_or((0, 0));
    let png = a.out.join("landscape.png");
    let title = format!(
        "Loss around {} ({}, {} samples; filter-normalised directions)",
        t.cfg.optimizer,
        t.cfg.data.data_name(),
        probe.samples()
    );
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
                star_label: "lowest loss on the grid",
                saddle: None,
            },
        )
    })?;
    out.wrote(png);
    if let Some(l) = &line {
        let png = a.out.join("interpolation.png");
        let series = vec![Series::line(
            "loss",
            plot::palette(0),
            l.t.iter().copied().zip(l.loss.iter().copied()).collect(),
        )
        .with_markers()];
        plot::png(&png, (900, 600), |area| {
            plot::line_chart(
                area,
                &Axes::new("Loss along (1 − t)·w_a + t·w_b", "t", "loss"),
                &series,
            )
        })?;
        out.wrote(png);
    }
    out.say(format!(
        "loss at the checkpoint {:.4}, lowest on the grid {:.4} at ({:.2}, {:.2}), highest {:.4}",
        loss[a.grid / 2][a.grid / 2],
        lo,
        coords[mi],
        coords[mj],
        hi
    ));
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
    dir: &std::path::Path,
    points: usize,
    out: &mut Output,
) -> Result<Line> {
    let buf_a = t.engine.net.model.buffers()?;
    let (mut other, _) = trained(dir)?;
    if other.engine.net.model.layout() != t.engine.net.model.layout() {
        return Err(CliError::invalid(
            "to",
            format!("{} holds a different model", dir.display()),
        ));
    }
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
