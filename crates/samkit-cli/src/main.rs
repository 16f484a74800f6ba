//! `samkit`: the survey's experiments on top of the samkit-core optimizers.
//!
//! - `samkit toy`: SAM/SGD GIFs on a 1-D function, Beale trajectories, saddle escape times.
//! - `samkit linreg`: SGD, SAM, SSAM-F and FriendlySAM on a regression problem, and theorem 1
//!   (excess risk of SGD and SAM on noisy least squares against the bound).
//!
//! Exit codes: 0 success, 2 a bad flag or value, 1 a failure while running.
mod bench_kernels;
mod error;
mod gif;
mod hessian;
mod landscape;
mod linalg;
mod linreg;
mod output;
mod plot;
mod progress;
mod rng;
mod sharpness;
mod toy;
mod train;

use clap::{Parser, Subcommand};

use crate::error::{CliError, EXIT_USAGE};
use crate::output::Output;

#[derive(Parser, Debug)]
#[command(
    name = "samkit",
    version,
    about = "Sharpness-Aware Minimization experiments: the survey's figures, computed with samkit-core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Toy problems: SAM/SGD GIFs on a 1-D function, Beale trajectories, saddle escape.
    Toy(toy::ToyArgs),
    /// Linear regression: training curves of SGD, SAM, SSAM-F, FriendlySAM; theorem 1.
    Linreg(linreg::LinregArgs),
    /// Train ResNet-18 with several optimizers on the same data and seed: accuracy, loss,
    /// cost per step and its breakdown (the main job).
    Compare(train::cmd::CompareCmd),
    /// Train ResNet-18 with one optimizer, with checkpoints and resume.
    Train(train::cmd::TrainCmd),
    /// The survey's table 1: SAM, FriendlySAM, SSAM-F and SSAM-D on CIFAR-10 and CIFAR-100
    /// with --preset-survey, 4 seeds each; markdown and JSON with mean ± std beside the
    /// survey's numbers (a time estimate first; --dry-run stops there).
    Table1(train::table1::Table1Cmd),
    /// Loss surface around a checkpoint along two filter-normalised directions, and the
    /// line between two checkpoints.
    Landscape(landscape::LandscapeArgs),
    /// Top Hessian eigenvalues (power iteration, Lanczos) and trace (Hutchinson) at a
    /// checkpoint.
    Hessian(hessian::HessianArgs),
    /// Cost per step of each optimizer on ResNet-18, phase by phase.
    Bench(train::bench::BenchArgs),
    /// The CUDA optimizer kernels: time, GB/s, fraction of copy bandwidth.
    BenchKernels(bench_kernels::BenchKernelsArgs),
}

fn run(cli: Cli) -> Result<(), CliError> {
    let mut out = Output::default();
    match &cli.command {
        Command::Toy(a) => toy::run(a, &mut out),
        Command::Linreg(a) => linreg::run(a, &mut out),
        Command::Compare(a) => train::cmd::compare(a, &mut out),
        Command::Train(a) => train::cmd::train(a, &mut out),
        Command::Table1(a) => train::table1::run(a, &mut out),
        Command::Landscape(a) => landscape::run(a, &mut out),
        Command::Hessian(a) => hessian::run(a, &mut out),
        Command::Bench(a) => train::bench::run(a, &mut out),
        Command::BenchKernels(a) => bench_kernels::run(a, &mut out),
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            std::process::exit(code);
        }
    };
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            eprintln!("  caused by: {s}");
            src = s.source();
        }
        std::process::exit(e.exit_code());
    }
}
