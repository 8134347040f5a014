//! Why a use case refused: the one error type the REST API and the RPC API
//! each map to their own answer (an HTTP status, an oslo exception class).
//! It says what went wrong in the application's words, never in HTTP's.

use crate::domain::{FieldError, IllegalTransition};
use crate::store::StoreError;

/// A refusal or failure of a use case.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// What was named does not exist (the message says what).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (a name taken, a task
    /// no longer waiting, a workflow cancelled).
    #[error("{message}")]
    Conflict {
        /// Stable, snake_case: what clients match on.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// Well-formed, but its content is invalid.
    #[error("{message}")]
    Invalid {
        /// Stable, snake_case: what clients match on.
        code: &'static str,
        /// For people.
        message: String,
        /// Every invalid field, for `validation_failed`.
        details: Vec<FieldError>,
    },
    /// A state move the task's state does not allow (a bug, or a race the
    /// locks should have prevented): refused, nothing written.
    #[error(transparent)]
    IllegalMove(#[from] IllegalTransition),
    /// The store failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AppError {
    /// Whether trying again may succeed (a store that is down or busy);
    /// see [`StoreError::is_transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, AppError::Store(e) if e.is_transient())
    }

    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Invalid {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Conflict {
            code,
            message: message.into(),
        }
    }

    /// `validation_failed` listing every invalid field.
    pub fn validation(details: Vec<FieldError>) -> Self {
        let message = details
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        AppError::Invalid {
            code: "validation_failed",
            message,
            details,
        }
    }
}

impl From<crate::domain::Corrupt> for AppError {
    fn from(e: crate::domain::Corrupt) -> Self {
        AppError::Store(e.into())
    }
}
