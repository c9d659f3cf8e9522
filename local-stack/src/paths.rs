//! Where things are: the workspace root, and the programs the local stack runs
//! (`moto_server` and `cargo-lambda` from the project's `.venv`, made by `make venv`, or the `PATH`).

use std::path::{Path, PathBuf};

/// The workspace root (the folder that holds the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The project's virtualenv's `bin` folder (`make venv`).
pub fn venv_bin() -> PathBuf {
    workspace_root().join(".venv/bin")
}

/// `name` in a folder of the `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `moto_server`: `$MOTO_SERVER`, the project's `.venv`, else the `PATH`.
pub fn moto_server() -> Result<PathBuf, String> {
    let preferred = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| venv_bin().join("moto_server"));
    if preferred.is_file() {
        return Ok(preferred);
    }
    on_path("moto_server").ok_or_else(|| {
        format!(
            "moto_server not found ({} does not exist, nor is it on the PATH): run `make venv` (or set MOTO_SERVER)",
            preferred.display()
        )
    })
}

/// `cargo-lambda`: the `PATH` (the Makefile puts `.venv/bin` first), else the project's `.venv`.
pub fn cargo_lambda() -> Result<PathBuf, String> {
    if let Some(path) = on_path("cargo-lambda") {
        return Ok(path);
    }
    let venv = venv_bin().join("cargo-lambda");
    if venv.is_file() {
        return Ok(venv);
    }
    Err("cargo-lambda not found on the PATH nor in .venv/bin: run `make venv`".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("functions/starter/Cargo.toml").is_file());
    }
}
