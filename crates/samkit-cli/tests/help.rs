//! `--help` of every subcommand: every flag has a description (a default or the list of
//! values alone is not one), defaults are shown, and `bench` lists no training-only flag.
mod common;

use common::{ok, samkit};

/// A flag's help as `--help` prints it: the flag's spelling and its description (what follows
/// the flag on its line and on the indented lines below it, up to the next flag).
struct Flag {
    name: String,
    help: String,
}

/// Whether a help line starts a flag (`  -h, --help`, `      --seed <SEED>`).
fn is_flag_line(l: &str) -> bool {
    let t = l.trim_start();
    // `-h, --help` and `--seed`, but not a `- value: help` line of a list of possible values.
    let short = t.starts_with('-') && t[1..].starts_with(|c: char| c.is_ascii_alphabetic());
    l.starts_with(' ') && (t.starts_with("--") || short)
}

/// The flags of one `--help` text, in order.
fn flags(help: &str) -> Vec<Flag> {
    let lines: Vec<&str> = help.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !is_flag_line(l) {
            continue;
        }
        let t = l.trim_start();
        // The spelling ends at the first run of two spaces; what follows is help on one line.
        let (spec, rest) = t.split_once("  ").unwrap_or((t, ""));
        let name = spec
            .split([',', ' ', '='])
            .map(str::trim)
            .find(|w| w.starts_with("--"))
            .unwrap_or(spec)
            .to_string();
        let mut help = rest.trim().to_string();
        for next in &lines[i + 1..] {
            // An empty line ends a flag's block; a line of spaces separates its paragraphs.
            if next.is_empty() || is_flag_line(next) || !next.starts_with(' ') {
                break;
            }
            if next.trim().is_empty() {
                continue;
            }
            help.push(' ');
            help += next.trim();
        }
        out.push(Flag { name, help });
    }
    out
}

/// The help with clap's bracketed annotations (`[default: …]`, `[possible values: …]`,
/// `[aliases: …]`) taken out: what is left is the flag's own description.
fn description(help: &str) -> String {
    let mut s = help.to_string();
    for tag in ["[default: ", "[possible values: ", "[aliases: ", "[env: "] {
        while let Some(a) = s.find(tag) {
            let end = s[a..].find(']').map_or(s.len(), |e| a + e + 1);
            s.replace_range(a..end, "");
        }
    }
    s.trim().to_string()
}

/// The subcommands a `--help` lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    let mut in_commands = false;
    let mut out = Vec::new();
    for l in help.lines() {
        if l.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if !l.starts_with(' ') {
                if l.trim().is_empty() {
                    continue;
                }
                break;
            }
            // A command's name is indented by two spaces; its wrapped help by more.
            if l.starts_with("  ") && !l.starts_with("   ") {
                if let Some(name) = l.split_whitespace().next() {
                    if name != "help" {
                        out.push(name.to_string());
                    }
                }
            }
        }
    }
    out
}

/// `samkit <path> --help`, and every subcommand below it, in order.
fn walk(path: Vec<String>, seen: &mut Vec<(Vec<String>, String)>) {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = ok(&samkit(&args));
    for sub in subcommands(&help) {
        let mut p = path.clone();
        p.push(sub);
        walk(p, seen);
    }
    seen.push((path, help));
}

fn all_helps() -> Vec<(Vec<String>, String)> {
    let mut seen = Vec::new();
    walk(Vec::new(), &mut seen);
    seen
}

#[test]
fn every_flag_of_every_subcommand_has_a_description() {
    let helps = all_helps();
    // The walk must reach the commands the README names (a broken parse would pass vacuously).
    let names: Vec<String> = helps.iter().map(|(p, _)| p.join(" ")).collect();
    for cmd in [
        "train",
        "compare",
        "bench",
        "landscape",
        "hessian",
        "toy",
        "linreg",
    ] {
        assert!(
            names.iter().any(|n| n == cmd),
            "{cmd} not walked: {names:?}"
        );
    }
    let mut missing = Vec::new();
    let mut counted = 0;
    for (path, help) in &helps {
        for f in flags(help) {
            counted += 1;
            if description(&f.help).is_empty() {
                missing.push(format!("samkit {} {}", path.join(" "), f.name));
            }
        }
    }
    assert!(
        counted > 100,
        "only {counted} flags found: the help parse is broken"
    );
    assert!(
        missing.is_empty(),
        "flags without a description:\n{}",
        missing.join("\n")
    );
}

