//! The one error type of retort-convert. Messages name the file, tensor or key at fault.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    Io { path: PathBuf, source: std::io::Error },
    /// A safetensors file breaks the format (or our caps on it).
    Safetensors { path: PathBuf, message: String },
    /// config.json, tokenizer.json, ... are missing something or hold something we cannot use.
    Checkpoint(String),
    Model(retort_models::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Safetensors { path, message } => write!(f, "{}: invalid safetensors: {message}", path.display()),
            Error::Checkpoint(message) => f.write_str(message),
            Error::Model(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<retort_models::Error> for Error {
    fn from(e: retort_models::Error) -> Error {
        Error::Model(e)
    }
}
