//! Part (d): the survey's §4 claim that Lookahead-SAM (EG-SAM, OG-SAM; reconstructed, see
//! docs/ALGORITHMS.md) leaves saddle points faster than SAM, tested where it can be: the
//! number of steps SGD, SAM, EG-SAM and OG-SAM take to leave the saddle of the toy function
//! `x²/2 − y²/2 + y⁴/4` (at the origin) and the saddle of the Beale function (at (0, 1)),
//! started exactly at the saddle with mini-batch gradient noise (std `noise/√B`, the same
//! noise for both passes of a step). All four use plain SGD (no momentum) at one learning rate.
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::plot::{self, optimizer_color};
use crate::progress;
use crate::rng::Rng;
use crate::toy::{beale, saddle};
use samkit_core::rules::EgSam;
use samkit_core::{BaseOptimizer, Eval, GradRequest, Layout, Optimizer, Pass, Rule, Sam};

/// The four rules compared, by their CLI names.
pub fn rules(rho: f32) -> Vec<(&'static str, Rule)> {
    let eg = |optimistic| {
        Rule::EgSam(EgSam {
            rho,
            eta_x: None,
            optimistic,
            eps_p: None,
        })
    };
    vec![
        ("sgd", Rule::Base),
        (
            "sam",
            Rule::Sam(Sam {
                rho,
                adaptive: false,
                eps_p: None,
                grad_centralization: false,
            }),
        ),
        ("eg-sam", eg(false)),
        ("og-sam", eg(true)),
    ]
}

/// One saddle problem.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub name: &'static str,
    pub saddle: (f64, f64),
    pub lr: f64,
    pub rho: f64,
    /// Per-batch gradient noise std (`noise/√B`).
    pub noise_std: f64,
    /// Escaped once the distance from the saddle exceeds this.
    pub radius: f64,
    pub max_steps: usize,
    /// Where a run that escaped should end up: a run ending within `radius / 5` of it counts
    /// as converged.
    pub minimum: Option<(f64, f64)>,
    #[serde(skip)]
    pub grad: fn(f64, f64) -> (f64, f64),
}

/// Steps until the run leaves the `radius` ball around the saddle (`None`: it never did) and
/// the final point after `max_steps` (or where it diverged).
pub fn escape_run(p: &Problem, rule: Rule, rng: &mut Rng) -> Result<(Option<usize>, (f64, f64))> {
    let base = BaseOptimizer::sgd(p.lr as f32, 0.0, 0.0);
    let mut opt = Optimizer::new(Layout::flat(2)?, rule, base)?;
    let mut w = vec![p.saddle.0 as f32, p.saddle.1 as f32];
    let mut noise = (0.0, 0.0);
    let mut escaped = None;
    for t in 1..=p.max_steps {
        opt.step(&mut w, |req, w: &Vec<f32>, g| {
            match req {
                GradRequest::Batch(Pass::Clean) => {
                    noise = (p.noise_std * rng.normal(), p.noise_std * rng.normal());
                }
                GradRequest::Batch(Pass::Perturbed) => {}
                other => {
                    return Err(samkit_core::Error::Oracle(format!(
                        "a toy saddle has no {other:?} gradient"
                    )))
                }
            }
            let (gx, gy) = (p.grad)(w[0] as f64, w[1] as f64);
            g[0] = (gx + noise.0) as f32;
            g[1] = (gy + noise.1) as f32;
            Ok(Eval {
                loss: 0.0,
                samples: 1,
            })
        })?;
        let (x, y) = (w[0] as f64, w[1] as f64);
        if !(x.is_finite() && y.is_finite()) {
            break;
        }
        let d = ((x - p.saddle.0).powi(2) + (y - p.saddle.1).powi(2)).sqrt();
        if escaped.is_none() && d > p.radius {
            escaped = Some(t);
            // Without a minimum to reach, the escape is all that is measured.
            if p.minimum.is_none() {
                break;
            }
        }
    }
    Ok((escaped, (w[0] as f64, w[1] as f64)))
}

/// One rule on one problem over the seeds.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub problem: &'static str,
    pub optimizer: &'static str,
    pub runs: usize,
    /// Mean steps to escape, a run that never escaped counted as `max_steps`.
    pub mean_steps: f64,
    /// Standard error of that mean.
    pub se_steps: f64,
    /// Median steps to escape (the cap for runs that never escaped).
    pub median_steps: f64,
    /// Runs still inside the radius after `max_steps`.
    pub stuck: usize,
    /// Runs that ended near the problem's minimum (where it has one).
    pub converged: Option<usize>,
}

