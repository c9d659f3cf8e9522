//! The workspace binaries the demo runs, next to the demo's own executable (`moto_server` and
//! `cargo-lambda` are found by `local_stack::paths`).

use std::path::{Path, PathBuf};

/// The workspace binaries the demo runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The function (`starter`).
    pub starter: PathBuf,
    /// The producer CLI.
    pub producer: PathBuf,
    /// The local event source mapping.
    pub local_esm: PathBuf,
}

/// The advice when a binary is missing.
pub const BUILD_HINT: &str = "run `cargo build --workspace --bins` (or `make demo`)";

impl Binaries {
    /// Finds `starter`, `producer` and `local-esm` in `dir`.
    pub fn in_dir(dir: &Path) -> Result<Binaries, String> {
        let find = |name: &str| {
            let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("{} is missing: {BUILD_HINT}", path.display()))
            }
        };
        Ok(Binaries {
            starter: find("starter")?,
            producer: find("producer")?,
            local_esm: find("local-esm")?,
        })
    }

    /// Finds them next to the running executable.
    pub fn next_to_current_exe() -> Result<Binaries, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot locate the demo's own executable: {e}"))?;
        let dir = exe
            .parent()
            .ok_or_else(|| format!("{} has no parent folder", exe.display()))?;
        Binaries::in_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_named_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("sfn-pacer-demo-bins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Binaries::in_dir(&dir).unwrap_err();
        assert!(e.contains("starter"), "{e}");
        assert!(e.contains("cargo build --workspace --bins"), "{e}");
        for name in ["starter", "producer", "local-esm"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let b = Binaries::in_dir(&dir).unwrap();
        assert!(b.local_esm.ends_with("local-esm"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
