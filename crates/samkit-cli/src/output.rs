//! What a command prints on stdout: its tables and the name of every file it wrote.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{CliError, Result};

#[derive(Default)]
pub struct Output {
    pub files: Vec<PathBuf>,
}

impl Output {
    pub fn say(&mut self, line: impl AsRef<str>) {
        let mut o = std::io::stdout().lock();
        // A closed pipe (`samkit toy | head`) must not panic.
        let _ = writeln!(o, "{}", line.as_ref().trim_end_matches('\n'));
    }

    pub fn wrote(&mut self, path: PathBuf) {
        self.say(format!("wrote {}", path.display()));
        self.files.push(path);
    }

    /// Creates the output folder and checks that files can be written in it, before the work.
    pub fn ensure_dir(&mut self, dir: &Path) -> Result<()> {
        Ok(samkit_train::files::check_writable_dir(dir)?)
    }
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| CliError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    // Atomic: a crash or a full disk leaves the previous file, never half of one.
    Ok(samkit_train::files::write_atomic(
        path,
        (text + "\n").as_bytes(),
    )?)
}
