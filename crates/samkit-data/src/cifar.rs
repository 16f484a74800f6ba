//! CIFAR-10 (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`: records of one label
//! byte and 3072 pixel bytes) and CIFAR-100 (`train.bin`, `test.bin`: coarse label, fine label,
//! 3072 pixel bytes), read from a directory or its `cifar-10-batches-bin` /
//! `cifar-100-binary` subfolder.
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::{Dataset, Split, IMAGE_BYTES};

/// Environment variable consulted when no directory is given.
pub const DATA_DIR_ENV: &str = "SAMKIT_CIFAR_DIR";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar {
    C10,
    C100,
}

impl Cifar {
    pub fn classes(self) -> usize {
        match self {
            Cifar::C10 => 10,
            Cifar::C100 => 100,
        }
    }

    fn subdir(self) -> &'static str {
        match self {
            Cifar::C10 => "cifar-10-batches-bin",
            Cifar::C100 => "cifar-100-binary",
        }
    }

    fn train_files(self) -> Vec<String> {
        match self {
            Cifar::C10 => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Cifar::C100 => vec!["train.bin".into()],
        }
    }

    fn test_file(self) -> &'static str {
        match self {
            Cifar::C10 => "test_batch.bin",
            Cifar::C100 => "test.bin",
        }
    }

    /// Bytes before the pixels in each record, and which of them is the label.
    fn header(self) -> (usize, usize) {
        match self {
            Cifar::C10 => (1, 0),
            Cifar::C100 => (2, 1),
        }
    }
}

/// The folder that holds the files: `dir` itself or its standard subfolder.
fn resolve(dir: &Path, which: Cifar) -> PathBuf {
    let sub = dir.join(which.subdir());
    if sub.is_dir() {
        sub
    } else {
        dir.to_path_buf()
    }
}

/// Parses one binary file's bytes.
pub fn parse(bytes: &[u8], which: Cifar, path: &Path) -> Result<(Vec<u8>, Vec<u16>)> {
    let (hdr, label_at) = which.header();
    let rec = hdr + IMAGE_BYTES;
    if bytes.is_empty() || bytes.len() % rec != 0 {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            detail: format!(
                "{} bytes is not a whole number of {rec}-byte records",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / rec;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let y = r[label_at] as usize;
        if y >= which.classes() {
            return Err(DataError::Malformed {
                path: path.to_path_buf(),
                detail: format!("record {i} has label {y}, above {}", which.classes() - 1),
            });
        }
        labels.push(y as u16);
        images.extend_from_slice(&r[hdr..]);
    }
    Ok((images, labels))
}

fn read(path: &Path, which: Cifar, what: &'static str) -> Result<(Vec<u8>, Vec<u16>)> {
    if !path.is_file() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            what,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse(&bytes, which, path)
}

/// Loads the train and test sets from `dir`, or from `$SAMKIT_CIFAR_DIR` when `dir` is None.
pub fn load(which: Cifar, dir: Option<&Path>) -> Result<Split> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::var_os(DATA_DIR_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| {
                DataError::invalid(
                    "data-dir",
                    "(none)",
                    "give --data-dir or set SAMKIT_CIFAR_DIR",
                )
            })?,
    };
    let root = resolve(&dir, which);
    let name = match which {
        Cifar::C10 => "cifar10",
        Cifar::C100 => "cifar100",
    };
    let mut train = Dataset {
        name: format!("{name}-train"),
        classes: which.classes(),
        images: Vec::new(),
        labels: Vec::new(),
    };
    for f in which.train_files() {
        let (im, lb) = read(&root.join(&f), which, "training")?;
        train.images.extend(im);
        train.labels.extend(lb);
    }
    let (images, labels) = read(&root.join(which.test_file()), which, "test")?;
    let test = Dataset {
        name: format!("{name}-test"),
        classes: which.classes(),
        images,
        labels,
    };
    let description = format!(
        "{name} from {} ({} train / {} test images)",
        root.display(),
        train.len(),
        test.len()
    );
    Ok(Split {
        train,
        test,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, IMAGE_BYTES));
        r
    }

    #[test]
    fn parses_records_and_names_problems() {
        let p = Path::new("x.bin");
        let mut bytes = record(3, 7);
        bytes.extend(record(9, 1));
        let (im, lb) = parse(&bytes, Cifar::C10, p).unwrap();
        assert_eq!(lb, vec![3, 9]);
        assert_eq!(im.len(), 2 * IMAGE_BYTES);
        assert_eq!(im[IMAGE_BYTES], 1);
        let e = parse(&bytes[..bytes.len() - 1], Cifar::C10, p).unwrap_err();
        assert!(e.to_string().contains("x.bin") && e.to_string().contains("records"));
        let e = parse(&record(10, 0), Cifar::C10, p).unwrap_err();
        assert!(e.to_string().contains("label 10"));
        // CIFAR-100: coarse label first, fine label second.
        let mut r = vec![19u8, 99];
        r.extend(std::iter::repeat_n(0, IMAGE_BYTES));
        assert_eq!(parse(&r, Cifar::C100, p).unwrap().1, vec![99]);
    }

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("samkit-cifar-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data_batch_1.bin"), record(1, 2)).unwrap();
        let e = load(Cifar::C10, Some(&dir)).unwrap_err();
        assert!(e.to_string().contains("data_batch_2.bin"), "{e}");
        for i in 2..=5 {
            std::fs::write(dir.join(format!("data_batch_{i}.bin")), record(1, 2)).unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), record(4, 2)).unwrap();
        let s = load(Cifar::C10, Some(&dir)).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (5, 1));
        std::fs::remove_dir_all(&dir).ok();
    }
}
