//! The CUDA C++ sources of samkit, with one registry.
//!
//! Every kernel source of the workspace lives in this crate's `kernels/` directory: one `.cu` file
//! per family and `samkit.cuh`, which every family includes. The sources are embedded with
//! `include_str!`, so a crate that compiles them with NVRTC at run time needs no file on disk;
//! [`kernels_dir`] gives the files for tools that do (the host emulator of the tests).
use std::path::PathBuf;

/// The include name of the header every family includes.
pub const HEADER_NAME: &str = "samkit.cuh";
/// The header's source, handed to NVRTC as an in-memory header named [`HEADER_NAME`].
pub const HEADER: &str = include_str!("../kernels/samkit.cuh");

/// One kernel source file of `kernels/`: `<name>.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Family {
    pub name: &'static str,
    pub source: &'static str,
    /// The family's ABI probe kernel: one thread writes the sizes and key offsets of its argument
    /// structs, which the loader (samkit-cuda's `Device::module`) compares with the host's
    /// (`samkit_cuda::abi::expected`) before any kernel of the family runs.
    pub abi_probe: &'static str,
}

/// The [`Family`] of `kernels/<name>.cu` (embedded) whose ABI probe kernel is `probe`.
macro_rules! cu_family {
    ($name:literal, $probe:literal) => {
        Family {
            name: $name,
            source: include_str!(concat!("../kernels/", $name, ".cu")),
            abi_probe: $probe,
        }
    };
}

/// Squared norms and dot products of the optimizer (samkit-cuda).
pub const NORM: Family = cu_family!("norm", "sk_abi");
/// The perturbation step of the optimizer (samkit-cuda).
pub const PERTURB: Family = cu_family!("perturb", "sk_abi_perturb");
/// The restore and base-optimizer update of the optimizer (samkit-cuda).
pub const UPDATE: Family = cu_family!("update", "sk_abi_update");
/// The Fisher-information accumulation of SSAM-F (samkit-cuda).
pub const FISHER: Family = cu_family!("fisher", "sk_abi_fisher");
/// The top-k mask selection of the sparse rules (samkit-cuda).
pub const SELECT: Family = cu_family!("select", "sk_abi_select");
/// The layers of samkit-nn's CUDA backend.
pub const NN: Family = cu_family!("nn", "sk_abi_nn");

/// The optimizer's families (samkit-cuda), in the order its compile check reports them.
pub const OPTIMIZER_FAMILIES: [Family; 5] = [NORM, PERTURB, UPDATE, FISHER, SELECT];

/// Every family of the workspace: the optimizer's, then samkit-nn's.
pub const FAMILIES: [Family; 6] = [NORM, PERTURB, UPDATE, FISHER, SELECT, NN];

/// The family named `name` (the file stem of its `.cu`), if any.
pub fn family(name: &str) -> Option<Family> {
    FAMILIES.iter().copied().find(|f| f.name == name)
}

/// The directory that holds the `.cu` files and `samkit.cuh` on disk: this crate's `kernels/`
/// (in the workspace, or in cargo's unpacked copy of the published crate).
pub fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_kernels_dir_is_registered_and_matches_its_embedded_source() {
        let dir = kernels_dir();
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("kernels/ is readable")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cu"))
            .collect();
        on_disk.sort();
        let mut registered: Vec<String> =
            FAMILIES.iter().map(|f| format!("{}.cu", f.name)).collect();
        registered.sort();
        assert_eq!(on_disk, registered, "every .cu of kernels/ is in FAMILIES");
        for f in FAMILIES {
            let text = std::fs::read_to_string(dir.join(format!("{}.cu", f.name)))
                .expect("registered family is on disk");
            assert_eq!(text, f.source, "{}.cu embedded == on disk", f.name);
        }
        let header = std::fs::read_to_string(dir.join(HEADER_NAME)).expect("samkit.cuh on disk");
        assert_eq!(header, HEADER);
    }

    #[test]
    fn family_looks_up_by_name_and_names_are_unique() {
        for f in FAMILIES {
            assert_eq!(family(f.name), Some(f));
            assert_eq!(FAMILIES.iter().filter(|g| g.name == f.name).count(), 1);
        }
        assert_eq!(family("nope"), None);
        assert!(OPTIMIZER_FAMILIES.iter().all(|f| FAMILIES.contains(f)));
    }

    #[test]
    fn every_family_defines_its_abi_probe() {
        for f in FAMILIES {
            let decl = format!("extern \"C\" __global__ void {}(u32* out)", f.abi_probe);
            assert!(f.source.contains(&decl), "{}.cu defines `{decl}`", f.name);
        }
        for f in FAMILIES {
            assert_eq!(
                FAMILIES
                    .iter()
                    .filter(|g| g.abi_probe == f.abi_probe)
                    .count(),
                1,
                "{} has its own probe",
                f.name
            );
        }
    }

    #[test]
    fn every_family_includes_the_header() {
        for f in FAMILIES {
            assert!(
                f.source.contains(&format!("#include \"{HEADER_NAME}\"")),
                "{}.cu includes {HEADER_NAME}",
                f.name
            );
        }
    }
}
