//! The one error type of pipeline files.

/// A configuration error: the file, the line when it is known, the field path and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}{}: {field}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    /// 1-based line in the file: the offending key's line, or its entry's header.
    pub line: Option<usize>,
    /// The field path, e.g. `source.csv.delimiter` or `steps[2] (hash).key_env`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: None,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_shown_after_the_file_when_known() {
        let e = ConfigError::new("p.toml", "steps[2] (trim).columns", "unknown column \"x\"");
        assert_eq!(
            e.to_string(),
            "p.toml: steps[2] (trim).columns: unknown column \"x\""
        );
        assert_eq!(
            e.at_line(Some(14)).to_string(),
            "p.toml:14: steps[2] (trim).columns: unknown column \"x\""
        );
    }
}
