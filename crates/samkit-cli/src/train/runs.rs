//! `compare --runs FILE.toml`: per-run settings, one `[[run]]` table per run, so that a mix of
//! rules, base optimizers and hyperparameters (the survey's figure 9e) is one command:
//!
//! ```toml
//! [[run]]
//! name = "sam-adam"          # the label in the table, plots and checkpoints [default: optimizer]
//! optimizer = "sam"          # any of `train --optimizer`'s (required)
//! base = "adam"
//! lr = 0.005
//! rho = 0.2
//! adaptive = true
//!
//! [[run]]
//! optimizer = "friendlysam"
//! base = "rmsprop"
//! lr = 0.01
//! ```
//!
//! Every other key is a flag of `train` without its dashes (`weight_decay` or `weight-decay`,
//! `fisher_samples`, `mask_interval`, `drop_rate`, `schedule`, `milestones = [10, 15]`, ...):
//! the base optimizer's and the schedule's flags and every rule flag. The command line's flags
//! hold for every run; a table's keys override them for that run. Data, model, epochs, batch,
//! seed and device are the command line's alone, so the runs stay comparable. An unknown key, a
//! value of the wrong type or out of range, or a key that does not apply to the run's
//! optimizer or base is refused (exit 2) naming the file, the table and the key.
use std::path::Path;

use serde_json::{Map, Value};
use toml_edit::{Document, Item, Value as TomlValue};

use super::args::{RuleArgs, RunArgs, TrainArgs};
use crate::error::{CliError, Result};
use samkit_train::RunConfig;

/// `TrainArgs` keys that are the command line's alone: every run shares them.
const SHARED: [(&str, &str); 5] = [
    ("epochs", "--epochs"),
    ("batch", "--batch"),
    ("steps_per_epoch", "--steps-per-epoch"),
    ("seed", "--seed"),
    ("preset_survey", "--preset-survey"),
];

/// Longest run name (it names a checkpoint folder).
const MAX_NAME: usize = 64;

/// One parsed `[[run]]` table.
#[derive(Debug)]
pub struct RunSpec {
    /// 1-based position in the file.
    pub index: usize,
    pub name: String,
    pub optimizer: String,
    /// The table's keys (dashes as underscores) and values, in file order.
    pub keys: Vec<(String, Value)>,
}

/// The error of a file's table: exit 2, naming the file, the table and (when there is one) the
/// key.
fn bad(file: &Path, table: &str, key: Option<&str>, why: impl std::fmt::Display) -> CliError {
    let key = key.map_or(String::new(), |k| format!(", key `{k}`"));
    CliError::invalid("runs", format!("{}: {table}{key}: {why}", file.display()))
}

fn table_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("[[run]] #{index} (`{n}`)"),
        None => format!("[[run]] #{index}"),
    }
}

/// A TOML value as JSON (numbers, strings, booleans and arrays of them).
fn to_json(v: &TomlValue) -> std::result::Result<Value, String> {
    Ok(match v {
        TomlValue::String(s) => Value::String(s.value().clone()),
        TomlValue::Integer(i) => Value::from(*i.value()),
        TomlValue::Float(f) => {
            let x = *f.value();
            serde_json::Number::from_f64(x)
                .map(Value::Number)
                .ok_or_else(|| format!("{x} is not a finite number"))?
        }
        TomlValue::Boolean(b) => Value::Bool(*b.value()),
        TomlValue::Array(a) => Value::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        TomlValue::Datetime(_) => return Err("a date is not a setting".into()),
        TomlValue::InlineTable(_) => return Err("a table is not a setting".into()),
    })
}