/// Every rule on `p` over `seeds` noise streams (seed `s` gives every rule the same stream).
pub fn outcomes(p: &Problem, rho: f32, seeds: usize, seed: u64) -> Result<Vec<Outcome>> {
    let pb = progress::bar((4 * seeds) as u64, p.name);
    let out = rules(rho)
        .into_par_iter()
        .map(|(name, rule)| {
            let runs = (0..seeds)
                .into_par_iter()
                .map(|s| {
                    let mut rng = Rng::stream(seed, s as u64);
                    let r = escape_run(p, rule.clone(), &mut rng);
                    pb.inc(1);
                    r
                })
                .collect::<Result<Vec<_>>>()?;
            let mut steps: Vec<f64> = runs
                .iter()
                .map(|r| r.0.unwrap_or(p.max_steps) as f64)
                .collect();
            steps.sort_by(f64::total_cmp);
            let n = steps.len();
            let median = if n % 2 == 1 {
                steps[n / 2]
            } else {
                0.5 * (steps[n / 2 - 1] + steps[n / 2])
            };
            let mean = steps.iter().sum::<f64>() / n as f64;
            let var = steps.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
            Ok(Outcome {
                problem: p.name,
                optimizer: name,
                runs: n,
                mean_steps: mean,
                se_steps: (var / n as f64).sqrt(),
                median_steps: median,
                stuck: runs.iter().filter(|r| r.0.is_none()).count(),
                converged: p.minimum.map(|m| {
                    runs.iter()
                        .filter(|r| {
                            let (x, y) = r.1;
                            ((x - m.0).powi(2) + (y - m.1).powi(2)).sqrt() < p.radius / 5.0
                        })
                        .count()
                }),
            })
        })
        .collect::<Result<Vec<_>>>();
    pb.finish_and_clear();
    out
}

/// The claim, problem by problem: do EG-SAM and OG-SAM both leave sooner than SAM?
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub problem: &'static str,
    pub sam_mean_steps: f64,
    pub eg_sam_mean_steps: f64,
    pub og_sam_mean_steps: f64,
    /// `holds`: both are faster than SAM by more than [`SIGNIFICANCE`] standard errors of the
    /// difference; `does not hold`: one of them is not faster at all; `within noise`: both
    /// are faster, by less than that.
    pub claim: &'static str,
}

/// Standard errors a difference of mean escape times must exceed to count.
pub const SIGNIFICANCE: f64 = 2.0;

pub fn verdicts(all: &[Outcome]) -> Vec<Verdict> {
    let mut problems: Vec<&'static str> = all.iter().map(|o| o.problem).collect();
    problems.dedup();
    problems
        .into_iter()
        .filter_map(|p| {
            let get = |opt: &str| all.iter().find(|o| o.problem == p && o.optimizer == opt);
            let (sam, eg, og) = (get("sam")?, get("eg-sam")?, get("og-sam")?);
            // How much sooner than SAM, in standard errors of the difference.
            let gain = |o: &Outcome| {
                let d = sam.mean_steps - o.mean_steps;
                let se = (sam.se_steps.powi(2) + o.se_steps.powi(2)).sqrt();
                (d, se)
            };
            let (ge, go) = (gain(eg), gain(og));
            let claim = if ge.0 <= 0.0 || go.0 <= 0.0 {
                "does not hold"
            } else if ge.0 > SIGNIFICANCE * ge.1 && go.0 > SIGNIFICANCE * go.1 {
                "holds"
            } else {
                "within noise"
            };
            Some(Verdict {
                problem: p,
                sam_mean_steps: sam.mean_steps,
                eg_sam_mean_steps: eg.mean_steps,
                og_sam_mean_steps: og.mean_steps,
                claim,
            })
        })
        .collect()
}

/// The two problems: the toy saddle with `(lr, ρ, |y| threshold, step cap)` and the Beale
/// saddle with `(lr, ρ, step cap)`, both with gradient noise of std `noise_std`.
pub fn problems(
    (saddle_lr, saddle_rho, threshold, saddle_steps): (f64, f64, f64, usize),
    (beale_lr, beale_rho, beale_steps): (f64, f64, usize),
    noise_std: f64,
) -> Vec<(Problem, f32)> {
    vec![
        (
            Problem {
                name: "toy saddle",
                saddle: (0.0, 0.0),
                lr: saddle_lr,
                rho: saddle_rho,
                noise_std,
                radius: threshold,
                max_steps: saddle_steps,
                minimum: None,
                grad: saddle::grad,
            },
            saddle_rho as f32,
        ),
        (
            Problem {
                name: "beale",
                saddle: beale::SADDLE,
                lr: beale_lr,
                rho: beale_rho,
                noise_std,
                radius: BEALE_RADIUS,
                max_steps: beale_steps,
                minimum: Some(beale::MINIMUM),
                grad: beale::beale_grad,
            },
            beale_rho as f32,
        ),
    ]
}

/// Leaving the Beale saddle: a distance of 0.5 from (0, 1) (the minimum is 3.04 away).
pub const BEALE_RADIUS: f64 = 0.5;

