//! The one error type of retort-runtime.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Loading or understanding the model file failed.
    Model(retort_models::Error),
    /// The request cannot be served as asked: bad flag value, token out of range, ...
    Usage(String),
    /// The prompt plus generation needs more positions than the context holds.
    ContextFull { needed: usize, n_ctx: usize },
    Tokenizer(crate::tokenizer::TokenizerError),
    ChatTemplate(crate::chat_template::ChatTemplateError),
    Io(String, std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Model(e) => write!(f, "{e}"),
            Error::Usage(m) => f.write_str(m),
            Error::ContextFull { needed, n_ctx } => write!(
                f,
                "context full: {needed} positions needed but the context holds {n_ctx} (raise -c, up to the model's training context)"
            ),
            Error::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            Error::ChatTemplate(e) => write!(f, "chat template: {e}"),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<retort_models::Error> for Error {
    fn from(e: retort_models::Error) -> Error {
        Error::Model(e)
    }
}

impl From<crate::tokenizer::TokenizerError> for Error {
    fn from(e: crate::tokenizer::TokenizerError) -> Error {
        Error::Tokenizer(e)
    }
}

impl From<crate::chat_template::ChatTemplateError> for Error {
    fn from(e: crate::chat_template::ChatTemplateError) -> Error {
        Error::ChatTemplate(e)
    }
}