#[test]
fn defaults_are_shown_in_help() {
    let help = ok(&samkit(&["train", "--help"]));
    let by_name = |name: &str| -> String {
        flags(&help)
            .into_iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} not in train --help:\n{help}"))
            .help
    };
    // clap's own defaults, and the ones that depend on other flags, written in the help.
    for name in [
        "--optimizer",
        "--weight-decay",
        "--seed",
        "--tau",
        "--epochs",
        "--batch",
        "--lr",
        "--width",
        "--schedule",
        "--milestones",
        "--momentum",
        "--out",
        "--checkpoint-every",
        "--base",
        "--device",
    ] {
        let h = by_name(name);
        assert!(h.contains("[default: "), "{name}: no default shown: {h}");
    }
    // τ is a strict bound (docs/ALGORITHMS.md, ImbSAM).
    assert!(
        by_name("--tau").contains("fewer than τ"),
        "{}",
        by_name("--tau")
    );
}

/// Flags that only shape a training run: `bench` times single steps and must not offer them.
const TRAINING_ONLY: [&str; 10] = [
    "--epochs",
    "--steps-per-epoch",
    "--schedule",
    "--milestones",
    "--gamma",
    "--warmup",
    "--preset-survey",
    "--resume",
    "--stop-after",
    "--checkpoint-every",
];

#[test]
fn bench_help_lists_no_training_only_flag() {
    let names = |cmd: &str| -> Vec<String> {
        flags(&ok(&samkit(&[cmd, "--help"])))
            .into_iter()
            .map(|f| f.name)
            .collect()
    };
    let bench = names("bench");
    for f in TRAINING_ONLY {
        assert!(!bench.iter().any(|n| n == f), "bench --help lists {f}");
    }
    // What a step needs is still there, and train keeps its training flags.
    for f in [
        "--batch",
        "--lr",
        "--base",
        "--rho",
        "--optimizers",
        "--steps",
    ] {
        assert!(bench.iter().any(|n| n == f), "bench --help lacks {f}");
    }
    let train = names("train");
    for f in TRAINING_ONLY {
        assert!(train.iter().any(|n| n == f), "train --help lacks {f}");
    }
    // A training-only flag given to bench is refused (not silently ignored).
    let o = samkit(&["bench", "--epochs", "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o.stderr));
}

/// `bench` offers the data set (with `--long-tail`, which ImbSAM needs for tail classes) and
/// one step's flags, but not what only shapes a training run's data or schedule: label noise
/// and augmentation do not change what a step costs.
#[test]
fn bench_help_lists_the_data_set_and_step_flags_but_not_training_data_flags() {
    let bench: Vec<String> = flags(&ok(&samkit(&["bench", "--help"])))
        .into_iter()
        .map(|f| f.name)
        .collect();
    for f in ["--label-noise", "--no-augment", "--epochs", "--schedule"] {
        assert!(!bench.iter().any(|n| n == f), "bench --help lists {f}");
    }
    for f in [
        "--data",
        "--data-dir",
        "--train-size",
        "--test-size",
        "--long-tail",
        "--batch",
        "--seed",
    ] {
        assert!(bench.iter().any(|n| n == f), "bench --help lacks {f}");
    }
    // `train` keeps them all.
    let train: Vec<String> = flags(&ok(&samkit(&["train", "--help"])))
        .into_iter()
        .map(|f| f.name)
        .collect();
    for f in ["--label-noise", "--no-augment", "--long-tail", "--batch"] {
        assert!(train.iter().any(|n| n == f), "train --help lacks {f}");
    }
    // Given to bench, they are refused (exit 2), not silently ignored.
    for args in [
        &["bench", "--label-noise", "0.2"][..],
        &["bench", "--no-augment"][..],
    ] {
        let o = samkit(args);
        assert_eq!(o.status.code(), Some(2), "{}", common::text(&o.stderr));
    }
}