/// The table printed on stdout.
pub fn table(all: &[Outcome], verdicts: &[Verdict]) -> String {
    let mut s = format!(
        "    {:<12} {:<8} {:>16} {:>8} {:>7} {:>10}\n",
        "problem", "rule", "mean steps ± se", "median", "stuck", "converged"
    );
    for o in all {
        s += &format!(
            "    {:<12} {:<8} {:>16} {:>8.0} {:>7} {:>10}\n",
            o.problem,
            o.optimizer,
            format!("{:.1} ± {:.1}", o.mean_steps, o.se_steps),
            o.median_steps,
            format!("{}/{}", o.stuck, o.runs),
            o.converged
                .map_or("-".into(), |c| format!("{c}/{}", o.runs))
        );
    }
    for v in verdicts {
        s += &format!(
            "    {}: EG-SAM {:.1}, OG-SAM {:.1} against SAM {:.1} mean steps: the survey's claim (they leave sooner): {}\n",
            v.problem,
            v.eg_sam_mean_steps,
            v.og_sam_mean_steps,
            v.sam_mean_steps,
            v.claim
        );
    }
    s
}

/// Mean escape steps per rule, one panel per problem.
pub fn plot(out: &Path, all: &[Outcome], problems: &[&Problem]) -> Result<PathBuf> {
    let file = out.join("escape.png");
    plot::png(&file, (1300, 560), |root| {
        let body = plot::titled(
            root,
            "Steps to leave the saddle (mean over seeds; a run that never left counts as the cap) — EG/OG-SAM reconstructed",
            18,
        )?;
        let panels = body.split_evenly((1, problems.len().max(1)));
        for (area, p) in panels.iter().zip(problems) {
            let rows: Vec<&Outcome> = all.iter().filter(|o| o.problem == p.name).collect();
            let names: Vec<String> = rows.iter().map(|o| o.optimizer.to_string()).collect();
            let values: Vec<f64> = rows.iter().map(|o| o.mean_steps).collect();
            let colors: Vec<_> = rows.iter().map(|o| optimizer_color(o.optimizer)).collect();
            plot::bar_chart_colored(
                area,
                &format!(
                    "{} (lr = {}, ρ = {}, noise std {}, cap {})",
                    p.name, p.lr, p.rho, p.noise_std, p.max_steps
                ),
                "steps to escape",
                &names,
                &values,
                &colors,
            )?;
        }
        Ok(())
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Vec<(Problem, f32)> {
        problems((0.01, 0.05, 0.5, 3000), (0.003, 0.5, 2000), 0.25)
    }

    #[test]
    fn eg_sam_with_no_extrapolation_escapes_exactly_as_sam() {
        // η_x = 0 is SAM bit for bit (ALGORITHMS.md), so the same noise gives the same run.
        let (p, rho) = &quick()[0];
        let sam = rules(*rho)[1].1.clone();
        let eg0 = Rule::EgSam(EgSam {
            rho: *rho,
            eta_x: Some(0.0),
            optimistic: false,
            eps_p: None,
        });
        let a = escape_run(p, sam, &mut Rng::stream(7, 0)).unwrap();
        let b = escape_run(p, eg0, &mut Rng::stream(7, 0)).unwrap();
        assert_eq!(a, b);
        assert!(a.0.is_some(), "the noisy saddle is left within the cap");
    }

    #[test]
    fn without_noise_nothing_leaves_an_exact_saddle() {
        let (mut p, rho) = quick().remove(0);
        p.noise_std = 0.0;
        p.max_steps = 50;
        for (name, rule) in rules(rho) {
            let (t, end) = escape_run(&p, rule, &mut Rng::stream(1, 0)).unwrap();
            assert_eq!(t, None, "{name}");
            assert_eq!(end, (0.0, 0.0), "{name}");
        }
    }

    #[test]
    fn verdicts_need_both_faster_beyond_the_noise() {
        let o = |opt, m, se| Outcome {
            problem: "p",
            optimizer: opt,
            runs: 1,
            mean_steps: m,
            se_steps: se,
            median_steps: m,
            stuck: 0,
            converged: None,
        };
        let claim = |eg, og, se| {
            let v = verdicts(&[
                o("sgd", 9.0, 0.0),
                o("sam", 50.0, se),
                o("eg-sam", eg, se),
                o("og-sam", og, se),
            ]);
            assert_eq!(v.len(), 1);
            v[0].claim
        };
        assert_eq!(claim(40.0, 60.0, 0.1), "does not hold");
        assert_eq!(
            claim(50.0, 40.0, 0.0),
            "does not hold",
            "equal is not sooner"
        );
        assert_eq!(claim(40.0, 30.0, 1.0), "holds");
        assert_eq!(claim(49.0, 48.0, 1.0), "within noise");
    }
}