/// Parses the runs file `text` (read from `file`) into its tables, checking the structure:
/// only `[[run]]` tables, each with a known optimizer and unique name.
pub fn parse(file: &Path, text: &str) -> Result<Vec<RunSpec>> {
    let doc = Document::parse(text.to_string()).map_err(|e| {
        CliError::invalid(
            "runs",
            format!(
                "{}: not valid TOML: {}",
                file.display(),
                e.to_string().trim()
            ),
        )
    })?;
    let root = doc.as_table();
    let mut specs = Vec::new();
    for (k, item) in root.iter() {
        if k != "run" {
            return Err(bad(
                file,
                "the top level",
                Some(k),
                "unknown key: the file holds only [[run]] tables",
            ));
        }
        let Some(tables) = item.as_array_of_tables() else {
            return Err(bad(
                file,
                "the top level",
                Some("run"),
                "must be [[run]] tables (one per run)",
            ));
        };
        for (i, t) in tables.iter().enumerate() {
            let index = i + 1;
            let name_given = t.get("name").and_then(|n| n.as_str()).map(str::to_string);
            let label = table_label(
                index,
                name_given
                    .as_deref()
                    .or(t.get("optimizer").and_then(|n| n.as_str())),
            );
            let mut keys = Vec::new();
            for (k, item) in t.iter() {
                let key = k.replace('-', "_");
                let value = match item {
                    Item::Value(v) => to_json(v).map_err(|why| bad(file, &label, Some(k), why))?,
                    _ => {
                        return Err(bad(
                            file,
                            &label,
                            Some(k),
                            "a nested table is not a setting",
                        ))
                    }
                };
                if keys.iter().any(|(x, _): &(String, Value)| *x == key) {
                    return Err(bad(file, &label, Some(k), "given twice"));
                }
                keys.push((key, value));
            }
            let string = |key: &str| -> Result<Option<String>> {
                match keys.iter().find(|(k, _)| k == key) {
                    None => Ok(None),
                    Some((_, Value::String(s))) => Ok(Some(s.clone())),
                    Some((_, v)) => {
                        Err(bad(file, &label, Some(key), format!("{v} is not a string")))
                    }
                }
            };
            let Some(optimizer) = string("optimizer")? else {
                return Err(bad(
                    file,
                    &label,
                    Some("optimizer"),
                    format!(
                        "missing: every run names its optimizer (one of {})",
                        super::args::OPTIMIZERS.join(", ")
                    ),
                ));
            };
            if !super::args::OPTIMIZERS.contains(&optimizer.as_str()) {
                return Err(bad(
                    file,
                    &label,
                    Some("optimizer"),
                    format!(
                        "unknown optimizer `{optimizer}`; choose from {}",
                        super::args::OPTIMIZERS.join(", ")
                    ),
                ));
            }
            let name = string("name")?.unwrap_or_else(|| optimizer.clone());
            let name_ok = !name.is_empty()
                && name.len() <= MAX_NAME
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
                && !name.starts_with('.');
            if !name_ok {
                return Err(bad(
                    file,
                    &label,
                    Some("name"),
                    format!(
                        "`{name}` must be 1 to {MAX_NAME} letters, digits, '-', '_', '.' or '+' \
                         (it names the run's checkpoint folder), not starting with '.'"
                    ),
                ));
            }
            if let Some(other) = specs.iter().find(|s: &&RunSpec| s.name == name) {
                return Err(bad(
                    file,
                    &label,
                    Some("name"),
                    format!(
                        "`{name}` is also the name of [[run]] #{} (give each run its own name)",
                        other.index
                    ),
                ));
            }
            keys.retain(|(k, _)| k != "name" && k != "optimizer");
            specs.push(RunSpec {
                index,
                name,
                optimizer,
                keys,
            });
        }
    }
    if specs.is_empty() {
        return Err(CliError::invalid(
            "runs",
            format!("{}: no [[run]] table", file.display()),
        ));
    }
    Ok(specs)
}

/// The rule flags at their defaults.
fn default_rule() -> Result<RuleArgs> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        rule: RuleArgs,
    }
    use clap::Parser;
    Defaults::try_parse_from(["samkit"])
        .map(|d| d.rule)
        .map_err(|e| CliError::Run(format!("the default rule flags do not parse: {e}")))
}

/// Which flag struct a key belongs to.
enum Part {
    Train,
    Rule,
}

