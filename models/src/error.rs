//! The one error type of retort-models. Every message names the file, key or tensor at fault.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// The OS refused a file operation.
    Io { path: PathBuf, source: std::io::Error },
    /// The bytes of a GGUF file break the format (or our caps on it).
    Format { path: PathBuf, message: String },
    /// The file is valid GGUF but not a model we can run: unknown architecture, missing or
    /// misshapen tensor, missing or absurd hyperparameter.
    Model(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format { path, message } => write!(f, "{}: invalid GGUF: {message}", path.display()),
            Error::Model(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
