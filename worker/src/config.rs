//! Pipeline files on disk. The model, its validation and the validated [`Pipeline`] live in the
//! `pipeline` crate (no I/O); this module re-exports them and adds the one I/O step, reading the
//! file.

use std::path::{Path, PathBuf};

pub use pipeline::*;

/// Reads and validates a pipeline file; relative paths in it resolve against its folder.
pub fn load_file(path: &Path) -> Result<Pipeline, ConfigError> {
    let (text, file, base) = read_file(path)?;
    parse(&text, &file, base)
}

/// A pipeline file's text, its name for messages, and the folder its relative paths resolve
/// against.
pub fn read_file(path: &Path) -> Result<(String, String, PathBuf), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&file, "(file)", format!("cannot read: {e}")))?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = base.canonicalize().unwrap_or(base);
    Ok((text, file, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named() {
        let e = load_file(Path::new("/nonexistent/p.toml")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/p.toml");
        assert!(e.message.contains("cannot read"), "{e}");
    }
}