/// The run arguments of `spec`: the command line's `base` with the table's keys on top; every
/// key checked on its own so that a bad one is named.
fn overlay(file: &Path, spec: &RunSpec, base: &RunArgs) -> Result<RunArgs> {
    let label = table_label(spec.index, Some(&spec.name));
    let json = |v: serde_json::Result<Value>| {
        v.map_err(|e| CliError::Run(format!("the flags do not serialize: {e}")))
    };
    let obj = |v: Value| match v {
        Value::Object(m) => Ok(m),
        _ => Err(CliError::Run("the flags are not an object".into())),
    };
    let mut train: Map<String, Value> = obj(json(serde_json::to_value(&base.train))?)?;
    let mut rule: Map<String, Value> = obj(json(serde_json::to_value(&base.rule))?)?;
    // The rule flags of this table alone, to check that they apply to its optimizer.
    let mut own_rule: Map<String, Value> = obj(json(serde_json::to_value(default_rule()?))?)?;
    for (key, value) in &spec.keys {
        if let Some((_, flag)) = SHARED.iter().find(|(k, _)| k == key) {
            return Err(bad(
                file,
                &label,
                Some(key),
                format!("is the same for every run: give {flag} on the command line"),
            ));
        }
        let part = if train.contains_key(key) {
            Part::Train
        } else if rule.contains_key(key) {
            Part::Rule
        } else {
            return Err(bad(
                file,
                &label,
                Some(key),
                "unknown key (the keys are name, optimizer and the base-optimizer, schedule and \
                 rule flags of `samkit train`, e.g. base, lr, momentum, weight_decay, schedule, \
                 milestones, rho, adaptive, sparsity, fisher_samples, mask_interval, drop_rate)",
            ));
        };
        let target = match part {
            Part::Train => &mut train,
            Part::Rule => &mut rule,
        };
        target.insert(key.clone(), value.clone());
        // The key alone on the flags: a value of the wrong type is named here.
        let typed = match part {
            Part::Train => {
                serde_json::from_value::<TrainArgs>(Value::Object(target.clone())).map(|_| ())
            }
            Part::Rule => {
                own_rule.insert(key.clone(), value.clone());
                serde_json::from_value::<RuleArgs>(Value::Object(target.clone())).map(|_| ())
            }
        };
        typed.map_err(|e| bad(file, &label, Some(key), format!("bad value {value}: {e}")))?;
    }
    let mut run = base.clone();
    run.train =
        serde_json::from_value(Value::Object(train)).map_err(|e| bad(file, &label, None, e))?;
    run.rule =
        serde_json::from_value(Value::Object(rule)).map_err(|e| bad(file, &label, None, e))?;
    let own: RuleArgs =
        serde_json::from_value(Value::Object(own_rule)).map_err(|e| bad(file, &label, None, e))?;
    own.check_applies(&[spec.optimizer.as_str()])
        .map_err(|e| blame(file, spec, e))?;
    if own.rho.is_some() && spec.optimizer == "sgd" {
        return Err(bad(
            file,
            &label,
            Some("rho"),
            "does not apply to optimizer sgd, which has no perturbation",
        ));
    }
    Ok(run)
}

/// A validation error of a run's flags, named by the table's key when the table gave it (else
/// it is a command-line flag, named as such).
fn blame(file: &Path, spec: &RunSpec, e: CliError) -> CliError {
    let label = table_label(spec.index, Some(&spec.name));
    match e {
        CliError::InvalidValue { flag, why } => {
            let key = flag.replace('-', "_");
            if spec.keys.iter().any(|(k, _)| *k == key) || flag == "optimizer" {
                bad(file, &label, Some(&key), why)
            } else {
                bad(
                    file,
                    &label,
                    None,
                    format!("--{flag} (from the command line): {why}"),
                )
            }
        }
        other => bad(file, &label, None, other),
    }
}

/// The run configurations of the runs file `file` on top of the command line's `base` flags,
/// each labelled with its run's name; `check` refuses flags that do not apply to a run (the
/// `compare` command's own check, run on each run's flags).
pub fn configs(
    file: &Path,
    base: &RunArgs,
    check: impl Fn(&RunArgs, &[&str]) -> Result<()>,
) -> Result<Vec<RunConfig>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::invalid("runs", format!("cannot read {}: {e}", file.display())))?;
    let specs = parse(file, &text)?;
    specs
        .iter()
        .map(|spec| {
            let run = overlay(file, spec, base)?;
            check(&run, &[spec.optimizer.as_str()]).map_err(|e| blame(file, spec, e))?;
            let mut cfg = run
                .config(&spec.optimizer)
                .map_err(|e| blame(file, spec, e))?;
            cfg.optimizer = spec.name.clone();
            Ok(cfg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_with_names_defaulting_to_the_optimizer() {
        let specs = parse(
            Path::new("r.toml"),
            "[[run]]\noptimizer = \"sam\"\nrho = 0.2\n[[run]]\nname = \"f\"\noptimizer = \"friendlysam\"\nweight-decay = 1e-4\n",
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "sam");
        assert_eq!(specs[0].keys, vec![("rho".to_string(), Value::from(0.2))]);
        assert_eq!(specs[1].name, "f");
        assert_eq!(specs[1].keys[0].0, "weight_decay");
    }

    #[test]
    fn structure_errors_name_the_file_and_table() {
        let err = |text: &str| parse(Path::new("r.toml"), text).unwrap_err().to_string();
        assert!(err("x = 1\n").contains("key `x`"));
        assert!(err("").contains("no [[run]] table"));
        let e = err("[[run]]\noptimizer = \"sam\"\n[[run]]\noptimizer = \"sam\"\n");
        assert!(e.contains("[[run]] #2") && e.contains("key `name`"), "{e}");
        assert!(err("[[run]]\nname = \"a\"\n").contains("key `optimizer`"));
        assert!(err("[[run]]\noptimizer = \"nope\"\n").contains("unknown optimizer"));
        assert!(err("[[run]]\noptimizer = \"sam\"\nname = \"../x\"\n").contains("key `name`"));
        assert!(err("[[run\n").contains("not valid TOML"));
    }
}
